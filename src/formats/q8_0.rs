//! Q8_0: blocks of 32 values, one f16 scale `d` and 32 signed bytes; value = `d · q`.

use super::int8::{Codes, Q8Row};
use super::{Block, F16Bits, GpuLayout};
use crate::gguf::GgmlType;

/// ggml's `block_q8_0`.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct BlockQ8_0 {
    pub d: F16Bits,
    pub qs: [i8; 32],
}
const _: () = assert!(std::mem::size_of::<BlockQ8_0>() == 34);

impl Block for BlockQ8_0 {
    const TYPE: GgmlType = GgmlType::Q8_0;
    const VALUES: usize = 32;
    const GPU: Option<GpuLayout> = Some(GpuLayout::Q8_0);

    #[inline]
    fn dequantize(&self, out: &mut [f32]) {
        let d = self.d.get();
        for (o, &q) in out.iter_mut().zip(&self.qs) {
            *o = q as f32 * d;
        }
    }

    /// ggml's `quantize_row_q8_0_ref`: `d = amax / 127`, `q = round(x / d)`.
    fn quantize(values: &[f32]) -> Self {
        let amax = values.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        BlockQ8_0 {
            d: F16Bits::from_f32(d),
            qs: std::array::from_fn(|i| (values[i] * id).round() as i8),
        }
    }

    const CODES: Option<Codes> = Some(Codes {
        group: 32,
        offset: 128,
        integer_rows: 1,
    });

    fn codes(&self, codes: &mut [u8], scale: &mut [f32], min: &mut [f32]) {
        for (c, &q) in codes.iter_mut().zip(&self.qs) {
            *c = (q as u8) ^ 0x80;
        }
        (scale[0], min[0]) = (self.d.get(), 0.0);
    }

    #[inline]
    fn dot_q8_tokens(blocks: &[Self], xs: &[Q8Row], out: &mut [f32]) {
        super::int8::dot_rows(blocks, xs, out)
    }

    wide_8_bit!();

    #[inline]
    fn dequantize_blocks(blocks: &[Self], out: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if super::x86::has_avx512_f16c() {
            // SAFETY: the CPU has the features the function is compiled for.
            return unsafe { avx512::dequantize(blocks, out) };
        }
        #[cfg(target_arch = "x86_64")]
        if super::x86::has_avx2_f16c() {
            // SAFETY: as above.
            return unsafe { avx::dequantize(blocks, out) };
        }
        for (b, o) in blocks.iter().zip(out.chunks_exact_mut(32)) {
            b.dequantize(o);
        }
    }

    #[inline]
    fn dot(blocks: &[Self], x: &[f32]) -> f32 {
        #[cfg(target_arch = "x86_64")]
        if super::x86::has_avx512_f16c() {
            // SAFETY: the CPU has the features the function is compiled for.
            return unsafe { avx512::dot(blocks, x) };
        }
        #[cfg(target_arch = "x86_64")]
        if super::x86::has_avx_fma() {
            // SAFETY: as above.
            return unsafe { avx::dot(blocks, x) };
        }
        super::dot_scalar(blocks, x)
    }

    #[inline]
    fn has_dot_tokens() -> bool {
        #[cfg(target_arch = "x86_64")]
        if super::x86::has_avx512_f16c() {
            return true;
        }
        false
    }

    #[inline]
    fn dot_tokens(blocks: &[Self], x: &[f32], stride: usize, out: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if super::x86::has_avx512_f16c() {
            // SAFETY: the CPU has the features the function is compiled for; the caller
            // (formats::dot_tokens_row) checked that `x` holds every row.
            return unsafe { avx512::dot_tokens(blocks, x, stride, out) };
        }
        let n = blocks.len() * 32;
        for (t, o) in out.iter_mut().enumerate() {
            *o = Self::dot(blocks, &x[t * stride..][..n]);
        }
    }
}

/// The GPU layout: every block's quants to `quants`, its scale to `scales`.
pub(super) fn pack_split(bytes: &[u8], quants: &mut Vec<u8>, scales: &mut Vec<u8>) {
    for b in bytemuck::cast_slice::<u8, BlockQ8_0>(bytes) {
        scales.extend_from_slice(&b.d.0);
        quants.extend_from_slice(bytemuck::cast_slice(&b.qs));
    }
}

#[cfg(target_arch = "x86_64")]
mod avx {
    use super::BlockQ8_0;
    use std::arch::x86_64::*;

    /// Per block, 32 int8 widened to f32 in four groups of 8, scaled by the block's `d`
    /// (F16C) and multiplied into four independent 8-lane sums, so no multiply-add waits on
    /// the one before it.
    #[target_feature(enable = "avx,fma,sse4.1,f16c")]
    pub unsafe fn dot(blocks: &[BlockQ8_0], x: &[f32]) -> f32 {
        let mut acc = [_mm256_setzero_ps(); 4];
        for (block, xs) in blocks.iter().zip(x.chunks_exact(32)) {
            let d4 = _mm_cvtph_ps(_mm_set1_epi16(i16::from_le_bytes(block.d.0)));
            let d = _mm256_insertf128_ps(_mm256_castps128_ps256(d4), d4, 1);
            let q = block.qs.as_ptr();
            let lo = _mm_loadu_si128(q as *const __m128i);
            let hi = _mm_loadu_si128(q.add(16) as *const __m128i);
            for (g, v) in [lo, _mm_srli_si128(lo, 8), hi, _mm_srli_si128(hi, 8)]
                .into_iter()
                .enumerate()
            {
                let a = _mm_cvtepi8_epi32(v);
                let b = _mm_cvtepi8_epi32(_mm_srli_si128(v, 4));
                let qf =
                    _mm256_cvtepi32_ps(_mm256_insertf128_si256(_mm256_castsi128_si256(a), b, 1));
                acc[g] = _mm256_fmadd_ps(
                    _mm256_mul_ps(qf, d),
                    _mm256_loadu_ps(xs.as_ptr().add(8 * g)),
                    acc[g],
                );
            }
        }
        super::super::x86::sum_lanes(acc)
    }

    /// Blocks to f32, eight values per instruction: the same products `d * q` as
    /// [`BlockQ8_0::dequantize`] (F16C widens the scale exactly), so the same bits.
    #[target_feature(enable = "avx2,f16c")]
    pub unsafe fn dequantize(blocks: &[BlockQ8_0], out: &mut [f32]) {
        for (block, vals) in blocks.iter().zip(out.chunks_exact_mut(32)) {
            let d4 = _mm_cvtph_ps(_mm_set1_epi16(i16::from_le_bytes(block.d.0)));
            let d = _mm256_set_m128(d4, d4);
            let q = block.qs.as_ptr();
            for g in 0..4 {
                let q8 = _mm_loadl_epi64(q.add(8 * g) as *const __m128i);
                let qf = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q8));
                _mm256_storeu_ps(vals.as_mut_ptr().add(8 * g), _mm256_mul_ps(qf, d));
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::BlockQ8_0;
    use std::arch::x86_64::*;

    /// The block's scale, widened exactly, in every lane.
    #[inline]
    #[target_feature(enable = "avx512f,f16c")]
    unsafe fn scale_x16(block: &BlockQ8_0) -> __m512 {
        _mm512_broadcastss_ps(_mm_cvtph_ps(_mm_set1_epi16(i16::from_le_bytes(block.d.0))))
    }

    /// Quants `at..at + 16` of a block as f32.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn quants_x16(block: &BlockQ8_0, at: usize) -> __m512 {
        let q = _mm_loadu_si128(block.qs.as_ptr().add(at) as *const __m128i);
        _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q))
    }

    /// As the AVX2 decode, sixteen values per instruction (the same bits).
    #[target_feature(enable = "avx512f,f16c")]
    pub unsafe fn dequantize(blocks: &[BlockQ8_0], out: &mut [f32]) {
        for (block, vals) in blocks.iter().zip(out.chunks_exact_mut(32)) {
            let d = scale_x16(block);
            _mm512_storeu_ps(vals.as_mut_ptr(), _mm512_mul_ps(quants_x16(block, 0), d));
            _mm512_storeu_ps(
                vals.as_mut_ptr().add(16),
                _mm512_mul_ps(quants_x16(block, 16), d),
            );
        }
    }

    /// Sixteen lanes wide: two blocks per step into four independent sums.
    #[target_feature(enable = "avx512f,f16c")]
    pub unsafe fn dot(blocks: &[BlockQ8_0], x: &[f32]) -> f32 {
        let mut acc = [_mm512_setzero_ps(); 4];
        let step = |block: &BlockQ8_0, xs: &[f32], acc: &mut [__m512]| {
            let d = scale_x16(block);
            for (g, a) in acc.iter_mut().enumerate() {
                let w = _mm512_mul_ps(quants_x16(block, 16 * g), d);
                *a = _mm512_fmadd_ps(w, _mm512_loadu_ps(xs.as_ptr().add(16 * g)), *a);
            }
        };
        let pairs = blocks.len() / 2;
        for p in 0..pairs {
            let (lo, hi) = acc.split_at_mut(2);
            step(&blocks[2 * p], &x[64 * p..], lo);
            step(&blocks[2 * p + 1], &x[64 * p + 32..], hi);
        }
        if blocks.len() % 2 == 1 {
            step(&blocks[blocks.len() - 1], &x[64 * pairs..], &mut acc[..2]);
        }
        let sum = _mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3]));
        _mm512_reduce_add_ps(sum)
    }

    // One version per row count below.
    const _: () = assert!(super::super::DOT_TOKENS <= 8);

    /// One row against `out.len()` (1 to DOT_TOKENS) activation rows `stride` apart: each
    /// block decoded once (the same products as `dequantize`) and multiplied into two sums
    /// per row. The caller checked that `x` holds every row.
    #[target_feature(enable = "avx512f,f16c")]
    pub unsafe fn dot_tokens(blocks: &[BlockQ8_0], x: &[f32], stride: usize, out: &mut [f32]) {
        match out.len() {
            1 => dot_n::<1>(blocks, x, stride, out),
            2 => dot_n::<2>(blocks, x, stride, out),
            3 => dot_n::<3>(blocks, x, stride, out),
            4 => dot_n::<4>(blocks, x, stride, out),
            5 => dot_n::<5>(blocks, x, stride, out),
            6 => dot_n::<6>(blocks, x, stride, out),
            7 => dot_n::<7>(blocks, x, stride, out),
            _ => dot_n::<8>(blocks, x, stride, out),
        }
    }

    #[inline]
    #[target_feature(enable = "avx512f,f16c")]
    unsafe fn dot_n<const T: usize>(
        blocks: &[BlockQ8_0],
        x: &[f32],
        stride: usize,
        out: &mut [f32],
    ) {
        let mut acc = [[_mm512_setzero_ps(); 2]; T];
        for (b, block) in blocks.iter().enumerate() {
            let d = scale_x16(block);
            let w = [
                _mm512_mul_ps(quants_x16(block, 0), d),
                _mm512_mul_ps(quants_x16(block, 16), d),
            ];
            for (t, acc_t) in acc.iter_mut().enumerate() {
                let xp = x.as_ptr().add(t * stride + 32 * b);
                acc_t[0] = _mm512_fmadd_ps(w[0], _mm512_loadu_ps(xp), acc_t[0]);
                acc_t[1] = _mm512_fmadd_ps(w[1], _mm512_loadu_ps(xp.add(16)), acc_t[1]);
            }
        }
        for (o, acc_t) in out.iter_mut().zip(&acc) {
            *o = _mm512_reduce_add_ps(_mm512_add_ps(acc_t[0], acc_t[1]));
        }
    }
}
