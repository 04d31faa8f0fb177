//! Launcher of `wgsl/ffn_gate_up.wgsl`: SwiGLU gate/up of every routed and shared expert of
//! a token (or of a dense FFN) in one dispatch per chunk, with the FFN norm as prologue.
//! Reference: `cpu::ops::rmsnorm`, `matvec`, `swiglu`.

use crate::gpu::context::GpuContext;
use crate::gpu::shaders::{flag, Dispatch, Pipelines, Shader, Slot};
use crate::gpu::upload::{uniform, GpuMatrix};

pub const SHADER: Shader = Shader {
    name: "ffn_gate_up",
    source: include_str!("../../../wgsl/ffn_gate_up.wgsl"),
    bindings: &[
        Slot::Uniform,
        Slot::Read,
        Slot::Read,
        Slot::Read,
        Slot::Read,
        Slot::Read,
        Slot::ReadWrite,
    ],
    reduces: true,
    dots: true,
};

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
/// normed by `norm_w`. `route`: ids of the `slots` experts to run. `act`: [slots][ffn] out.
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
    route: &wgpu::Buffer,
    act: &wgpu::Buffer,
) -> Vec<Dispatch> {
    let kernel = pipes.get(ctx, SHADER, &[("WEIGHTS_F32", flag(stack.format.is_f32()))]);
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
                &[&params, &c.quants, &c.scales, x, norm_w, route, act],
                [ffn.div_ceil(2) as u32, slots as u32, 1],
            )
        })
        .collect()
}
