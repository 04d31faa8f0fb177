// Weight layout Q4_1 (see dot_rows4.wgsl for the interface), row-major: `quants` holds each
// block's 16 bytes of nibbles (byte j: value j low, value 16 + j high), one vec4 per block;
// `scales` one u32 per block, `d` and `m` as f16 (low, high). Value = d * q + m. A unit is
// one block.

const UNIT_RUNS: u32 = 2u;
alias Unit = array<vec4<f32>, 8>;

fn unit_run(u: u32, k: u32) -> u32 {
    return 32u * u + 16u * k;
}

/// Codes of values 4i..4i+3 (lo) or 16 + 4i.. (hi) of a block: nibbles of `w` from bit
/// `shift` of each byte.
fn q4_1_codes(w: u32, shift: u32) -> vec4<f32> {
    return codes_f32((vec4<u32>(w) >> (vec4<u32>(0u, 8u, 16u, 24u) + vec4<u32>(shift))) & vec4<u32>(15u), 0.0);
}

/// The 32 codes of block `u` of `row` (values 0..16, then 16..32); returns (d, m).
fn q4_1_unit(row: u32, units: u32, u: u32, codes: ptr<function, Unit>) -> vec2<f32> {
    let b = row * units + u;
    let q = quants[b];
    let dm = unpack2x16float(scales[b]);
    (*codes)[0] = q4_1_codes(q.x, 0u);
    (*codes)[1] = q4_1_codes(q.y, 0u);
    (*codes)[2] = q4_1_codes(q.z, 0u);
    (*codes)[3] = q4_1_codes(q.w, 0u);
    (*codes)[4] = q4_1_codes(q.x, 4u);
    (*codes)[5] = q4_1_codes(q.y, 4u);
    (*codes)[6] = q4_1_codes(q.z, 4u);
    (*codes)[7] = q4_1_codes(q.w, 4u);
    return vec2<f32>(dm.x, dm.y);
}

fn unit_values(row: u32, units: u32, u: u32) -> Unit {
    var c: Unit;
    let dm = q4_1_unit(row, units, u, &c);
    var v: Unit;
    for (var i = 0u; i < 8u; i++) {
        v[i] = dm.x * c[i] + vec4<f32>(dm.y);
    }
    return v;
}

fn unit_dot(row: u32, units: u32, u: u32, x: Unit) -> f32 {
    var c: Unit;
    let dm = q4_1_unit(row, units, u, &c);
    let qx = (dot(c[0], x[0]) + dot(c[1], x[1]) + dot(c[2], x[2]) + dot(c[3], x[3]))
        + (dot(c[4], x[4]) + dot(c[5], x[5]) + dot(c[6], x[6]) + dot(c[7], x[7]));
    let sx = dot(((x[0] + x[1]) + (x[2] + x[3])) + ((x[4] + x[5]) + (x[6] + x[7])), vec4<f32>(1.0));
    return dm.x * qx + dm.y * sx;
}
