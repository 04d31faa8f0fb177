//! Launcher of `matvec.wgsl`: `out (+)= W · input`, with an optional RMSNorm prologue
//! and per-head batching. Reference: `cpu::ops::matvec` (and `rmsnorm` for the prologue).

use crate::gpu::context::{GpuContext, WORKGROUP_SIZE};
use crate::gpu::pipelines::{grid, Dispatch, Pipelines};
use crate::gpu::shader::{wgsl_struct, Override, Shader, Slot, WeightAccess};
use crate::gpu::upload::{uniform, GpuMatrix};

pub const SHADER: Shader = Shader {
    name: "matvec",
    source: include_str!("matvec.wgsl"),
    bindings: &[
        Slot::Uniform(&Params::LAYOUT),
        Slot::Read,
        Slot::Read,
        Slot::Read,
        Slot::Read,
        Slot::ReadWrite,
    ],
    overrides: &[NORM.decl(), ACCUMULATE.decl(), ROWS.decl(), LANES.decl()],
    consts: &[],
    structs: &[],
    reduces: true,
    lanes: true,
    weights: WeightAccess::RowDots,
    libraries: &[],
    cooperative: false,
};

/// RMSNorm prologue.
pub const NORM: Override<bool> = Override::new("NORM");
/// Residual epilogue: out += result.
pub const ACCUMULATE: Override<bool> = Override::new("ACCUMULATE");
/// Rows per lane group: 16 for the LM head's row count, 4 otherwise.
pub const ROWS: Override<u32> = Override::new("ROWS");
/// Invocations sharing a row quad: the workgroup, or fewer for short rows.
pub const LANES: Override<u32> = Override::new("LANES");

wgsl_struct! {
    struct Params as "Params" {
        rows: u32,
        cols: u32,
        row_offset: u32,
        in_offset: u32,
        group_rows: u32,
        group_stride: u32,
        eps: f32,
        groups_x: u32,
    }
}

/// How one mat-vec reads its input and writes its output.
pub struct Matvec<'a> {
    /// Input vector; the matrix reads `cols` values from `in_offset`.
    pub input: &'a wgpu::Buffer,
    pub in_offset: usize,
    /// Per-head batching: rows `[g * rows, (g + 1) * rows)` read the input at
    /// `in_offset + g * stride`. None: every row reads the same input.
    pub groups: Option<(usize, usize)>,
    /// RMSNorm prologue: input = rmsnorm(input) * weight.
    pub norm: Option<(&'a wgpu::Buffer, f32)>,
    pub out: &'a wgpu::Buffer,
    /// Residual epilogue: out += W · input.
    pub accumulate: bool,
}

/// Rows per lane group: 16 for matrices with rows enough to fill any GPU many times over
/// (the LM head), 4 otherwise so that 2048-row matrices still spread over every core.
/// (BENCHMARKS.md has the measured alternatives.)
fn rows_per_lane_group(rows: usize) -> usize {
    if rows >= 32768 {
        16
    } else {
        4
    }
}

/// Invocations sharing a row quad for rows of `units` units: for rows that would leave most
/// of the workgroup idle (at most a quarter of it busy), the fewest powers of two that give
/// each a unit (at least 8), where the device's lanes reach that far; else the whole
/// workgroup. (Rows of 17 to 32 units measured slower in lane groups: BENCHMARKS.md.)
fn lanes_per_quad(ctx: &GpuContext, units: usize) -> usize {
    let lanes = units.next_power_of_two().max(8);
    if lanes <= WORKGROUP_SIZE as usize / 4 && lanes <= ctx.lane_limit as usize {
        lanes
    } else {
        WORKGROUP_SIZE as usize
    }
}

pub fn dispatches(ctx: &GpuContext, pipes: &Pipelines, m: &GpuMatrix, a: &Matvec) -> Vec<Dispatch> {
    let (group_rows, group_stride) = a.groups.unwrap_or((m.rows, 0));
    assert!(
        a.in_offset.is_multiple_of(4) && group_stride % 4 == 0,
        "matvec input must be vec4-aligned"
    );
    assert!(
        a.groups.is_none() || (group_rows % 4 == 0 && a.norm.is_none()),
        "batched matvec: groups must be whole workgroups and cannot be normed"
    );
    assert!(
        a.groups.is_none() || m.chunks.iter().all(|c| c.row_start % 4 == 0),
        "batched matvec: every chunk must start at a whole four rows"
    );
    let (norm_w, eps) = a.norm.unwrap_or((&ctx.dummy, 0.0));
    m.chunks
        .iter()
        .map(|c| {
            let rows_per_group = rows_per_lane_group(c.rows);
            let lanes = lanes_per_quad(ctx, m.cols / c.format.unit_values());
            let rows_per_wg = rows_per_group * WORKGROUP_SIZE as usize / lanes;
            let kernel = pipes.get_for(
                ctx,
                SHADER,
                c.format,
                &[
                    NORM.set(a.norm.is_some()),
                    ACCUMULATE.set(a.accumulate),
                    ROWS.set(rows_per_group as u32),
                    LANES.set(lanes as u32),
                ],
            );
            let (workgroups, groups_x) = grid(ctx, c.rows.div_ceil(rows_per_wg));
            let params = uniform(
                ctx,
                "matvec params",
                &Params {
                    rows: c.rows as u32,
                    cols: m.cols as u32,
                    row_offset: c.row_start as u32,
                    in_offset: a.in_offset as u32,
                    group_rows: group_rows as u32,
                    group_stride: group_stride as u32,
                    eps,
                    groups_x,
                },
            );
            kernel.dispatch(
                ctx,
                &[&params, &c.quants, &c.scales, a.input, norm_w, a.out],
                workgroups,
            )
        })
        .collect()
}
