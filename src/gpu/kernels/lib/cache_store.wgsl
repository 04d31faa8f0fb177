// Values written to the latent cache as it stores them: f16, two per u32 (the lower index
// in the low half, as pack2x16float writes them), or f32 bits. The kernel declares
// `cache: array<vec2<u32>>` (read_write) and `override CACHE_F16: bool`. Appended by
// src/gpu/shader.rs to the kernels that list it (shader::CACHE_STORE).
//
// The f16 rounding is written out in integer operations (`f16_bits`) rather than left to
// pack2x16float, whose rounding WGSL leaves to the implementation: with it, NVIDIA's Vulkan
// compiler rounded a value kept in registers (`as_stored`, the token's own row in
// attn_combine.wgsl) differently from the same value stored, so a token attended to a
// latent one f16 step away from its cached copy. Integer rounding gives the same bits on
// every path and device, and the CPU's (`half::f16::from_f32`).

/// The f16 nearest to x (ties to even), as bits: the CPU's `half::f16::from_f32`. Past
/// f16's range, infinity; NaN stays NaN.
fn f16_bits(x: f32) -> u32 {
    let b = bitcast<u32>(x);
    let sign = (b >> 16u) & 0x8000u;
    let a = b & 0x7fffffffu;
    if (a >= 0x7f800000u) {
        return sign | 0x7c00u | select(0u, 0x200u, a > 0x7f800000u);
    }
    // 65520 and above round to infinity.
    if (a >= 0x477ff000u) {
        return sign | 0x7c00u;
    }
    // Below 2^-14: a multiple of f16's smallest step 2^-24 (scaling by 2^24 is exact;
    // round() takes ties to even). 1024 is the smallest normal's bits.
    if (a < 0x38800000u) {
        return sign | u32(round(bitcast<f32>(a) * 16777216.0));
    }
    // Normal: the exponent rebased from 127 to 15, the 13 dropped bits rounded to even
    // (a carry into the exponent is the right result).
    let m = a - 0x38000000u;
    return sign | ((m + 0xfffu + ((m >> 13u) & 1u)) >> 13u);
}

fn pack_f16(x: vec2<f32>) -> u32 {
    return f16_bits(x.x) | (f16_bits(x.y) << 16u);
}

/// Stores cache values 4v..4v+3 and returns them as stored (rounded to f16 for f16).
fn store4(v: u32, x: vec4<f32>) -> vec4<f32> {
    if (CACHE_F16) {
        let w = vec2<u32>(pack_f16(x.xy), pack_f16(x.zw));
        cache[v] = w;
        return vec4<f32>(unpack2x16float(w.x), unpack2x16float(w.y));
    }
    let w = bitcast<vec4<u32>>(x);
    cache[2u * v] = w.xy;
    cache[2u * v + 1u] = w.zw;
    return x;
}

/// `x` as the cache stores it.
fn as_stored(x: vec4<f32>) -> vec4<f32> {
    if (CACHE_F16) {
        return vec4<f32>(unpack2x16float(pack_f16(x.xy)), unpack2x16float(pack_f16(x.zw)));
    }
    return x;
}
