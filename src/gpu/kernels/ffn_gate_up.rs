//! Launcher of `ffn_gate_up.wgsl`: SwiGLU gate/up of every routed and shared expert of
//! a token (or of a dense FFN) in one dispatch per chunk, with the FFN norm as prologue and,
//! in MoE layers, the expert choice from the router logits.
//! Reference: `cpu::ops::route`, `rmsnorm`, `matvec`, `swiglu`.

use crate::gpu::context::GpuContext;
use crate::gpu::pipelines::{flag, Dispatch, Pipelines, Shader, Slot};
use crate::gpu::upload::{uniform, GpuMatrix};

pub const SHADER: Shader = Shader {
    name: "ffn_gate_up",
    source: include_str!("ffn_gate_up.wgsl"),
    bindings: &[
        Slot::Uniform,
        Slot::Read,
        Slot::Read,
        Slot::Read,
        Slot::Read,
        Slot::ReadWrite,
        Slot::ReadWrite,
        Slot::Read,
        Slot::Read,
    ],
    reduces: true,
    dots: true,
};

/// The kernel keeps per-expert state in workgroup arrays of this size.
pub const MAX_EXPERTS: usize = 256;

/// Gate/up pairs each workgroup computes (the kernel's PAIRS): the norm prologue and the
/// routing are paid once per PAIRS pairs. Measured on the H100 (full model, depth 128):
/// 2 -> 162.4 tok/s, 4 -> 163.5, 8 -> 169.2, 16 -> 154.9, 32 -> 143.8.
pub const PAIRS: usize = 8;

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

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    ffn: u32,
    cols: u32,
    row_start: u32,
    rows: u32,
    eps: f32,
    _pad: [u32; 3],
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
    let mut constants = vec![
        ("WEIGHTS_F32", flag(stack.format.is_f32())),
        ("PAIRS", PAIRS as f64),
    ];
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
                ("ROUTED", 1.0),
                ("EXPERTS", experts as f64),
                ("TOP_K", k as f64),
                ("NORM_WEIGHTS", flag(norm)),
                ("WEIGHT_SCALE", scale as f64),
            ]);
            (logits, bias)
        }
    };
    let kernel = pipes.get(ctx, SHADER, &constants);
    stack
        .chunks
        .iter()
        .map(|c| {
            let params = uniform(
                ctx,
                "ffn_gate_up params",
                &Params {
                    ffn: ffn as u32,
                    cols: stack.cols as u32,
                    row_start: c.row_start as u32,
                    rows: c.rows as u32,
                    eps,
                    _pad: [0; 3],
                },
            );
            kernel.dispatch(
                ctx,
                &[
                    &params, &c.quants, &c.scales, x, norm_w, route, act, logits, bias,
                ],
                [ffn.div_ceil(PAIRS) as u32, slots as u32, 1],
            )
        })
        .collect()
}
