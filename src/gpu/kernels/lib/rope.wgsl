// RoPE on consecutive pairs (x0, x1), (x2, x3), ... (llama.cpp's rope type 0), by angles
// whose (cos, sin) the host computes in f64 (attn_partial::rope_table). Appended by
// src/gpu/shader.rs to the kernels that list it (shader::ROPE).

/// Two RoPE pairs (v.xy, v.zw) rotated by cs = (cos, sin, cos, sin).
fn rotate2(v: vec4<f32>, cs: vec4<f32>) -> vec4<f32> {
    return vec4<f32>(
        v.x * cs.x - v.y * cs.y,
        v.x * cs.y + v.y * cs.x,
        v.z * cs.z - v.w * cs.w,
        v.z * cs.w + v.w * cs.z,
    );
}
