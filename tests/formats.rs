//! Every weight format against an independent decoder: tests/fixtures/quant/ holds random
//! blocks (extreme scales included) and the values gguf-py's `gguf.quants.dequantize`
//! decodes them to (tools/quant_vectors.py). Decoding must be bit-identical; the row dot
//! must equal the f64 dot of those values within f32 rounding.
mod common;

use common::fixture;
use glm_flash::formats::FORMATS;
use glm_flash::sampler::SplitMix64;

fn vectors(name: &str) -> (Vec<u8>, Vec<f32>) {
    let read = |suffix: &str| {
        let path = fixture(&format!("quant/{name}.{suffix}"));
        std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    };
    let values = read("f32")
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    (read("blocks"), values)
}

#[test]
fn dequantize_is_bit_identical_to_gguf_py() {
    for f in &FORMATS {
        let name = f.ty.name();
        let (blocks, want) = vectors(&name);
        assert_eq!(
            blocks.len() / f.block_bytes * f.block_values,
            want.len(),
            "{name}"
        );
        let mut got = vec![f32::NAN; want.len()];
        f.dequantize(&blocks, &mut got);
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(
                g.to_bits(),
                w.to_bits(),
                "{name} value {i} (block {}): {g:e} vs gguf-py {w:e}",
                i / f.block_values
            );
        }
    }
}

/// The stated tolerance: |dot - f64 reference| <= 1e-5 · Σ|w·x| (f32 rounding of a sum of a
/// few thousand products, in whatever order a path adds them).
#[test]
fn dot_matches_the_reference_values() {
    let mut rng = SplitMix64(9);
    for f in &FORMATS {
        let name = f.ty.name();
        let (blocks, w) = vectors(&name);
        let x: Vec<f32> = (0..w.len())
            .map(|_| (rng.next_u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0)
            .collect();
        let want: f64 = w.iter().zip(&x).map(|(&a, &b)| a as f64 * b as f64).sum();
        let scale: f64 = w
            .iter()
            .zip(&x)
            .map(|(&a, &b)| (a as f64 * b as f64).abs())
            .sum();
        for (path, got) in [
            ("dot", f.dot(&blocks, &x)),
            ("dot_scalar", f.dot_scalar(&blocks, &x)),
        ] {
            assert!(got.is_finite(), "{name} {path}: {got}");
            assert!(
                (got as f64 - want).abs() <= 1e-5 * scale,
                "{name} {path}: {got} vs {want} (sum of |w x| {scale:e})"
            );
        }
    }
}
