//! Matrix products of the batched forward.
//!
//! [`matmul`] multiplies a weight matrix in any stored format by a block of activation
//! rows: each weight row is dequantized once (by the format's own `dequantize_row`) and
//! dotted with every activation row in f32. [`gemm_nt`] is the f32 product underneath it,
//! also used directly by attention (queries against the latent cache). Both compute exactly
//! the reference math: f32 products of exactly dequantized weights, only summed in a
//! different order than one dot at a time.

use rayon::prelude::*;
use std::cell::RefCell;

use crate::cpu::ops::matvec;
use crate::weights::Matrix;

/// Weight rows per rayon task: enough to amortise scheduling, few enough to balance the
/// smallest matrices (a 256-row head slice) over the cores.
const ROWS_PER_TASK: usize = 16;

/// `out[t][r] = m[r] · x[t]` for every activation row `t` of `x` (`[tokens][m.cols]`);
/// `out` is `[tokens][m.rows]`.
pub fn matmul(m: &Matrix, x: &[f32], out: &mut [f32]) {
    let (rows, cols) = (m.rows, m.cols);
    let tokens = x.len() / cols;
    debug_assert_eq!(x.len(), tokens * cols);
    debug_assert_eq!(out.len(), tokens * rows);
    if tokens == 1 {
        // One token (decode): the fused per-format dot reads each weight once without
        // writing it out as f32 first.
        matvec(m, x, out);
        return;
    }
    // Work on `[rows][tokens]` so that each task owns whole output rows, then transpose.
    let mut out_t = vec![0f32; rows * tokens];
    out_t
        .par_chunks_mut(ROWS_PER_TASK * tokens)
        .enumerate()
        .for_each(|(task, out_t)| {
            let first = task * ROWS_PER_TASK;
            let n = out_t.len() / tokens;
            PANEL.with(|panel| {
                let mut panel = panel.borrow_mut();
                panel.resize(n * cols, 0.0);
                for (r, row) in panel.chunks_exact_mut(cols).enumerate() {
                    m.dequantize_row(first + r, row);
                }
                // Four tokens stay in registers while the task's weight rows stream past.
                let layout = OutLayout {
                    a_step: 1,
                    b_step: tokens,
                    accumulate: false,
                };
                gemm_nt(
                    RowsOf::packed(x, cols),
                    RowsOf::packed(&panel, cols),
                    cols,
                    out_t,
                    layout,
                );
            });
        });
    transpose(&out_t, rows, tokens, out);
}

thread_local! {
    /// The dequantized weight rows of the task a thread runs (reused across tasks).
    static PANEL: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// `out[c][r] = m[r][c]` for `m` of `[rows][cols]`.
pub fn transpose(m: &[f32], rows: usize, cols: usize, out: &mut [f32]) {
    debug_assert_eq!(m.len(), rows * cols);
    debug_assert_eq!(out.len(), rows * cols);
    for (r, row) in m.chunks_exact(cols).enumerate() {
        for (c, &v) in row.iter().enumerate() {
            out[c * rows + r] = v;
        }
    }
}

/// `len` f32 rows of a buffer, `stride` values apart (a row may be a slice of a longer one).
#[derive(Clone, Copy)]
pub struct RowsOf<'a> {
    pub data: &'a [f32],
    pub rows: usize,
    pub stride: usize,
}

impl<'a> RowsOf<'a> {
    /// Consecutive rows of `cols` values.
    pub fn packed(data: &'a [f32], cols: usize) -> RowsOf<'a> {
        RowsOf {
            data,
            rows: data.len() / cols,
            stride: cols,
        }
    }
}

/// Where [`gemm_nt`] writes `a[i] · b[j]`: `out[i * a_step + j * b_step]`, added to what is
/// there when `accumulate`.
#[derive(Clone, Copy)]
pub struct OutLayout {
    pub a_step: usize,
    pub b_step: usize,
    pub accumulate: bool,
}

/// Every row of `a` dotted with every row of `b` over their first `k` values. `a` is walked
/// once, four rows at a time, and `b` is read once per four rows of `a`: `b` should be the
/// operand that stays in cache (a group of activations, a block of queries).
pub fn gemm_nt(a: RowsOf, b: RowsOf, k: usize, out: &mut [f32], layout: OutLayout) {
    if a.rows == 0 || b.rows == 0 {
        return;
    }
    assert!(
        k <= a.stride
            && k <= b.stride
            && (a.rows - 1) * a.stride + k <= a.data.len()
            && (b.rows - 1) * b.stride + k <= b.data.len()
            && (a.rows - 1) * layout.a_step + (b.rows - 1) * layout.b_step < out.len(),
        "gemm_nt: operands smaller than their shapes"
    );
    let d = Dims { k, a, b, layout };
    #[cfg(target_arch = "x86_64")]
    {
        if simd::has_avx512() {
            // SAFETY: the CPU has the features the function is compiled for; the shapes
            // were checked above.
            return unsafe { simd::gemm_avx512(out, d) };
        }
        if simd::has_avx2_fma() {
            // SAFETY: as above.
            return unsafe { simd::gemm_avx2(out, d) };
        }
    }
    // SAFETY: the portable lanes need no CPU feature; the shapes were checked above.
    unsafe { gemm::<Portable>(out, d) }
}

#[derive(Clone, Copy)]
struct Dims<'a> {
    k: usize,
    a: RowsOf<'a>,
    b: RowsOf<'a>,
    layout: OutLayout,
}

/// A vector of f32 lanes; one implementation per instruction set, so the kernel below is
/// written once.
trait Lanes: Copy {
    const N: usize;
    unsafe fn zero() -> Self;
    /// Loads `N` values from `p` (no alignment needed).
    unsafe fn load(p: *const f32) -> Self;
    /// `self + a * b`
    unsafe fn mul_add(self, a: Self, b: Self) -> Self;
    unsafe fn sum(self) -> f32;
}

/// Rows of `a` per panel and of `b` per group: 4 x 4 independent sums keep the multiply-add
/// units busy while each step loads 8 vectors for 16 multiply-adds.
const MR: usize = 4;
const NR: usize = 4;

/// The whole product, panel by panel.
#[inline(always)]
unsafe fn gemm<L: Lanes>(out: &mut [f32], d: Dims) {
    let (a_rows, b_rows) = (d.a.rows, d.b.rows);
    let mut i = 0;
    while i < a_rows {
        let mr = (a_rows - i).min(MR);
        let mut j = 0;
        while j < b_rows {
            let nr = (b_rows - j).min(NR);
            match (mr, nr) {
                (MR, NR) => block::<L, MR, NR>(out, d, i, j),
                (MR, 3) => block::<L, MR, 3>(out, d, i, j),
                (MR, 2) => block::<L, MR, 2>(out, d, i, j),
                (MR, 1) => block::<L, MR, 1>(out, d, i, j),
                // The last rows of `a`, one at a time.
                _ => {
                    for r in i..i + mr {
                        match nr {
                            NR => block::<L, 1, NR>(out, d, r, j),
                            3 => block::<L, 1, 3>(out, d, r, j),
                            2 => block::<L, 1, 2>(out, d, r, j),
                            _ => block::<L, 1, 1>(out, d, r, j),
                        }
                    }
                }
            }
            j += nr;
        }
        i += mr;
    }
}

/// `R` rows of `a` from `i` against `C` rows of `b` from `j`.
#[inline(always)]
unsafe fn block<L: Lanes, const R: usize, const C: usize>(
    out: &mut [f32],
    d: Dims,
    i: usize,
    j: usize,
) {
    let k = d.k;
    let (sa, sb) = (d.a.stride, d.b.stride);
    let pa = d.a.data.as_ptr().add(i * sa);
    let pb = d.b.data.as_ptr().add(j * sb);
    let mut acc = [[L::zero(); C]; R];
    let main = k - k % L::N;
    let mut kk = 0;
    while kk < main {
        let mut bv = [L::zero(); C];
        for (c, v) in bv.iter_mut().enumerate() {
            *v = L::load(pb.add(c * sb + kk));
        }
        for (r, acc_r) in acc.iter_mut().enumerate() {
            let av = L::load(pa.add(r * sa + kk));
            for (acc_rc, &bv_c) in acc_r.iter_mut().zip(&bv) {
                *acc_rc = acc_rc.mul_add(av, bv_c);
            }
        }
        kk += L::N;
    }
    let o = d.layout;
    for (r, acc_r) in acc.iter().enumerate() {
        for (c, acc_rc) in acc_r.iter().enumerate() {
            let mut s = acc_rc.sum();
            for t in main..k {
                s += *pa.add(r * sa + t) * *pb.add(c * sb + t);
            }
            let dst = out.get_unchecked_mut((i + r) * o.a_step + (j + c) * o.b_step);
            *dst = if o.accumulate { *dst + s } else { s };
        }
    }
}

/// Eight lanes in plain Rust, for CPUs without the instruction sets below; the compiler
/// vectorises them as far as its target allows.
#[derive(Clone, Copy)]
struct Portable([f32; 8]);

impl Lanes for Portable {
    const N: usize = 8;
    unsafe fn zero() -> Self {
        Portable([0.0; 8])
    }
    unsafe fn load(p: *const f32) -> Self {
        Portable(std::ptr::read_unaligned(p as *const [f32; 8]))
    }
    unsafe fn mul_add(self, a: Self, b: Self) -> Self {
        let mut r = self.0;
        for ((r, a), b) in r.iter_mut().zip(a.0).zip(b.0) {
            *r += a * b;
        }
        Portable(r)
    }
    unsafe fn sum(self) -> f32 {
        self.0.iter().sum()
    }
}

#[cfg(target_arch = "x86_64")]
mod simd {
    use super::{gemm, Dims, Lanes};
    use std::arch::x86_64::*;

    pub fn has_avx512() -> bool {
        is_x86_feature_detected!("avx512f")
    }

    pub fn has_avx2_fma() -> bool {
        is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
    }

    #[derive(Clone, Copy)]
    struct Avx512(__m512);

    impl Lanes for Avx512 {
        const N: usize = 16;
        #[inline(always)]
        unsafe fn zero() -> Self {
            Avx512(_mm512_setzero_ps())
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> Self {
            Avx512(_mm512_loadu_ps(p))
        }
        #[inline(always)]
        unsafe fn mul_add(self, a: Self, b: Self) -> Self {
            Avx512(_mm512_fmadd_ps(a.0, b.0, self.0))
        }
        #[inline(always)]
        unsafe fn sum(self) -> f32 {
            _mm512_reduce_add_ps(self.0)
        }
    }

    #[derive(Clone, Copy)]
    struct Avx2(__m256);

    impl Lanes for Avx2 {
        const N: usize = 8;
        #[inline(always)]
        unsafe fn zero() -> Self {
            Avx2(_mm256_setzero_ps())
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> Self {
            Avx2(_mm256_loadu_ps(p))
        }
        #[inline(always)]
        unsafe fn mul_add(self, a: Self, b: Self) -> Self {
            Avx2(_mm256_fmadd_ps(a.0, b.0, self.0))
        }
        #[inline(always)]
        unsafe fn sum(self) -> f32 {
            let s = _mm_add_ps(
                _mm256_castps256_ps128(self.0),
                _mm256_extractf128_ps(self.0, 1),
            );
            let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
            let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
            _mm_cvtss_f32(s)
        }
    }

    #[target_feature(enable = "avx512f")]
    pub unsafe fn gemm_avx512(out: &mut [f32], d: Dims) {
        gemm::<Avx512>(out, d)
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn gemm_avx2(out: &mut [f32], d: Dims) {
        gemm::<Avx2>(out, d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats;
    use crate::gguf::GgmlType;

    fn values(n: usize, seed: u32) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(1664525).wrapping_add(1013904223);
                (s >> 8) as f32 / (1 << 24) as f32 - 0.5
            })
            .collect()
    }

    fn dot64(a: &[f32], b: &[f32]) -> f64 {
        a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum()
    }

    #[test]
    fn gemm_nt_matches_f64_dots_on_odd_shapes() {
        // Shapes that are not multiples of the panel, the group or any lane count.
        for (m, n, k) in [(1, 1, 1), (5, 3, 17), (9, 7, 33), (4, 4, 16), (13, 6, 100)] {
            let (a, b) = (values(m * k, 1), values(n * k, 2));
            let mut out = vec![f32::NAN; m * n];
            let layout = OutLayout {
                a_step: 1,
                b_step: m,
                accumulate: false,
            };
            gemm_nt(
                RowsOf::packed(&a, k),
                RowsOf::packed(&b, k),
                k,
                &mut out,
                layout,
            );
            for i in 0..m {
                for j in 0..n {
                    let want = dot64(&a[i * k..][..k], &b[j * k..][..k]);
                    let got = out[i + j * m];
                    assert!(
                        (got as f64 - want).abs() <= 1e-5 * (1.0 + want.abs()),
                        "{m}x{n}x{k} [{i}][{j}]: {got} vs {want}"
                    );
                }
            }
        }
    }

    #[test]
    fn matmul_equals_one_dot_per_row_for_every_token_count() {
        let (rows, cols) = (37, 64);
        let mut bytes = Vec::new();
        formats::of(GgmlType::Q8_0)
            .unwrap()
            .quantize(&values(rows * cols, 3), &mut bytes);
        let m = Matrix {
            name: "q8_0 test",
            ty: GgmlType::Q8_0,
            rows,
            cols,
            data: &bytes,
        };
        for tokens in [1, 2, 3, 5, 17] {
            let x = values(tokens * cols, 4 + tokens as u32);
            let mut out = vec![f32::NAN; tokens * rows];
            matmul(&m, &x, &mut out);
            let mut w = vec![0f32; cols];
            for r in 0..rows {
                m.dequantize_row(r, &mut w);
                for t in 0..tokens {
                    let want = dot64(&w, &x[t * cols..][..cols]);
                    let got = out[t * rows + r];
                    assert!(
                        (got as f64 - want).abs() <= 1e-5 * (1.0 + want.abs()),
                        "{tokens} tokens, row {r}, token {t}: {got} vs {want}"
                    );
                }
            }
        }
    }
}
