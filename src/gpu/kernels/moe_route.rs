//! Launcher of `moe_route.wgsl`: the experts and weights of every token of a batch, by the
//! router's selection rule (shared with `ffn_gate_up.wgsl`). Reference: `cpu::ops::route`.

use crate::gpu::context::GpuContext;
use crate::gpu::kernels::ffn_gate_up::{EXPERTS, MAX_EXPERTS, NORM_WEIGHTS, TOP_K, WEIGHT_SCALE};
use crate::gpu::kernels::matmul::BatchParams;
use crate::gpu::kernels::moe_group::Routing;
use crate::gpu::pipelines::{Dispatch, Pipelines};
use crate::gpu::shader::{self, wgsl_struct, Shader, Slot, WeightAccess};
use crate::gpu::upload::uniform;

pub const SHADER: Shader = Shader {
    name: "moe_route",
    source: include_str!("moe_route.wgsl"),
    bindings: &[
        Slot::Uniform(&Params::LAYOUT),
        Slot::Uniform(&BatchParams::LAYOUT),
        Slot::Read,
        Slot::Read,
        Slot::ReadWrite,
    ],
    overrides: &[
        EXPERTS.decl(),
        TOP_K.decl(),
        NORM_WEIGHTS.decl(),
        WEIGHT_SCALE.decl(),
    ],
    consts: &[("MAX_EXPERTS", MAX_EXPERTS as u32)],
    structs: &[&BatchParams::LAYOUT],
    reduces: false,
    lanes: false,
    weights: WeightAccess::None,
    libraries: &[shader::ROUTE],
    cooperative: false,
};

wgsl_struct! {
    struct Params as "Params" {
        slots: u32,
        weights_at: u32,
        _pad0: u32,
        _pad1: u32,
    }
}

/// The selection rule of a model's MoE layers.
#[derive(Clone, Copy, Debug)]
pub struct Rule {
    /// Routed experts (the router's outputs).
    pub experts: usize,
    pub k: usize,
    pub norm: bool,
    pub scale: f32,
}

/// The dispatch writing the route of a batch (`[tokens][experts]` router logits in,
/// `route` out as [`Routing`] lays it out); its grid (one workgroup per token) is set per
/// batch.
#[allow(clippy::too_many_arguments)]
pub fn dispatch(
    ctx: &GpuContext,
    pipes: &Pipelines,
    rule: &Rule,
    r: &Routing,
    batch: &wgpu::Buffer,
    logits: &wgpu::Buffer,
    bias: &wgpu::Buffer,
    route: &wgpu::Buffer,
) -> Dispatch {
    assert!(rule.experts <= MAX_EXPERTS && rule.k <= r.slots && rule.k <= rule.experts);
    assert!(r.slots <= crate::gpu::context::WORKGROUP_SIZE as usize);
    let params = uniform(
        ctx,
        "moe_route params",
        &Params {
            slots: r.slots as u32,
            weights_at: r.weights_at() as u32,
            ..Default::default()
        },
    );
    let constants = [
        EXPERTS.set(rule.experts as u32),
        TOP_K.set(rule.k as u32),
        NORM_WEIGHTS.set(rule.norm),
        WEIGHT_SCALE.set(rule.scale),
    ];
    pipes.get(ctx, SHADER, &constants).dispatch(
        ctx,
        &[&params, batch, logits, bias, route],
        [1, 1, 1],
    )
}
