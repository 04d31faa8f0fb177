//! Launcher of `kv_rows.wgsl`: a batch's latent cache rows, written at their positions.
//! Reference: the cache append of `cpu::attention` (`ops::rmsnorm`, `ops::rope`, the cache
//! type's rounding).

use crate::config::Config;
use crate::gpu::context::GpuContext;
use crate::gpu::kernels::matmul::BatchParams;
use crate::gpu::pipelines::{Dispatch, Pipelines};
use crate::gpu::shader::{self, wgsl_struct, Override, Shader, Slot, WeightAccess};
use crate::gpu::upload::uniform;
use crate::ops_common::CacheType;

pub const KV4: Override<u32> = Override::new("KV4");
pub const ROW4: Override<u32> = Override::new("ROW4");
pub const CACHE_F16: Override<bool> = Override::new("CACHE_F16");

pub const SHADER: Shader = Shader {
    name: "kv_rows",
    source: include_str!("kv_rows.wgsl"),
    bindings: &[
        Slot::Uniform(&Params::LAYOUT),
        Slot::Uniform(&BatchParams::LAYOUT),
        Slot::Read,
        Slot::Read,
        Slot::Read,
        Slot::ReadWrite,
    ],
    overrides: &[KV4.decl(), ROW4.decl(), CACHE_F16.decl()],
    consts: &[],
    structs: &[&BatchParams::LAYOUT],
    reduces: true,
    lanes: false,
    weights: WeightAccess::None,
    libraries: &[shader::ROPE, shader::CACHE_STORE],
    cooperative: false,
};

wgsl_struct! {
    struct Params as "Params" {
        in_stride: u32,
        kv_offset: u32,
        eps: f32,
        _pad0: u32,
    }
}

/// The buffers of the cache rows of a batch.
pub struct KvRows<'a> {
    pub batch: &'a wgpu::Buffer,
    /// `[tokens][in_stride]`, kv_cmpr at `kv_offset` of each row, k_pe after it.
    pub kv_a: &'a wgpu::Buffer,
    pub in_stride: usize,
    pub kv_offset: usize,
    /// [kv] latent RMSNorm weight.
    pub kv_norm: &'a wgpu::Buffer,
    /// `[tokens][rope / 2]` (cos, sin) of each token's position.
    pub rope_cs: &'a wgpu::Buffer,
    pub cache: &'a wgpu::Buffer,
    pub cache_type: CacheType,
}

/// The dispatch; its grid (one workgroup per token) is set per batch.
pub fn dispatch(ctx: &GpuContext, pipes: &Pipelines, cfg: &Config, a: &KvRows) -> Dispatch {
    assert!(
        a.in_stride.is_multiple_of(4) && a.kv_offset.is_multiple_of(4),
        "kv_rows input must be vec4-aligned"
    );
    let params = uniform(
        ctx,
        "kv_rows params",
        &Params {
            in_stride: a.in_stride as u32,
            kv_offset: a.kv_offset as u32,
            eps: cfg.rms_eps,
            _pad0: 0,
        },
    );
    let constants = [
        KV4.set((cfg.kv_lora_rank / 4) as u32),
        ROW4.set((cfg.cache_row() / 4) as u32),
        CACHE_F16.set(a.cache_type == CacheType::F16),
    ];
    pipes.get(ctx, SHADER, &constants).dispatch(
        ctx,
        &[&params, a.batch, a.kv_a, a.kv_norm, a.rope_cs, a.cache],
        [1, 1, 1],
    )
}
