// Small unsigned integer codes as floats, for the row dots and unit decodes (appended after
// the weight library by src/gpu/shader.rs): by conversion. The row dots wait on memory, not
// on arithmetic, and measured faster this way than through lib/codes_mantissa.wgsl's extra
// OR and subtraction (BENCHMARKS.md).

fn codes_f32(c: vec4<u32>, offset: f32) -> vec4<f32> {
    return vec4<f32>(c) - vec4<f32>(offset);
}

/// The four signed bytes of `w` (byte 0 first): each shifted to the top and back, keeping
/// its sign, then converted.
fn signed_bytes_f32(w: u32) -> vec4<f32> {
    let top = vec4<u32>(w << 24u, w << 16u, w << 8u, w);
    return vec4<f32>(bitcast<vec4<i32>>(top) >> vec4<u32>(24u));
}
