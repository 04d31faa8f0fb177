//! Launcher of `moe_combine.wgsl`: every token's expert outputs, weighted by its route and
//! added to the residual. Reference: the weighted sum of `cpu::moe_ffn`.

use crate::gpu::context::GpuContext;
use crate::gpu::kernels::matmul::BatchParams;
use crate::gpu::kernels::moe_group::Routing;
use crate::gpu::pipelines::{Dispatch, Pipelines};
use crate::gpu::shader::{wgsl_struct, Shader, Slot, WeightAccess};
use crate::gpu::upload::uniform;

pub const SHADER: Shader = Shader {
    name: "moe_combine",
    source: include_str!("moe_combine.wgsl"),
    bindings: &[
        Slot::Uniform(&Params::LAYOUT),
        Slot::Uniform(&BatchParams::LAYOUT),
        Slot::Read,
        Slot::Read,
        Slot::Read,
        Slot::ReadWrite,
    ],
    overrides: &[],
    consts: &[],
    structs: &[&BatchParams::LAYOUT],
    reduces: false,
    lanes: false,
    weights: WeightAccess::None,
    libraries: &[],
    cooperative: false,
};

wgsl_struct! {
    struct Params as "Params" {
        hidden: u32,
        slots: u32,
        weights_at: u32,
        positions_at: u32,
    }
}

/// The dispatch adding to `x` (`[tokens][hidden]`) the rows of `down` (`[sorted pairs][hidden]`)
/// of each token's pairs, weighted; its grid (one workgroup per token) is set per batch.
#[allow(clippy::too_many_arguments)]
pub fn dispatch(
    ctx: &GpuContext,
    pipes: &Pipelines,
    r: &Routing,
    hidden: usize,
    batch: &wgpu::Buffer,
    route: &wgpu::Buffer,
    pairs: &wgpu::Buffer,
    down: &wgpu::Buffer,
    x: &wgpu::Buffer,
) -> Dispatch {
    assert!(
        hidden.is_multiple_of(4),
        "moe_combine rows must be vec4-aligned"
    );
    let params = uniform(
        ctx,
        "moe_combine params",
        &Params {
            hidden: hidden as u32,
            slots: r.slots as u32,
            weights_at: r.weights_at() as u32,
            positions_at: r.positions_at() as u32,
        },
    );
    pipes
        .get(ctx, SHADER, &[])
        .dispatch(ctx, &[&params, batch, route, pairs, down, x], [1, 1, 1])
}
