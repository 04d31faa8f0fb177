//! The CPU's 8-bit mode (`--matmul q8`: activations rounded to 8 bits per 32 values, integer
//! dots where a format has codes) against the float64 references of every fixture case,
//! fed token by token (the integer dots) and as one batch (the many-row integer product
//! where the format and CPU have one, else f32 products of the rounded activations): the
//! error it adds is measured and printed, and bounded by llama.cpp's own on the same files. The two ways compute the same sums up to f32 rounding (the kernel
//! tests check that); here they can still differ by 1e-2 after a row where that rounding
//! flips an expert choice at a near-tie, since later rows attend to its cache row.
mod common;

use common::*;
use glm_flash::backend::{Backend, Rows};
use glm_flash::config::Config;
use glm_flash::cpu::{CpuBackend, CpuMath};
use glm_flash::gguf::GgufFile;
use glm_flash::weights::Weights;

/// Per row against the float64 reference: rows where rounding flips an expert choice at a
/// near-tie reach 0.17 here, as llama.cpp's rows reach 0.14 on the same files (a decoding
/// bug moves every row, which the mean below catches).
const Q8_ROW_TOLERANCE: f64 = 0.25;

/// Per case, the mean rel L2 against the reference at most this times llama.cpp's own on
/// the same file (its CPU kernels round activations to 8 bits too; `compare.json`). On these
/// small models an expert flip at a near-tie moves every later row: summing the same
/// integer products in another order moved tiny-q4_0's mean from 1.7e-2 to 1.9e-2
/// (llama.cpp's: 1.25e-2). A decoding bug moves it past 3e-2 (tests/fixtures/README.md).
const LLAMA_MEAN_FACTOR: f64 = 2.0;

/// llama.cpp's mean rel L2 against the reference on the case's file.
fn llama_mean(name: &str) -> f64 {
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture(&format!("{name}.compare.json"))).unwrap())
            .unwrap();
    json["comparisons"]["llama_vs_ref"]["rel_l2_mean"]
        .as_f64()
        .unwrap()
}

#[test]
fn q8_mode_logits_stay_near_the_reference_on_every_case() {
    for name in CASES.iter().chain(&KQUANT_CASES) {
        let case = load_case(name);
        let file = GgufFile::open(&case.gguf).unwrap();
        let cfg = Config::from_gguf(&file).unwrap();
        let weights = Weights::from_gguf(&file, &cfg).unwrap();
        let n = case.tokens.len();
        let backend = || {
            CpuBackend::new(&cfg, &weights, n, 0)
                .unwrap()
                .with_math(CpuMath::Q8)
        };
        let mut one_by_one = backend();
        let mut stepped = Vec::with_capacity(n * case.vocab);
        for (pos, &t) in case.tokens.iter().enumerate() {
            stepped.extend(one_by_one.feed_logits(&[t], pos, Rows::Last).unwrap());
        }
        let batched = backend().feed_logits(&case.tokens, 0, Rows::All).unwrap();
        let llama = llama_mean(name);
        for (label, got) in [("token by token", &stepped), ("one batch", &batched)] {
            let label = format!("cpu q8, {label}");
            check_against_reference(&case, got, Q8_ROW_TOLERANCE, &label);
            let rows = rel_l2_rows(&case.reference, got, case.vocab);
            let mean = rows.iter().sum::<f64>() / rows.len() as f64;
            assert!(
                mean <= LLAMA_MEAN_FACTOR * llama,
                "{label} {name}: mean rel L2 {mean:.3e}, llama.cpp's {llama:.3e}"
            );
        }
    }
}
