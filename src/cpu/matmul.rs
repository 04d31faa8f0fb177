//! Matrix products of the batched forward.
//!
//! [`matmul`] multiplies a weight matrix in any stored format by a block of activation
//! rows: each weight row is dequantized once (by the format's own dequantizer, a few
//! hundred values at a time so they are still in L1 when used) and dotted with every
//! activation row in f32. [`gemm_nt`] is the f32 product underneath it, also used directly
//! by attention (queries against the latent cache). Both compute exactly the reference
//! math: f32 products of exactly dequantized weights, only summed in a different order than
//! one dot at a time. [`CpuMath::Q8`] is the opt-in exception: the activations rounded to 8
//! bits first (`formats::int8`), then integer dots or the same f32 products.

use rayon::prelude::*;
use std::cell::RefCell;

use crate::cpu::ops::matvec;
use crate::formats::int8::{round_to_8_bits, Q8Lanes, Q8Row, Q8Rows, ACT_BLOCK, DOT_Q8_TOKENS};
use crate::formats::DOT_TOKENS;
use crate::weights::Matrix;

/// How the CPU multiplies weights by activations.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CpuMath {
    /// f32 products of exactly decoded weights: the reference.
    #[default]
    Exact,
    /// The activations rounded to 8 bits per 32 values and multiplied as integers by the
    /// weights' codes, for the formats that have them (`formats::int8`; the others as
    /// `Exact`): as llama.cpp's CPU backend multiplies, faster, with the error
    /// BENCHMARKS.md states.
    Q8,
}

/// Weight rows per rayon task: enough to amortise scheduling, few enough to balance the
/// smallest matrices (a 256-row head slice) over the cores.
const ROWS_PER_TASK: usize = 16;

/// Values of a weight row dequantized at a time: a multiple of every format's block (1, 32
/// and 256 values), small enough that the task's rows (16 KB) and a group of activations
/// stay in L1 while they are multiplied.
const K_CHUNK: usize = 256;

/// The widest lane count of any instruction set below: the size of a partial sum.
const MAX_LANES: usize = 16;

/// `out[t][r] = m[r] · x[t]` for every activation row `t` of `x` (`[tokens][m.cols]`);
/// `out` is `[tokens][m.rows]`.
pub fn matmul(m: &Matrix, x: &[f32], out: &mut [f32], math: CpuMath) {
    let (rows, cols) = (m.rows, m.cols);
    let tokens = x.len() / cols;
    debug_assert_eq!(x.len(), tokens * cols);
    debug_assert_eq!(out.len(), tokens * rows);
    if math == CpuMath::Q8 && m.format().has_dot_q8() && cols.is_multiple_of(ACT_BLOCK) {
        if tokens <= m.format().q8_integer_rows() {
            matmul_q8(m, &Q8Rows::quantize(x, cols), out);
        } else if tokens > FUSED_TOKENS && m.format().has_dot_q8_wide() {
            matmul_q8_wide(m, x, out);
        } else {
            // The same products in f32 on the values the codes stand for: with more rows
            // than a multi-row integer dot takes, and no many-row integer product for the
            // format, the blocked f32 product below is the faster.
            let mut rounded = x.to_vec();
            rounded.par_chunks_mut(cols).for_each(round_to_8_bits);
            matmul(m, &rounded, out, CpuMath::Exact);
        }
        return;
    }
    if tokens == 1 {
        // One token (decode): the fused per-format dot reads each weight once without
        // writing it out as f32 first.
        matvec(m, x, out);
        return;
    }
    if tokens <= FUSED_TOKENS && m.format().has_dot_tokens() {
        matmul_fused(m, x, tokens, out);
        return;
    }
    if tokens >= lane_count() {
        matmul_wide(m, x, tokens, out);
        return;
    }
    // A few tokens (an expert's share of a batch): dot products along k, four tokens by
    // four weight rows at a time. Work on `[rows][tokens]` so that each task owns whole
    // output rows, then transpose.
    let mut out_t = vec![0f32; rows * tokens];
    out_t
        .par_chunks_mut(ROWS_PER_TASK * tokens)
        .enumerate()
        .for_each(|(task, out_t)| {
            let first = task * ROWS_PER_TASK;
            let n = out_t.len() / tokens;
            SCRATCH.with(|scratch| {
                let (panel, lanes) = &mut *scratch.borrow_mut();
                panel.resize(n * K_CHUNK, 0.0);
                // Between chunks each (token, row) keeps a vector of partial sums; the
                // last chunk reduces it into the output.
                let chunks = cols.div_ceil(K_CHUNK);
                if chunks > 1 {
                    lanes.resize(tokens * n * MAX_LANES, 0.0);
                }
                for c in 0..chunks {
                    let (k0, kc) = (c * K_CHUNK, K_CHUNK.min(cols - c * K_CHUNK));
                    let (b0, b1) = (byte_offset(m, k0), byte_offset(m, k0 + kc));
                    for (r, w) in panel.chunks_exact_mut(kc).take(n).enumerate() {
                        m.format().dequantize(&m.row(first + r)[b0..b1], w);
                    }
                    if c + 1 < chunks {
                        let b2 = byte_offset(m, (k0 + 2 * K_CHUNK).min(cols));
                        for r in 0..n {
                            prefetch(&m.row(first + r)[b1..b2]);
                        }
                    }
                    let x_chunk = RowsOf {
                        data: &x[k0..],
                        rows: tokens,
                        stride: cols,
                    };
                    let w_chunk = RowsOf {
                        data: &panel[..n * kc],
                        rows: n,
                        stride: kc,
                    };
                    let piece = Piece {
                        from_lanes: c > 0,
                        to_lanes: c + 1 < chunks,
                        layout: OutLayout {
                            a_step: 1,
                            b_step: tokens,
                            accumulate: false,
                        },
                    };
                    gemm(x_chunk, w_chunk, kc, lanes, out_t, piece);
                }
            });
        });
    transpose(&out_t, rows, tokens, out);
}

/// [`CpuMath::Q8`]: each weight row against every activation row in 8 bits, decoded once per
/// [`DOT_Q8_TOKENS`] of them.
fn matmul_q8(m: &Matrix, x: &Q8Rows, out: &mut [f32]) {
    let (rows, tokens, format) = (m.rows, x.len(), m.format());
    if tokens == 1 {
        let x = x.row(0);
        row_dots(m, out, |row| format.dot_q8(row, x));
        return;
    }
    let mut out_t = vec![0f32; rows * tokens];
    out_t
        .par_chunks_mut(ROWS_PER_TASK * tokens)
        .enumerate()
        .for_each(|(task, out_t)| {
            for (r, o) in out_t.chunks_exact_mut(tokens).enumerate() {
                let row = m.row(task * ROWS_PER_TASK + r);
                for (g, o) in o.chunks_mut(DOT_Q8_TOKENS).enumerate() {
                    let xs: [Q8Row; DOT_Q8_TOKENS] =
                        std::array::from_fn(|t| x.row((g * DOT_Q8_TOKENS + t).min(tokens - 1)));
                    format.dot_q8_tokens(row, &xs[..o.len()], o);
                }
            }
        });
    transpose(&out_t, rows, tokens, out);
}

/// [`CpuMath::Q8`] with more tokens than a multi-row dot takes, for a format with a
/// many-row integer product: the tokens as the lanes of the integer sums (as in
/// [`matmul_wide`]), each weight read once per slab of them.
fn matmul_q8_wide(m: &Matrix, x: &[f32], out: &mut [f32]) {
    let (rows, cols) = (m.rows, m.cols);
    let lanes = Q8Lanes::quantize(x, cols);
    let (tokens, padded) = (lanes.tokens(), lanes.padded());
    let mut out_t = vec![0f32; rows * padded];
    out_t
        .par_chunks_mut(WIDE_ROWS_PER_TASK * padded)
        .enumerate()
        .for_each(|(task, out_t)| {
            let first = task * WIDE_ROWS_PER_TASK;
            let n = out_t.len() / padded;
            m.format().dot_q8_wide(m.rows(first, n).data, &lanes, out_t);
        });
    transpose_strided(&out_t, padded, rows, tokens, out, rows);
}

/// Tokens up to which a format's multi-row dot (`WeightFormat::dot_tokens`: each weight
/// decoded in registers once per [`DOT_TOKENS`] tokens) beats decoding a row once into
/// memory and multiplying it (BENCHMARKS.md has the measurement).
const FUSED_TOKENS: usize = 8;

/// Few tokens (an expert's share of a batch) in a format with a multi-row dot: each weight
/// row against the tokens in groups of [`DOT_TOKENS`].
fn matmul_fused(m: &Matrix, x: &[f32], tokens: usize, out: &mut [f32]) {
    let (rows, cols, format) = (m.rows, m.cols, m.format());
    let mut out_t = vec![0f32; rows * tokens];
    out_t
        .par_chunks_mut(ROWS_PER_TASK * tokens)
        .enumerate()
        .for_each(|(task, out_t)| {
            for (r, o) in out_t.chunks_exact_mut(tokens).enumerate() {
                let row = m.row(task * ROWS_PER_TASK + r);
                for (g, o) in o.chunks_mut(DOT_TOKENS).enumerate() {
                    format.dot_tokens(row, &x[g * DOT_TOKENS * cols..], cols, o);
                }
            }
        });
    transpose(&out_t, rows, tokens, out);
}

/// The longest run of `k` the wide product sums in one chain before adding it to the output.
const SUM_CHAIN: usize = 32;

/// Weight rows per task of the wide product: a multiple of every row group below.
const WIDE_ROWS_PER_TASK: usize = 24;

/// Values of `k` per pass over a task's rows: the activations of a pass (`[K_BLOCK][64]`
/// f32, 256 KB) stay in L2 while every row group of the task goes through them.
const K_BLOCK: usize = 1024;

/// Many tokens: the tokens are the lanes. `x` is transposed to `[k][tokens]` (padded to
/// whole vectors), and each dequantized weight value is broadcast against vectors of
/// tokens, so partial sums stay in registers over all of `k` with no horizontal sums, and
/// the activations are read as contiguous vectors. Tokens go in slabs of four vectors; a
/// weight row is dequantized once per slab.
fn matmul_wide(m: &Matrix, x: &[f32], tokens: usize, out: &mut [f32]) {
    let (rows, cols, lanes) = (m.rows, m.cols, lane_count());
    for s0 in (0..tokens).step_by(4 * lanes) {
        let n = (4 * lanes).min(tokens - s0);
        let padded = n.div_ceil(lanes) * lanes;
        let mut x_t = vec![0f32; cols * padded];
        transpose_strided(&x[s0 * cols..], cols, n, cols, &mut x_t, padded);
        let mut out_t = vec![0f32; rows * padded];
        out_t
            .par_chunks_mut(WIDE_ROWS_PER_TASK * padded)
            .enumerate()
            .for_each(|(task, out_t)| {
                let task = WideTask {
                    m,
                    first: task * WIDE_ROWS_PER_TASK,
                    x_t: &x_t,
                    padded,
                };
                SCRATCH.with(|scratch| {
                    let (panel, _) = &mut *scratch.borrow_mut();
                    panel.resize(8 * K_CHUNK, 0.0);
                    wide(&task, out_t, panel);
                });
            });
        transpose_strided(&out_t, padded, rows, n, &mut out[s0 * rows..], rows);
    }
}

/// One task of [`matmul_wide`]: weight rows from `first` (as many as its output holds)
/// against the transposed activations `x_t` (`[cols][padded]`).
struct WideTask<'a> {
    m: &'a Matrix<'a>,
    first: usize,
    x_t: &'a [f32],
    padded: usize,
}

/// Lanes of the widest instruction set this CPU has (what [`gemm`] and [`wide`] use).
fn lane_count() -> usize {
    #[cfg(target_arch = "x86_64")]
    if simd::has_avx512() {
        return 16;
    }
    8
}

/// Runs a wide task on the widest instruction set the CPU has; the products are added to
/// `out_t`, the task's `[rows][padded]` output (zeroed by the caller); `panel` is room for
/// 8 rows of a chunk.
fn wide(t: &WideTask, out_t: &mut [f32], panel: &mut [f32]) {
    assert!(
        t.x_t.len() == t.m.cols * t.padded
            && out_t.len().is_multiple_of(t.padded)
            && t.first + out_t.len() / t.padded <= t.m.rows
            && t.padded.is_multiple_of(lane_count())
            && t.padded <= 4 * lane_count()
            && panel.len() >= 8 * K_CHUNK,
        "wide: operands smaller than their shapes"
    );
    #[cfg(target_arch = "x86_64")]
    {
        if simd::has_avx512() {
            // SAFETY: the CPU has the features the function is compiled for; the shapes
            // were checked above.
            return unsafe { simd::wide_avx512(t, out_t, panel) };
        }
        if simd::has_avx2_fma() {
            // SAFETY: as above.
            return unsafe { simd::wide_avx2(t, out_t, panel) };
        }
    }
    // SAFETY: the portable lanes need no CPU feature; the shapes were checked above.
    unsafe { wide_with::<Portable>(t, out_t, panel) }
}

/// Row groups as large as the registers allow: `R` rows by `V` vectors of tokens.
#[inline(always)]
unsafe fn wide_with<L: Lanes>(t: &WideTask, out_t: &mut [f32], panel: &mut [f32]) {
    let vectors = t.padded / L::N;
    match (L::N >= 16, vectors) {
        (true, 4) => wide_rows::<L, 6, 4>(t, out_t, panel),
        (true, 3) => wide_rows::<L, 8, 3>(t, out_t, panel),
        (true, 2) => wide_rows::<L, 8, 2>(t, out_t, panel),
        (false, 4) => wide_rows::<L, 2, 4>(t, out_t, panel),
        (false, 3) => wide_rows::<L, 2, 3>(t, out_t, panel),
        (false, 2) => wide_rows::<L, 4, 2>(t, out_t, panel),
        _ => wide_rows::<L, 8, 1>(t, out_t, panel),
    }
}

#[inline(always)]
unsafe fn wide_rows<L: Lanes, const R: usize, const V: usize>(
    t: &WideTask,
    out_t: &mut [f32],
    panel: &mut [f32],
) {
    let (m, cols, padded) = (t.m, t.m.cols, t.padded);
    let rows = out_t.len() / padded;
    for k0 in (0..cols).step_by(K_BLOCK) {
        let k_end = (k0 + K_BLOCK).min(cols);
        for g in (0..rows).step_by(R) {
            let valid = R.min(rows - g);
            for c0 in (k0..k_end).step_by(K_CHUNK) {
                let kc = K_CHUNK.min(k_end - c0);
                let (b0, b1) = (byte_offset(m, c0), byte_offset(m, c0 + kc));
                for r in 0..R {
                    let w = &mut panel[r * K_CHUNK..][..kc];
                    if r < valid {
                        m.format().dequantize(&m.row(t.first + g + r)[b0..b1], w);
                    } else {
                        w.fill(0.0);
                    }
                }
                let b2 = byte_offset(m, (c0 + 2 * K_CHUNK).min(cols));
                for r in 0..valid {
                    prefetch(&m.row(t.first + g + r)[b1..b2]);
                }
                // Every SUM_CHAIN values of k sum into fresh registers and then into the
                // output: no sum runs longer than that in one chain, so the rounding is
                // that of the dot kernels (whose lanes split k the same way).
                let xp = t.x_t.as_ptr().add(c0 * padded);
                let wp = panel.as_ptr();
                for s0 in (0..kc).step_by(SUM_CHAIN) {
                    let mut acc = [[L::zero(); V]; R];
                    for k in s0..(s0 + SUM_CHAIN).min(kc) {
                        let mut xv = [L::zero(); V];
                        for (v, x) in xv.iter_mut().enumerate() {
                            *x = L::load(xp.add(k * padded + v * L::N));
                        }
                        for (r, acc_r) in acc.iter_mut().enumerate() {
                            let w = L::splat(*wp.add(r * K_CHUNK + k));
                            for (a, &x) in acc_r.iter_mut().zip(&xv) {
                                *a = a.mul_add(w, x);
                            }
                        }
                    }
                    for (r, acc_r) in acc.iter().enumerate().take(valid) {
                        for (v, a) in acc_r.iter().enumerate() {
                            let o = out_t.as_mut_ptr().add((g + r) * padded + v * L::N);
                            L::load(o).add(*a).store(o);
                        }
                    }
                }
            }
        }
    }
}

/// `out[r] = dot(row r of m)` for every row, [`ROWS_PER_TASK`] rows per task over the
/// cores, the next row prefetched while a row is multiplied (a decode's mat-vecs, where
/// reading the weights is the work); the row size computed once, not per row.
pub(crate) fn row_dots(m: &Matrix, out: &mut [f32], dot: impl Fn(&[u8]) -> f32 + Sync) {
    debug_assert_eq!(out.len(), m.rows);
    let (rb, data) = (m.row_bytes(), m.data);
    out.par_chunks_mut(ROWS_PER_TASK)
        .enumerate()
        .for_each(|(task, out)| {
            for (r, o) in out.iter_mut().enumerate() {
                let at = (task * ROWS_PER_TASK + r) * rb;
                if let Some(next) = data.get(at + rb..at + 2 * rb) {
                    prefetch(next);
                }
                *o = dot(&data[at..at + rb]);
            }
        });
}

/// Asks for `bytes` to be brought into cache while other work runs: the next weight row
/// while a row is multiplied (decode reads rows faster with it than the hardware's own
/// prefetching alone, BENCHMARKS.md).
pub(crate) fn prefetch(bytes: &[u8]) {
    #[cfg(target_arch = "x86_64")]
    for line in bytes.chunks(64) {
        // SAFETY: a prefetch reads nothing architecturally; the address is in `bytes`.
        unsafe {
            std::arch::x86_64::_mm_prefetch(
                line.as_ptr() as *const i8,
                std::arch::x86_64::_MM_HINT_T0,
            )
        };
    }
}

/// Where the values `k..` of a row of `m` start in its bytes (`k` on a block boundary).
fn byte_offset(m: &Matrix, k: usize) -> usize {
    m.ty.bytes_for(k as u64)
        .expect("a chunk boundary is a whole number of blocks") as usize
}

thread_local! {
    /// A task's dequantized weight chunk and its partial sums (reused across tasks).
    static SCRATCH: RefCell<(Vec<f32>, Vec<f32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

/// `out[c][r] = m[r][c]` for `m` of `[rows][cols]`.
pub fn transpose(m: &[f32], rows: usize, cols: usize, out: &mut [f32]) {
    debug_assert_eq!(m.len(), rows * cols);
    debug_assert_eq!(out.len(), rows * cols);
    transpose_strided(m, cols, rows, cols, out, rows);
}

/// Columns of the source one task of [`transpose_strided`] moves: its output rows are
/// written a value at a time each, few enough streams to stay in cache.
const TRANSPOSE_COLS: usize = 16;

/// `out[c * out_stride + r] = m[r * stride + c]` for `r < rows`, `c < cols`, over the cores
/// in blocks of [`TRANSPOSE_COLS`] columns (each source row read in short runs).
fn transpose_strided(
    m: &[f32],
    stride: usize,
    rows: usize,
    cols: usize,
    out: &mut [f32],
    out_stride: usize,
) {
    assert!(
        rows <= out_stride
            && (cols == 0 || out.len() >= (cols - 1) * out_stride + rows)
            && (rows == 0 || m.len() >= (rows - 1) * stride + cols),
        "transpose: {rows} x {cols} does not fit its buffers"
    );
    out.par_chunks_mut(TRANSPOSE_COLS * out_stride)
        .take(cols.div_ceil(TRANSPOSE_COLS))
        .enumerate()
        .for_each(|(block, out)| {
            let c0 = block * TRANSPOSE_COLS;
            let n = TRANSPOSE_COLS.min(cols - c0);
            for r in 0..rows {
                for (j, &v) in m[r * stride + c0..][..n].iter().enumerate() {
                    out[j * out_stride + r] = v;
                }
            }
        });
}

/// `out[c * rows + r] = m[r * cols + c]` on the calling thread (attention's tasks each
/// transpose their block of keys), in 16 x 16 tiles that stay in L1: with AVX-512 each tile in
/// registers, the edges value by value.
pub fn transpose_block(m: &[f32], cols: usize, rows: usize, out: &mut [f32]) {
    const TILE: usize = 16;
    assert!(m.len() >= rows * cols && out.len() >= rows * cols);
    for r0 in (0..rows).step_by(TILE) {
        let rn = TILE.min(rows - r0);
        for c0 in (0..cols).step_by(TILE) {
            let cn = TILE.min(cols - c0);
            #[cfg(target_arch = "x86_64")]
            if rn == TILE && cn == TILE && simd::has_avx512() {
                // SAFETY: the CPU has AVX-512F; the tile's 16 rows of 16 values lie within
                // `m` and its 16 columns within `out` (asserted above).
                unsafe {
                    simd::transpose16(
                        m.as_ptr().add(r0 * cols + c0),
                        cols,
                        out.as_mut_ptr().add(c0 * rows + r0),
                        rows,
                    )
                };
                continue;
            }
            for r in r0..r0 + rn {
                for (c, &v) in m[r * cols + c0..][..cn].iter().enumerate() {
                    out[(c0 + c) * rows + r] = v;
                }
            }
        }
    }
}

/// `rows` f32 rows of a buffer, `stride` values apart (a row may be a slice of a longer one).
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
/// operand that stays in cache (a block of queries).
pub fn gemm_nt(a: RowsOf, b: RowsOf, k: usize, out: &mut [f32], layout: OutLayout) {
    let whole = Piece {
        from_lanes: false,
        to_lanes: false,
        layout,
    };
    gemm(a, b, k, &mut [], out, whole);
}

/// `out[i][c] += Σ_k a[i][k] · b[k][c]` for every row `i` of `a` and column `c < cols`
/// (`out` rows `out_stride` apart): the product with `b` as stored (rows along `k`), each
/// value of `a` broadcast against vectors of `b`'s columns. Attention uses it for the
/// context, scores times the latent rows of the cache.
pub fn gemm_nn(a: RowsOf, b: RowsOf, k: usize, cols: usize, out: &mut [f32], out_stride: usize) {
    if a.rows == 0 || cols == 0 || k == 0 {
        return;
    }
    assert!(
        k <= a.stride
            && cols <= b.stride
            && b.rows >= k
            && (a.rows - 1) * a.stride + k <= a.data.len()
            && (k - 1) * b.stride + cols <= b.data.len()
            && cols <= out_stride
            && (a.rows - 1) * out_stride + cols <= out.len(),
        "gemm_nn: operands smaller than their shapes"
    );
    let d = NnDims {
        k,
        cols,
        a,
        b,
        out: out.as_mut_ptr(),
        out_stride,
    };
    #[cfg(target_arch = "x86_64")]
    {
        if simd::has_avx512() {
            // SAFETY: the CPU has the features the function is compiled for; the shapes
            // were checked above.
            return unsafe { simd::gemm_nn_avx512(d) };
        }
        if simd::has_avx2_fma() {
            // SAFETY: as above.
            return unsafe { simd::gemm_nn_avx2(d) };
        }
    }
    // SAFETY: the portable lanes need no CPU feature; the shapes were checked above.
    unsafe { gemm_nn_with::<Portable>(d) }
}

#[derive(Clone, Copy)]
struct NnDims<'a> {
    k: usize,
    cols: usize,
    a: RowsOf<'a>,
    b: RowsOf<'a>,
    out: *mut f32,
    out_stride: usize,
}

/// Four rows of `a` by four vectors of columns at a time; the columns past the last whole
/// vector one by one.
#[inline(always)]
unsafe fn gemm_nn_with<L: Lanes>(d: NnDims) {
    let main = d.cols - d.cols % L::N;
    let mut i = 0;
    while i < d.a.rows {
        let r = (d.a.rows - i).min(4);
        let mut c = 0;
        while c < main {
            let v = ((main - c) / L::N).min(4);
            macro_rules! tile {
                ($($r:literal, $v:literal);*) => {
                    match (r, v) {
                        $(($r, $v) => nn_block::<L, $r, $v>(d, i, c),)*
                        _ => unreachable!("tile {r}x{v}"),
                    }
                };
            }
            tile!(4, 4; 4, 3; 4, 2; 4, 1; 3, 4; 3, 3; 3, 2; 3, 1;
                  2, 4; 2, 3; 2, 2; 2, 1; 1, 4; 1, 3; 1, 2; 1, 1);
            c += v * L::N;
        }
        for row in i..i + r {
            for col in main..d.cols {
                let mut s = 0.0;
                for kk in 0..d.k {
                    s += *d.a.data.as_ptr().add(row * d.a.stride + kk)
                        * *d.b.data.as_ptr().add(kk * d.b.stride + col);
                }
                *d.out.add(row * d.out_stride + col) += s;
            }
        }
        i += r;
    }
}

/// `R` rows of `a` from `i` by `V` vectors of columns from `c`.
#[inline(always)]
unsafe fn nn_block<L: Lanes, const R: usize, const V: usize>(d: NnDims, i: usize, c: usize) {
    let (pa, pb) = (d.a.data.as_ptr(), d.b.data.as_ptr());
    let at = |r: usize, v: usize| d.out.add((i + r) * d.out_stride + c + v * L::N);
    let mut acc = [[L::zero(); V]; R];
    for (r, acc_r) in acc.iter_mut().enumerate() {
        for (v, a) in acc_r.iter_mut().enumerate() {
            *a = L::load(at(r, v));
        }
    }
    for kk in 0..d.k {
        let mut bv = [L::zero(); V];
        for (v, b) in bv.iter_mut().enumerate() {
            *b = L::load(pb.add(kk * d.b.stride + c + v * L::N));
        }
        for (r, acc_r) in acc.iter_mut().enumerate() {
            let w = L::splat(*pa.add((i + r) * d.a.stride + kk));
            for (a, &b) in acc_r.iter_mut().zip(&bv) {
                *a = a.mul_add(w, b);
            }
        }
    }
    for (r, acc_r) in acc.iter().enumerate() {
        for (v, a) in acc_r.iter().enumerate() {
            a.store(at(r, v));
        }
    }
}

/// Which part of the dot products a call computes: a dot may be split along `k` into
/// pieces that pass vectors of partial sums (`lanes[(i * b.rows + j) * MAX_LANES..]`, the
/// values past the lanes' multiple in lane 0) from one to the next; the last piece writes
/// the finished sums by `layout`.
#[derive(Clone, Copy)]
struct Piece {
    from_lanes: bool,
    to_lanes: bool,
    layout: OutLayout,
}

/// Checks the shapes and runs the product on the widest instruction set the CPU has.
fn gemm(a: RowsOf, b: RowsOf, k: usize, lanes: &mut [f32], out: &mut [f32], piece: Piece) {
    if a.rows == 0 || b.rows == 0 {
        return;
    }
    let o = piece.layout;
    let uses_lanes = piece.from_lanes || piece.to_lanes;
    assert!(
        k <= a.stride
            && k <= b.stride
            && (a.rows - 1) * a.stride + k <= a.data.len()
            && (b.rows - 1) * b.stride + k <= b.data.len()
            && (!uses_lanes || a.rows * b.rows * MAX_LANES <= lanes.len())
            && (piece.to_lanes || (a.rows - 1) * o.a_step + (b.rows - 1) * o.b_step < out.len()),
        "gemm: operands smaller than their shapes"
    );
    let d = Dims {
        k,
        a,
        b,
        piece,
        lanes: lanes.as_mut_ptr(),
        out: out.as_mut_ptr(),
    };
    #[cfg(target_arch = "x86_64")]
    {
        if simd::has_avx512() {
            // SAFETY: the CPU has the features the function is compiled for; the shapes
            // were checked above.
            return unsafe { simd::gemm_avx512(d) };
        }
        if simd::has_avx2_fma() {
            // SAFETY: as above.
            return unsafe { simd::gemm_avx2(d) };
        }
    }
    // SAFETY: the portable lanes need no CPU feature; the shapes were checked above.
    unsafe { gemm_with::<Portable>(d) }
}

#[derive(Clone, Copy)]
struct Dims<'a> {
    k: usize,
    a: RowsOf<'a>,
    b: RowsOf<'a>,
    piece: Piece,
    lanes: *mut f32,
    out: *mut f32,
}

/// A vector of f32 lanes; one implementation per instruction set, so the kernel below is
/// written once.
trait Lanes: Copy {
    const N: usize;
    unsafe fn zero() -> Self;
    /// Loads `N` values from `p` (no alignment needed).
    unsafe fn load(p: *const f32) -> Self;
    /// Stores the `N` values at `p`.
    unsafe fn store(self, p: *mut f32);
    /// `v` in every lane.
    unsafe fn splat(v: f32) -> Self;
    /// `self + b`
    unsafe fn add(self, b: Self) -> Self;
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
unsafe fn gemm_with<L: Lanes>(d: Dims) {
    let (a_rows, b_rows) = (d.a.rows, d.b.rows);
    let mut i = 0;
    while i < a_rows {
        let mr = (a_rows - i).min(MR);
        let mut j = 0;
        while j < b_rows {
            let nr = (b_rows - j).min(NR);
            // Every shape up to the full tile has its own kernel, so a group of three
            // tokens (common for an expert) still reads each weight row once.
            macro_rules! tile {
                ($($r:literal, $c:literal);*) => {
                    match (mr, nr) {
                        $(($r, $c) => block::<L, $r, $c>(d, i, j),)*
                        _ => unreachable!("tile {mr}x{nr}"),
                    }
                };
            }
            tile!(4, 4; 4, 3; 4, 2; 4, 1; 3, 4; 3, 3; 3, 2; 3, 1;
                  2, 4; 2, 3; 2, 2; 2, 1; 1, 4; 1, 3; 1, 2; 1, 1);
            j += nr;
        }
        i += mr;
    }
}

/// `R` rows of `a` from `i` against `C` rows of `b` from `j`.
#[inline(always)]
unsafe fn block<L: Lanes, const R: usize, const C: usize>(d: Dims, i: usize, j: usize) {
    let k = d.k;
    let (sa, sb) = (d.a.stride, d.b.stride);
    let pa = d.a.data.as_ptr().add(i * sa);
    let pb = d.b.data.as_ptr().add(j * sb);
    let mut acc = [[L::zero(); C]; R];
    let lanes_at = |r: usize, c: usize| ((i + r) * d.b.rows + j + c) * MAX_LANES;
    if d.piece.from_lanes {
        for (r, acc_r) in acc.iter_mut().enumerate() {
            for (c, v) in acc_r.iter_mut().enumerate() {
                *v = L::load(d.lanes.add(lanes_at(r, c)));
            }
        }
    }
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
    for (r, acc_r) in acc.iter().enumerate() {
        for (c, acc_rc) in acc_r.iter().enumerate() {
            let mut tail = 0.0;
            for t in main..k {
                tail += *pa.add(r * sa + t) * *pb.add(c * sb + t);
            }
            if d.piece.to_lanes {
                let at = d.lanes.add(lanes_at(r, c));
                acc_rc.store(at);
                *at += tail;
            } else {
                let o = d.piece.layout;
                let s = acc_rc.sum() + tail;
                let dst = d.out.add((i + r) * o.a_step + (j + c) * o.b_step);
                *dst = if o.accumulate { *dst + s } else { s };
            }
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
    unsafe fn store(self, p: *mut f32) {
        std::ptr::write_unaligned(p as *mut [f32; 8], self.0)
    }
    unsafe fn splat(v: f32) -> Self {
        Portable([v; 8])
    }
    unsafe fn add(self, b: Self) -> Self {
        let mut r = self.0;
        r.iter_mut().zip(b.0).for_each(|(r, b)| *r += b);
        Portable(r)
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
    use super::{gemm_nn_with, gemm_with, wide_with, Dims, Lanes, NnDims, WideTask};
    use std::arch::x86_64::*;

    pub use crate::formats::x86::{has_avx2_fma, has_avx512};

    /// A 16 x 16 tile transposed in registers: rows `src + i * src_stride` to rows
    /// `dst + j * dst_stride`. Pairs of rows interleave by value, then by pairs (each
    /// 128-bit lane then holds four rows of one column), then the lanes are regathered.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn transpose16(
        src: *const f32,
        src_stride: usize,
        dst: *mut f32,
        dst_stride: usize,
    ) {
        let r: [__m512; 16] = std::array::from_fn(|i| _mm512_loadu_ps(src.add(i * src_stride)));
        // t[2k]: (r2k[0], r2k+1[0], r2k[1], r2k+1[1]) per lane; t[2k + 1] the same of [2], [3].
        let t: [__m512; 16] = std::array::from_fn(|i| {
            let (a, b) = (r[i & !1], r[i | 1]);
            if i % 2 == 0 {
                _mm512_unpacklo_ps(a, b)
            } else {
                _mm512_unpackhi_ps(a, b)
            }
        });
        // u[4k + c]: rows 4k..4k + 4 of column c of each lane.
        let u: [__m512; 16] = std::array::from_fn(|i| {
            let (k, c) = (i / 4, i % 4);
            let (a, b) = if c < 2 {
                (t[4 * k], t[4 * k + 2])
            } else {
                (t[4 * k + 1], t[4 * k + 3])
            };
            let (a, b) = (_mm512_castps_pd(a), _mm512_castps_pd(b));
            _mm512_castpd_ps(if c % 2 == 0 {
                _mm512_unpacklo_pd(a, b)
            } else {
                _mm512_unpackhi_pd(a, b)
            })
        });
        // Output row 4L + c: lane L of u[c], u[4 + c], u[8 + c], u[12 + c].
        for c in 0..4 {
            let x = _mm512_shuffle_f32x4::<0x44>(u[c], u[4 + c]);
            let y = _mm512_shuffle_f32x4::<0xEE>(u[c], u[4 + c]);
            let x2 = _mm512_shuffle_f32x4::<0x44>(u[8 + c], u[12 + c]);
            let y2 = _mm512_shuffle_f32x4::<0xEE>(u[8 + c], u[12 + c]);
            let rows = [
                _mm512_shuffle_f32x4::<0x88>(x, x2),
                _mm512_shuffle_f32x4::<0xDD>(x, x2),
                _mm512_shuffle_f32x4::<0x88>(y, y2),
                _mm512_shuffle_f32x4::<0xDD>(y, y2),
            ];
            for (l, v) in rows.into_iter().enumerate() {
                _mm512_storeu_ps(dst.add((4 * l + c) * dst_stride), v);
            }
        }
    }

    #[derive(Clone, Copy)]
    pub(super) struct Avx512(__m512);

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
        unsafe fn store(self, p: *mut f32) {
            _mm512_storeu_ps(p, self.0)
        }
        #[inline(always)]
        unsafe fn splat(v: f32) -> Self {
            Avx512(_mm512_set1_ps(v))
        }
        #[inline(always)]
        unsafe fn add(self, b: Self) -> Self {
            Avx512(_mm512_add_ps(self.0, b.0))
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
    pub(super) struct Avx2(__m256);

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
        unsafe fn store(self, p: *mut f32) {
            _mm256_storeu_ps(p, self.0)
        }
        #[inline(always)]
        unsafe fn splat(v: f32) -> Self {
            Avx2(_mm256_set1_ps(v))
        }
        #[inline(always)]
        unsafe fn add(self, b: Self) -> Self {
            Avx2(_mm256_add_ps(self.0, b.0))
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
    pub unsafe fn gemm_avx512(d: Dims) {
        gemm_with::<Avx512>(d)
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn gemm_avx2(d: Dims) {
        gemm_with::<Avx2>(d)
    }

    #[target_feature(enable = "avx512f")]
    pub unsafe fn gemm_nn_avx512(d: NnDims) {
        gemm_nn_with::<Avx512>(d)
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn gemm_nn_avx2(d: NnDims) {
        gemm_nn_with::<Avx2>(d)
    }

    #[target_feature(enable = "avx512f")]
    pub unsafe fn wide_avx512(t: &WideTask, out_t: &mut [f32], panel: &mut [f32]) {
        wide_with::<Avx512>(t, out_t, panel)
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn wide_avx2(t: &WideTask, out_t: &mut [f32], panel: &mut [f32]) {
        wide_with::<Avx2>(t, out_t, panel)
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

    /// The block transpose (16 x 16 tiles in registers where the CPU has AVX-512, the edges
    /// value by value) moves every value exactly, on shapes with and without partial tiles.
    #[test]
    fn transpose_block_moves_every_value() {
        for (rows, cols) in [(16, 16), (256, 576), (232, 96), (7, 33), (48, 17), (1, 1)] {
            let m = values(rows * cols, 3);
            let mut out = vec![f32::NAN; rows * cols];
            transpose_block(&m, cols, rows, &mut out);
            for r in 0..rows {
                for c in 0..cols {
                    assert_eq!(
                        out[c * rows + r].to_bits(),
                        m[r * cols + c].to_bits(),
                        "{rows} x {cols}: ({r}, {c})"
                    );
                }
            }
        }
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

    /// Both kernels on every instruction set this CPU has (the entry points only run the
    /// widest), against f64 dots.
    #[test]
    fn every_instruction_set_computes_the_same_products() {
        unsafe fn check<L: Lanes>(isa: &str) {
            let (m_rows, n, k) = (13, 37, 300);
            let (a, b) = (values(m_rows * k, 5), values(n * k, 6));
            let mut out = vec![f32::NAN; m_rows * n];
            let d = Dims {
                k,
                a: RowsOf::packed(&a, k),
                b: RowsOf::packed(&b, k),
                piece: Piece {
                    from_lanes: false,
                    to_lanes: false,
                    layout: OutLayout {
                        a_step: n,
                        b_step: 1,
                        accumulate: false,
                    },
                },
                lanes: std::ptr::null_mut(),
                out: out.as_mut_ptr(),
            };
            gemm_with::<L>(d);
            for i in 0..m_rows {
                for j in 0..n {
                    let want = dot64(&a[i * k..][..k], &b[j * k..][..k]);
                    let got = out[i * n + j] as f64;
                    assert!(
                        (got - want).abs() <= 1e-5 * (1.0 + want.abs()),
                        "{isa} gemm"
                    );
                }
            }
            // gemm_nn: b as stored, a stride wider than k, columns past the last vector,
            // added to what `out` holds.
            let (rows, k, cols, stride) = (6, 45, 3 * L::N + 5, 4 * L::N);
            let (a, b) = (values(rows * (k + 3), 9), values(k * stride, 10));
            let mut out = values(rows * stride, 11);
            let before = out.clone();
            let nn = NnDims {
                k,
                cols,
                a: RowsOf::packed(&a, k + 3),
                b: RowsOf::packed(&b, stride),
                out: out.as_mut_ptr(),
                out_stride: stride,
            };
            gemm_nn_with::<L>(nn);
            for i in 0..rows {
                for c in 0..stride {
                    let mut want = before[i * stride + c] as f64;
                    if c < cols {
                        want += (0..k)
                            .map(|kk| a[i * (k + 3) + kk] as f64 * b[kk * stride + c] as f64)
                            .sum::<f64>();
                    }
                    let got = out[i * stride + c] as f64;
                    assert!(
                        (got - want).abs() <= 1e-5 * (1.0 + want.abs()),
                        "{isa} gemm_nn [{i}][{c}]"
                    );
                }
            }
            // The wide kernel: 29 weight rows (Q8_0) against every padded token count.
            let (rows, cols) = (29, 1088);
            let mut bytes = Vec::new();
            formats::of(GgmlType::Q8_0)
                .unwrap()
                .quantize(&values(rows * cols, 7), &mut bytes);
            let m = Matrix {
                name: "q8_0 test",
                ty: GgmlType::Q8_0,
                rows,
                cols,
                data: &bytes,
            };
            for vectors in 1..=4 {
                let padded = vectors * L::N;
                let x_t = values(cols * padded, 8);
                let mut out_t = vec![0f32; rows * padded];
                let mut panel = vec![0f32; 8 * K_CHUNK];
                let task = WideTask {
                    m: &m,
                    first: 0,
                    x_t: &x_t,
                    padded,
                };
                wide_with::<L>(&task, &mut out_t, &mut panel);
                let mut w = vec![0f32; cols];
                for r in 0..rows {
                    m.dequantize_row(r, &mut w);
                    for t in 0..padded {
                        let want: f64 = (0..cols)
                            .map(|kk| w[kk] as f64 * x_t[kk * padded + t] as f64)
                            .sum();
                        let got = out_t[r * padded + t] as f64;
                        assert!(
                            (got - want).abs() <= 1e-5 * (1.0 + want.abs()),
                            "{isa} wide, {vectors} vectors, row {r}, token {t}: {got} vs {want}"
                        );
                    }
                }
            }
        }
        unsafe {
            check::<Portable>("portable");
            #[cfg(target_arch = "x86_64")]
            {
                if simd::has_avx2_fma() {
                    check::<simd::Avx2>("avx2");
                }
                if simd::has_avx512() {
                    check::<simd::Avx512>("avx512");
                }
            }
        }
    }

    #[test]
    fn matmul_equals_one_dot_per_row_for_every_token_count() {
        // Rows that are not a multiple of a task; columns within one chunk, and spanning
        // chunks with a partial last one.
        for (rows, cols) in [(37, 64), (21, 288), (5, 544), (50, 1056)] {
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
            for tokens in [1, 2, 3, 5, 8, 17, 33, 64, 70, 130] {
                let x = values(tokens * cols, 4 + tokens as u32);
                let mut out = vec![f32::NAN; tokens * rows];
                matmul(&m, &x, &mut out, CpuMath::Exact);
                let mut w = vec![0f32; cols];
                for r in 0..rows {
                    m.dequantize_row(r, &mut w);
                    for t in 0..tokens {
                        let want = dot64(&w, &x[t * cols..][..cols]);
                        let got = out[t * rows + r];
                        assert!(
                            (got as f64 - want).abs() <= 1e-5 * (1.0 + want.abs()),
                            "{rows}x{cols}, {tokens} tokens, row {r}, token {t}: {got} vs {want}"
                        );
                    }
                }
            }
        }
    }

    /// The 8-bit mode through every route (one row's integer dot, the f32 products on the
    /// rounded values, the many-row integer product where this CPU has it) equals the
    /// definition of the 8-bit dot for each (row, token) within 1e-5 of `Σ |w·x|`.
    #[test]
    fn q8_matmul_equals_the_8_bit_dot_for_every_token_count() {
        use crate::formats::int8::Q8Rows;
        let shapes = [
            (GgmlType::Q8_0, 37, 64),
            (GgmlType::Q8_0, 50, 1056),
            (GgmlType::Q4_K, 21, 1280),
            (GgmlType::Q6_K, 9, 512),
        ];
        for (ty, rows, cols) in shapes {
            let format = formats::of(ty).unwrap();
            let mut bytes = Vec::new();
            format.quantize(&values(rows * cols, 5), &mut bytes);
            let m = Matrix {
                name: "8-bit test",
                ty,
                rows,
                cols,
                data: &bytes,
            };
            for tokens in [1, 5, 9, 17, 64, 70] {
                let x = values(tokens * cols, 6 + tokens as u32);
                let xq = Q8Rows::quantize(&x, cols);
                let mut out = vec![f32::NAN; tokens * rows];
                matmul(&m, &x, &mut out, CpuMath::Q8);
                let mut w = vec![0f32; cols];
                for r in 0..rows {
                    m.dequantize_row(r, &mut w);
                    for t in 0..tokens {
                        let want = format.dot_q8_scalar(m.row(r), xq.row(t));
                        let scale: f32 = w
                            .iter()
                            .zip(xq.row(t).dequantize())
                            .map(|(a, b)| (a * b).abs())
                            .sum();
                        let got = out[t * rows + r];
                        assert!(
                            (got - want).abs() <= 1e-5 * scale,
                            "{ty} {rows}x{cols}, {tokens} tokens, row {r}, token {t}: {got} vs {want}"
                        );
                    }
                }
            }
        }
    }
}
