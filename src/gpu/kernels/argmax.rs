//! Launcher of `wgsl/argmax.wgsl`: the id of the largest logit, so greedy decoding reads
//! back 4 bytes. Reference: `cpu::ops::argmax`.

use crate::gpu::context::GpuContext;
use crate::gpu::shaders::{Dispatch, Pipelines, Shader, Slot};
use crate::gpu::upload::uniform;

pub const SHADER: Shader = Shader {
    name: "argmax",
    source: include_str!("../../../wgsl/argmax.wgsl"),
    bindings: &[Slot::Uniform, Slot::Read, Slot::ReadWrite],
    reduces: false,
    dots: false,
};

/// Invocations of the single workgroup (the kernel's WG_ARGMAX).
pub const WORKGROUP: u32 = 256;

pub fn dispatch(
    ctx: &GpuContext,
    pipes: &Pipelines,
    n: usize,
    logits: &wgpu::Buffer,
    result: &wgpu::Buffer,
) -> Dispatch {
    let params = uniform(ctx, "argmax params", &[n as u32, 0, 0, 0]);
    pipes
        .get(ctx, SHADER, &[])
        .dispatch(ctx, &[&params, logits, result], [1, 1, 1])
}
