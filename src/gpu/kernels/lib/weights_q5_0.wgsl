// Weight layout Q5_0 (see dot_rows4.wgsl for the interface), row-major: `quants` holds each
// block's 16 bytes of nibbles (byte j: value j low, value 16 + j high), one vec4 per block;
// `scales` two u32 per block, `d` as f32 and `qh` (bit i: the fifth bit of value i).
// Value = d * (q - 16). A unit is one block.

const UNIT_RUNS: u32 = 2u;
alias Unit = array<vec4<f32>, 8>;

fn unit_run(u: u32, k: u32) -> u32 {
    return 32u * u + 16u * k;
}

/// Codes of values 4i..4i+3 (lo) or 16 + 4i.. (hi) of a block: nibbles of `w` from bit
/// `shift` of each byte, fifth bits from bit `bit`.. of `qh`.
fn q5_0_codes(w: u32, shift: u32, qh: u32, bit: u32) -> vec4<f32> {
    let low = (vec4<u32>(w) >> (vec4<u32>(0u, 8u, 16u, 24u) + vec4<u32>(shift))) & vec4<u32>(15u);
    let high = ((vec4<u32>(qh) >> (vec4<u32>(0u, 1u, 2u, 3u) + vec4<u32>(bit))) & vec4<u32>(1u)) << vec4<u32>(4u);
    return codes_f32(low | high, 0.0);
}

/// The 32 codes of block `u` of `row` (values 0..16, then 16..32); returns (d, 0).
fn q5_0_unit(row: u32, units: u32, u: u32, codes: ptr<function, Unit>) -> vec2<f32> {
    let b = row * units + u;
    let q = quants[b];
    let d = bitcast<f32>(scales[2u * b]);
    let qh = scales[2u * b + 1u];
    (*codes)[0] = q5_0_codes(q.x, 0u, qh, 0u);
    (*codes)[1] = q5_0_codes(q.y, 0u, qh, 4u);
    (*codes)[2] = q5_0_codes(q.z, 0u, qh, 8u);
    (*codes)[3] = q5_0_codes(q.w, 0u, qh, 12u);
    (*codes)[4] = q5_0_codes(q.x, 4u, qh, 16u);
    (*codes)[5] = q5_0_codes(q.y, 4u, qh, 20u);
    (*codes)[6] = q5_0_codes(q.z, 4u, qh, 24u);
    (*codes)[7] = q5_0_codes(q.w, 4u, qh, 28u);
    return vec2<f32>(d, 0.0);
}

fn unit_values(row: u32, units: u32, u: u32) -> Unit {
    var c: Unit;
    let dm = q5_0_unit(row, units, u, &c);
    var v: Unit;
    for (var i = 0u; i < 8u; i++) {
        v[i] = dm.x * (c[i] - vec4<f32>(16.0));
    }
    return v;
}

fn unit_dot(row: u32, units: u32, u: u32, x: Unit) -> f32 {
    var c: Unit;
    let dm = q5_0_unit(row, units, u, &c);
    let o = vec4<f32>(16.0);
    return dm.x * ((dot(c[0] - o, x[0]) + dot(c[1] - o, x[1]) + dot(c[2] - o, x[2]) + dot(c[3] - o, x[3]))
        + (dot(c[4] - o, x[4]) + dot(c[5] - o, x[5]) + dot(c[6] - o, x[6]) + dot(c[7] - o, x[7])));
}
