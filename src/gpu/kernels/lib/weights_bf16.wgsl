// Weight layout BF16 (see dot_rows4.wgsl for the interface): `quants` holds the values' bf16
// bits as the file stores them, two per u32 (the lower index in the low half), row-major; a
// unit is 16 consecutive values (2 vec4 of u32). A bf16 is the high half of an f32's bits.

const UNIT_RUNS: u32 = 1u;
alias Unit = array<vec4<f32>, 4>;

fn unit_run(u: u32, k: u32) -> u32 {
    return 16u * u;
}

/// Four values from two u32 of bf16 pairs.
fn bf16x4(w: vec2<u32>) -> vec4<f32> {
    let hi = vec4<u32>(w.x, w.x, w.y, w.y);
    return bitcast<vec4<f32>>((hi << vec4<u32>(16u, 0u, 16u, 0u)) & vec4<u32>(0xFFFF0000u));
}

fn unit_values(row: u32, units: u32, u: u32) -> Unit {
    let i = 2u * (row * units + u);
    let a = quants[i];
    let b = quants[i + 1u];
    return Unit(bf16x4(a.xy), bf16x4(a.zw), bf16x4(b.xy), bf16x4(b.zw));
}

fn unit_dot(row: u32, units: u32, u: u32, x: Unit) -> f32 {
    let w = unit_values(row, units, u);
    return dot(w[0], x[0]) + dot(w[1], x[1]) + dot(w[2], x[2]) + dot(w[3], x[3]);
}
