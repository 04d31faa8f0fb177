// Tile library of matmul.wgsl for devices with cooperative matrices of 16x16x16 f16 inputs
// and f32 accumulators (tensor cores), in subgroups of 32 (src/gpu/context.rs checks both).
//
// Each f32 value v enters as two f16 parts, v·s = hi + lo·2^-11 (hi = f16(v·s), lo the
// rest scaled up so it stays a normal f16), and each product as hi·hi + 2^-11 (lo·hi +
// hi·lo): about 22 bits of each value survive, against f32's 24, where f16 alone keeps 11.
// The dropped lo·lo term is below 2^-22 of the product. The scales s (powers of two, so
// exact) keep the parts inside f16's range: inputs up to 2^8·65504 and weights up to
// 2^4·65504; below 2^-8 and 2^-12 the parts keep an absolute error under 2^-28 and 2^-32.
//
// The subgroups (invocations 32i..32i+31) each take 16 rows x 32 tokens of the 64 x 64
// tile: two 16x16 blocks, each an accumulator of hi·hi and one of the lo terms.

const X_SCALE: f32 = 1.0 / 256.0;
const W_SCALE: f32 = 1.0 / 16.0;
const LO_SCALE: f32 = 2048.0;

/// [k][row]: the parts of the weights of step column k (a column-major A of stride TM).
var<workgroup> w_hi: array<f16, BK * TM>;
var<workgroup> w_lo: array<f16, BK * TM>;
/// [k][token]: the parts of the inputs of step column k (a row-major B of stride TN).
var<workgroup> x_hi: array<f16, BK * TN>;
var<workgroup> x_lo: array<f16, BK * TN>;
/// One 16x16 f32 block per subgroup, column-major: accumulators on their way to `write_pair`.
var<workgroup> c_out: array<f32, 8u * 256u>;

/// The parts of s·v: hi, and lo = (s·v − hi)·LO_SCALE. The f16 rounding goes through
/// pack2x16float, which no compiler folds away (as it might f32(f16(v)) − v).
fn split_hi(v: vec4<f32>) -> vec4<f16> {
    return vec4<f16>(unpack2x16float(pack2x16float(v.xy)), unpack2x16float(pack2x16float(v.zw)));
}

fn split_lo(v: vec4<f32>, hi: vec4<f16>) -> vec4<f16> {
    let h = vec4<f32>(unpack2x16float(pack2x16float(v.xy)), unpack2x16float(pack2x16float(v.zw)));
    return vec4<f16>((v - h) * LO_SCALE);
}

fn tile_put_w(k: u32, r: u32, v: vec4<f32>) {
    let s = v * W_SCALE;
    let hi = split_hi(s);
    let lo = split_lo(s, hi);
    for (var i = 0u; i < 4u; i++) {
        w_hi[(k + i) * TM + r] = hi[i];
        w_lo[(k + i) * TM + r] = lo[i];
    }
}

fn tile_put_x(k: u32, j: u32, v: vec4<f32>) {
    let s = v * X_SCALE;
    let hi = split_hi(s);
    let lo = split_lo(s, hi);
    for (var i = 0u; i < 4u; i++) {
        x_hi[(k + i) * TN + j] = hi[i];
        x_lo[(k + i) * TN + j] = lo[i];
    }
}

fn multiply_tiles(lid: u32, steps: u32) {
    let sg = lid / 32u;
    let lane = lid % 32u;
    let m0 = 16u * (sg % (TM / 16u));
    let n0 = 32u * (sg / (TM / 16u));
    var hi0 = coop_mat16x16<f32, C>();
    var lo0 = coop_mat16x16<f32, C>();
    var hi1 = coop_mat16x16<f32, C>();
    var lo1 = coop_mat16x16<f32, C>();
    for (var s = 0u; s < steps; s++) {
        load_step(lid, s);
        workgroupBarrier();
        for (var kk = 0u; kk < BK; kk += 16u) {
            let ia = kk * TM + m0;
            let ib0 = kk * TN + n0;
            let ib1 = ib0 + 16u;
            let stride_a = TM;
            let stride_b = TN;
            let a_hi = coopLoad<coop_mat16x16<f16, A>>(&w_hi[ia], stride_a);
            let a_lo = coopLoad<coop_mat16x16<f16, A>>(&w_lo[ia], stride_a);
            let b_hi0 = coopLoadT<coop_mat16x16<f16, B>>(&x_hi[ib0], stride_b);
            let b_lo0 = coopLoadT<coop_mat16x16<f16, B>>(&x_lo[ib0], stride_b);
            let b_hi1 = coopLoadT<coop_mat16x16<f16, B>>(&x_hi[ib1], stride_b);
            let b_lo1 = coopLoadT<coop_mat16x16<f16, B>>(&x_lo[ib1], stride_b);
            hi0 = coopMultiplyAdd(a_hi, b_hi0, hi0);
            lo0 = coopMultiplyAdd(a_lo, b_hi0, lo0);
            lo0 = coopMultiplyAdd(a_hi, b_lo0, lo0);
            hi1 = coopMultiplyAdd(a_hi, b_hi1, hi1);
            lo1 = coopMultiplyAdd(a_lo, b_hi1, lo1);
            lo1 = coopMultiplyAdd(a_hi, b_lo1, lo1);
        }
        workgroupBarrier();
    }
    // Each block through c_out twice (lo terms, then hi): a lane takes rows 2i, 2i + 1 of
    // 4 of its 16 tokens.
    let out = sg * 256u;
    let stride_c = 16u;
    let unscale = 1.0 / (X_SCALE * W_SCALE);
    for (var b = 0u; b < 2u; b++) {
        var lo = lo0;
        var hi = hi0;
        if (b == 1u) {
            lo = lo1;
            hi = hi1;
        }
        coopStore(lo, &c_out[out], stride_c);
        workgroupBarrier();
        var v: array<vec2<f32>, 4>;
        for (var i = 0u; i < 4u; i++) {
            let e = lane + 32u * i;
            let at = out + (e / 8u) * 16u + 2u * (e % 8u);
            v[i] = vec2<f32>(c_out[at], c_out[at + 1u]) / LO_SCALE;
        }
        workgroupBarrier();
        coopStore(hi, &c_out[out], stride_c);
        workgroupBarrier();
        for (var i = 0u; i < 4u; i++) {
            let e = lane + 32u * i;
            let at = out + (e / 8u) * 16u + 2u * (e % 8u);
            let sum = (v[i] + vec2<f32>(c_out[at], c_out[at + 1u])) * unscale;
            write_pair(m0 + 2u * (e % 8u), n0 + 16u * b + e / 8u, sum.x, sum.y);
        }
        workgroupBarrier();
    }
}
