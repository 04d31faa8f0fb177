//! Launcher of `wgsl/rope_append.wgsl`: RoPE on q_pe and k_pe, kv latent norm, and the
//! append of `[kv_cmpr | k_pe]` to the layer's cache. Reference: `cpu::ops::rope`,
//! `rmsnorm`, and the cache append of `cpu::attention`.

use crate::config::Config;
use crate::gpu::context::GpuContext;
use crate::gpu::shaders::{Dispatch, Pipelines, Shader, Slot};
use crate::gpu::upload::uniform;

pub const SHADER: Shader = Shader {
    name: "rope_append",
    source: include_str!("../../../wgsl/rope_append.wgsl"),
    bindings: &[
        Slot::Uniform,
        Slot::Uniform,
        Slot::Read,
        Slot::Read,
        Slot::Read,
        Slot::ReadWrite,
        Slot::ReadWrite,
    ],
    reduces: true,
    dots: false,
};

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    heads: u32,
    head_dim: u32,
    nope: u32,
    rope: u32,
    kv: u32,
    kv_offset: u32,
    eps: f32,
    _pad: u32,
}

/// (cos, sin) of the RoPE angles `pos * base^(-2i/dims)`, computed in f64 as `cpu::ops::rope`
/// does; uploaded per token.
pub fn rope_table(pos: usize, dims: usize, base: f32) -> Vec<[f32; 2]> {
    (0..dims / 2)
        .map(|i| {
            let theta = pos as f64 * (base as f64).powf(-2.0 * i as f64 / dims as f64);
            let (sin, cos) = theta.sin_cos();
            [cos as f32, sin as f32]
        })
        .collect()
}

/// `kv_a`: `[.. kv_offset | kv_cmpr (kv) | k_pe (rope)]`; `q`: [heads][nope + rope], roped in
/// place; `cache`: [positions][kv + rope], row `token.pos` written.
#[allow(clippy::too_many_arguments)]
pub fn dispatch(
    ctx: &GpuContext,
    pipes: &Pipelines,
    cfg: &Config,
    kv_offset: usize,
    token: &wgpu::Buffer,
    rope_cs: &wgpu::Buffer,
    kv_a: &wgpu::Buffer,
    kv_norm: &wgpu::Buffer,
    q: &wgpu::Buffer,
    cache: &wgpu::Buffer,
) -> Dispatch {
    let params = uniform(
        ctx,
        "rope_append params",
        &Params {
            heads: cfg.n_heads as u32,
            head_dim: (cfg.qk_nope + cfg.qk_rope) as u32,
            nope: cfg.qk_nope as u32,
            rope: cfg.qk_rope as u32,
            kv: cfg.kv_lora_rank as u32,
            kv_offset: kv_offset as u32,
            eps: cfg.rms_eps,
            _pad: 0,
        },
    );
    pipes.get(ctx, SHADER, &[]).dispatch(
        ctx,
        &[&params, token, rope_cs, kv_a, kv_norm, q, cache],
        [cfg.n_heads as u32 + 1, 1, 1],
    )
}
