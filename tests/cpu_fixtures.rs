//! The CPU backend against the fixtures' independent float64 reference.
mod common;

use common::*;
use glm_flash::backend::Backend;
use glm_flash::config::Config;
use glm_flash::cpu::CpuBackend;
use glm_flash::gguf::GgufFile;
use glm_flash::ops_common::CacheType;
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
        let got = cpu.forward(&case.tokens, 0, true).unwrap();
        check_against_reference(&case, &got, F32_TOLERANCE, "cpu");
    }
}

/// Fixtures README: an f16 KV cache adds about 1e-4 rel L2 (llama.cpp with f32 weights and
/// an f16 cache: mean 6.0e-05 to 1.2e-04 per case, max 2.13e-04). Twice that maximum.
pub const F16_CACHE_TOLERANCE: f64 = 5e-4;

/// The f16 cache's error against the float64 reference, measured on the CPU (whose f16
/// cache the GPU's must equal: tests/gpu_forward.rs).
#[test]
fn cpu_f16_cache_logits_stay_near_the_reference() {
    for name in CASES {
        let case = load_case(name);
        let file = GgufFile::open(&case.gguf).unwrap();
        let cfg = Config::from_gguf(&file).unwrap();
        let weights = Weights::from_gguf(&file, &cfg).unwrap();
        let mut cpu = CpuBackend::new(&cfg, &weights, 4096, 0)
            .unwrap()
            .with_cache_type(CacheType::F16);
        let got = cpu.forward(&case.tokens, 0, true).unwrap();
        check_against_reference(&case, &got, F16_CACHE_TOLERANCE, "cpu f16 cache");
    }
}
