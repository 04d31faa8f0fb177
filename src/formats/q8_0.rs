//! Q8_0: blocks of 32 values, one f16 scale `d` and 32 signed bytes; value = `d · q`.

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

    #[inline]
    fn dot(blocks: &[Self], x: &[f32]) -> f32 {
        #[cfg(target_arch = "x86_64")]
        if super::x86::has_avx_fma() {
            // SAFETY: the CPU has the features the function is compiled for.
            return unsafe { avx::dot(blocks, x) };
        }
        super::dot_scalar(blocks, x)
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
}
