//! Launcher of `argmax.wgsl`: the id of the largest logit, so greedy decoding reads
//! back 4 bytes. Reference: `cpu::ops::argmax`.

use crate::error::Result;
use crate::gpu::context::GpuContext;
use crate::gpu::pipelines::{flag, Dispatch, Pipelines, Shader, Slot};
use crate::gpu::upload::{storage_zeroed, uniform};

pub const SHADER: Shader = Shader {
    name: "argmax",
    source: include_str!("argmax.wgsl"),
    bindings: &[Slot::Uniform, Slot::Read, Slot::ReadWrite],
    reduces: false,
    dots: false,
};

/// Invocations per workgroup (the kernel's WG_ARGMAX).
pub const WORKGROUP: u32 = 256;
/// Logits each workgroup of the first pass reduces (the kernel's SPAN).
pub const SPAN: usize = 4 * WORKGROUP as usize;

/// The two dispatches (per-span bests, then the best of those) writing the index of the
/// largest of `n` logits to `result[0]`.
pub fn dispatches(
    ctx: &GpuContext,
    pipes: &Pipelines,
    n: usize,
    logits: &wgpu::Buffer,
    result: &wgpu::Buffer,
) -> Result<Vec<Dispatch>> {
    let spans = n.div_ceil(SPAN);
    let pairs = storage_zeroed(ctx, "argmax pairs", 2 * spans)?;
    let pass = |last: bool, count: usize, input: &wgpu::Buffer, out: &wgpu::Buffer, grid| {
        let params = uniform(ctx, "argmax params", &[count as u32, 0, 0, 0]);
        pipes.get(ctx, SHADER, &[("FINAL", flag(last))]).dispatch(
            ctx,
            &[&params, input, out],
            [grid, 1, 1],
        )
    };
    Ok(vec![
        pass(false, n, logits, &pairs, spans as u32),
        pass(true, spans, &pairs, result, 1),
    ])
}
