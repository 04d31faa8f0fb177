// Weight layout F32 (see dot_rows4.wgsl for the interface): `quants` holds the values' f32
// bits, row-major; a unit is 16 consecutive values (4 vec4).

const UNIT_RUNS: u32 = 1u;
alias Unit = array<vec4<f32>, 4>;

fn unit_run(u: u32, k: u32) -> u32 {
    return 16u * u;
}

fn unit_values(row: u32, units: u32, u: u32) -> Unit {
    let i = 4u * (row * units + u);
    return Unit(
        bitcast<vec4<f32>>(quants[i]),
        bitcast<vec4<f32>>(quants[i + 1u]),
        bitcast<vec4<f32>>(quants[i + 2u]),
        bitcast<vec4<f32>>(quants[i + 3u]),
    );
}

fn unit_dot(row: u32, units: u32, u: u32, x: Unit) -> f32 {
    let w = unit_values(row, units, u);
    return dot(w[0], x[0]) + dot(w[1], x[1]) + dot(w[2], x[2]) + dot(w[3], x[3]);
}
