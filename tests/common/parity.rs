//! Random inputs and the comparison of the kernel parity tests (gpu_kernels, gpu_batched).

use glm_flash::formats::{self, GpuLayout};
use glm_flash::gguf::GgmlType;

/// xorshift64*: deterministic inputs without a dependency.
pub struct Rng(pub u64);
impl Rng {
    pub fn f32(&mut self) -> f32 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let v = self.0.wrapping_mul(0x2545F4914F6CDD1D) >> 40;
        v as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }
    pub fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.f32()).collect()
    }
    /// Uniform in `0..n`.
    pub fn below(&mut self, n: usize) -> usize {
        ((self.f32() + 1.0) * 0.5 * n as f32) as usize % n
    }
}

/// Every element finite and within `tol` of `want`, relative to the largest |want| (floor
/// 1e-3).
pub fn check_within(label: &str, got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len(), "{label}: length");
    let scale = want.iter().fold(1e-3f32, |m, v| m.max(v.abs()));
    let mut worst = (0, 0f32);
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            g.is_finite(),
            "{label}: element {i} is {g} (unwritten or NaN), want {w}"
        );
        let e = (g - w).abs();
        if e > worst.1 {
            worst = (i, e);
        }
    }
    println!(
        "{label}: max abs error {:.2e} (element {}) of scale {scale:.2e}",
        worst.1, worst.0
    );
    assert!(
        worst.1 <= tol * scale,
        "{label}: element {} off by {:.3e}",
        worst.0,
        worst.1
    );
}

/// The format of every GPU layout.
pub fn gpu_types() -> Vec<GgmlType> {
    GpuLayout::ALL
        .iter()
        .map(|&l| {
            formats::FORMATS
                .iter()
                .find(|f| f.gpu == Some(l))
                .unwrap_or_else(|| panic!("no format of layout {}", l.name()))
                .ty
        })
        .collect()
}

/// `rows` random rows of `ty`, whose magnitudes range over 1e-3..1e3 row by row (block
/// scales from tiny to large), with an all-zero row and a row with one huge outlier.
pub fn random_rows(rng: &mut Rng, ty: GgmlType, rows: usize, cols: usize) -> Vec<u8> {
    let mut values = rng.vec(rows * cols);
    for (r, row) in values.chunks_exact_mut(cols).enumerate() {
        let scale = 10f32.powi((r % 7) as i32 - 3);
        row.iter_mut().for_each(|v| *v *= scale);
    }
    values[cols..2 * cols].fill(0.0);
    values[2 * cols + 5] = 3e4;
    let mut bytes = Vec::new();
    formats::of(ty).unwrap().quantize(&values, &mut bytes);
    bytes
}
