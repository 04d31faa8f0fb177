// Weight layout IQ4_XS (see dot_rows4.wgsl for the interface), row-major per super-block of
// 256 values: `quants` holds the 128 bytes of codes, 8 vec4 (vec4 i: sub-block i, byte j the
// code of value 32i + j in the low nibble, of 32i + 16 + j in the high one); `scales` the
// block's first 8 bytes, 2 u32: `d` (f16, low half) and `scales_h` (high half), then
// `scales_l`. Sub-block i's 6-bit scale: nibble i of `scales_l`, bits 2i..2i+1 of `scales_h`
// above it, minus 32. Value = d * scale * level(code) (levels_iq4.wgsl, appended after this).
// A unit is one sub-block: 32 consecutive values.

const UNIT_RUNS: u32 = 2u;
alias Unit = array<vec4<f32>, 8>;

fn unit_run(u: u32, k: u32) -> u32 {
    return 32u * u + 16u * k;
}

/// The 32 levels of sub-block `u` of `row`; returns d * scale.
fn iq4_xs_unit(row: u32, units: u32, u: u32, levels: ptr<function, Unit>) -> f32 {
    let s = row * units + u;
    let block = s / 8u;
    let i = s % 8u;
    let head = scales[2u * block];
    let low = (scales[2u * block + 1u] >> (4u * i)) & 15u;
    let high = (head >> (16u + 2u * i)) & 3u;
    iq4_levels(quants[s], levels);
    return unpack2x16float(head).x * f32(i32(low | (high << 4u)) - 32);
}

fn unit_values(row: u32, units: u32, u: u32) -> Unit {
    var l: Unit;
    let ds = iq4_xs_unit(row, units, u, &l);
    var v: Unit;
    for (var i = 0u; i < 8u; i++) {
        v[i] = ds * l[i];
    }
    return v;
}

fn unit_dot(row: u32, units: u32, u: u32, x: Unit) -> f32 {
    var l: Unit;
    let ds = iq4_xs_unit(row, units, u, &l);
    return ds * iq4_dot(l, x);
}
