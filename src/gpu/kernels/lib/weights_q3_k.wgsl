// Weight layout Q3_K (see dot_rows4.wgsl for the interface), row-major per super-block:
// `quants` holds `hmask` (32 bytes) then `qs` (64 bytes), 6 vec4; `scales` the 12 bytes of
// 6-bit scales then `d` as f32, 4 u32. In half h (128 values), bits 2r of byte 32h + l of
// `qs` hold the low two bits of value 128h + 32r + l (sub-block 8h + 2r + l / 16), and bit
// 4h + r of `hmask` byte l is set when the value has no offset of -4.
// Value = d * (scale - 32) * (low - (4 if the mask bit is clear)).
// A unit (j = 0..3 of a super-block: h = j / 2, l0 = 16 * (j % 2)) is a vec4 of `qs` and one
// of `hmask`: four runs of 16 values, 128h + 32r + l0.

const UNIT_RUNS: u32 = 4u;
alias Unit = array<vec4<f32>, 16>;

fn unit_run(u: u32, k: u32) -> u32 {
    let j = u % 4u;
    return 256u * (u / 4u) + 128u * (j / 2u) + 16u * (j % 2u) + 32u * k;
}

/// Signed scale `i` of a super-block (ggml's unpacking: low nibbles in bytes 0..7, the
/// high bit pairs in bytes 8..11).
fn q3_k_scale(s: vec3<u32>, i: u32) -> f32 {
    let lw = select(s.y, s.x, i % 8u < 4u);
    let low = (lw >> (8u * (i % 4u) + 4u * (i / 8u))) & 15u;
    let high = (s.z >> (8u * (i % 4u) + 2u * (i / 4u))) & 3u;
    return f32(i32(low | (high << 4u)) - 32);
}

/// The codes of unit u (runs 0..3); returns d * scale of each run.
fn q3_k_unit(row: u32, units: u32, u: u32, codes: ptr<function, Unit>) -> vec4<f32> {
    let block = row * (units / 4u) + u / 4u;
    let j = u % 4u;
    let h = j / 2u;
    let l16 = j % 2u;
    let q = quants[6u * block + 2u + 2u * h + l16];
    let m = quants[6u * block + l16];
    let s = vec3<u32>(scales[4u * block], scales[4u * block + 1u], scales[4u * block + 2u]);
    let d = bitcast<f32>(scales[4u * block + 3u]);
    let bytes = vec4<u32>(0u, 8u, 16u, 24u);
    var ds = vec4<f32>(0.0);
    for (var r = 0u; r < 4u; r++) {
        let shift = bytes + vec4<u32>(2u * r);
        let bit = bytes + vec4<u32>(4u * h + r);
        for (var w = 0u; w < 4u; w++) {
            let low = (vec4<u32>(q[w]) >> shift) & vec4<u32>(3u);
            let no_offset = (vec4<u32>(m[w]) >> bit) & vec4<u32>(1u);
            (*codes)[4u * r + w] = codes_f32(low | (no_offset << vec4<u32>(2u)), 4.0);
        }
        ds[r] = d * q3_k_scale(s, 8u * h + 2u * r + l16);
    }
    return ds;
}

fn unit_values(row: u32, units: u32, u: u32) -> Unit {
    var c: Unit;
    let s = q3_k_unit(row, units, u, &c);
    var v: Unit;
    for (var i = 0u; i < 16u; i++) {
        v[i] = s[i / 4u] * c[i];
    }
    return v;
}

fn unit_dot(row: u32, units: u32, u: u32, x: Unit) -> f32 {
    var c: Unit;
    let s = q3_k_unit(row, units, u, &c);
    var total = 0.0;
    for (var r = 0u; r < 4u; r++) {
        let i = 4u * r;
        total += s[r] * (dot(c[i], x[i]) + dot(c[i + 1u], x[i + 1u]) + dot(c[i + 2u], x[i + 2u])
            + dot(c[i + 3u], x[i + 3u]));
    }
    return total;
}
