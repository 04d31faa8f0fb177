//! Tensor element formats we compute with: F32, F16, BF16 and Q8_0.
//!
//! Q8_0 stores blocks of 32 values as one f16 scale `d` and 32 signed bytes `q`;
//! the value is `d * q`. Everything here reads raw little-endian bytes (no alignment
//! assumptions), so it works on any slice of a memory-mapped file.

use crate::gguf::GgmlType;

pub const Q8_0_BLOCK: usize = 32;

/// One Q8_0 block as stored in GGUF.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct BlockQ8_0 {
    /// f16 bits of the scale.
    pub d: u16,
    pub qs: [i8; Q8_0_BLOCK],
}
const _: () = assert!(std::mem::size_of::<BlockQ8_0>() == 34);

/// The types the engine computes with; every other type is refused by `weights`.
pub const SUPPORTED: [GgmlType; 4] = [GgmlType::F32, GgmlType::F16, GgmlType::BF16, GgmlType::Q8_0];

pub fn is_supported(t: GgmlType) -> bool {
    SUPPORTED.contains(&t)
}

pub fn supported_names() -> String {
    SUPPORTED
        .iter()
        .map(|t| t.name())
        .collect::<Vec<_>>()
        .join(", ")
}

#[inline]
fn f16_at(b: &[u8], i: usize) -> f32 {
    half::f16::from_bits(u16::from_le_bytes([b[i], b[i + 1]])).to_f32()
}

#[inline]
fn bf16_at(b: &[u8], i: usize) -> f32 {
    half::bf16::from_bits(u16::from_le_bytes([b[i], b[i + 1]])).to_f32()
}

#[inline]
fn f32_at(b: &[u8], i: usize) -> f32 {
    f32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
}

/// Decode `out.len()` values of type `ty` from `bytes` (which must hold exactly them).
pub fn dequantize(ty: GgmlType, bytes: &[u8], out: &mut [f32]) {
    match ty {
        GgmlType::F32 => out
            .iter_mut()
            .enumerate()
            .for_each(|(i, o)| *o = f32_at(bytes, 4 * i)),
        GgmlType::F16 => out
            .iter_mut()
            .enumerate()
            .for_each(|(i, o)| *o = f16_at(bytes, 2 * i)),
        GgmlType::BF16 => out
            .iter_mut()
            .enumerate()
            .for_each(|(i, o)| *o = bf16_at(bytes, 2 * i)),
        GgmlType::Q8_0 => {
            #[cfg(target_arch = "x86_64")]
            if simd::has_avx512_f16c() {
                // SAFETY: the CPU has the features the function is compiled for.
                return unsafe { simd::dequantize_q8_0_avx512(bytes, out) };
            }
            #[cfg(target_arch = "x86_64")]
            if simd::has_avx2_f16c() {
                // SAFETY: as above.
                return unsafe { simd::dequantize_q8_0_avx2(bytes, out) };
            }
            for (block, vals) in bytes.chunks_exact(34).zip(out.chunks_exact_mut(Q8_0_BLOCK)) {
                let d = f16_at(block, 0);
                for (v, &q) in vals.iter_mut().zip(&block[2..]) {
                    *v = d * (q as i8) as f32;
                }
            }
        }
        other => unreachable!("type {other} is refused when weights are loaded"),
    }
}

/// Dot product of one stored row (`bytes`, type `ty`) with `x` (same length), in f32.
/// This is the reference every GPU mat-vec is checked against.
#[inline]
pub fn dot(ty: GgmlType, bytes: &[u8], x: &[f32]) -> f32 {
    match ty {
        GgmlType::Q8_0 => {
            #[cfg(target_arch = "x86_64")]
            if simd::has_avx512_f16c() {
                // SAFETY: the CPU has the features the function is compiled for.
                return unsafe { simd::dot_q8_0_avx512(bytes, x) };
            }
            #[cfg(target_arch = "x86_64")]
            if simd::has_avx_fma() {
                // SAFETY: as above.
                return unsafe { simd::dot_q8_0_avx(bytes, x) };
            }
            let mut sum = 0f32;
            for (block, xs) in bytes.chunks_exact(34).zip(x.chunks_exact(Q8_0_BLOCK)) {
                let d = f16_at(block, 0);
                let mut s = 0f32;
                for (&q, &xv) in block[2..].iter().zip(xs) {
                    s += (q as i8) as f32 * xv;
                }
                sum += d * s;
            }
            sum
        }
        GgmlType::F32 => x
            .iter()
            .enumerate()
            .map(|(i, &v)| f32_at(bytes, 4 * i) * v)
            .sum(),
        GgmlType::F16 => x
            .iter()
            .enumerate()
            .map(|(i, &v)| f16_at(bytes, 2 * i) * v)
            .sum(),
        GgmlType::BF16 => x
            .iter()
            .enumerate()
            .map(|(i, &v)| bf16_at(bytes, 2 * i) * v)
            .sum(),
        other => unreachable!("type {other} is refused when weights are loaded"),
    }
}

/// Hand-vectorised x86-64 paths: the plain loops above are sequential f32 sums, which the
/// compiler must not reorder, so they run one lane wide. Same products, summed in 8 lanes.
#[cfg(target_arch = "x86_64")]
mod simd {
    use std::arch::x86_64::*;
    use std::sync::OnceLock;

    pub fn has_avx_fma() -> bool {
        static HAS: OnceLock<bool> = OnceLock::new();
        *HAS.get_or_init(|| {
            is_x86_feature_detected!("avx")
                && is_x86_feature_detected!("fma")
                && is_x86_feature_detected!("sse4.1")
        })
    }

    pub fn has_avx512_f16c() -> bool {
        static HAS: OnceLock<bool> = OnceLock::new();
        *HAS.get_or_init(|| {
            is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("f16c")
        })
    }

    /// The scale `d` of a Q8_0 block (its first two bytes), widened exactly, in every lane.
    #[inline]
    #[target_feature(enable = "avx512f,f16c")]
    unsafe fn q8_0_scale_x16(block: &[u8]) -> __m512 {
        let d = _mm_cvtph_ps(_mm_set1_epi16(i16::from_le_bytes([block[0], block[1]])));
        _mm512_broadcastss_ps(d)
    }

    /// 16 quants of a Q8_0 block from byte `at` of the block, as f32.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn q8_0_quants_x16(block: &[u8], at: usize) -> __m512 {
        let q = _mm_loadu_si128(block.as_ptr().add(at) as *const __m128i);
        _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q))
    }

    /// As [`dequantize_q8_0_avx2`], sixteen values per instruction.
    #[target_feature(enable = "avx512f,f16c")]
    pub unsafe fn dequantize_q8_0_avx512(bytes: &[u8], out: &mut [f32]) {
        for (block, vals) in bytes.chunks_exact(34).zip(out.chunks_exact_mut(32)) {
            let d = q8_0_scale_x16(block);
            _mm512_storeu_ps(vals.as_mut_ptr(), _mm512_mul_ps(q8_0_quants_x16(block, 2), d));
            _mm512_storeu_ps(
                vals.as_mut_ptr().add(16),
                _mm512_mul_ps(q8_0_quants_x16(block, 18), d),
            );
        }
    }

    /// As [`dot_q8_0_avx`], sixteen lanes wide: two blocks per step into four independent
    /// sums.
    #[target_feature(enable = "avx512f,f16c")]
    pub unsafe fn dot_q8_0_avx512(bytes: &[u8], x: &[f32]) -> f32 {
        let mut acc = [_mm512_setzero_ps(); 4];
        let step = |block: &[u8], xs: &[f32], acc: &mut [__m512]| {
            let d = q8_0_scale_x16(block);
            for (g, a) in acc.iter_mut().enumerate() {
                let w = _mm512_mul_ps(q8_0_quants_x16(block, 2 + 16 * g), d);
                *a = _mm512_fmadd_ps(w, _mm512_loadu_ps(xs.as_ptr().add(16 * g)), *a);
            }
        };
        let pairs = bytes.chunks_exact(68).zip(x.chunks_exact(64));
        let (bytes_rest, x_rest) = (pairs.clone().len() * 68, pairs.clone().len() * 64);
        for (two, xs) in pairs {
            let (lo, hi) = acc.split_at_mut(2);
            step(&two[..34], &xs[..32], lo);
            step(&two[34..], &xs[32..], hi);
        }
        if bytes.len() > bytes_rest {
            step(&bytes[bytes_rest..], &x[x_rest..], &mut acc[..2]);
        }
        let sum = _mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3]));
        _mm512_reduce_add_ps(sum)
    }

    pub fn has_avx2_f16c() -> bool {
        static HAS: OnceLock<bool> = OnceLock::new();
        *HAS.get_or_init(|| is_x86_feature_detected!("avx2") && is_x86_feature_detected!("f16c"))
    }

    /// Q8_0 blocks to f32, eight values per instruction: the same products `d * q` as the
    /// plain loop (F16C widens the scale exactly), so the same bits. The batched CPU
    /// forward dequantizes every weight row it multiplies, so this sets its pace.
    #[target_feature(enable = "avx2,f16c")]
    pub unsafe fn dequantize_q8_0_avx2(bytes: &[u8], out: &mut [f32]) {
        for (block, vals) in bytes.chunks_exact(34).zip(out.chunks_exact_mut(32)) {
            let d4 = _mm_cvtph_ps(_mm_set1_epi16(i16::from_le_bytes([block[0], block[1]])));
            let d = _mm256_set_m128(d4, d4);
            let q = block.as_ptr().add(2);
            for g in 0..4 {
                let q8 = _mm_loadl_epi64(q.add(8 * g) as *const __m128i);
                let qf = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q8));
                _mm256_storeu_ps(vals.as_mut_ptr().add(8 * g), _mm256_mul_ps(qf, d));
            }
        }
    }

    /// Q8_0 row · f32 vector: per block, 32 int8 widened to f32 in four groups of 8, scaled
    /// by the block's `d` (F16C) and multiplied into four independent 8-lane sums, so no
    /// multiply-add waits on the one before it.
    #[target_feature(enable = "avx,fma,sse4.1,f16c")]
    pub unsafe fn dot_q8_0_avx(bytes: &[u8], x: &[f32]) -> f32 {
        let mut acc = [_mm256_setzero_ps(); 4];
        for (block, xs) in bytes.chunks_exact(34).zip(x.chunks_exact(32)) {
            let d4 = _mm_cvtph_ps(_mm_set1_epi16(i16::from_le_bytes([block[0], block[1]])));
            let d = _mm256_insertf128_ps(_mm256_castps128_ps256(d4), d4, 1);
            let q = block.as_ptr().add(2);
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
        let sum = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
        let s = _mm_add_ps(_mm256_castps256_ps128(sum), _mm256_extractf128_ps(sum, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s)
    }
}

/// Quantize f32 values (a multiple of 32) to Q8_0 bytes, as ggml does (round to nearest).
pub fn quantize_q8_0(values: &[f32], out: &mut Vec<u8>) {
    for block in values.chunks_exact(Q8_0_BLOCK) {
        let amax = block.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        out.extend_from_slice(&half::f16::from_f32(d).to_bits().to_le_bytes());
        out.extend(block.iter().map(|v| (v * id).round() as i8 as u8));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whatever path `dequantize` takes on this CPU, it gives `d * q` of every value, and
    /// `dot` sums the same products (an odd block count: the wide paths' tail).
    #[test]
    fn q8_0_dequantize_is_scale_times_quant_exactly() {
        let vals: Vec<f32> = (0..352)
            .map(|i| ((i * 7919 % 251) as f32 - 125.0) * 0.37 / (1 + i % 5) as f32)
            .collect();
        let mut bytes = Vec::new();
        quantize_q8_0(&vals, &mut bytes);
        let mut got = vec![f32::NAN; vals.len()];
        dequantize(GgmlType::Q8_0, &bytes, &mut got);
        for (b, (block, out)) in bytes.chunks_exact(34).zip(got.chunks_exact(32)).enumerate() {
            let d = half::f16::from_le_bytes([block[0], block[1]]).to_f32();
            for (i, (&q, &o)) in block[2..].iter().zip(out).enumerate() {
                assert_eq!(o.to_bits(), (d * (q as i8) as f32).to_bits(), "block {b} value {i}");
            }
        }
        let x: Vec<f32> = (0..vals.len()).map(|i| (i as f32 * 0.37).cos()).collect();
        let want: f64 = got.iter().zip(&x).map(|(&a, &b)| a as f64 * b as f64).sum();
        let dot = dot(GgmlType::Q8_0, &bytes, &x) as f64;
        assert!((dot - want).abs() < 1e-4 * want.abs().max(1.0), "{dot} vs {want}");
    }

    #[test]
    fn q8_0_roundtrip_and_dot_agree_with_dequantized() {
        let vals: Vec<f32> = (0..64)
            .map(|i| ((i * 37 % 23) as f32 - 11.0) * 0.13)
            .collect();
        let mut bytes = Vec::new();
        quantize_q8_0(&vals, &mut bytes);
        assert_eq!(bytes.len(), 2 * 34);
        let mut deq = vec![0f32; 64];
        dequantize(GgmlType::Q8_0, &bytes, &mut deq);
        for (a, b) in vals.iter().zip(&deq) {
            assert!((a - b).abs() <= 1.43 / 127.0 * 0.51 + 1e-3, "{a} vs {b}");
        }
        let x: Vec<f32> = (0..64).map(|i| (i as f32 * 0.1).sin()).collect();
        let want: f32 = deq.iter().zip(&x).map(|(a, b)| a * b).sum();
        let got = dot(GgmlType::Q8_0, &bytes, &x);
        assert!((want - got).abs() < 1e-4, "{want} vs {got}");
    }
}
