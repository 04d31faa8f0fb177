// Weight layout Q5_K (see dot_rows4.wgsl for the interface): `quants` holds the file's
// 176-byte super-blocks as they are, 11 vec4 each, row-major: vec4 0 as Q4_K's (`d | dmin`,
// 6-bit scales and mins), vec4 1..2 the 32 bytes `qh` (bit s of byte l: the fifth bit of
// value 32s + l), vec4 3..10 the nibbles laid out as Q4_K's. Units as Q4_K's; the scales
// from `k4_scales` (lib/scales_k4.wgsl, appended after this).

const UNIT_RUNS: u32 = 2u;
alias Unit = array<vec4<f32>, 8>;

fn unit_run(u: u32, k: u32) -> u32 {
    let j = u % 8u;
    return 256u * (u / 8u) + 64u * (j / 2u) + 16u * (j % 2u) + 32u * k;
}

/// The codes of four values: nibbles of `w` from bit `shift` of each byte, fifth bits from
/// bit `bit` of each byte of `h`.
fn q5_k_codes(w: u32, shift: u32, h: u32, bit: u32) -> vec4<f32> {
    let bytes = vec4<u32>(0u, 8u, 16u, 24u);
    let low = (vec4<u32>(w) >> (bytes + vec4<u32>(shift))) & vec4<u32>(15u);
    let high = ((vec4<u32>(h) >> (bytes + vec4<u32>(bit))) & vec4<u32>(1u)) << vec4<u32>(4u);
    return codes_f32(low | high, 0.0);
}

/// The 32 codes of unit u (run 0, then run 1) and its scales.
fn q5_k_unit(row: u32, units: u32, u: u32, codes: ptr<function, Unit>) -> vec4<f32> {
    let block = 11u * (row * (units / 8u) + u / 8u);
    let j = u % 8u;
    let head = quants[block];
    let h = quants[block + 1u + j % 2u];
    let q = quants[block + 3u + j];
    let p = j / 2u;
    (*codes)[0] = q5_k_codes(q.x, 0u, h.x, 2u * p);
    (*codes)[1] = q5_k_codes(q.y, 0u, h.y, 2u * p);
    (*codes)[2] = q5_k_codes(q.z, 0u, h.z, 2u * p);
    (*codes)[3] = q5_k_codes(q.w, 0u, h.w, 2u * p);
    (*codes)[4] = q5_k_codes(q.x, 4u, h.x, 2u * p + 1u);
    (*codes)[5] = q5_k_codes(q.y, 4u, h.y, 2u * p + 1u);
    (*codes)[6] = q5_k_codes(q.z, 4u, h.z, 2u * p + 1u);
    (*codes)[7] = q5_k_codes(q.w, 4u, h.w, 2u * p + 1u);
    return k4_scales(head, p);
}

fn unit_values(row: u32, units: u32, u: u32) -> Unit {
    var c: Unit;
    let s = q5_k_unit(row, units, u, &c);
    var v: Unit;
    for (var i = 0u; i < 4u; i++) {
        v[i] = s.x * c[i] - vec4<f32>(s.y);
        v[i + 4u] = s.z * c[i + 4u] - vec4<f32>(s.w);
    }
    return v;
}

fn unit_dot(row: u32, units: u32, u: u32, x: Unit) -> f32 {
    var c: Unit;
    let s = q5_k_unit(row, units, u, &c);
    let qx_lo = dot(c[0], x[0]) + dot(c[1], x[1]) + dot(c[2], x[2]) + dot(c[3], x[3]);
    let qx_hi = dot(c[4], x[4]) + dot(c[5], x[5]) + dot(c[6], x[6]) + dot(c[7], x[7]);
    let one = vec4<f32>(1.0);
    let x_lo = dot((x[0] + x[1]) + (x[2] + x[3]), one);
    let x_hi = dot((x[4] + x[5]) + (x[6] + x[7]), one);
    return s.x * qx_lo - s.y * x_lo + s.z * qx_hi - s.w * x_hi;
}
