//! Which hand-vectorised paths this x86-64 CPU can run (detected once), for the format
//! dots and decoders and the batched CPU mat-mul alike.

use std::sync::OnceLock;

/// AVX, FMA, SSE4.1 and F16C: the Q8_0 path.
pub fn has_avx_fma() -> bool {
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| {
        is_x86_feature_detected!("avx")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("sse4.1")
            && is_x86_feature_detected!("f16c")
    })
}

/// AVX2 and FMA: the K-quant paths (integer widening in 256-bit registers).
pub fn has_avx2_fma() -> bool {
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"))
}

/// AVX-512F: the batched CPU mat-mul's 16-lane kernels.
pub fn has_avx512() -> bool {
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| is_x86_feature_detected!("avx512f"))
}

/// AVX2 and F16C: the Q8_0 decode eight values per instruction.
pub fn has_avx2_f16c() -> bool {
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| is_x86_feature_detected!("avx2") && is_x86_feature_detected!("f16c"))
}

/// AVX-512F and F16C: the Q8_0 decode and dot sixteen values per instruction.
pub fn has_avx512_f16c() -> bool {
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("f16c"))
}

/// The sum of the 32 lanes of four accumulators.
///
/// # Safety
/// The CPU must support AVX.
#[target_feature(enable = "avx")]
pub unsafe fn sum_lanes(acc: [std::arch::x86_64::__m256; 4]) -> f32 {
    use std::arch::x86_64::*;
    let sum = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
    let s = _mm_add_ps(_mm256_castps256_ps128(sum), _mm256_extractf128_ps(sum, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    _mm_cvtss_f32(s)
}
