// Weight layout IQ4_NL (see dot_rows4.wgsl for the interface), row-major: `quants` holds each
// block's 16 bytes of codes (byte j: value j low nibble, value 16 + j high), one vec4 per
// block; `scales` the f16 `d` of each block, two per u32 (even index in the low half).
// Value = d * level(code) (levels_iq4.wgsl, appended after this). A unit is one block.

const UNIT_RUNS: u32 = 2u;
alias Unit = array<vec4<f32>, 8>;

fn unit_run(u: u32, k: u32) -> u32 {
    return 32u * u + 16u * k;
}

/// The 32 levels of block `u` of `row`; returns d.
fn iq4_nl_unit(row: u32, units: u32, u: u32, levels: ptr<function, Unit>) -> f32 {
    let b = row * units + u;
    iq4_levels(quants[b], levels);
    return unpack2x16float(scales[b / 2u])[b % 2u];
}

fn unit_values(row: u32, units: u32, u: u32) -> Unit {
    var l: Unit;
    let d = iq4_nl_unit(row, units, u, &l);
    var v: Unit;
    for (var i = 0u; i < 8u; i++) {
        v[i] = d * l[i];
    }
    return v;
}

fn unit_dot(row: u32, units: u32, u: u32, x: Unit) -> f32 {
    var l: Unit;
    let d = iq4_nl_unit(row, units, u, &l);
    return d * iq4_dot(l, x);
}
