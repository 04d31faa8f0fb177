//! Launcher of `wgsl/attn_partial.wgsl`: scores, softmax and latent context of each head
//! over one chunk of cache positions. Reference: the per-head loop of `cpu::attention`.

use crate::config::Config;
use crate::gpu::context::GpuContext;
use crate::gpu::shaders::{Dispatch, Pipelines, Shader, Slot};
use crate::gpu::upload::uniform;

pub const SHADER: Shader = Shader {
    name: "attn_partial",
    source: include_str!("../../../wgsl/attn_partial.wgsl"),
    bindings: &[
        Slot::Uniform,
        Slot::Uniform,
        Slot::Read,
        Slot::Read,
        Slot::Read,
        Slot::ReadWrite,
    ],
    reduces: true,
    dots: false,
};

/// Positions per workgroup (one per invocation: the workgroup size); attn_combine.wgsl
/// uses the same.
pub const CHUNK: usize = crate::gpu::context::WORKGROUP_SIZE as usize;
/// Largest cache row (kv + rope) the kernel holds in workgroup memory.
pub const MAX_ROW: usize = 1024;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    kv: u32,
    rope: u32,
    head_dim: u32,
    nope: u32,
    scale: f32,
    max_chunks: u32,
    _pad: [u32; 2],
}

/// Chunks of `n_ctx` positions: the x extent of the grid.
pub fn chunks(n_ctx: usize) -> usize {
    n_ctx.div_ceil(CHUNK)
}

/// Floats of the partial buffer for a context of `max_context` positions.
pub fn partial_len(cfg: &Config, max_context: usize) -> usize {
    cfg.n_heads * chunks(max_context) * (2 + cfg.kv_lora_rank)
}

/// The grid is set per token: `[chunks(n_ctx), heads, 1]`.
#[allow(clippy::too_many_arguments)]
pub fn dispatch(
    ctx: &GpuContext,
    pipes: &Pipelines,
    cfg: &Config,
    max_context: usize,
    token: &wgpu::Buffer,
    q_abs: &wgpu::Buffer,
    q: &wgpu::Buffer,
    cache: &wgpu::Buffer,
    partial: &wgpu::Buffer,
) -> Dispatch {
    assert!(
        cfg.cache_row() <= MAX_ROW
            && cfg.cache_row().is_multiple_of(4)
            && cfg.qk_rope.is_multiple_of(4)
    );
    let params = uniform(
        ctx,
        "attn_partial params",
        &Params {
            kv: cfg.kv_lora_rank as u32,
            rope: cfg.qk_rope as u32,
            head_dim: (cfg.qk_nope + cfg.qk_rope) as u32,
            nope: cfg.qk_nope as u32,
            scale: cfg.attn_scale(),
            max_chunks: chunks(max_context) as u32,
            _pad: [0; 2],
        },
    );
    pipes.get(ctx, SHADER, &[]).dispatch(
        ctx,
        &[&params, token, q_abs, q, cache, partial],
        [1, cfg.n_heads as u32, 1],
    )
}
