// The mat-vecs' dot units (lib/dot_rows4.wgsl) as single runs of 16 values, with the
// layout's `run_dot`: appended by src/gpu/shader.rs after a layout library that cuts its
// units into runs for the mat-vecs (`GpuLayout::dot_values`). Run r of a row is run
// r % UNIT_RUNS of unit r / UNIT_RUNS.

const DOT_RUNS: u32 = 1u;
alias Run = array<vec4<f32>, 4>;
alias DotUnit = Run;

fn dot_run(d: u32, k: u32) -> u32 {
    return unit_run(d / UNIT_RUNS, d % UNIT_RUNS);
}

fn dot_unit(row: u32, dots: u32, d: u32, x: DotUnit) -> f32 {
    return run_dot(row, dots, d, x);
}
