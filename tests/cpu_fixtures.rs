//! The CPU backend against the fixtures' independent float64 reference.
mod common;

use common::*;
use glm_flash::backend::{Backend, Rows};
use glm_flash::config::Config;
use glm_flash::cpu::CpuBackend;
use glm_flash::gguf::GgufFile;
use glm_flash::weights::Weights;

/// Fixtures README: an engine computing in f32 reaches rel L2 <= 1e-4 on every row.
const F32_TOLERANCE: f64 = 1e-4;

#[test]
fn cpu_logits_match_reference_on_every_case() {
    for name in CASES {
        let case = load_case(name);
        let file = GgufFile::open(&case.gguf).unwrap();
        let cfg = Config::from_gguf(&file).unwrap();
        let weights = Weights::from_gguf(&file, &cfg).unwrap();
        let mut cpu = CpuBackend::new(&cfg, &weights, 4096, 0).unwrap();
        let got = cpu.feed_logits(&case.tokens, 0, Rows::All).unwrap();
        check_against_reference(&case, &got, F32_TOLERANCE, "cpu");
    }
}

/// The K-quant and Q4_0 files (each a mix of types, as llama-quantize writes them): the same
/// bar as Q8_0, since every weight is decoded exactly and every product is f32. Their
/// references were computed on each file's own decoded weights.
#[test]
fn cpu_logits_match_reference_on_every_kquant_case() {
    for name in KQUANT_CASES {
        let case = load_case(name);
        let file = GgufFile::open(&case.gguf).unwrap();
        // The file holds the mix of types its compare.json lists.
        let compare: serde_json::Value = serde_json::from_slice(
            &std::fs::read(fixture(&format!("{name}.compare.json"))).unwrap(),
        )
        .unwrap();
        let mut types = std::collections::BTreeMap::<String, u64>::new();
        for t in &file.tensors {
            *types.entry(t.ggml_type.name()).or_default() += 1;
        }
        let want: std::collections::BTreeMap<String, u64> = compare["tensor_types"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.as_u64().unwrap()))
            .collect();
        assert_eq!(types, want, "{name}: tensor types");

        let cfg = Config::from_gguf(&file).unwrap();
        let weights = Weights::from_gguf(&file, &cfg).unwrap();
        let mut cpu = CpuBackend::new(&cfg, &weights, 4096, 0).unwrap();
        let got = cpu.feed_logits(&case.tokens, 0, Rows::All).unwrap();
        check_against_reference(&case, &got, F32_TOLERANCE, "cpu");
        check_greedy_tokens(&case, &got, "cpu");
    }
}
