// The mat-vecs' dot units (lib/dot_rows4.wgsl) as the layout's whole units, with its
// `unit_dot`: appended by src/gpu/shader.rs after a layout library that does not cut its
// units smaller for the mat-vecs (`GpuLayout::dot_values`).

const DOT_RUNS: u32 = UNIT_RUNS;
alias DotUnit = Unit;

fn dot_run(d: u32, k: u32) -> u32 {
    return unit_run(d, k);
}

fn dot_unit(row: u32, dots: u32, d: u32, x: DotUnit) -> f32 {
    return unit_dot(row, dots, d, x);
}
