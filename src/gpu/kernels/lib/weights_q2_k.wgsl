// Weight layout Q2_K (see dot_rows4.wgsl for the interface): `quants` holds the file's
// 84-byte super-blocks as they are, 21 u32 each, row-major: words 0..3 the 16 sub-block
// bytes (scale in the low nibble, min in the high), words 4..19 the 64 bytes of 2-bit codes,
// word 20 `d | dmin` (f16 pair). In half h (128 values), bits 2r of byte 32h + l hold value
// 128h + 32r + l, in sub-block 8h + 2r + l / 16. Value = d * scale * q - dmin * min.
// A unit (j = 0..3 of a super-block: h = j / 2, l0 = 16 * (j % 2)) is 16 bytes of codes:
// four runs of 16 values, 128h + 32r + l0.

const UNIT_RUNS: u32 = 4u;
alias Unit = array<vec4<f32>, 16>;

fn unit_run(u: u32, k: u32) -> u32 {
    let j = u % 4u;
    return 256u * (u / 4u) + 128u * (j / 2u) + 16u * (j % 2u) + 32u * k;
}

fn q2_k_word(i: u32) -> u32 {
    return quants[i / 4u][i % 4u];
}

/// The codes of unit u (runs 0..3); returns, per run, d * scale and dmin * min.
fn q2_k_unit(row: u32, units: u32, u: u32, codes: ptr<function, Unit>) -> array<vec2<f32>, 4> {
    let base = 21u * (row * (units / 4u) + u / 4u);
    let j = u % 4u;
    let h = j / 2u;
    let l16 = j % 2u;
    let q = vec4<u32>(
        q2_k_word(base + 4u + 8u * h + 4u * l16),
        q2_k_word(base + 5u + 8u * h + 4u * l16),
        q2_k_word(base + 6u + 8u * h + 4u * l16),
        q2_k_word(base + 7u + 8u * h + 4u * l16),
    );
    let sc = vec2<u32>(q2_k_word(base + 2u * h), q2_k_word(base + 2u * h + 1u));
    let dm = unpack2x16float(q2_k_word(base + 20u));
    let bytes = vec4<u32>(0u, 8u, 16u, 24u);
    var s: array<vec2<f32>, 4>;
    for (var r = 0u; r < 4u; r++) {
        let shift = bytes + vec4<u32>(2u * r);
        (*codes)[4u * r] = codes_f32((vec4<u32>(q.x) >> shift) & vec4<u32>(3u), 0.0);
        (*codes)[4u * r + 1u] = codes_f32((vec4<u32>(q.y) >> shift) & vec4<u32>(3u), 0.0);
        (*codes)[4u * r + 2u] = codes_f32((vec4<u32>(q.z) >> shift) & vec4<u32>(3u), 0.0);
        (*codes)[4u * r + 3u] = codes_f32((vec4<u32>(q.w) >> shift) & vec4<u32>(3u), 0.0);
        // Sub-block byte 8h + 2r + l16: word 2h + r / 2, byte (2r + l16) % 4.
        let b = (sc[r / 2u] >> (8u * ((2u * r + l16) % 4u))) & 255u;
        s[r] = vec2<f32>(dm.x * f32(b & 15u), dm.y * f32(b >> 4u));
    }
    return s;
}

fn unit_values(row: u32, units: u32, u: u32) -> Unit {
    var c: Unit;
    let s = q2_k_unit(row, units, u, &c);
    var v: Unit;
    for (var i = 0u; i < 16u; i++) {
        v[i] = s[i / 4u].x * c[i] - vec4<f32>(s[i / 4u].y);
    }
    return v;
}

fn unit_dot(row: u32, units: u32, u: u32, x: Unit) -> f32 {
    var c: Unit;
    let s = q2_k_unit(row, units, u, &c);
    var total = 0.0;
    for (var r = 0u; r < 4u; r++) {
        let i = 4u * r;
        let qx = dot(c[i], x[i]) + dot(c[i + 1u], x[i + 1u]) + dot(c[i + 2u], x[i + 2u])
            + dot(c[i + 3u], x[i + 3u]);
        let sx = dot((x[i] + x[i + 1u]) + (x[i + 2u] + x[i + 3u]), vec4<f32>(1.0));
        total += s[r].x * qx - s[r].y * sx;
    }
    return total;
}
