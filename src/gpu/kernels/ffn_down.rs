//! Launcher of `ffn_down.wgsl`: the down projections of every expert a token uses,
//! weighted by the route and added to the residual, in one dispatch per chunk.
//! Reference: `cpu::ops::matvec` and the weighted sum of `cpu::moe_ffn`.

use crate::gpu::context::GpuContext;
use crate::gpu::pipelines::{Dispatch, Pipelines};
use crate::gpu::shader::{self, wgsl_struct, Override, Shader, Slot, WeightAccess};
use crate::gpu::upload::{uniform, GpuMatrix};

pub const SHADER: Shader = Shader {
    name: "ffn_down",
    source: include_str!("ffn_down.wgsl"),
    bindings: &[
        Slot::Uniform(&Params::LAYOUT),
        Slot::Read,
        Slot::Read,
        Slot::Read,
        Slot::Read,
        Slot::ReadWrite,
    ],
    overrides: &[LANES.decl()],
    consts: &[("AWG", WORKGROUP as u32)],
    structs: &[],
    reduces: false,
    lanes: true,
    weights: WeightAccess::RowDots,
    libraries: &[shader::GROUP_SUMS],
    cooperative: false,
};

/// Invocations per workgroup (four output rows): enough to give each (slot, unit) pair of
/// five 1536-column Q4_K experts about one invocation.
pub const WORKGROUP: usize = 256;

/// Invocations one lane_sum adds: the device's smallest subgroup.
pub const LANES: Override<u32> = Override::new("LANES");

wgsl_struct! {
    struct Params as "Params" {
        hidden: u32,
        ffn: u32,
        slots: u32,
        row_start: u32,
        rows: u32,
        _pad0: u32,
        _pad1: u32,
        _pad2: u32,
    }
}

/// `stack`: `[experts][hidden][ffn]`. `act`: [slots][ffn]. `route`: ids then weights of the
/// slots. `x`: [hidden] residual, added to.
#[allow(clippy::too_many_arguments)]
pub fn dispatches(
    ctx: &GpuContext,
    pipes: &Pipelines,
    stack: &GpuMatrix,
    hidden: usize,
    slots: usize,
    act: &wgpu::Buffer,
    route: &wgpu::Buffer,
    x: &wgpu::Buffer,
) -> Vec<Dispatch> {
    stack
        .chunks
        .iter()
        .map(|c| {
            let lanes = ctx.lane_limit.min(WORKGROUP as u32);
            let kernel = pipes.get_for(ctx, SHADER, c.format, &[LANES.set(lanes)]);
            let params = uniform(
                ctx,
                "ffn_down params",
                &Params {
                    hidden: hidden as u32,
                    ffn: stack.cols as u32,
                    slots: slots as u32,
                    row_start: c.row_start as u32,
                    rows: c.rows as u32,
                    ..Default::default()
                },
            );
            kernel.dispatch(
                ctx,
                &[&params, &c.quants, &c.scales, act, route, x],
                [hidden.div_ceil(4) as u32, 1, 1],
            )
        })
        .collect()
}
