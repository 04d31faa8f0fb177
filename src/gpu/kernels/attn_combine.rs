//! Launcher of `attn_combine.wgsl`: merges the position splits of `attn_partial` into
//! each head's softmax-weighted latent context (`kqv`). Reference: `cpu::attention`.

use crate::config::Config;
use crate::gpu::context::{GpuContext, WORKGROUP_SIZE};
use crate::gpu::kernels::attn_partial;
use crate::gpu::pipelines::{Dispatch, Pipelines, Shader, Slot};
use crate::gpu::upload::uniform;

pub const SHADER: Shader = Shader {
    name: "attn_combine",
    source: include_str!("attn_combine.wgsl"),
    bindings: &[Slot::Uniform, Slot::Uniform, Slot::Read, Slot::ReadWrite],
    reduces: true,
    dots: false,
};

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    kv: u32,
    max_splits: u32,
    _pad: [u32; 2],
}

pub fn dispatch(
    ctx: &GpuContext,
    pipes: &Pipelines,
    cfg: &Config,
    max_context: usize,
    token: &wgpu::Buffer,
    partial: &wgpu::Buffer,
    kqv: &wgpu::Buffer,
) -> Dispatch {
    let params = uniform(
        ctx,
        "attn_combine params",
        &Params {
            kv: cfg.kv_lora_rank as u32,
            max_splits: attn_partial::max_splits(max_context) as u32,
            _pad: [0; 2],
        },
    );
    pipes.get(ctx, SHADER, &[]).dispatch(
        ctx,
        &[&params, token, partial, kqv],
        [
            cfg.n_heads as u32,
            cfg.kv_lora_rank.div_ceil(WORKGROUP_SIZE as usize) as u32,
            1,
        ],
    )
}
