//! The CPU's batched forward against its token-by-token forward, on every fixture model:
//! prompts of 1, 2, micro-batch - 1, micro-batch, micro-batch + 1 and several micro-batches
//! of tokens, and blocks fed after a prefix already in the cache. Also the backend contract:
//! cache length, truncate, positions, hidden states and argmax.
mod common;

use common::*;
use glm_flash::backend::{Backend, Output, Rows, Want};
use glm_flash::config::Config;
use glm_flash::cpu::{CpuBackend, MICRO_BATCH};
use glm_flash::gguf::GgufFile;
use glm_flash::weights::Weights;

/// Per row: summation order is all that differs, so f32 rounding is the scale.
const TOLERANCE: f64 = 1e-4;

/// Every model under tests/fixtures (formats added later are covered by this test too).
fn fixture_models() -> Vec<std::path::PathBuf> {
    let mut models: Vec<_> = std::fs::read_dir(fixture(""))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "gguf"))
        .collect();
    models.sort();
    assert!(models.len() >= 2, "fixture models: {models:?}");
    models
}

fn assert_finite(rows: &[f32], label: &str) {
    if let Some(i) = rows.iter().position(|v| !v.is_finite()) {
        panic!("{label}: value {i} is {}", rows[i]);
    }
}

/// Compares `got` (rows `first..` of the token-by-token run) row by row.
fn check_rows(want: &[f32], got: &[f32], vocab: usize, first: usize, label: &str) {
    check_rows_within(want, got, vocab, first, TOLERANCE, label);
}

#[test]
fn batched_logits_equal_token_by_token_logits_on_every_fixture_model() {
    let longest = 2 * MICRO_BATCH + 5;
    for path in fixture_models() {
        let file = GgufFile::open(&path).unwrap();
        let cfg = Config::from_gguf(&file).unwrap();
        let w = Weights::from_gguf(&file, &cfg).unwrap();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let vocab = cfg.vocab;
        let ids = token_ids(longest, vocab);

        // Token by token: the decode path, one row per feed.
        let mut one = CpuBackend::new(&cfg, &w, longest, 0).unwrap();
        let mut want = Vec::with_capacity(longest * vocab);
        for (pos, &t) in ids.iter().enumerate() {
            want.extend(one.feed_logits(&[t], pos, Rows::Last).unwrap());
        }
        assert_finite(&want, &name);

        let mut batch = CpuBackend::new(&cfg, &w, longest, 0).unwrap();
        for n in [1, 2, MICRO_BATCH - 1, MICRO_BATCH, MICRO_BATCH + 1, longest] {
            batch.truncate(0).unwrap();
            let got = batch.feed_logits(&ids[..n], 0, Rows::All).unwrap();
            assert_eq!(got.len(), n * vocab);
            check_rows(&want, &got, vocab, 0, &format!("{name}: {n} tokens"));
            // The last row alone is the last row of all of them.
            batch.truncate(0).unwrap();
            let last = batch.feed_logits(&ids[..n], 0, Rows::Last).unwrap();
            check_rows(&want, &last, vocab, n - 1, &format!("{name}: last of {n}"));
        }
        // Blocks after a prefix already in the cache: within one micro-batch and across
        // several.
        for (prefix, n) in [(37, 20), (MICRO_BATCH - 3, 7), (5, 2 * MICRO_BATCH)] {
            batch.truncate(0).unwrap();
            batch.feed(&ids[..prefix], 0, Want::Nothing).unwrap();
            assert_eq!(batch.cache_len(), prefix);
            let got = batch
                .feed_logits(&ids[prefix..prefix + n], prefix, Rows::All)
                .unwrap();
            check_rows(
                &want,
                &got,
                vocab,
                prefix,
                &format!("{name}: {n} tokens after {prefix}"),
            );
        }
    }
}

/// `Want::Hidden` is the output-normed state the LM head reads: the head applied to it in
/// f64 gives the logits; `Want::Argmax` is the argmax of the last row.
#[test]
fn hidden_states_and_argmax_agree_with_the_logits() {
    let path = fixture("tiny-q8_0.gguf");
    let file = GgufFile::open(&path).unwrap();
    let cfg = Config::from_gguf(&file).unwrap();
    let w = Weights::from_gguf(&file, &cfg).unwrap();
    let ids = token_ids(9, cfg.vocab);
    let mut cpu = CpuBackend::new(&cfg, &w, 64, 0).unwrap();
    let logits = cpu.feed_logits(&ids, 0, Rows::All).unwrap();
    cpu.truncate(0).unwrap();
    let hidden = cpu
        .feed(&ids, 0, Want::Hidden(Rows::All))
        .unwrap()
        .into_rows();
    assert_eq!(hidden.len(), ids.len() * cfg.hidden);
    assert_finite(&hidden, "hidden");
    let mut head = vec![0f32; cfg.hidden];
    let mut from_hidden = vec![0f32; logits.len()];
    for v in 0..cfg.vocab {
        w.output.dequantize_row(v, &mut head);
        for (t, h) in hidden.chunks_exact(cfg.hidden).enumerate() {
            let dot: f64 = head.iter().zip(h).map(|(&a, &b)| a as f64 * b as f64).sum();
            from_hidden[t * cfg.vocab + v] = dot as f32;
        }
    }
    check_rows(
        &logits,
        &from_hidden,
        cfg.vocab,
        0,
        "head(hidden) vs logits",
    );

    cpu.truncate(0).unwrap();
    let last = cpu
        .feed(&ids, 0, Want::Hidden(Rows::Last))
        .unwrap()
        .into_rows();
    assert_eq!(last, hidden[(ids.len() - 1) * cfg.hidden..]);

    cpu.truncate(0).unwrap();
    let id = cpu.feed_argmax(&ids, 0).unwrap();
    let last_logits = &logits[(ids.len() - 1) * cfg.vocab..];
    assert_eq!(id, glm_flash::ops_common::argmax(last_logits));

    cpu.truncate(0).unwrap();
    assert_eq!(cpu.feed(&ids, 0, Want::Nothing).unwrap(), Output::Nothing);
    assert_eq!(cpu.cache_len(), ids.len());
}

#[test]
fn cache_length_truncate_and_positions() {
    let file = GgufFile::open(fixture("tiny-q8_0.gguf")).unwrap();
    let cfg = Config::from_gguf(&file).unwrap();
    let w = Weights::from_gguf(&file, &cfg).unwrap();
    let ids = token_ids(12, cfg.vocab);
    let mut cpu = CpuBackend::new(&cfg, &w, 16, 1).unwrap();
    assert_eq!((cpu.cache_len(), cpu.max_context()), (0, 16));

    cpu.feed(&ids[..3], 0, Want::Nothing).unwrap();
    assert_eq!(cpu.cache_len(), 3);
    let fresh = cpu.feed_logits(&ids[3..8], 3, Rows::Last).unwrap();
    assert_eq!(cpu.cache_len(), 8);
    // Feeding anywhere but the cache length is an error naming both numbers.
    let err = cpu
        .feed_logits(&ids[3..5], 3, Rows::Last)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("position 3") && err.contains("holds 8"),
        "{err}"
    );
    let err = cpu
        .feed_logits(&ids[..1], 9, Rows::Last)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("position 9") && err.contains("holds 8"),
        "{err}"
    );
    assert_eq!(cpu.cache_len(), 8, "a refused feed changes nothing");
    // Truncate only shortens.
    let err = cpu.truncate(9).unwrap_err().to_string();
    assert!(err.contains('9') && err.contains('8'), "{err}");
    // Rolling back and feeding other tokens, then the original ones again, gives the
    // original logits bit for bit: nothing of the dropped positions is left.
    cpu.truncate(3).unwrap();
    assert_eq!(cpu.cache_len(), 3);
    cpu.feed(&ids[6..11], 3, Want::Nothing).unwrap();
    cpu.truncate(3).unwrap();
    let again = cpu.feed_logits(&ids[3..8], 3, Rows::Last).unwrap();
    assert_eq!(fresh, again);
    // The context bounds every feed; an empty feed is an error.
    let err = cpu
        .feed_logits(&ids[..9], 8, Rows::Last)
        .unwrap_err()
        .to_string();
    assert!(err.contains("context of 16"), "{err}");
    assert!(cpu.feed(&[], 8, Want::Nothing).is_err());
    let err = cpu.feed(&[cfg.vocab as u32], 8, Want::Nothing).unwrap_err();
    assert!(err.to_string().contains("vocabulary"), "{err}");
    assert_eq!(cpu.cache_len(), 8);

    // Greedy decoding leaves the fed tokens in the cache: the start and every id but the
    // last.
    let mut n = 0;
    cpu.decode_greedy(ids[8], 8, 5, &mut |_| {
        n += 1;
        true
    })
    .unwrap();
    assert_eq!((n, cpu.cache_len()), (5, 13));
    cpu.truncate(0).unwrap();
    assert_eq!(cpu.cache_len(), 0);
}
