//! Shared by the integration tests: the fixture cases and how logits are compared.
#![allow(dead_code)]

pub mod kernel_fit;
pub mod model_file;
pub mod parity;

use std::path::PathBuf;

pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// One teacher-forced case: the tokens fed and the reference logits of every position.
pub struct Case {
    pub name: &'static str,
    pub gguf: PathBuf,
    pub tokens: Vec<u32>,
    pub n_prompt: usize,
    pub vocab: usize,
    /// `[tokens][vocab]`
    pub reference: Vec<f32>,
    /// Per row: the reference's smallest gap between the 4th and 5th expert score.
    pub routing_margin: Vec<f64>,
    /// Per row: the reference's top-1 minus top-2 logit.
    pub top_gap: Vec<f64>,
}

/// Q8_0 models: run on both backends.
pub const CASES: [&str; 3] = ["tiny-q8_0.short", "tiny-q8_0.long", "small2-q8_0.chat"];

/// Models quantized by llama.cpp to the mixes people download (several types per file):
/// run on the CPU and on the GPU.
pub const KQUANT_CASES: [&str; 5] = [
    "tiny-q4_0.short",
    "tiny-q2_k.short",
    "tiny-q5_k_m.short",
    "tiny-q6_k.short",
    "small2-q4_k_m.chat",
];

pub fn load_case(name: &'static str) -> Case {
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture(&format!("{name}.tokens.json"))).unwrap())
            .unwrap();
    let tokens: Vec<u32> = json["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    let bytes = std::fs::read(fixture(&format!("{name}.ref.f32"))).unwrap();
    let reference: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    let vocab = json["vocab_size"].as_u64().unwrap() as usize;
    assert_eq!(reference.len(), tokens.len() * vocab);
    let compare: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture(&format!("{name}.compare.json"))).unwrap())
            .unwrap();
    let per_row = |key: &str| -> Vec<f64> {
        compare[key]
            .as_array()
            .unwrap_or_else(|| panic!("{key} in {name}.compare.json"))
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect()
    };
    Case {
        name,
        gguf: fixture(json["gguf"].as_str().unwrap()),
        n_prompt: json["n_prompt"].as_u64().unwrap() as usize,
        tokens,
        vocab,
        reference,
        routing_margin: per_row("ref_min_routing_margin"),
        top_gap: per_row("ref_top_gap"),
    }
}

/// Deterministic ids spread over the vocabulary (the prompts of the batched-feed tests).
pub fn token_ids(n: usize, vocab: usize) -> Vec<u32> {
    let mut s: u64 = 0x2545_f491_4f6c_dd1d;
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 33) % vocab as u64) as u32
        })
        .collect()
}

/// `got` against rows `first..` of `want` (a token-by-token run's logits), every value
/// finite and each row within `tol` rel L2.
pub fn check_rows_within(
    want: &[f32],
    got: &[f32],
    vocab: usize,
    first: usize,
    tol: f64,
    label: &str,
) {
    if let Some(i) = got.iter().position(|v| !v.is_finite()) {
        panic!("{label}: value {i} is {}", got[i]);
    }
    let want = &want[first * vocab..][..got.len()];
    let rows = rel_l2_rows(want, got, vocab);
    let (worst, max) = rows
        .iter()
        .copied()
        .enumerate()
        .fold((0, 0f64), |m, (i, r)| if r > m.1 { (i, r) } else { m });
    println!(
        "{label}: {} rows, rel L2 max {max:.3e} (row {})",
        rows.len(),
        first + worst
    );
    assert!(
        max <= tol,
        "{label}: row {} rel L2 {max:.3e} > {tol:e}",
        first + worst
    );
}

/// rel L2 of every row: `||ref - got|| / ||ref||`, in f64.
pub fn rel_l2_rows(reference: &[f32], got: &[f32], vocab: usize) -> Vec<f64> {
    assert_eq!(reference.len(), got.len(), "logit count differs");
    reference
        .chunks_exact(vocab)
        .zip(got.chunks_exact(vocab))
        .map(|(r, g)| {
            let num: f64 = r
                .iter()
                .zip(g)
                .map(|(&a, &b)| (a as f64 - b as f64).powi(2))
                .sum();
            let den: f64 = r.iter().map(|&a| (a as f64).powi(2)).sum();
            (num / den).sqrt()
        })
        .collect()
}

pub fn argmax(v: &[f32]) -> usize {
    v.iter()
        .enumerate()
        .fold(0, |best, (i, &x)| if x > v[best] { i } else { best })
}

/// Checks `got` against the case's reference: every value finite, every row within
/// `tol` rel L2, and the same argmax wherever the reference's top-1/top-2 gap exceeds 0.1.
/// Prints the per-case rel L2 mean / max.
pub fn check_against_reference(case: &Case, got: &[f32], tol: f64, label: &str) {
    assert!(
        got.iter().all(|v| v.is_finite()),
        "{label} {}: non-finite logits",
        case.name
    );
    let rows = rel_l2_rows(&case.reference, got, case.vocab);
    let mean = rows.iter().sum::<f64>() / rows.len() as f64;
    let (worst_row, max) =
        rows.iter()
            .enumerate()
            .fold((0, 0f64), |b, (i, &v)| if v > b.1 { (i, v) } else { b });
    println!(
        "{label} {}: rel L2 mean {mean:.3e} max {max:.3e} (row {worst_row}) over {} rows",
        case.name,
        rows.len()
    );
    for (i, &r) in rows.iter().enumerate() {
        assert!(
            r <= tol,
            "{label} {} row {i}: rel L2 {r:.3e} > {tol:.1e}",
            case.name
        );
    }
    for (i, (r, g)) in case
        .reference
        .chunks_exact(case.vocab)
        .zip(got.chunks_exact(case.vocab))
        .enumerate()
    {
        if case.top_gap[i] > 0.1 {
            assert_eq!(
                argmax(r),
                argmax(g),
                "{label} {} row {i}: argmax differs (gap {})",
                case.name,
                case.top_gap[i]
            );
        }
    }
}

/// Greedy decoding gives the reference's continuation: teacher-forced, the argmax of every
/// row from the last prompt position on is the next token the reference chose.
pub fn check_greedy_tokens(case: &Case, got: &[f32], label: &str) {
    for i in case.n_prompt - 1..case.tokens.len() - 1 {
        let row = &got[i * case.vocab..(i + 1) * case.vocab];
        assert_eq!(
            argmax(row) as u32,
            case.tokens[i + 1],
            "{label} {}: greedy token after position {i} differs from the reference's",
            case.name
        );
    }
}
