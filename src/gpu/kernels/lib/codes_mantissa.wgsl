// Small unsigned integer codes as floats, for the batched mat-mul's tiles (appended after
// the weight library by src/gpu/shader.rs). A code c < 2^23 set into the mantissa of 2^23
// is the float 2^23 + c, so one OR and one subtraction give c - offset exactly, where an
// int-to-float conversion runs at a fraction of the arithmetic's rate on some GPUs (NVIDIA:
// 16 a clock per SM against 128 FMAs); the tiles decode every weight value, so that rate
// bounds them. The row dots use lib/codes_convert.wgsl (BENCHMARKS.md has both timed).

fn codes_f32(c: vec4<u32>, offset: f32) -> vec4<f32> {
    return bitcast<vec4<f32>>(c | vec4<u32>(0x4b000000u)) - vec4<f32>(8388608.0 + offset);
}

/// The four signed bytes of `w` (byte 0 first): biased to unsigned codes, less the bias.
fn signed_bytes_f32(w: u32) -> vec4<f32> {
    let biased = vec4<u32>(w ^ 0x80808080u) >> vec4<u32>(0u, 8u, 16u, 24u);
    return codes_f32(biased & vec4<u32>(255u), 128.0);
}
