// ggml's get_scale_min_k4 for the GPU: the 6-bit scales and mins of a Q4_K or Q5_K
// super-block (appended after lib/weights_q4_k.wgsl and lib/weights_q5_k.wgsl).

/// (d * scale, dmin * min) of sub-blocks 2p and 2p + 1 from a super-block's first vec4
/// (`d | dmin` as an f16 pair, then the 12 bytes of scales and mins), four bytes at a time.
fn k4_scales(head: vec4<u32>, p: u32) -> vec4<f32> {
    let dm = unpack2x16float(head.x);
    var sc = head.y & 0x3f3f3f3fu;
    var mn = head.z & 0x3f3f3f3fu;
    if (p >= 2u) {
        sc = (head.w & 0x0f0f0f0fu) | ((head.y >> 2u) & 0x30303030u);
        mn = ((head.w >> 4u) & 0x0f0f0f0fu) | ((head.z >> 2u) & 0x30303030u);
    }
    let shift = 16u * (p % 2u);
    let s = (vec2<u32>(sc >> shift, sc >> (shift + 8u))) & vec2<u32>(255u);
    let m = (vec2<u32>(mn >> shift, mn >> (shift + 8u))) & vec2<u32>(255u);
    return vec4<f32>(dm.x * f32(s.x), dm.y * f32(m.x), dm.x * f32(s.y), dm.y * f32(m.y));
}
