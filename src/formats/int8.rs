//! The CPU's 8-bit mode (`--matmul q8`): activation rows rounded to 8 bits per 32 values and
//! multiplied as integers by a weight format's codes, as llama.cpp's CPU backend does. The
//! weights stay exactly as stored; only the activations are rounded, and every product of
//! a group of codes is an exact integer sum, scaled once in f32.
//!
//! A format takes part by saying how its blocks read as codes ([`Block::CODES`],
//! [`Block::codes`]); [`dot_scalar`] is the definition every hand-vectorised dot is tested
//! against. Float formats, and quantized ones without codes yet, multiply in f32 in this
//! mode too.

use super::Block;
#[cfg(doc)]
use super::WeightFormat;

/// Activation rows [`Block::dot_q8_tokens`] takes at most.
pub const DOT_Q8_TOKENS: usize = 4;

/// Activation values sharing one scale.
pub const ACT_BLOCK: usize = 32;

/// Values per sum of codes kept beside each activation row (the smallest weight group).
pub const SUM_GROUP: usize = 16;

/// How a format's block reads as integer codes: value `i` =
/// `scale[i / group] * (codes[i] - offset) - min[i / group]`, each code an unsigned byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Codes {
    /// Values per scale: 16 or 32 (a divisor of [`ACT_BLOCK`] or equal to it).
    pub group: usize,
    /// Subtracted from every code (so signed codes are stored as unsigned bytes).
    pub offset: u8,
    /// Activation rows up to which the mode multiplies this format in one-row integer
    /// dots; more go through the many-row integer product where the format has one
    /// ([`WideCodes`], from 9 rows on), else the f32 products on the rounded activations.
    /// 1 where the format's f32
    /// multi-row dot was as fast as its integer one for an expert's few rows
    /// (BENCHMARKS.md), 8 (an expert's share of a 64-token prompt and more) where its
    /// integer dot was faster.
    pub integer_rows: usize,
}

/// Activation rows in 8 bits: per [`ACT_BLOCK`] values a scale `d = amax / 127` and the
/// codes `round(x / d)` (ggml's `quantize_row_q8_0` with the scale kept in f32, ties to
/// even), and the sum of the codes per [`SUM_GROUP`] values.
pub struct Q8Rows {
    cols: usize,
    qs: Vec<i8>,
    /// The codes plus 128, as unsigned bytes (what the vectorised dots multiply).
    biased: Vec<u8>,
    d: Vec<f32>,
    sums: Vec<i32>,
    /// Per block, `d · Σ codes` (what a weight group's `min` multiplies).
    dsums: Vec<f32>,
    /// Per 4 values, their block's `d`: the scale of each lane of a 64-value integer dot.
    dlanes: Vec<f32>,
}

/// One row of [`Q8Rows`].
#[derive(Clone, Copy)]
pub struct Q8Row<'a> {
    pub qs: &'a [i8],
    pub biased: &'a [u8],
    pub d: &'a [f32],
    pub sums: &'a [i32],
    pub dsums: &'a [f32],
    pub dlanes: &'a [f32],
}

impl Q8Rows {
    /// `x` is `[rows][cols]`, `cols` a multiple of [`ACT_BLOCK`].
    pub fn quantize(x: &[f32], cols: usize) -> Q8Rows {
        assert!(
            cols.is_multiple_of(ACT_BLOCK) && x.len().is_multiple_of(cols),
            "8-bit activations: rows of {cols} values in {} values",
            x.len()
        );
        let blocks = x.len() / ACT_BLOCK;
        let mut rows = Q8Rows {
            cols,
            qs: vec![0; x.len()],
            biased: Vec::new(),
            d: vec![0.0; blocks],
            sums: vec![0; x.len() / SUM_GROUP],
            dsums: vec![0.0; blocks],
            dlanes: Vec::new(),
        };
        for (b, (xs, qs)) in x
            .chunks_exact(ACT_BLOCK)
            .zip(rows.qs.chunks_exact_mut(ACT_BLOCK))
            .enumerate()
        {
            let (d, q) = quantize_block(xs);
            qs.copy_from_slice(&q);
            rows.d[b] = d;
            rows.dsums[b] = d * qs.iter().map(|&q| q as i32).sum::<i32>() as f32;
            for (s, q16) in qs.chunks_exact(SUM_GROUP).enumerate() {
                rows.sums[b * (ACT_BLOCK / SUM_GROUP) + s] = q16.iter().map(|&q| q as i32).sum();
            }
        }
        rows.biased = rows.qs.iter().map(|&q| (q as u8) ^ 0x80).collect();
        rows.dlanes = rows.d.iter().flat_map(|&d| [d; ACT_BLOCK / 4]).collect();
        rows
    }

    pub fn len(&self) -> usize {
        self.qs.len() / self.cols
    }

    pub fn is_empty(&self) -> bool {
        self.qs.is_empty()
    }

    pub fn row(&self, t: usize) -> Q8Row<'_> {
        let (n, b, s) = (self.cols, self.cols / ACT_BLOCK, self.cols / SUM_GROUP);
        Q8Row {
            qs: &self.qs[t * n..][..n],
            biased: &self.biased[t * n..][..n],
            d: &self.d[t * b..][..b],
            sums: &self.sums[t * s..][..s],
            dsums: &self.dsums[t * b..][..b],
            dlanes: &self.dlanes[t * n / 4..][..n / 4],
        }
    }
}

impl<'a> Q8Row<'a> {
    /// The row's values from `at` on (`at` on a block boundary).
    pub fn from(&self, at: usize) -> Q8Row<'a> {
        debug_assert!(at.is_multiple_of(ACT_BLOCK));
        Q8Row {
            qs: &self.qs[at..],
            biased: &self.biased[at..],
            d: &self.d[at / ACT_BLOCK..],
            sums: &self.sums[at / SUM_GROUP..],
            dsums: &self.dsums[at / ACT_BLOCK..],
            dlanes: &self.dlanes[at / 4..],
        }
    }

    /// Whether the row holds `n` values in every array (what the vectorised dots read).
    pub fn holds(&self, n: usize) -> bool {
        self.qs.len() == n
            && self.biased.len() == n
            && self.d.len() * ACT_BLOCK == n
            && self.sums.len() * SUM_GROUP == n
            && self.dsums.len() * ACT_BLOCK == n
            && self.dlanes.len() * 4 == n
    }

    /// The values the codes stand for (`d · q`), for tests and the f32 fallback.
    pub fn dequantize(&self) -> Vec<f32> {
        self.qs
            .iter()
            .enumerate()
            .map(|(i, &q)| self.d[i / ACT_BLOCK] * q as f32)
            .collect()
    }

    /// Σ of the codes `from..from + n` (`n` a multiple of [`SUM_GROUP`], on its boundary).
    #[inline]
    pub fn code_sum(&self, from: usize, n: usize) -> i32 {
        self.sums[from / SUM_GROUP..(from + n) / SUM_GROUP]
            .iter()
            .sum()
    }
}

/// A block's scale, `amax / 127`; NaN where a value is not finite, so that the block's
/// values and every dot with them are NaN, as they would be in f32.
fn block_scale(xs: &[f32]) -> f32 {
    if xs.iter().all(|v| v.is_finite()) {
        xs.iter().fold(0f32, |m, v| m.max(v.abs())) / 127.0
    } else {
        f32::NAN
    }
}

/// `y` (at most 127 in magnitude) rounded to the nearest integer, ties to even, as ggml's
/// vectorised `quantize_row_q8_0` rounds (`_mm256_round_ps`): adding and subtracting
/// 1.5 · 2^23 leaves no fraction bits, and compiles to plain vector adds on any x86-64.
#[inline]
fn round_even(y: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0;
    (y + MAGIC) - MAGIC
}

/// Rounds `row` (a multiple of [`ACT_BLOCK`] values) to the values its 8-bit codes stand
/// for, in place: the same values as [`Q8Rows::quantize`] then [`Q8Row::dequantize`].
pub fn round_to_8_bits(row: &mut [f32]) {
    for xs in row.chunks_exact_mut(ACT_BLOCK) {
        let (d, q) = quantize_block(xs);
        for (v, q) in xs.iter_mut().zip(q) {
            *v = d * q as f32;
        }
    }
}

/// One block of [`ACT_BLOCK`] activations in 8 bits: its scale and codes (what every
/// layout of them holds).
fn quantize_block(xs: &[f32]) -> (f32, [i8; ACT_BLOCK]) {
    let d = block_scale(xs);
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    (d, std::array::from_fn(|i| round_even(xs[i] * id) as i8))
}

/// The definition of the 8-bit dot: per group of a block, the exact integer
/// `Σ (code - offset) · q` scaled by the weight's scale and the activation's `d`, and the
/// group's `min` times the activations' sum. Summed in f32, group by group.
pub fn dot_scalar<B: Block>(blocks: &[B], x: Q8Row) -> f32 {
    let form = B::CODES.expect("dot_q8 of a format without codes");
    let groups = B::VALUES / form.group;
    let (mut codes, mut scale, mut min) = ([0u8; 256], [0f32; 16], [0f32; 16]);
    let mut acc = 0f32;
    for (b, block) in blocks.iter().enumerate() {
        block.codes(
            &mut codes[..B::VALUES],
            &mut scale[..groups],
            &mut min[..groups],
        );
        for g in 0..groups {
            let at = b * B::VALUES + g * form.group;
            let q = &x.qs[at..at + form.group];
            let c = &codes[g * form.group..][..form.group];
            let isum: i32 = c
                .iter()
                .zip(q)
                .map(|(&c, &q)| (c as i32 - form.offset as i32) * q as i32)
                .sum();
            let qsum = x.code_sum(at, form.group);
            acc += x.d[at / ACT_BLOCK] * (scale[g] * isum as f32 - min[g] * qsum as f32);
        }
    }
    acc
}

/// Tokens per vector of [`Q8Lanes`]: the 16 lanes of an AVX-512 register.
pub const LANES: usize = 16;

/// Activation rows in 8 bits (the codes and scales of [`Q8Rows`]) laid out for a product of
/// many weight rows at once, the tokens as vector lanes: for every four values of a row, one
/// u32 per token holding their codes (signed bytes, the first value in the low byte); for
/// every block, one scale per token; for every [`SUM_GROUP`] values, the sum of the codes per
/// token. The tokens are padded to whole vectors of [`LANES`] with codes and scales of 0.
pub struct Q8Lanes {
    cols: usize,
    tokens: usize,
    padded: usize,
    /// `[cols / 4][padded]`.
    codes: Vec<u32>,
    /// `[cols / ACT_BLOCK][padded]`.
    d: Vec<f32>,
    /// `[cols / SUM_GROUP][padded]`.
    sums: Vec<i32>,
}

impl Q8Lanes {
    /// `x` is `[tokens][cols]`, `cols` a multiple of [`ACT_BLOCK`].
    pub fn quantize(x: &[f32], cols: usize) -> Q8Lanes {
        use rayon::prelude::*;
        assert!(
            cols.is_multiple_of(ACT_BLOCK) && x.len().is_multiple_of(cols),
            "8-bit activations: rows of {cols} values in {} values",
            x.len()
        );
        let tokens = x.len() / cols;
        let padded = tokens.div_ceil(LANES) * LANES;
        let mut lanes = Q8Lanes {
            cols,
            tokens,
            padded,
            codes: vec![0; cols / 4 * padded],
            d: vec![0.0; cols / ACT_BLOCK * padded],
            sums: vec![0; cols / SUM_GROUP * padded],
        };
        let per_block = ACT_BLOCK / SUM_GROUP;
        // One task per block of values: its rows of the three arrays are its own.
        lanes
            .codes
            .par_chunks_mut(ACT_BLOCK / 4 * padded)
            .zip(lanes.d.par_chunks_mut(padded))
            .zip(lanes.sums.par_chunks_mut(per_block * padded))
            .enumerate()
            .for_each(|(b, ((codes, d), sums))| {
                for t in 0..tokens {
                    let (scale, q) = quantize_block(&x[t * cols + b * ACT_BLOCK..][..ACT_BLOCK]);
                    d[t] = scale;
                    for (i, four) in q.chunks_exact(4).enumerate() {
                        codes[i * padded + t] = u32::from_le_bytes([
                            four[0] as u8,
                            four[1] as u8,
                            four[2] as u8,
                            four[3] as u8,
                        ]);
                    }
                    for (s, group) in q.chunks_exact(SUM_GROUP).enumerate() {
                        sums[s * padded + t] = group.iter().map(|&c| c as i32).sum();
                    }
                }
            });
        lanes
    }

    pub fn tokens(&self) -> usize {
        self.tokens
    }

    /// Tokens and padding: the stride of a product's `[rows][padded]` output.
    pub fn padded(&self) -> usize {
        self.padded
    }

    /// Value `i` of token `t` as its code stands for it (`d · q`; 0 for padding).
    pub fn value(&self, t: usize, i: usize) -> f32 {
        let word = self.codes[i / 4 * self.padded + t];
        let code = (word >> (8 * (i % 4))) as u8 as i8;
        self.d[i / ACT_BLOCK * self.padded + t] * code as f32
    }

    /// The sum of token `t`'s codes over the [`SUM_GROUP`] values from `i`.
    pub fn code_sum(&self, t: usize, i: usize) -> i32 {
        self.sums[i / SUM_GROUP * self.padded + t]
    }
}

/// How the many-row 8-bit product ([`wide_rows`]) reads a format: each block unpacked with
/// vector instructions into what [`Block::codes`] defines (unsigned codes in value order,
/// and per group its scale and min), the format's [`Codes`] saying the group and offset.
pub trait WideCodes: Block {
    /// Whether the format has mins (else that term is left out).
    const MINS: bool;

    /// The block's codes into `codes[..VALUES]`, its groups' scales and mins into `scale`
    /// and `min`: the same values as [`Block::codes`], which this default calls.
    ///
    /// # Safety
    /// A format's vectorised version needs AVX2 and F16C (the product runs only on CPUs
    /// with AVX-512 VNNI, which have both).
    #[inline]
    unsafe fn unpack(&self, codes: &mut [u8; 256], scale: &mut [f32; 16], min: &mut [f32; 16]) {
        self.codes(&mut codes[..Self::VALUES], scale, min)
    }
}

impl WideCodes for super::BlockQ8_0 {
    const MINS: bool = false;

    /// The signed bytes plus 128.
    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx2,f16c")]
    unsafe fn unpack(&self, codes: &mut [u8; 256], scale: &mut [f32; 16], min: &mut [f32; 16]) {
        use std::arch::x86_64::*;
        let q = _mm256_loadu_si256(self.qs.as_ptr() as *const __m256i);
        let biased = _mm256_xor_si256(q, _mm256_set1_epi8(-128));
        _mm256_storeu_si256(codes.as_mut_ptr() as *mut __m256i, biased);
        (scale[0], min[0]) = (avx512::f16(self.d.0), 0.0);
    }
}

/// Q4_K and Q5_K: their codes by pairs of sub-blocks, `d · scale` and `dmin · min` each.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx2,f16c")]
unsafe fn unpack_with_mins(
    block: &impl super::kquants::codes::WithMins,
    codes: &mut [u8; 256],
    scale: &mut [f32; 16],
    min: &mut [f32; 16],
) {
    use std::arch::x86_64::*;
    for pair in 0..4 {
        let [low, high] = block.pair_codes(pair);
        let at = codes.as_mut_ptr().add(64 * pair) as *mut __m256i;
        _mm256_storeu_si256(at, low);
        _mm256_storeu_si256(at.add(1), high);
    }
    let (d, dmin, bytes) = block.header();
    let (d, dmin) = (avx512::f16(d.0), avx512::f16(dmin.0));
    let (sc, m) = super::kquants::scales_and_mins(bytes);
    for j in 0..8 {
        (scale[j], min[j]) = (d * sc[j] as f32, dmin * m[j] as f32);
    }
}

impl WideCodes for super::BlockQ4K {
    const MINS: bool = true;

    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx2,f16c")]
    unsafe fn unpack(&self, codes: &mut [u8; 256], scale: &mut [f32; 16], min: &mut [f32; 16]) {
        unpack_with_mins(self, codes, scale, min)
    }
}

impl WideCodes for super::BlockQ5K {
    const MINS: bool = true;

    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx2,f16c")]
    unsafe fn unpack(&self, codes: &mut [u8; 256], scale: &mut [f32; 16], min: &mut [f32; 16]) {
        unpack_with_mins(self, codes, scale, min)
    }
}

impl WideCodes for super::BlockQ6K {
    const MINS: bool = false;

    /// Six-bit codes by quarters of 32 values, a scale per 16.
    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx2,f16c")]
    unsafe fn unpack(&self, codes: &mut [u8; 256], scale: &mut [f32; 16], min: &mut [f32; 16]) {
        use std::arch::x86_64::*;
        for half in 0..2 {
            let quarters = super::kquants::codes::q6_k(self, half);
            for (i, q) in quarters.into_iter().enumerate() {
                let at = codes.as_mut_ptr().add(128 * half + 32 * i) as *mut __m256i;
                _mm256_storeu_si256(at, q);
            }
        }
        let d = avx512::f16(self.d.0);
        for (g, &sc) in self.scales.iter().enumerate() {
            (scale[g], min[g]) = (d * sc as f32, 0.0);
        }
    }
}

/// The blocks of 32 values without mins (Q4_0, Q5_0, IQ4_NL, MXFP4): their 32 codes
/// stored, the block's scale.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn store_block_32(
    block: std::arch::x86_64::__m256i,
    d: f32,
    codes: &mut [u8; 256],
    scale: &mut [f32; 16],
    min: &mut [f32; 16],
) {
    use std::arch::x86_64::*;
    _mm256_storeu_si256(codes.as_mut_ptr() as *mut __m256i, block);
    (scale[0], min[0]) = (d, 0.0);
}

impl WideCodes for super::BlockQ4_0 {
    const MINS: bool = false;

    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn unpack(&self, codes: &mut [u8; 256], scale: &mut [f32; 16], min: &mut [f32; 16]) {
        store_block_32(
            super::kquants::codes::nibbles(&self.qs),
            self.d.get(),
            codes,
            scale,
            min,
        )
    }
}

impl WideCodes for super::BlockQ5_0 {
    const MINS: bool = false;

    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn unpack(&self, codes: &mut [u8; 256], scale: &mut [f32; 16], min: &mut [f32; 16]) {
        let fifth = u32::from_le_bytes(self.qh);
        let block = super::kquants::codes::with_fifth(&self.qs, fifth);
        store_block_32(block, self.d.get(), codes, scale, min)
    }
}

impl WideCodes for super::BlockIQ4NL {
    const MINS: bool = false;

    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn unpack(&self, codes: &mut [u8; 256], scale: &mut [f32; 16], min: &mut [f32; 16]) {
        use super::kquants::codes::{levels, TableBlock};
        store_block_32(
            levels(&Self::BIASED, &self.qs),
            self.d.get(),
            codes,
            scale,
            min,
        )
    }
}

impl WideCodes for super::BlockMXFP4 {
    const MINS: bool = false;

    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn unpack(&self, codes: &mut [u8; 256], scale: &mut [f32; 16], min: &mut [f32; 16]) {
        use super::kquants::codes::{levels, TableBlock};
        store_block_32(
            levels(&Self::BIASED, &self.qs),
            self.scale(),
            codes,
            scale,
            min,
        )
    }
}

impl WideCodes for super::BlockIQ4XS {
    const MINS: bool = false;

    /// Eight runs of 32 levels, a scale each.
    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn unpack(&self, codes: &mut [u8; 256], scale: &mut [f32; 16], min: &mut [f32; 16]) {
        use std::arch::x86_64::*;
        let d = self.d.get();
        for ib in 0..8 {
            let run = super::kquants::codes::iq4_xs(self, ib);
            _mm256_storeu_si256(codes.as_mut_ptr().add(32 * ib) as *mut __m256i, run);
            (scale[ib], min[ib]) = (d * self.run_scale(ib) as f32, 0.0);
        }
    }
}

/// Q2_K's and Q3_K's codes: two halves of four runs of 32 values, run `(half, run)` of
/// them as `codes_of` gives it.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn store_runs(
    codes: &mut [u8; 256],
    codes_of: impl Fn(usize, usize) -> std::arch::x86_64::__m256i,
) {
    use std::arch::x86_64::*;
    for half in 0..2 {
        for run in 0..4 {
            let at = codes.as_mut_ptr().add(128 * half + 32 * run) as *mut __m256i;
            _mm256_storeu_si256(at, codes_of(half, run));
        }
    }
}

impl WideCodes for super::BlockQ2K {
    const MINS: bool = true;

    /// Two-bit codes by runs of 32 values, a scale and min per 16.
    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn unpack(&self, codes: &mut [u8; 256], scale: &mut [f32; 16], min: &mut [f32; 16]) {
        store_runs(codes, |half, run| {
            super::kquants::codes::two_bits(&self.qs, half, run)
        });
        (*scale, *min) = self.sub_scales();
    }
}

impl WideCodes for super::BlockQ3K {
    const MINS: bool = false;

    /// Three-bit codes by runs of 32 values, a scale per 16.
    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn unpack(&self, codes: &mut [u8; 256], scale: &mut [f32; 16], min: &mut [f32; 16]) {
        store_runs(codes, |half, run| {
            super::kquants::codes::q3_k(self, half, run)
        });
        let d = self.d.get();
        let scales = super::kquants::q3_scales(&self.scales);
        for g in 0..16 {
            (scale[g], min[g]) = (d * scales[g] as f32, 0.0);
        }
    }
}

/// The 8-bit product of whole weight rows (`blocks`, rows of as many values as `x`'s) with the
/// activations as lanes: `out[r * x.padded() + t]` = row `r` · token `t`, each group's
/// integer sum exactly [`dot_scalar`]'s, scaled and summed in f32. Only where
/// [`wide_available`].
pub fn wide_rows<B: WideCodes>(blocks: &[B], x: &Q8Lanes, out: &mut [f32]) {
    let per_row = x.cols / B::VALUES;
    assert!(
        per_row > 0
            && x.cols.is_multiple_of(B::VALUES)
            && blocks.len().is_multiple_of(per_row)
            && out.len() == blocks.len() / per_row * x.padded,
        "8-bit wide product: {} blocks of {}, rows of {} values, {} outputs for {} lanes",
        blocks.len(),
        B::TYPE,
        x.cols,
        out.len(),
        x.padded
    );
    #[cfg(target_arch = "x86_64")]
    if avx512::available() {
        // SAFETY: the CPU has the features; the shapes were checked above.
        return unsafe { avx512::wide::<B>(blocks, per_row, x, out) };
    }
    unreachable!("the many-row 8-bit product without AVX-512 VNNI")
}

/// Whether this CPU runs the many-row 8-bit product ([`wide_rows`]).
pub fn wide_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    if avx512::available() {
        return true;
    }
    false
}

/// A vectorised 8-bit dot: one weight row against 1 to [`DOT_Q8_TOKENS`] activation rows,
/// one sum per row of `out`; unsafe to call on a CPU without its features or with rows that
/// do not hold the weight row's values ([`check_rows`]).
pub type Kernel<B> = unsafe fn(&[B], &[Q8Row], &mut [f32]);

/// The formats with hand-vectorised 8-bit dots: their kernels per instruction set, in one
/// place for every format (a new kernel is a line below).
pub trait IntKernels: Block {
    /// AVX-512 VNNI, then AVX2.
    #[cfg(target_arch = "x86_64")]
    const KERNELS: [Kernel<Self>; 2];
}

impl IntKernels for super::BlockQ8_0 {
    #[cfg(target_arch = "x86_64")]
    const KERNELS: [Kernel<Self>; 2] = [avx512::dot_q8_0, avx2::dot_q8_0];
}

impl IntKernels for super::BlockQ4_0 {
    #[cfg(target_arch = "x86_64")]
    const KERNELS: [Kernel<Self>; 2] = [avx512::dot_q4_0, avx2::dot_q4_0];
}

impl IntKernels for super::BlockQ5_0 {
    #[cfg(target_arch = "x86_64")]
    const KERNELS: [Kernel<Self>; 2] = [avx512::dot_q5_0, avx2::dot_q5_0];
}

impl IntKernels for super::BlockQ4K {
    #[cfg(target_arch = "x86_64")]
    const KERNELS: [Kernel<Self>; 2] = [avx512::dot_q4_k, avx2::dot_q4_k];
}

impl IntKernels for super::BlockQ5K {
    #[cfg(target_arch = "x86_64")]
    const KERNELS: [Kernel<Self>; 2] = [avx512::dot_q5_k, avx2::dot_q5_k];
}

impl IntKernels for super::BlockQ2K {
    #[cfg(target_arch = "x86_64")]
    const KERNELS: [Kernel<Self>; 2] = [avx512::dot_q2_k, avx2::dot_q2_k];
}

impl IntKernels for super::BlockQ3K {
    #[cfg(target_arch = "x86_64")]
    const KERNELS: [Kernel<Self>; 2] = [avx512::dot_q3_k, avx2::dot_q3_k];
}

impl IntKernels for super::BlockIQ4NL {
    #[cfg(target_arch = "x86_64")]
    const KERNELS: [Kernel<Self>; 2] = [avx512::dot_iq4_nl, avx2::dot_iq4_nl];
}

impl IntKernels for super::BlockMXFP4 {
    #[cfg(target_arch = "x86_64")]
    const KERNELS: [Kernel<Self>; 2] = [avx512::dot_mxfp4, avx2::dot_mxfp4];
}

impl IntKernels for super::BlockIQ4XS {
    #[cfg(target_arch = "x86_64")]
    const KERNELS: [Kernel<Self>; 2] = [avx512::dot_iq4_xs, avx2::dot_iq4_xs];
}

impl IntKernels for super::BlockQ6K {
    #[cfg(target_arch = "x86_64")]
    const KERNELS: [Kernel<Self>; 2] = [avx512::dot_q6_k, avx2::dot_q6_k];
}

/// The kernel of `B` for the widest instruction set this CPU has, if any.
pub fn kernel<B: IntKernels>() -> Option<Kernel<B>> {
    #[cfg(target_arch = "x86_64")]
    {
        if avx512::available() {
            return Some(B::KERNELS[0]);
        }
        if avx2::available() {
            return Some(B::KERNELS[1]);
        }
    }
    None
}

/// [`Block::dot_q8_tokens`] of a format with vectorised kernels: the widest this CPU runs,
/// else the definition row by row.
pub fn dot_rows<B: IntKernels>(blocks: &[B], xs: &[Q8Row], out: &mut [f32]) {
    match kernel::<B>() {
        Some(kernel) => {
            check_rows(blocks.len() * B::VALUES, xs, out);
            // SAFETY: `kernel` returned it for this CPU; every row holds the blocks' values.
            unsafe { kernel(blocks, xs, out) }
        }
        None => {
            for (x, o) in xs.iter().zip(out.iter_mut()) {
                *o = dot_scalar(blocks, *x);
            }
        }
    }
}

/// The code offset of a slice's legacy format (named where the type is only `impl
/// Affine32`).
#[cfg(target_arch = "x86_64")]
fn nibble_offset<B: super::kquants::codes::Affine32>(_: &[B]) -> i8 {
    B::OFFSET as i8
}

/// The biased level table of a slice's format (named where the type is only `impl
/// TableBlock`).
#[cfg(target_arch = "x86_64")]
fn biased_levels<B: super::kquants::codes::TableBlock>(_: &[B]) -> [u8; 16] {
    B::BIASED
}

/// A kernel of `T` activation rows called with `out.len()` (1 to [`DOT_Q8_TOKENS`]) rows.
#[cfg(target_arch = "x86_64")]
macro_rules! by_row_count {
    ($kernel:ident, $blocks:expr, $xs:expr, $out:expr) => {
        match $out.len() {
            1 => $kernel::<1>($blocks, $xs, $out),
            2 => $kernel::<2>($blocks, $xs, $out),
            3 => $kernel::<3>($blocks, $xs, $out),
            _ => $kernel::<4>($blocks, $xs, $out),
        }
    };
}

/// Panics unless `xs` and `out` are 1 to [`DOT_Q8_TOKENS`] rows each, and every row holds
/// `n` values in every array: what the vectorised dots rely on.
pub fn check_rows(n: usize, xs: &[Q8Row], out: &[f32]) {
    assert!(
        (1..=DOT_Q8_TOKENS).contains(&out.len())
            && xs.len() == out.len()
            && xs.iter().all(|x| x.holds(n)),
        "8-bit dot: {} activation rows for {} outputs of {n} values",
        xs.len(),
        out.len()
    );
}

/// Which hand-vectorised 8-bit dots this CPU runs, if any (else the portable definition,
/// slower than the exact mode's dots).
pub fn vectorised() -> Option<&'static str> {
    #[cfg(target_arch = "x86_64")]
    {
        if avx512::available() {
            return Some("AVX-512 VNNI");
        }
        if avx2::available() {
            return Some("AVX2");
        }
    }
    None
}

/// AVX-512 with VNNI (`vpdpbusd`: 64 byte products summed into 16 lanes per instruction):
/// the 8-bit dots of the formats the downloaded files are mostly made of.
#[cfg(target_arch = "x86_64")]
pub(crate) mod avx512 {
    use super::{biased_levels, nibble_offset, Q8Row};
    use crate::formats::kquants::codes::{Affine32, TableBlock, WithMins};
    use crate::formats::kquants::{codes, q3_scales, scales_and_mins};
    use crate::formats::Block;
    use crate::formats::{BlockIQ4NL, BlockIQ4XS, BlockMXFP4, BlockQ8_0};
    use crate::formats::{BlockQ2K, BlockQ3K, BlockQ4K, BlockQ4_0, BlockQ5K, BlockQ5_0, BlockQ6K};
    use std::arch::x86_64::*;

    /// AVX-512 F/BW/VL, VNNI and F16C.
    pub fn available() -> bool {
        use std::sync::OnceLock;
        static HAS: OnceLock<bool> = OnceLock::new();
        *HAS.get_or_init(|| {
            is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512vl")
                && is_x86_feature_detected!("avx512vnni")
                && is_x86_feature_detected!("f16c")
        })
    }

    #[inline]
    #[target_feature(enable = "f16c")]
    pub(super) unsafe fn f16(bits: [u8; 2]) -> f32 {
        _mm_cvtss_f32(_mm_cvtph_ps(_mm_set1_epi16(i16::from_le_bytes(bits))))
    }

    /// 32 bytes then 32 more as one vector.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn join(lo: __m256i, hi: __m256i) -> __m512i {
        _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1)
    }

    /// Lanes 0-7 `a`, lanes 8-15 `b`: the factors of two groups of 32 values.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn halves(a: f32, b: f32) -> __m512 {
        _mm512_mask_blend_ps(0xFF00, _mm512_set1_ps(a), _mm512_set1_ps(b))
    }

    /// Lane `l` holds `f[l / 4]`: the factors of four groups of 16 values.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn quarters(f: &[f32]) -> __m512 {
        let idx = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
        _mm512_permutexvar_ps(idx, _mm512_castps128_ps512(_mm_loadu_ps(f.as_ptr())))
    }

    /// The activation rows `xs` (`T` of them) against one weight row, in steps of 64
    /// values: each step's signed codes `w` and their scale per lane `f` prepared once for
    /// every row. The activations enter with 128 added (unsigned, as `vpdpbusd` takes
    /// them); the sums start from `-128 · Σ w` per lane, so each lane ends with exactly
    /// `Σ w · q`. Sums into `acc`.
    #[inline]
    #[target_feature(enable = "avx2,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn step<const T: usize>(
        w: __m512i,
        f: __m512,
        at: usize,
        xs: &[Q8Row; T],
        acc: &mut [__m512; T],
    ) {
        let zero = _mm512_setzero_si512();
        let start = _mm512_sub_epi32(zero, _mm512_dpbusd_epi32(zero, _mm512_set1_epi8(-128), w));
        for t in 0..T {
            let x = &xs[t];
            debug_assert!(at + 64 <= x.biased.len());
            let q = _mm512_loadu_si512(x.biased.as_ptr().add(at) as *const _);
            let sums = _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(start, q, w));
            // The activations' two block scales, lanes 0-7 and 8-15.
            let dx = _mm512_loadu_ps(x.dlanes.as_ptr().add(at / 4));
            acc[t] = _mm512_fmadd_ps(sums, _mm512_mul_ps(f, dx), acc[t]);
        }
    }

    /// As [`step`] for codes that are unsigned bytes already (`w` below 128): the
    /// activations enter as they are, signed.
    #[inline]
    #[target_feature(enable = "avx2,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn step_unsigned<const T: usize>(
        w: __m512i,
        f: __m512,
        at: usize,
        xs: &[Q8Row; T],
        acc: &mut [__m512; T],
    ) {
        let zero = _mm512_setzero_si512();
        for t in 0..T {
            let x = &xs[t];
            debug_assert!(at + 64 <= x.qs.len());
            let q = _mm512_loadu_si512(x.qs.as_ptr().add(at) as *const _);
            let sums = _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(zero, w, q));
            let dx = _mm512_loadu_ps(x.dlanes.as_ptr().add(at / 4));
            acc[t] = _mm512_fmadd_ps(sums, _mm512_mul_ps(f, dx), acc[t]);
        }
    }

    /// The two sets of sums of the even and odd steps added.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn pair_sum<const T: usize>(acc: [[__m512; T]; 2]) -> [__m512; T] {
        std::array::from_fn(|t| _mm512_add_ps(acc[0][t], acc[1][t]))
    }

    /// Sums of each row's lanes.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn finish<const T: usize>(acc: &[__m512; T], out: &mut [f32]) {
        for (o, a) in out.iter_mut().zip(acc) {
            *o = _mm512_reduce_add_ps(*a);
        }
    }

    /// Adds the last block of a row of an odd number of 32-value blocks (the steps above
    /// take two at a time) by the definition.
    fn odd_tail<B: Block>(blocks: &[B], xs: &[Q8Row], out: &mut [f32]) {
        if blocks.len() % 2 == 1 {
            let last = blocks.len() - 1;
            for (x, o) in xs.iter().zip(out.iter_mut()) {
                *o += super::dot_scalar(&blocks[last..], x.from(last * B::VALUES));
            }
        }
    }

    /// Q8_0, two blocks per step.
    #[target_feature(enable = "avx2,avx512f,avx512bw,avx512vl,avx512vnni,f16c")]
    pub unsafe fn dot_q8_0(blocks: &[BlockQ8_0], xs: &[Q8Row], out: &mut [f32]) {
        by_row_count!(q8_0_rows, blocks, xs, out)
    }

    #[inline]
    #[target_feature(enable = "avx2,avx512f,avx512bw,avx512vl,avx512vnni,f16c")]
    unsafe fn q8_0_rows<const T: usize>(blocks: &[BlockQ8_0], xs: &[Q8Row], out: &mut [f32]) {
        let xs: &[Q8Row; T] = xs.try_into().expect("one activation row per output");
        // Even and odd steps into separate sums: a step is short, and one chain of
        // multiply-adds would wait on itself.
        let mut acc = [[_mm512_setzero_ps(); T]; 2];
        let pairs = blocks.len() / 2;
        for p in 0..pairs {
            let (a, b) = (&blocks[2 * p], &blocks[2 * p + 1]);
            let w = join(
                _mm256_loadu_si256(a.qs.as_ptr() as *const __m256i),
                _mm256_loadu_si256(b.qs.as_ptr() as *const __m256i),
            );
            step::<T>(
                w,
                halves(f16(a.d.0), f16(b.d.0)),
                64 * p,
                xs,
                &mut acc[p % 2],
            );
        }
        finish(&pair_sum(acc), out);
        odd_tail(blocks, xs, out);
    }

    /// Weight rows of a [`wide`] group, and vectors of tokens per step: a 64-token slab in
    /// one pass (4 rows x 2 vectors measured the same).
    const WIDE_ROWS: usize = 2;
    const WIDE_VECTORS: usize = 4;

    /// [`super::wide_rows`]: the rows in groups of [`WIDE_ROWS`], the tokens in slabs of up
    /// to [`WIDE_VECTORS`] vectors.
    #[target_feature(enable = "avx2,avx512f,avx512bw,avx512vl,avx512vnni,f16c")]
    pub unsafe fn wide<B: super::WideCodes>(
        blocks: &[B],
        per_row: usize,
        x: &super::Q8Lanes,
        out: &mut [f32],
    ) {
        let rows = blocks.len() / per_row;
        let vectors = x.padded / super::LANES;
        // Rows past the end (the last group's) compute into a scratch row.
        let mut spare = [0f32; super::LANES * WIDE_VECTORS];
        for g in (0..rows).step_by(WIDE_ROWS) {
            let w: [&[B]; WIDE_ROWS] =
                std::array::from_fn(|r| &blocks[(g + r).min(rows - 1) * per_row..][..per_row]);
            for v0 in (0..vectors).step_by(WIDE_VECTORS) {
                let lane0 = v0 * super::LANES;
                let o: [*mut f32; WIDE_ROWS] = std::array::from_fn(|r| {
                    if g + r < rows {
                        out.as_mut_ptr().add((g + r) * x.padded + lane0)
                    } else {
                        spare.as_mut_ptr()
                    }
                });
                match (vectors - v0).min(WIDE_VECTORS) {
                    1 => wide_group::<B, 1>(w, x, lane0, o),
                    2 => wide_group::<B, 2>(w, x, lane0, o),
                    3 => wide_group::<B, 3>(w, x, lane0, o),
                    _ => wide_group::<B, 4>(w, x, lane0, o),
                }
            }
        }
    }

    /// Rows `w` against `V` vectors of tokens from `lane0`. Per block, each row's codes are
    /// unpacked once; per group, each row's four codes at a time are broadcast against the
    /// tokens' four codes (`vpdpbusd`: unsigned codes times signed activations, exact in
    /// i32), less `offset · Σ q`; then scaled by the row's and the tokens' scales into f32
    /// sums, less the row's min times the tokens' `d · Σ q`.
    #[inline]
    #[target_feature(enable = "avx2,avx512f,avx512bw,avx512vl,avx512vnni,f16c")]
    unsafe fn wide_group<B: super::WideCodes, const V: usize>(
        w: [&[B]; WIDE_ROWS],
        x: &super::Q8Lanes,
        lane0: usize,
        out: [*mut f32; WIDE_ROWS],
    ) {
        use super::{ACT_BLOCK, LANES, SUM_GROUP};
        let form = B::CODES.expect("a wide format has codes");
        let (group, offset) = (form.group, _mm512_set1_epi32(form.offset as i32));
        let padded = x.padded;
        let lanes =
            |data: *const u32, row: usize, v: usize| data.add(row * padded + lane0 + v * LANES);
        let mut codes = [[0u8; 256]; WIDE_ROWS];
        let mut scale = [[0f32; 16]; WIDE_ROWS];
        let mut min = [[0f32; 16]; WIDE_ROWS];
        let mut acc = [[_mm512_setzero_ps(); V]; WIDE_ROWS];
        for b in 0..w[0].len() {
            for (r, row) in w.iter().enumerate() {
                row[b].unpack(&mut codes[r], &mut scale[r], &mut min[r]);
            }
            for gi in 0..B::VALUES / group {
                let at = b * B::VALUES + gi * group;
                let mut sums = [[_mm512_setzero_si512(); V]; WIDE_ROWS];
                for k in 0..group / 4 {
                    let xv: [__m512i; V] = std::array::from_fn(|v| {
                        _mm512_loadu_si512(lanes(x.codes.as_ptr(), at / 4 + k, v) as *const _)
                    });
                    for r in 0..WIDE_ROWS {
                        let four = codes[r].as_ptr().add(gi * group + 4 * k) as *const i32;
                        let wv = _mm512_set1_epi32(four.read_unaligned());
                        for v in 0..V {
                            sums[r][v] = _mm512_dpbusd_epi32(sums[r][v], wv, xv[v]);
                        }
                    }
                }
                // The tokens' scales and code sums over the group.
                let dx: [__m512; V] = std::array::from_fn(|v| {
                    _mm512_loadu_ps(
                        lanes(x.d.as_ptr() as *const u32, at / ACT_BLOCK, v) as *const f32
                    )
                });
                let qsum: [__m512i; V] = std::array::from_fn(|v| {
                    let sum = |s: usize| {
                        _mm512_loadu_si512(lanes(x.sums.as_ptr() as *const u32, s, v) as *const _)
                    };
                    let mut q = sum(at / SUM_GROUP);
                    for s in 1..group / SUM_GROUP {
                        q = _mm512_add_epi32(q, sum(at / SUM_GROUP + s));
                    }
                    q
                });
                let off: [__m512i; V] =
                    std::array::from_fn(|v| _mm512_mullo_epi32(qsum[v], offset));
                let dq: [__m512; V] =
                    std::array::from_fn(|v| _mm512_mul_ps(dx[v], _mm512_cvtepi32_ps(qsum[v])));
                for r in 0..WIDE_ROWS {
                    let sc = _mm512_set1_ps(scale[r][gi]);
                    let mn = _mm512_set1_ps(min[r][gi]);
                    for v in 0..V {
                        let exact = _mm512_cvtepi32_ps(_mm512_sub_epi32(sums[r][v], off[v]));
                        acc[r][v] = _mm512_fmadd_ps(exact, _mm512_mul_ps(sc, dx[v]), acc[r][v]);
                        if B::MINS {
                            acc[r][v] = _mm512_fnmadd_ps(mn, dq[v], acc[r][v]);
                        }
                    }
                }
            }
        }
        for (o, acc) in out.iter().zip(&acc) {
            for (v, a) in acc.iter().enumerate() {
                _mm512_storeu_ps(o.add(v * LANES), *a);
            }
        }
    }

    /// Q4_0 and Q5_0, two blocks per step: each block's 16 bytes of nibbles (low: values
    /// 0-15, high: 16-31) and Q5_0's 32 fifth bits as a byte mask; codes minus the offset.
    #[target_feature(enable = "avx2,avx512f,avx512bw,avx512vl,avx512vnni,f16c")]
    pub unsafe fn dot_q4_0(blocks: &[BlockQ4_0], xs: &[Q8Row], out: &mut [f32]) {
        by_row_count!(nibble_rows, blocks, xs, out)
    }

    #[target_feature(enable = "avx2,avx512f,avx512bw,avx512vl,avx512vnni,f16c")]
    pub unsafe fn dot_q5_0(blocks: &[BlockQ5_0], xs: &[Q8Row], out: &mut [f32]) {
        by_row_count!(nibble_rows, blocks, xs, out)
    }

    #[inline]
    #[target_feature(enable = "avx2,avx512f,avx512bw,avx512vl,avx512vnni,f16c")]
    unsafe fn nibble_rows<const T: usize>(
        blocks: &[impl Affine32 + Block],
        xs: &[Q8Row],
        out: &mut [f32],
    ) {
        let xs: &[Q8Row; T] = xs.try_into().expect("one activation row per output");
        let offset = nibble_offset(blocks);
        let (fifth, offset) = (_mm512_set1_epi8(0x10), _mm512_set1_epi8(offset));
        // Even and odd steps into separate sums: a step is short, and one chain of
        // multiply-adds would wait on itself.
        let mut acc = [[_mm512_setzero_ps(); T]; 2];
        let pairs = blocks.len() / 2;
        for p in 0..pairs {
            let (a, b) = (&blocks[2 * p], &blocks[2 * p + 1]);
            let bits = a.fifth() as u64 | (b.fifth() as u64) << 32;
            let codes = _mm512_or_si512(
                join(codes::nibbles(a.nibbles()), codes::nibbles(b.nibbles())),
                _mm512_and_si512(_mm512_movm_epi8(bits), fifth),
            );
            let w = _mm512_sub_epi8(codes, offset);
            let f = halves(f16(a.scales().0 .0), f16(b.scales().0 .0));
            step::<T>(w, f, 64 * p, xs, &mut acc[p % 2]);
        }
        finish(&pair_sum(acc), out);
        odd_tail(blocks, xs, out);
    }

    /// Q4_K: per super-block four steps of 64 values (the low nibbles of 32 bytes, then
    /// their high nibbles: two sub-blocks each), the mins from the activations' sums.
    #[target_feature(enable = "avx2,avx512f,avx512bw,avx512vl,avx512vnni,f16c")]
    pub unsafe fn dot_q4_k(blocks: &[BlockQ4K], xs: &[Q8Row], out: &mut [f32]) {
        by_row_count!(with_mins_rows, blocks, xs, out)
    }

    /// Q5_K: as Q4_K, the codes with their fifth bit.
    #[target_feature(enable = "avx2,avx512f,avx512bw,avx512vl,avx512vnni,f16c")]
    pub unsafe fn dot_q5_k(blocks: &[BlockQ5K], xs: &[Q8Row], out: &mut [f32]) {
        by_row_count!(with_mins_rows, blocks, xs, out)
    }

    #[inline]
    #[target_feature(enable = "avx2,avx512f,avx512bw,avx512vl,avx512vnni,f16c")]
    unsafe fn with_mins_rows<const T: usize>(
        blocks: &[impl WithMins],
        xs: &[Q8Row],
        out: &mut [f32],
    ) {
        let xs: &[Q8Row; T] = xs.try_into().expect("one activation row per output");
        // Even and odd steps into separate sums, as Q8_0's.
        let mut acc = [[_mm512_setzero_ps(); T]; 2];
        let mut mins = [_mm256_setzero_ps(); T];
        // Lanes 0-7 sub-block 2j's scale, lanes 8-15 sub-block 2j + 1's.
        let pair_of = |j: i32| {
            _mm512_setr_epi32(
                2 * j,
                2 * j,
                2 * j,
                2 * j,
                2 * j,
                2 * j,
                2 * j,
                2 * j,
                2 * j + 1,
                2 * j + 1,
                2 * j + 1,
                2 * j + 1,
                2 * j + 1,
                2 * j + 1,
                2 * j + 1,
                2 * j + 1,
            )
        };
        let pairs = [pair_of(0), pair_of(1), pair_of(2), pair_of(3)];
        // Eight bytes as eight f32.
        let widen = |bytes: [u8; 8]| {
            let v = _mm_cvtsi64_si128(i64::from_le_bytes(bytes));
            _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(v))
        };
        for (b, block) in blocks.iter().enumerate() {
            let (d, dmin, scale_bytes) = block.header();
            let (d, dmin) = (f16(d.0), f16(dmin.0));
            let (sc, m) = scales_and_mins(scale_bytes);
            let scales = _mm512_castps256_ps512(_mm256_mul_ps(_mm256_set1_ps(d), widen(sc)));
            for (j, pair) in pairs.iter().enumerate() {
                let [low, high] = block.pair_codes(j);
                let w = join(low, high);
                let f = _mm512_permutexvar_ps(*pair, scales);
                step_unsigned::<T>(w, f, 256 * b + 64 * j, xs, &mut acc[j % 2]);
            }
            // Σ over the 8 sub-blocks of dmin · m · (the activations' d · Σ codes).
            let mf = _mm256_mul_ps(_mm256_set1_ps(dmin), widen(m));
            for t in 0..T {
                let dsums = _mm256_loadu_ps(xs[t].dsums.as_ptr().add(8 * b));
                mins[t] = _mm256_fmadd_ps(mf, dsums, mins[t]);
            }
        }
        finish(&pair_sum(acc), out);
        for (o, min) in out.iter_mut().zip(mins) {
            *o -= crate::formats::x86::sum_lanes([
                min,
                _mm256_setzero_ps(),
                _mm256_setzero_ps(),
                _mm256_setzero_ps(),
            ]);
        }
    }

    /// IQ4_NL and MXFP4, two blocks per step: each nibble's level from the format's table,
    /// signed; a scale per block.
    #[target_feature(enable = "avx2,avx512f,avx512bw,avx512vl,avx512vnni,f16c")]
    pub unsafe fn dot_iq4_nl(blocks: &[BlockIQ4NL], xs: &[Q8Row], out: &mut [f32]) {
        by_row_count!(table_rows, blocks, xs, out)
    }

    #[target_feature(enable = "avx2,avx512f,avx512bw,avx512vl,avx512vnni,f16c")]
    pub unsafe fn dot_mxfp4(blocks: &[BlockMXFP4], xs: &[Q8Row], out: &mut [f32]) {
        by_row_count!(table_rows, blocks, xs, out)
    }

    #[inline]
    #[target_feature(enable = "avx2,avx512f,avx512bw,avx512vl,avx512vnni,f16c")]
    unsafe fn table_rows<const T: usize>(
        blocks: &[impl TableBlock + Block],
        xs: &[Q8Row],
        out: &mut [f32],
    ) {
        let xs: &[Q8Row; T] = xs.try_into().expect("one activation row per output");
        let table = biased_levels(blocks);
        let flip = _mm512_set1_epi8(-128);
        // Even and odd steps into separate sums, as Q8_0's.
        let mut acc = [[_mm512_setzero_ps(); T]; 2];
        for p in 0..blocks.len() / 2 {
            let (a, b) = (&blocks[2 * p], &blocks[2 * p + 1]);
            let levels = join(
                codes::levels(&table, a.nibbles()),
                codes::levels(&table, b.nibbles()),
            );
            let w = _mm512_xor_si512(levels, flip);
            step::<T>(w, halves(a.scale(), b.scale()), 64 * p, xs, &mut acc[p % 2]);
        }
        finish(&pair_sum(acc), out);
        odd_tail(blocks, xs, out);
    }

    /// IQ4_XS: per super-block four steps of two runs of 32 levels, signed; a scale per run.
    #[target_feature(enable = "avx2,avx512f,avx512bw,avx512vl,avx512vnni,f16c")]
    pub unsafe fn dot_iq4_xs(blocks: &[BlockIQ4XS], xs: &[Q8Row], out: &mut [f32]) {
        by_row_count!(iq4_xs_rows, blocks, xs, out)
    }

    #[inline]
    #[target_feature(enable = "avx2,avx512f,avx512bw,avx512vl,avx512vnni,f16c")]
    unsafe fn iq4_xs_rows<const T: usize>(blocks: &[BlockIQ4XS], xs: &[Q8Row], out: &mut [f32]) {
        let xs: &[Q8Row; T] = xs.try_into().expect("one activation row per output");
        let flip = _mm512_set1_epi8(-128);
        let mut acc = [_mm512_setzero_ps(); T];
        for (b, block) in blocks.iter().enumerate() {
            let d = f16(block.d.0);
            for j in 0..4 {
                let levels = join(codes::iq4_xs(block, 2 * j), codes::iq4_xs(block, 2 * j + 1));
                let w = _mm512_xor_si512(levels, flip);
                let f = halves(
                    d * block.run_scale(2 * j) as f32,
                    d * block.run_scale(2 * j + 1) as f32,
                );
                step::<T>(w, f, 256 * b + 64 * j, xs, &mut acc);
            }
        }
        finish(&acc, out);
    }

    /// Q2_K: per half super-block two steps of 64 values (four runs of two-bit codes, a
    /// scale per 16); the mins from the activations' sums per 16.
    #[target_feature(enable = "avx2,avx512f,avx512bw,avx512vl,avx512vnni,f16c")]
    pub unsafe fn dot_q2_k(blocks: &[BlockQ2K], xs: &[Q8Row], out: &mut [f32]) {
        by_row_count!(q2_k_rows, blocks, xs, out)
    }

    #[inline]
    #[target_feature(enable = "avx2,avx512f,avx512bw,avx512vl,avx512vnni,f16c")]
    unsafe fn q2_k_rows<const T: usize>(blocks: &[BlockQ2K], xs: &[Q8Row], out: &mut [f32]) {
        let xs: &[Q8Row; T] = xs.try_into().expect("one activation row per output");
        let mut acc = [_mm512_setzero_ps(); T];
        let mut mins = [_mm512_setzero_ps(); T];
        // Lane s takes the activations' scale of sub-block s's block of 32.
        let dup = _mm512_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7);
        for (b, block) in blocks.iter().enumerate() {
            let (dl, ml) = block.sub_scales();
            for half in 0..2 {
                for k in 0..2 {
                    let w = join(
                        codes::two_bits(&block.qs, half, 2 * k),
                        codes::two_bits(&block.qs, half, 2 * k + 1),
                    );
                    let at = 128 * half + 64 * k;
                    step_unsigned::<T>(w, quarters(&dl[at / 16..]), 256 * b + at, xs, &mut acc);
                }
            }
            let mf = _mm512_loadu_ps(ml.as_ptr());
            for t in 0..T {
                let x = &xs[t];
                let sums = _mm512_loadu_si512(x.sums.as_ptr().add(16 * b) as *const _);
                let dx = _mm512_castps256_ps512(_mm256_loadu_ps(x.d.as_ptr().add(8 * b)));
                let dsums = _mm512_mul_ps(_mm512_cvtepi32_ps(sums), _mm512_permutexvar_ps(dup, dx));
                mins[t] = _mm512_fmadd_ps(mf, dsums, mins[t]);
            }
        }
        finish(&acc, out);
        for (o, min) in out.iter_mut().zip(mins) {
            *o -= _mm512_reduce_add_ps(min);
        }
    }

    /// Q3_K: per half super-block two steps of 64 values (four runs of three-bit codes,
    /// multiplied unsigned; their offset of 4 comes off once per super-block through
    /// [`group_offsets`]); a scale per 16.
    #[target_feature(enable = "avx2,avx512f,avx512bw,avx512vl,avx512vnni,f16c")]
    pub unsafe fn dot_q3_k(blocks: &[BlockQ3K], xs: &[Q8Row], out: &mut [f32]) {
        by_row_count!(q3_k_rows, blocks, xs, out)
    }

    #[inline]
    #[target_feature(enable = "avx2,avx512f,avx512bw,avx512vl,avx512vnni,f16c")]
    unsafe fn q3_k_rows<const T: usize>(blocks: &[BlockQ3K], xs: &[Q8Row], out: &mut [f32]) {
        let xs: &[Q8Row; T] = xs.try_into().expect("one activation row per output");
        let mut acc = [_mm512_setzero_ps(); T];
        let mut offsets = [_mm512_setzero_ps(); T];
        let mut f = [0f32; 16];
        for (b, block) in blocks.iter().enumerate() {
            let d = f16(block.d.0);
            for (f, sc) in f.iter_mut().zip(q3_scales(&block.scales)) {
                *f = d * sc as f32;
            }
            for half in 0..2 {
                for k in 0..2 {
                    let codes = join(
                        codes::q3_k(block, half, 2 * k),
                        codes::q3_k(block, half, 2 * k + 1),
                    );
                    let at = 128 * half + 64 * k;
                    step_unsigned::<T>(codes, quarters(&f[at / 16..]), 256 * b + at, xs, &mut acc);
                }
            }
            group_offsets(_mm512_loadu_ps(f.as_ptr()), b, xs, &mut offsets);
        }
        finish_offset(&acc, &offsets, 4.0, out);
    }

    /// Q6_K: per half super-block two steps of 64 values built from 32 bytes of low
    /// nibbles twice and 32 bytes of high bit pairs; codes multiplied unsigned, their offset
    /// of 32 off once per super-block; a scale per 16.
    #[target_feature(enable = "avx2,avx512f,avx512bw,avx512vl,avx512vnni,f16c")]
    pub unsafe fn dot_q6_k(blocks: &[BlockQ6K], xs: &[Q8Row], out: &mut [f32]) {
        by_row_count!(q6_k_rows, blocks, xs, out)
    }

    /// The codes (0-63) multiply the signed activations as they are; their offset of 32
    /// comes off once per super-block ([`group_offsets`]).
    #[inline]
    #[target_feature(enable = "avx2,avx512f,avx512bw,avx512vl,avx512vnni,f16c")]
    unsafe fn q6_k_rows<const T: usize>(blocks: &[BlockQ6K], xs: &[Q8Row], out: &mut [f32]) {
        let xs: &[Q8Row; T] = xs.try_into().expect("one activation row per output");
        // The two steps of each half into separate sums, as Q8_0's.
        let mut acc = [[_mm512_setzero_ps(); T]; 2];
        let mut offsets = [_mm512_setzero_ps(); T];
        let mut f = [0f32; 16];
        for (b, block) in blocks.iter().enumerate() {
            let sc = _mm_loadu_si128(block.scales.as_ptr() as *const __m128i);
            let scales = _mm512_mul_ps(
                _mm512_set1_ps(f16(block.d.0)),
                _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(sc)),
            );
            _mm512_storeu_ps(f.as_mut_ptr(), scales);
            for n in 0..2 {
                let [q1, q2, q3, q4] = codes::q6_k(block, n);
                for (c, codes) in [join(q1, q2), join(q3, q4)].into_iter().enumerate() {
                    let at = 128 * n + 64 * c;
                    step_unsigned::<T>(
                        codes,
                        quarters(&f[at / 16..]),
                        256 * b + at,
                        xs,
                        &mut acc[c],
                    );
                }
            }
            group_offsets(scales, b, xs, &mut offsets);
        }
        finish_offset(&pair_sum(acc), &offsets, 32.0, out);
    }

    /// For the formats of a scale per 16 values whose codes carry an offset (Q3_K, Q6_K),
    /// multiplied unsigned: adds super-block `b`'s `Σ_g scale_g · dx_g · Σ codes_g` over its
    /// 16 groups (`scales` a lane each; the activations' sums per 16 are stored beside them)
    /// to each row's `offsets`.
    #[inline]
    #[target_feature(enable = "avx2,avx512f")]
    unsafe fn group_offsets<const T: usize>(
        scales: __m512,
        b: usize,
        xs: &[Q8Row; T],
        offsets: &mut [__m512; T],
    ) {
        // Group g of 16 values lies in activation block g / 2.
        let group_block = _mm512_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7);
        for (offset, x) in offsets.iter_mut().zip(xs) {
            debug_assert!(16 * b + 16 <= x.sums.len() && 8 * b + 8 <= x.d.len());
            let sums = _mm512_loadu_si512(x.sums.as_ptr().add(16 * b) as *const _);
            let d = _mm256_loadu_ps(x.d.as_ptr().add(8 * b));
            let dx = _mm512_permutexvar_ps(group_block, _mm512_castps256_ps512(d));
            let weighted = _mm512_mul_ps(scales, dx);
            *offset = _mm512_fmadd_ps(weighted, _mm512_cvtepi32_ps(sums), *offset);
        }
    }

    /// Each row's sum of lanes less `offset` times its [`group_offsets`].
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn finish_offset<const T: usize>(
        acc: &[__m512; T],
        offsets: &[__m512; T],
        offset: f32,
        out: &mut [f32],
    ) {
        finish(acc, out);
        for (o, sums) in out.iter_mut().zip(offsets) {
            *o -= offset * _mm512_reduce_add_ps(*sums);
        }
    }
}

/// AVX2 (`vpmaddubsw` then `vpmaddwd`: 32 byte products summed into 8 lanes per pair of
/// instructions): the same dots for CPUs without AVX-512 VNNI. One step is one block of 32
/// activations, so each step's activation scale is a single broadcast.
#[cfg(target_arch = "x86_64")]
pub(crate) mod avx2 {
    use super::{biased_levels, nibble_offset, Q8Row, ACT_BLOCK};
    use crate::formats::kquants::codes::{Affine32, TableBlock, WithMins};
    use crate::formats::kquants::{codes, q3_scales, scales_and_mins};
    use crate::formats::{Block, BlockQ2K, BlockQ3K, BlockQ4K, BlockQ4_0, BlockQ5K, BlockQ5_0};
    use crate::formats::{BlockIQ4NL, BlockIQ4XS, BlockMXFP4, BlockQ6K, BlockQ8_0};
    use std::arch::x86_64::*;

    /// AVX2, FMA and F16C.
    pub fn available() -> bool {
        crate::formats::x86::has_avx2_fma() && crate::formats::x86::has_avx2_f16c()
    }

    #[inline]
    #[target_feature(enable = "f16c")]
    unsafe fn f16(bits: [u8; 2]) -> f32 {
        _mm_cvtss_f32(_mm_cvtph_ps(_mm_set1_epi16(i16::from_le_bytes(bits))))
    }

    /// The rows `xs` against 32 signed codes `w` (values `at..at + 32`), `f` the weights'
    /// scale per lane (each lane sums 4 neighbouring products). The unsigned operand of
    /// `vpmaddubsw` is |w|, the activations take w's sign; no pair of products leaves i16
    /// (at most 2 · 128 · 127).
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn step<const T: usize>(
        w: __m256i,
        f: __m256,
        at: usize,
        xs: &[Q8Row; T],
        acc: &mut [__m256; T],
    ) {
        let ones = _mm256_set1_epi16(1);
        let magnitude = _mm256_sign_epi8(w, w);
        for t in 0..T {
            let x = &xs[t];
            debug_assert!(at + 32 <= x.qs.len());
            let q = _mm256_loadu_si256(x.qs.as_ptr().add(at) as *const __m256i);
            let pairs = _mm256_maddubs_epi16(magnitude, _mm256_sign_epi8(q, w));
            let sums = _mm256_cvtepi32_ps(_mm256_madd_epi16(pairs, ones));
            let dx = _mm256_set1_ps(x.d[at / ACT_BLOCK]);
            acc[t] = _mm256_fmadd_ps(sums, _mm256_mul_ps(f, dx), acc[t]);
        }
    }

    /// As [`step`] for codes that are unsigned bytes below 128 already: they are the
    /// unsigned operand of `vpmaddubsw` as they are (no pair leaves i16: 2 · 127 · 127).
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn step_unsigned<const T: usize>(
        w: __m256i,
        f: __m256,
        at: usize,
        xs: &[Q8Row; T],
        acc: &mut [__m256; T],
    ) {
        let ones = _mm256_set1_epi16(1);
        for t in 0..T {
            let x = &xs[t];
            debug_assert!(at + 32 <= x.qs.len());
            let q = _mm256_loadu_si256(x.qs.as_ptr().add(at) as *const __m256i);
            let sums = _mm256_cvtepi32_ps(_mm256_madd_epi16(_mm256_maddubs_epi16(w, q), ones));
            let dx = _mm256_set1_ps(x.d[at / ACT_BLOCK]);
            acc[t] = _mm256_fmadd_ps(sums, _mm256_mul_ps(f, dx), acc[t]);
        }
    }

    /// As the AVX-512 `group_offsets`: adds super-block `b`'s `Σ_g scale_g · dx_g · Σ
    /// codes_g` over its 16 groups of 16 (`scales[g]`) to each row's `offsets`.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn group_offsets<const T: usize>(
        scales: &[f32; 16],
        b: usize,
        xs: &[Q8Row; T],
        offsets: &mut [__m256; T],
    ) {
        // Groups 8h..8h + 8 lie in activation blocks 4h..4h + 4, two groups a block.
        let group_block = _mm256_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3);
        for (offset, x) in offsets.iter_mut().zip(xs) {
            debug_assert!(16 * b + 16 <= x.sums.len() && 8 * b + 8 <= x.d.len());
            for h in 0..2 {
                let sums = _mm256_loadu_si256(x.sums.as_ptr().add(16 * b + 8 * h) as *const _);
                let d = _mm_loadu_ps(x.d.as_ptr().add(8 * b + 4 * h));
                let dx = _mm256_permutevar8x32_ps(_mm256_castps128_ps256(d), group_block);
                let weighted = _mm256_mul_ps(_mm256_loadu_ps(scales.as_ptr().add(8 * h)), dx);
                *offset = _mm256_fmadd_ps(weighted, _mm256_cvtepi32_ps(sums), *offset);
            }
        }
    }

    /// Each row's sum of lanes less `offset` times its [`group_offsets`].
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn finish_offset<const T: usize>(
        acc: &[__m256; T],
        offsets: &[__m256; T],
        offset: f32,
        out: &mut [f32],
    ) {
        finish(acc, out);
        let mut sums = [0f32; T];
        finish(offsets, &mut sums);
        for (o, s) in out.iter_mut().zip(sums) {
            *o -= offset * s;
        }
    }

    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn finish<const T: usize>(acc: &[__m256; T], out: &mut [f32]) {
        for (o, a) in out.iter_mut().zip(acc) {
            *o = crate::formats::x86::sum_lanes([
                *a,
                _mm256_setzero_ps(),
                _mm256_setzero_ps(),
                _mm256_setzero_ps(),
            ]);
        }
    }

    /// The two sets of sums of the even and odd blocks added.
    #[inline]
    #[target_feature(enable = "avx")]
    unsafe fn pair_sum<const T: usize>(acc: [[__m256; T]; 2]) -> [__m256; T] {
        std::array::from_fn(|t| _mm256_add_ps(acc[0][t], acc[1][t]))
    }

    /// Lanes 0-3 `a`, lanes 4-7 `b`: the scales of two groups of 16 values.
    #[inline]
    #[target_feature(enable = "avx")]
    unsafe fn halves(a: f32, b: f32) -> __m256 {
        _mm256_set_m128(_mm_set1_ps(b), _mm_set1_ps(a))
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_q8_0(blocks: &[BlockQ8_0], xs: &[Q8Row], out: &mut [f32]) {
        by_row_count!(q8_0_rows, blocks, xs, out)
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn q8_0_rows<const T: usize>(blocks: &[BlockQ8_0], xs: &[Q8Row], out: &mut [f32]) {
        let xs: &[Q8Row; T] = xs.try_into().expect("one activation row per output");
        // Even and odd blocks into separate sums: a block's step is short, and one chain
        // of multiply-adds would wait on itself.
        let mut acc = [[_mm256_setzero_ps(); T]; 2];
        for (b, block) in blocks.iter().enumerate() {
            let w = _mm256_loadu_si256(block.qs.as_ptr() as *const __m256i);
            step::<T>(
                w,
                _mm256_set1_ps(f16(block.d.0)),
                32 * b,
                xs,
                &mut acc[b % 2],
            );
        }
        finish(&pair_sum(acc), out);
    }

    /// Q4_0 and Q5_0: the nibbles (low: values 0-15, high: 16-31) with Q5_0's fifth bits
    /// spread to one byte each; codes minus the offset.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_q4_0(blocks: &[BlockQ4_0], xs: &[Q8Row], out: &mut [f32]) {
        by_row_count!(nibble_rows, blocks, xs, out)
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_q5_0(blocks: &[BlockQ5_0], xs: &[Q8Row], out: &mut [f32]) {
        by_row_count!(nibble_rows, blocks, xs, out)
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn nibble_rows<const T: usize>(blocks: &[impl Affine32], xs: &[Q8Row], out: &mut [f32]) {
        let xs: &[Q8Row; T] = xs.try_into().expect("one activation row per output");
        let offset = _mm256_set1_epi8(nibble_offset(blocks));
        let mut acc = [[_mm256_setzero_ps(); T]; 2];
        for (b, block) in blocks.iter().enumerate() {
            let codes = codes::with_fifth(block.nibbles(), block.fifth());
            let w = _mm256_sub_epi8(codes, offset);
            let f = _mm256_set1_ps(f16(block.scales().0 .0));
            step::<T>(w, f, 32 * b, xs, &mut acc[b % 2]);
        }
        finish(&pair_sum(acc), out);
    }

    /// Q4_K: per super-block, 32 bytes of nibbles give two sub-blocks (low nibbles, then
    /// high); the mins from the activations' sums.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_q4_k(blocks: &[BlockQ4K], xs: &[Q8Row], out: &mut [f32]) {
        by_row_count!(with_mins_rows, blocks, xs, out)
    }

    /// Q5_K: as Q4_K, the codes with their fifth bit.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_q5_k(blocks: &[BlockQ5K], xs: &[Q8Row], out: &mut [f32]) {
        by_row_count!(with_mins_rows, blocks, xs, out)
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn with_mins_rows<const T: usize>(
        blocks: &[impl WithMins],
        xs: &[Q8Row],
        out: &mut [f32],
    ) {
        let xs: &[Q8Row; T] = xs.try_into().expect("one activation row per output");
        let mut acc = [_mm256_setzero_ps(); T];
        let mut mins = [_mm256_setzero_ps(); T];
        let widen = |bytes: [u8; 8]| {
            let v = _mm_cvtsi64_si128(i64::from_le_bytes(bytes));
            _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(v))
        };
        for (b, block) in blocks.iter().enumerate() {
            let (d, dmin, scale_bytes) = block.header();
            let (d, dmin) = (f16(d.0), f16(dmin.0));
            let (sc, m) = scales_and_mins(scale_bytes);
            for j in 0..4 {
                let [low, high] = block.pair_codes(j);
                let at = 256 * b + 64 * j;
                step::<T>(low, _mm256_set1_ps(d * sc[2 * j] as f32), at, xs, &mut acc);
                step::<T>(
                    high,
                    _mm256_set1_ps(d * sc[2 * j + 1] as f32),
                    at + 32,
                    xs,
                    &mut acc,
                );
            }
            let mf = _mm256_mul_ps(_mm256_set1_ps(dmin), widen(m));
            for t in 0..T {
                let dsums = _mm256_loadu_ps(xs[t].dsums.as_ptr().add(8 * b));
                mins[t] = _mm256_fmadd_ps(mf, dsums, mins[t]);
            }
        }
        finish(&acc, out);
        let mut min_sums = [0f32; T];
        finish(&mins, &mut min_sums);
        for (o, min) in out.iter_mut().zip(min_sums) {
            *o -= min;
        }
    }

    /// IQ4_NL and MXFP4: each nibble's level from the format's table, signed; a scale per
    /// block.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_iq4_nl(blocks: &[BlockIQ4NL], xs: &[Q8Row], out: &mut [f32]) {
        by_row_count!(table_rows, blocks, xs, out)
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_mxfp4(blocks: &[BlockMXFP4], xs: &[Q8Row], out: &mut [f32]) {
        by_row_count!(table_rows, blocks, xs, out)
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn table_rows<const T: usize>(
        blocks: &[impl TableBlock],
        xs: &[Q8Row],
        out: &mut [f32],
    ) {
        let xs: &[Q8Row; T] = xs.try_into().expect("one activation row per output");
        let table = biased_levels(blocks);
        let flip = _mm256_set1_epi8(-128);
        let mut acc = [[_mm256_setzero_ps(); T]; 2];
        for (b, block) in blocks.iter().enumerate() {
            let w = _mm256_xor_si256(codes::levels(&table, block.nibbles()), flip);
            let f = _mm256_set1_ps(block.scale());
            step::<T>(w, f, 32 * b, xs, &mut acc[b % 2]);
        }
        finish(&pair_sum(acc), out);
    }

    /// IQ4_XS: per super-block eight runs of 32 levels, signed; a scale per run.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_iq4_xs(blocks: &[BlockIQ4XS], xs: &[Q8Row], out: &mut [f32]) {
        by_row_count!(iq4_xs_rows, blocks, xs, out)
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn iq4_xs_rows<const T: usize>(blocks: &[BlockIQ4XS], xs: &[Q8Row], out: &mut [f32]) {
        let xs: &[Q8Row; T] = xs.try_into().expect("one activation row per output");
        let flip = _mm256_set1_epi8(-128);
        let mut acc = [[_mm256_setzero_ps(); T]; 2];
        for (b, block) in blocks.iter().enumerate() {
            let d = f16(block.d.0);
            for ib in 0..8 {
                let w = _mm256_xor_si256(codes::iq4_xs(block, ib), flip);
                let f = _mm256_set1_ps(d * block.run_scale(ib) as f32);
                step::<T>(w, f, 256 * b + 32 * ib, xs, &mut acc[ib % 2]);
            }
        }
        finish(&pair_sum(acc), out);
    }

    /// Q2_K: per super-block eight runs of 32 two-bit codes (a scale per 16); the mins
    /// from the activations' sums per 16.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_q2_k(blocks: &[BlockQ2K], xs: &[Q8Row], out: &mut [f32]) {
        by_row_count!(q2_k_rows, blocks, xs, out)
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn q2_k_rows<const T: usize>(blocks: &[BlockQ2K], xs: &[Q8Row], out: &mut [f32]) {
        let xs: &[Q8Row; T] = xs.try_into().expect("one activation row per output");
        let mut acc = [_mm256_setzero_ps(); T];
        let mut mins = [_mm256_setzero_ps(); T];
        // Lane s of half h takes the activations' scale of sub-block 8h + s's block of 32.
        let dup = [
            _mm256_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3),
            _mm256_setr_epi32(4, 4, 5, 5, 6, 6, 7, 7),
        ];
        for (b, block) in blocks.iter().enumerate() {
            let (dl, ml) = block.sub_scales();
            for half in 0..2 {
                for run in 0..4 {
                    let w = codes::two_bits(&block.qs, half, run);
                    let at = 128 * half + 32 * run;
                    let f = halves(dl[at / 16], dl[at / 16 + 1]);
                    step::<T>(w, f, 256 * b + at, xs, &mut acc);
                }
            }
            for t in 0..T {
                let x = &xs[t];
                let dx = _mm256_loadu_ps(x.d.as_ptr().add(8 * b));
                for (h, dup) in dup.iter().enumerate() {
                    let sums = _mm256_loadu_si256(x.sums.as_ptr().add(16 * b + 8 * h) as *const _);
                    let dsums =
                        _mm256_mul_ps(_mm256_cvtepi32_ps(sums), _mm256_permutevar8x32_ps(dx, *dup));
                    let mf = _mm256_loadu_ps(ml.as_ptr().add(8 * h));
                    mins[t] = _mm256_fmadd_ps(mf, dsums, mins[t]);
                }
            }
        }
        finish(&acc, out);
        let mut min_sums = [0f32; T];
        finish(&mins, &mut min_sums);
        for (o, min) in out.iter_mut().zip(min_sums) {
            *o -= min;
        }
    }

    /// Q3_K: per super-block eight runs of 32 three-bit codes, multiplied unsigned, their
    /// offset of 4 off once per super-block; a scale per 16.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_q3_k(blocks: &[BlockQ3K], xs: &[Q8Row], out: &mut [f32]) {
        by_row_count!(q3_k_rows, blocks, xs, out)
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn q3_k_rows<const T: usize>(blocks: &[BlockQ3K], xs: &[Q8Row], out: &mut [f32]) {
        let xs: &[Q8Row; T] = xs.try_into().expect("one activation row per output");
        let mut acc = [_mm256_setzero_ps(); T];
        let mut offsets = [_mm256_setzero_ps(); T];
        let mut f = [0f32; 16];
        for (b, block) in blocks.iter().enumerate() {
            let d = f16(block.d.0);
            for (f, sc) in f.iter_mut().zip(q3_scales(&block.scales)) {
                *f = d * sc as f32;
            }
            for half in 0..2 {
                for run in 0..4 {
                    let at = 128 * half + 32 * run;
                    let sub = at / 16;
                    let w = codes::q3_k(block, half, run);
                    step_unsigned::<T>(w, halves(f[sub], f[sub + 1]), 256 * b + at, xs, &mut acc);
                }
            }
            group_offsets(&f, b, xs, &mut offsets);
        }
        finish_offset(&acc, &offsets, 4.0, out);
    }

    /// Q6_K: per half super-block, four runs of 32 values from the low nibbles and high bit
    /// pairs; codes multiplied unsigned, their offset of 32 off once per super-block; a scale
    /// per 16.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_q6_k(blocks: &[BlockQ6K], xs: &[Q8Row], out: &mut [f32]) {
        by_row_count!(q6_k_rows, blocks, xs, out)
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn q6_k_rows<const T: usize>(blocks: &[BlockQ6K], xs: &[Q8Row], out: &mut [f32]) {
        let xs: &[Q8Row; T] = xs.try_into().expect("one activation row per output");
        // Even and odd steps into separate sums, as Q8_0's.
        let mut acc = [[_mm256_setzero_ps(); T]; 2];
        let mut offsets = [_mm256_setzero_ps(); T];
        let mut f = [0f32; 16];
        for (b, block) in blocks.iter().enumerate() {
            let d = f16(block.d.0);
            for (f, &sc) in f.iter_mut().zip(&block.scales) {
                *f = d * sc as f32;
            }
            for n in 0..2 {
                for (r, codes) in codes::q6_k(block, n).into_iter().enumerate() {
                    let at = 128 * n + 32 * r;
                    let fs = halves(f[at / 16], f[at / 16 + 1]);
                    step_unsigned::<T>(codes, fs, 256 * b + at, xs, &mut acc[r % 2]);
                }
            }
            group_offsets(&f, b, xs, &mut offsets);
        }
        finish_offset(&pair_sum(acc), &offsets, 32.0, out);
    }

    // Every kernel above reads whole blocks of 32: no odd tail (a row's blocks need not pair).
    const _: () = assert!(
        BlockQ8_0::VALUES == ACT_BLOCK
            && BlockQ5_0::VALUES == ACT_BLOCK
            && BlockQ4_0::VALUES == ACT_BLOCK
    );
}
