//! Launcher of `attn_batch.wgsl`: the absorbed MLA attention of a batch of tokens over the
//! latent cache (causal, flash-attention style). Reference: `cpu::attention` (its per-head
//! `attend` and `ops::rope` on q_pe).

use crate::config::Config;
use crate::gpu::context::{GpuContext, MIN_SUBGROUP};
use crate::gpu::kernels::matmul::BatchParams;
use crate::gpu::pipelines::{Dispatch, Pipelines};
use crate::gpu::shader::{self, wgsl_struct, Override, Shader, Slot, WeightAccess};
use crate::gpu::upload::uniform;
use crate::ops_common::CacheType;

/// Invocations per workgroup.
pub const AWG: usize = 256;
/// Query rows ((token, head) pairs) per workgroup and keys per tile: the score phase gives
/// each invocation 2 x 2 of them.
pub const QB: usize = 32;
pub const KB: usize = 32;
/// vec4 of the query and key rows per step of the score phase.
pub const DC4: usize = 16;
/// Invocations per query row in the softmax phase.
pub const LANES: usize = AWG / QB;
/// Query rows per invocation at most in the context phase (its accumulators: 2 columns each).
pub const MAX_RPI: usize = 32;
// The score phase maps groups of 32 invocations to 8 rows x 4 keys (see the kernel).
const _: () =
    assert!(AWG == (QB / 2) * (KB / 2) && QB.is_multiple_of(16) && LANES <= MIN_SUBGROUP as usize);

pub const HEADS: Override<u32> = Override::new("HEADS");
pub const KV4: Override<u32> = Override::new("KV4");
pub const ROW4: Override<u32> = Override::new("ROW4");
pub const RPI: Override<u32> = Override::new("RPI");
pub const CACHE_F16: Override<bool> = Override::new("CACHE_F16");

pub const SHADER: Shader = Shader {
    name: "attn_batch",
    source: include_str!("attn_batch.wgsl"),
    bindings: &[
        Slot::Uniform(&Params::LAYOUT),
        Slot::Uniform(&BatchParams::LAYOUT),
        Slot::Read,
        Slot::Read,
        Slot::Read,
        Slot::Read,
        Slot::ReadWrite,
    ],
    overrides: &[
        HEADS.decl(),
        KV4.decl(),
        ROW4.decl(),
        RPI.decl(),
        CACHE_F16.decl(),
    ],
    consts: &[
        ("AWG", AWG as u32),
        ("QB", QB as u32),
        ("KB", KB as u32),
        ("DC4", DC4 as u32),
        ("LANES", LANES as u32),
        ("MAX_RPI", MAX_RPI as u32),
    ],
    structs: &[&BatchParams::LAYOUT],
    reduces: false,
    lanes: true,
    weights: WeightAccess::None,
    libraries: &[shader::ROPE],
    cooperative: false,
};

wgsl_struct! {
    /// Also the cooperative kernel's (`attn_batch_coop`).
    pub struct Params as "Params" {
        pub head_dim: u32,
        pub nope: u32,
        pub scale: f32,
        pub _pad0: u32,
    }
}

/// Why the kernel cannot run this model's attention, if it cannot: each invocation of the
/// context phase owns 2 latent columns of at most [`MAX_RPI`] query rows.
pub fn unsupported(cfg: &Config) -> Option<String> {
    let (kv, rope) = (cfg.kv_lora_rank, cfg.qk_rope);
    let units = kv / 2;
    let ok = kv.is_multiple_of(8)
        && rope.is_multiple_of(8)
        && cfg.qk_nope.is_multiple_of(4)
        && units > 0
        && AWG.is_multiple_of(units)
        && (QB * units).is_multiple_of(AWG)
        && QB * units / AWG <= MAX_RPI;
    (!ok).then(|| {
        format!(
            "the batched attention needs kv_lora_rank {kv} to be 2 times a power of two from \
             {} to {}, rope {rope} a multiple of 8 and nope {} of 4",
            AWG / QB,
            AWG * MAX_RPI / QB,
            cfg.qk_nope
        )
    })
}

/// The buffers of a batch's attention.
pub struct AttnBatch<'a> {
    pub batch: &'a wgpu::Buffer,
    /// `[tokens][heads][kv]` k_b-absorbed q_nope.
    pub q_abs: &'a wgpu::Buffer,
    /// `[tokens][heads][nope + rope]`, q_pe not yet roped.
    pub q: &'a wgpu::Buffer,
    /// `[tokens][rope / 2]` (cos, sin) of each token's position.
    pub rope_cs: &'a wgpu::Buffer,
    /// `[positions][kv + rope]`, holding the batch's rows.
    pub cache: &'a wgpu::Buffer,
    pub cache_type: CacheType,
    /// `[tokens][heads][kv]` out.
    pub kqv: &'a wgpu::Buffer,
}

/// The dispatch; its grid is set per batch ([`grid`]).
pub fn dispatch(ctx: &GpuContext, pipes: &Pipelines, cfg: &Config, a: &AttnBatch) -> Dispatch {
    assert!(unsupported(cfg).is_none());
    let units = cfg.kv_lora_rank / 2;
    let params = uniform(
        ctx,
        "attn_batch params",
        &Params {
            head_dim: (cfg.qk_nope + cfg.qk_rope) as u32,
            nope: cfg.qk_nope as u32,
            scale: cfg.attn_scale(),
            _pad0: 0,
        },
    );
    let constants = [
        HEADS.set(cfg.n_heads as u32),
        KV4.set((cfg.kv_lora_rank / 4) as u32),
        ROW4.set((cfg.cache_row() / 4) as u32),
        RPI.set((QB * units / AWG) as u32),
        CACHE_F16.set(a.cache_type == CacheType::F16),
    ];
    pipes.get(ctx, SHADER, &constants).dispatch(
        ctx,
        &[&params, a.batch, a.q_abs, a.q, a.rope_cs, a.cache, a.kqv],
        [1, 1, 1],
    )
}

/// The grid for a batch of `n` tokens: one workgroup per QB query rows.
pub fn grid(cfg: &Config, n: usize) -> [u32; 3] {
    [(n * cfg.n_heads).div_ceil(QB).max(1) as u32, 1, 1]
}
