// Weight layout MXFP4 (see dot_rows4.wgsl for the interface), row-major: `quants` holds each
// block's 16 bytes of 4-bit e2m1 codes (byte j: value j low nibble, value 16 + j high), one
// vec4 per block; `scales` the E8M0 exponent byte `e` of each block, four per u32 (block b in
// byte b % 4 of u32 b / 4). Value = level(code) * 2^(e - 128), ggml's doubled e2m1 level times
// half the block scale (`GGML_E8M0_TO_FP32_HALF`, subnormal for e < 2). A unit is one block.

const UNIT_RUNS: u32 = 2u;
alias Unit = array<vec4<f32>, 8>;

fn unit_run(u: u32, k: u32) -> u32 {
    return 32u * u + 16u * k;
}

/// The doubled e2m1 values of four codes (ggml's kvalues_mxfp4), built as f32 bits: for
/// exponent bits e > 0 the code's exponent and mantissa bits placed in an f32's give
/// 2^e * (1 + m / 2); e = 0 gives m. Bit 3 is the sign (code 8 gives -0.0, equal to the
/// CPU's 0).
fn mxfp4_levels4(codes: vec4<u32>) -> vec4<f32> {
    let n = codes & vec4<u32>(7u);
    let normal = (n << vec4<u32>(22u)) + vec4<u32>(0x3f800000u);
    let small = n * vec4<u32>(0x3f800000u);
    let sign = (codes & vec4<u32>(8u)) << vec4<u32>(28u);
    return bitcast<vec4<f32>>(select(small, normal, n >= vec4<u32>(2u)) | sign);
}

/// The 32 levels of block `u` of `row` (values 0..16, then 16..32); returns the power of
/// two of its scale, e - 128. The scale is applied with `ldexp`, never as a factor: for
/// e < 2 the factor 2^(e - 128) is subnormal, which a GPU may flush to zero (NVIDIA's
/// does) although the scaled values are normal.
fn mxfp4_unit(row: u32, units: u32, u: u32, levels: ptr<function, Unit>) -> i32 {
    let b = row * units + u;
    let q = quants[b];
    let lo = vec4<u32>(0u, 8u, 16u, 24u);
    let hi = vec4<u32>(4u, 12u, 20u, 28u);
    let m = vec4<u32>(15u);
    (*levels)[0] = mxfp4_levels4((vec4<u32>(q.x) >> lo) & m);
    (*levels)[1] = mxfp4_levels4((vec4<u32>(q.y) >> lo) & m);
    (*levels)[2] = mxfp4_levels4((vec4<u32>(q.z) >> lo) & m);
    (*levels)[3] = mxfp4_levels4((vec4<u32>(q.w) >> lo) & m);
    (*levels)[4] = mxfp4_levels4((vec4<u32>(q.x) >> hi) & m);
    (*levels)[5] = mxfp4_levels4((vec4<u32>(q.y) >> hi) & m);
    (*levels)[6] = mxfp4_levels4((vec4<u32>(q.z) >> hi) & m);
    (*levels)[7] = mxfp4_levels4((vec4<u32>(q.w) >> hi) & m);
    return i32((scales[b / 4u] >> (8u * (b % 4u))) & 255u) - 128;
}

fn unit_values(row: u32, units: u32, u: u32) -> Unit {
    var l: Unit;
    let k = vec4<i32>(mxfp4_unit(row, units, u, &l));
    var v: Unit;
    for (var i = 0u; i < 8u; i++) {
        v[i] = ldexp(l[i], k);
    }
    return v;
}

fn unit_dot(row: u32, units: u32, u: u32, x: Unit) -> f32 {
    var l: Unit;
    let k = mxfp4_unit(row, units, u, &l);
    return ldexp((dot(l[0], x[0]) + dot(l[1], x[1]) + dot(l[2], x[2]) + dot(l[3], x[3]))
        + (dot(l[4], x[4]) + dot(l[5], x[5]) + dot(l[6], x[6]) + dot(l[7], x[7])), k);
}
