// The 16 levels of IQ4_NL and IQ4_XS codes (ggml's kvalues_iq4nl: -127, -104, -83, -65, -49,
// -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113) without a lookup: this quartic in the code
// is within 0.433 of the level at every code (in f32, fused or not), so rounding it gives
// the level exactly, in ALU work only. Appended after weights_iq4_nl.wgsl and
// weights_iq4_xs.wgsl (src/gpu/shader.rs), whose `Unit` it fills.

/// The levels of four codes (each < 16).
fn iq4_levels4(codes: vec4<u32>) -> vec4<f32> {
    let c = codes_f32(codes, 0.0);
    var p = fma(vec4<f32>(0.0015860428102314472), c, vec4<f32>(0.03108643926680088));
    p = fma(p, c, vec4<f32>(-1.37192702293396));
    p = fma(p, c, vec4<f32>(24.173830032348633));
    p = fma(p, c, vec4<f32>(-126.56700897216797));
    return round(p);
}

/// The levels of 32 values from their 16 bytes of codes `q` (byte j: the code of value j in
/// the low nibble, of value 16 + j in the high one), values 0..16 then 16..32.
fn iq4_levels(q: vec4<u32>, levels: ptr<function, Unit>) {
    let lo = vec4<u32>(0u, 8u, 16u, 24u);
    let hi = vec4<u32>(4u, 12u, 20u, 28u);
    let m = vec4<u32>(15u);
    (*levels)[0] = iq4_levels4((vec4<u32>(q.x) >> lo) & m);
    (*levels)[1] = iq4_levels4((vec4<u32>(q.y) >> lo) & m);
    (*levels)[2] = iq4_levels4((vec4<u32>(q.z) >> lo) & m);
    (*levels)[3] = iq4_levels4((vec4<u32>(q.w) >> lo) & m);
    (*levels)[4] = iq4_levels4((vec4<u32>(q.x) >> hi) & m);
    (*levels)[5] = iq4_levels4((vec4<u32>(q.y) >> hi) & m);
    (*levels)[6] = iq4_levels4((vec4<u32>(q.z) >> hi) & m);
    (*levels)[7] = iq4_levels4((vec4<u32>(q.w) >> hi) & m);
}

/// Σ level · x over 32 values.
fn iq4_dot(l: Unit, x: Unit) -> f32 {
    return (dot(l[0], x[0]) + dot(l[1], x[1]) + dot(l[2], x[2]) + dot(l[3], x[3]))
        + (dot(l[4], x[4]) + dot(l[5], x[5]) + dot(l[6], x[6]) + dot(l[7], x[7]));
}
