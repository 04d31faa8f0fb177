//! Launcher of `attn_combine.wgsl`: merges the position splits of `attn_partial` into each
//! head's softmax-weighted latent context (`kqv`). Reference: `cpu::attention`.

use crate::config::Config;
use crate::gpu::context::{GpuContext, WORKGROUP_SIZE};
use crate::gpu::kernels::attn_partial::{self, TokenParams};
use crate::gpu::pipelines::{Dispatch, Pipelines};
use crate::gpu::shader::{wgsl_struct, Shader, Slot};
use crate::gpu::upload::uniform;

pub const SHADER: Shader = Shader {
    name: "attn_combine",
    source: include_str!("attn_combine.wgsl"),
    bindings: &[
        Slot::Uniform(&Params::LAYOUT),
        Slot::Uniform(&TokenParams::LAYOUT),
        Slot::Read,
        Slot::ReadWrite,
    ],
    overrides: &[],
    consts: &[("MAX_SPLITS", attn_partial::MAX_SPLITS as u32)],
    structs: &[&TokenParams::LAYOUT],
    reduces: true,
    dots: false,
};

wgsl_struct! {
    struct Params as "Params" {
        kv: u32,
        max_splits: u32,
        _pad0: u32,
        _pad1: u32,
    }
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
            ..Default::default()
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
