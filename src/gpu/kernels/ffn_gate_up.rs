//! Launcher of `ffn_gate_up.wgsl`: SwiGLU gate/up of every routed and shared expert of
//! a token (or of a dense FFN) in one dispatch per chunk, with the FFN norm as prologue and,
//! in MoE layers, the expert choice from the router logits.
//! Reference: `cpu::ops::route`, `rmsnorm`, `matvec`, `swiglu`.

use crate::gpu::context::GpuContext;
use crate::gpu::pipelines::{Dispatch, Pipelines};
use crate::gpu::shader::{self, wgsl_struct, Override, Shader, Slot, WeightAccess};
use crate::gpu::upload::{uniform, GpuMatrix};

pub const SHADER: Shader = Shader {
    name: "ffn_gate_up",
    source: include_str!("ffn_gate_up.wgsl"),
    bindings: &[
        Slot::Uniform(&Params::LAYOUT),
        Slot::Read,
        Slot::Read,
        Slot::Read,
        Slot::Read,
        Slot::ReadWrite,
        Slot::ReadWrite,
        Slot::Read,
        Slot::Read,
    ],
    overrides: &[
        LANES.decl(),
        ROUTED.decl(),
        EXPERTS.decl(),
        TOP_K.decl(),
        NORM_WEIGHTS.decl(),
        WEIGHT_SCALE.decl(),
    ],
    consts: &[
        ("MAX_EXPERTS", MAX_EXPERTS as u32),
        ("AWG", WORKGROUP as u32),
        ("QUAD_LANES", QUAD_LANES as u32),
    ],
    structs: &[],
    reduces: false,
    lanes: true,
    weights: WeightAccess::RowDots,
    libraries: &[shader::ROUTE, shader::GROUP_SUMS],
    cooperative: false,
};

/// The kernel keeps per-expert state in workgroup arrays of this size.
pub const MAX_EXPERTS: usize = 256;

/// Invocations per workgroup. Each workgroup chooses the experts once and computes
/// WORKGROUP / QUAD_LANES row quads (two gate/up pairs each) at once, so the routing is paid
/// once per PAIRS_PER_WORKGROUP pairs while every quad has lanes of its own.
pub const WORKGROUP: usize = 256;
/// Invocations sharing a row quad: two dot units of each row apiece for 2048-column Q4_K and
/// Q8_0 rows (lane groups of 32 measured slower: BENCHMARKS.md).
pub const QUAD_LANES: usize = 64;
pub const PAIRS_PER_WORKGROUP: usize = 2 * WORKGROUP / QUAD_LANES;

/// Invocations one lane_sum adds: QUAD_LANES, or the device's smallest subgroup if fewer.
pub const LANES: Override<u32> = Override::new("LANES");
/// The kernel chooses the experts from the router logits (MoE layers).
pub const ROUTED: Override<bool> = Override::new("ROUTED");
pub const EXPERTS: Override<u32> = Override::new("EXPERTS");
pub const TOP_K: Override<u32> = Override::new("TOP_K");
pub const NORM_WEIGHTS: Override<bool> = Override::new("NORM_WEIGHTS");
pub const WEIGHT_SCALE: Override<f32> = Override::new("WEIGHT_SCALE");

/// How a token's experts are chosen.
pub enum Route<'a> {
    /// Listed in `route` (`[ids][weights]`): a dense FFN is the one expert 0.
    Fixed,
    /// Chosen from the router output (`logits` and `bias`: [experts]); the kernel writes
    /// them to `route` for ffn_down.
    Router {
        logits: &'a wgpu::Buffer,
        bias: &'a wgpu::Buffer,
        experts: usize,
        k: usize,
        norm: bool,
        scale: f32,
    },
}

wgsl_struct! {
    struct Params as "Params" {
        ffn: u32,
        cols: u32,
        row_start: u32,
        rows: u32,
        eps: f32,
        _pad0: u32,
        _pad1: u32,
        _pad2: u32,
    }
}

/// `stack`: `[experts][ffn][gate, up][hidden]` (see the kernel). `x`: [hidden] residual,
/// normed by `norm_w`. `route`: `[ids][weights]` of the `slots` experts to run, read or
/// (with [`Route::Router`]) written. `act`: [slots][ffn] out.
#[allow(clippy::too_many_arguments)]
pub fn dispatches(
    ctx: &GpuContext,
    pipes: &Pipelines,
    stack: &GpuMatrix,
    ffn: usize,
    slots: usize,
    x: &wgpu::Buffer,
    norm_w: &wgpu::Buffer,
    eps: f32,
    choice: &Route,
    route: &wgpu::Buffer,
    act: &wgpu::Buffer,
) -> Vec<Dispatch> {
    let mut constants = vec![LANES.set(ctx.lane_limit.min(QUAD_LANES as u32))];
    let (logits, bias) = match *choice {
        Route::Fixed => (&ctx.dummy, &ctx.dummy),
        Route::Router {
            logits,
            bias,
            experts,
            k,
            norm,
            scale,
        } => {
            assert!(experts <= MAX_EXPERTS && k <= slots && k <= experts);
            constants.extend([
                ROUTED.set(true),
                EXPERTS.set(experts as u32),
                TOP_K.set(k as u32),
                NORM_WEIGHTS.set(norm),
                WEIGHT_SCALE.set(scale),
            ]);
            (logits, bias)
        }
    };
    stack
        .chunks
        .iter()
        .map(|c| {
            let kernel = pipes.get_for(ctx, SHADER, c.format, &constants);
            let params = uniform(
                ctx,
                "ffn_gate_up params",
                &Params {
                    ffn: ffn as u32,
                    cols: stack.cols as u32,
                    row_start: c.row_start as u32,
                    rows: c.rows as u32,
                    eps,
                    ..Default::default()
                },
            );
            kernel.dispatch(
                ctx,
                &[
                    &params, &c.quants, &c.scales, x, norm_w, route, act, logits, bias,
                ],
                [ffn.div_ceil(PAIRS_PER_WORKGROUP) as u32, slots as u32, 1],
            )
        })
        .collect()
}
