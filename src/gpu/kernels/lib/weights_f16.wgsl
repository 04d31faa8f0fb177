// Weight layout F16 (see dot_rows4.wgsl for the interface): `quants` holds the values' f16
// bits as the file stores them, two per u32 (the lower index in the low half), row-major; a
// unit is 16 consecutive values (2 vec4 of u32). Every f16 is exact in f32.

const UNIT_RUNS: u32 = 1u;
alias Unit = array<vec4<f32>, 4>;

fn unit_run(u: u32, k: u32) -> u32 {
    return 16u * u;
}

/// Four values from two u32 of f16 pairs.
fn f16x4(w: vec2<u32>) -> vec4<f32> {
    return vec4<f32>(unpack2x16float(w.x), unpack2x16float(w.y));
}

fn unit_values(row: u32, units: u32, u: u32) -> Unit {
    let i = 2u * (row * units + u);
    let a = quants[i];
    let b = quants[i + 1u];
    return Unit(f16x4(a.xy), f16x4(a.zw), f16x4(b.xy), f16x4(b.zw));
}

fn unit_dot(row: u32, units: u32, u: u32, x: Unit) -> f32 {
    let w = unit_values(row, units, u);
    return dot(w[0], x[0]) + dot(w[1], x[1]) + dot(w[2], x[2]) + dot(w[3], x[3]);
}
