// Four weight rows times one input vector: the inner loop of matvec.wgsl, ffn_gate_up.wgsl
// and ffn_down.wgsl, appended to them after the weight layout's library by
// src/gpu/shader.rs. The kernel declares `quants: array<vec4<u32>>`, `scales: array<u32>`
// and `fn input4(base: u32, j: u32) -> vec4<f32>` (input elements 4j..4j+3 of the slice at
// vec4 `base`).
//
// The layout library (lib/weights_<layout>.wgsl) cuts each row into units, the share of a
// row the batched mat-mul decodes at a time: UNIT_RUNS runs of 16 consecutive values, run k
// of unit u starting at column `unit_run(u, k)`. For the mat-vecs the rows are cut into dot
// units, the share one invocation reads at a time: DOT_RUNS runs, dot unit d's run k at
// column `dot_run(d, k)`. The layout library defines
//   alias Unit = array<vec4<f32>, 4 * UNIT_RUNS>   a unit's values (or inputs), run by run
//   fn unit_values(row, units, u) -> Unit           the decoded values (embed, mat-mul)
// and either `fn unit_dot(row, units, u, x: Unit) -> f32` (Σ value · x over unit u: its dot
// units are its units, lib/dot_whole_units.wgsl) or `fn run_dot(row, runs, r, x: Run) -> f32`
// (over run r of the row, `Run` 4 vec4s: its dot units are single runs, lib/dot_runs.wgsl),
// as `GpuLayout::dot_values` chooses. Either of those libraries, appended before this, gives
//   const DOT_RUNS, fn dot_run(d, k)
//   alias DotUnit = array<vec4<f32>, 4 * DOT_RUNS>  a dot unit's inputs, run by run
//   fn dot_unit(row, dots, d, x: DotUnit) -> f32    Σ value · x over dot unit d
// `row` is local to the binding; `units`, `runs` and `dots` count a row's units, runs and
// dot units.
// Smaller dot units give a row more invocations, each with fewer loads and less decoding
// (the mat-vecs wait on their loads: BENCHMARKS.md); larger units suit the mat-mul, whose
// registers hold a step's weights as the words they decode from.
//
// Invocation `lane` of a group of `lanes` sharing the rows (the workgroup, or a lane group of
// matvec.wgsl) takes dot units lane, lane + lanes, ...: each one's input is loaded once for
// all four rows, and the four rows' weight loads are independent, so they are in flight
// together.

/// The input of dot unit `d`, run by run, from the slice at vec4 `base`.
fn dot_input(base: u32, d: u32) -> DotUnit {
    var x: DotUnit;
    for (var k = 0u; k < DOT_RUNS; k++) {
        let c = dot_run(d, k) / 4u;
        x[4u * k] = input4(base, c);
        x[4u * k + 1u] = input4(base, c + 1u);
        x[4u * k + 2u] = input4(base, c + 2u);
        x[4u * k + 3u] = input4(base, c + 3u);
    }
    return x;
}

/// rows[k] · input over dot unit `d` alone, k = 0..3 (rows of `dots` dot units, local to the
/// binding; the input the slice at vec4 `base`).
fn dot_units4(rows: vec4<u32>, dots: u32, d: u32, base: u32) -> vec4<f32> {
    let x = dot_input(base, d);
    return vec4<f32>(
        dot_unit(rows.x, dots, d, x),
        dot_unit(rows.y, dots, d, x),
        dot_unit(rows.z, dots, d, x),
        dot_unit(rows.w, dots, d, x),
    );
}

/// This invocation's share of rows[k] · input for k = 0..3 (rows are local to the binding).
fn dot_rows4(rows: vec4<u32>, cols: u32, base: u32, lane: u32, lanes: u32) -> vec4<f32> {
    let dots = cols / (16u * DOT_RUNS);
    var acc = vec4<f32>(0.0);
    for (var d = lane; d < dots; d += lanes) {
        acc += dot_units4(rows, dots, d, base);
    }
    return acc;
}
