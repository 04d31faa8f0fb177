//! Launcher of `matvec.wgsl`: `out (+)= W · input`, with an optional RMSNorm prologue
//! and per-head batching. Reference: `cpu::ops::matvec` (and `rmsnorm` for the prologue).

use crate::gpu::context::GpuContext;
use crate::gpu::pipelines::{grid, Dispatch, Pipelines};
use crate::gpu::shader::{self, wgsl_struct, Override, Shader, Slot, WeightAccess};
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
    overrides: &[
        NORM.decl(),
        ACCUMULATE.decl(),
        ROWS.decl(),
        GROUP_LANES.decl(),
        LANES.decl(),
    ],
    consts: &[("AWG", WORKGROUP as u32)],
    structs: &[],
    reduces: false,
    lanes: true,
    weights: WeightAccess::RowDots,
    libraries: &[shader::GROUP_SUMS],
    cooperative: false,
};

/// RMSNorm prologue.
pub const NORM: Override<bool> = Override::new("NORM");
/// Residual epilogue: out += result.
pub const ACCUMULATE: Override<bool> = Override::new("ACCUMULATE");
/// Rows per lane group: 16 for the LM head's row count, 4 otherwise.
pub const ROWS: Override<u32> = Override::new("ROWS");
/// Invocations sharing a row quad: about one per dot unit of a row.
pub const GROUP_LANES: Override<u32> = Override::new("GROUP_LANES");
/// Invocations one lane_sum adds: GROUP_LANES, or the device's smallest subgroup if fewer.
pub const LANES: Override<u32> = Override::new("LANES");

/// Invocations per workgroup: lane groups of rows up to 256 units have theirs in one
/// workgroup, and short rows' lane groups share one.
pub const WORKGROUP: usize = 256;

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

/// Invocations sharing a row quad for rows of `dots` dot units: one per dot unit (a power of
/// two, at least 8, at most the workgroup), so a row's loads are all in flight at once.
pub fn group_lanes(dots: usize) -> usize {
    dots.next_power_of_two().clamp(8, WORKGROUP)
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
            let lanes = group_lanes(m.cols / c.format.dot_values());
            let rows_per_wg = rows_per_group * WORKGROUP / lanes;
            let kernel = pipes.get_for(
                ctx,
                SHADER,
                c.format,
                &[
                    NORM.set(a.norm.is_some()),
                    ACCUMULATE.set(a.accumulate),
                    ROWS.set(rows_per_group as u32),
                    GROUP_LANES.set(lanes as u32),
                    LANES.set((lanes as u32).min(ctx.lane_limit)),
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
