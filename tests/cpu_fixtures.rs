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
