// Four weight rows times one input vector: the inner loop of matvec.wgsl, ffn_gate_up.wgsl
// and ffn_down.wgsl, appended to them after the weight layout's library by
// src/gpu/shader.rs. The kernel declares `quants: array<vec4<u32>>`, `scales: array<u32>`
// and `fn input4(base: u32, j: u32) -> vec4<f32>` (input elements 4j..4j+3 of the slice at
// vec4 `base`).
//
// The layout library (lib/weights_<layout>.wgsl) cuts each row into units, the share of a
// row one invocation reads at a time: UNIT_RUNS runs of 16 consecutive values, run k of
// unit u starting at column `unit_run(u, k)`. It defines
//   alias Unit = array<vec4<f32>, 4 * UNIT_RUNS>   a unit's values (or inputs), run by run
//   fn unit_values(row, units, u) -> Unit           the decoded values (embed, mat-mul)
//   fn unit_dot(row, units, u, x: Unit) -> f32       Σ value · x over the unit
// where `row` is local to the binding and `units` is the units per row.
//
// Invocation `lane` of a group of `lanes` sharing the rows (the workgroup, or a lane group of
// matvec.wgsl) takes units lane, lane + lanes, ...: each unit's input is loaded once for all
// four rows, and the four rows' weight loads are independent, so they are in flight together.

/// The input of unit `u`, run by run, from the slice at vec4 `base`.
fn unit_input(base: u32, u: u32) -> Unit {
    var x: Unit;
    for (var k = 0u; k < UNIT_RUNS; k++) {
        let c = unit_run(u, k) / 4u;
        x[4u * k] = input4(base, c);
        x[4u * k + 1u] = input4(base, c + 1u);
        x[4u * k + 2u] = input4(base, c + 2u);
        x[4u * k + 3u] = input4(base, c + 3u);
    }
    return x;
}

/// rows[k] · input over unit `u` alone, k = 0..3 (rows of `units` units, local to the
/// binding; the input the slice at vec4 `base`).
fn unit_dots4(rows: vec4<u32>, units: u32, u: u32, base: u32) -> vec4<f32> {
    let x = unit_input(base, u);
    return vec4<f32>(
        unit_dot(rows.x, units, u, x),
        unit_dot(rows.y, units, u, x),
        unit_dot(rows.z, units, u, x),
        unit_dot(rows.w, units, u, x),
    );
}

/// This invocation's share of rows[k] · input for k = 0..3 (rows are local to the binding).
fn dot_rows4(rows: vec4<u32>, cols: u32, base: u32, lane: u32, lanes: u32) -> vec4<f32> {
    let units = cols / (16u * UNIT_RUNS);
    var acc = vec4<f32>(0.0);
    for (var u = lane; u < units; u += lanes) {
        acc += unit_dots4(rows, units, u, base);
    }
    return acc;
}
