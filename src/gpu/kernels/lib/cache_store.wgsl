// Values written to the latent cache as it stores them: f16, two per u32 (the lower index
// in the low half, as pack2x16float writes them), or f32 bits. The kernel declares
// `cache: array<vec2<u32>>` (read_write) and `override CACHE_F16: bool`. Appended by
// src/gpu/shader.rs to the kernels that list it (shader::CACHE_STORE).

/// Stores cache values 4v..4v+3 and returns them as stored (rounded to f16 for f16).
fn store4(v: u32, x: vec4<f32>) -> vec4<f32> {
    if (CACHE_F16) {
        let w = vec2<u32>(pack2x16float(x.xy), pack2x16float(x.zw));
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
        return vec4<f32>(unpack2x16float(pack2x16float(x.xy)), unpack2x16float(pack2x16float(x.zw)));
    }
    return x;
}
