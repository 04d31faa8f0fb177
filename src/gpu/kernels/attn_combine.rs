//! Launcher of `attn_combine.wgsl`: appends the token's own cache row (RMSNorm of the latent,
//! RoPE on k_pe), adds its position to the splits of `attn_partial` and merges them into each
//! head's softmax-weighted latent context (`kqv`). Reference: `cpu::attention` (its cache
//! append, `ops::rmsnorm`, `ops::rope` and the per-head softmax).

use crate::config::Config;
use crate::gpu::context::{GpuContext, WORKGROUP_SIZE};
use crate::gpu::kernels::attn_partial::{self, TokenParams};
use crate::gpu::pipelines::{Dispatch, Pipelines};
use crate::gpu::shader::{self, wgsl_struct, Override, Shader, Slot, WeightAccess};
use crate::gpu::upload::uniform;
use crate::ops_common::CacheType;

/// Largest cache row (kv + rope) the kernel holds in workgroup memory.
pub const MAX_ROW: usize = 640;
/// Invocations summing one column's splits (each every SPLIT_LANES-th split).
pub const SPLIT_LANES: usize = 8;
/// vec4 columns per workgroup.
const QUADS: usize = WORKGROUP_SIZE as usize / SPLIT_LANES;

pub const KV4: Override<u32> = Override::new("KV4");
pub const ROW4: Override<u32> = Override::new("ROW4");
/// The cache holds f16 values (else f32).
pub const CACHE_F16: Override<bool> = Override::new("CACHE_F16");

pub const SHADER: Shader = Shader {
    name: "attn_combine",
    source: include_str!("attn_combine.wgsl"),
    bindings: &[
        Slot::Uniform(&Params::LAYOUT),
        Slot::Uniform(&TokenParams::LAYOUT),
        Slot::Read,
        Slot::ReadWrite,
        Slot::Read,
        Slot::Read,
        Slot::Read,
        Slot::Read,
        Slot::Read,
        Slot::ReadWrite,
    ],
    overrides: &[KV4.decl(), ROW4.decl(), CACHE_F16.decl()],
    consts: &[
        ("MAX_SPLITS", attn_partial::MAX_SPLITS as u32),
        ("MAX_ROW4", (MAX_ROW / 4) as u32),
        ("SPLIT_LANES", SPLIT_LANES as u32),
    ],
    structs: &[&TokenParams::LAYOUT],
    reduces: true,
    lanes: false,
    weights: WeightAccess::None,
    libraries: &[shader::ROPE, shader::CACHE_STORE],
    cooperative: false,
};

wgsl_struct! {
    struct Params as "Params" {
        max_splits: u32,
        head_dim: u32,
        nope: u32,
        scale: f32,
        kv_offset4: u32,
        eps: f32,
        _pad0: u32,
        _pad1: u32,
    }
}

/// Why the kernel cannot run this model's attention, if it cannot.
pub fn unsupported(cfg: &Config) -> Option<String> {
    let row = cfg.cache_row();
    let aligned = [cfg.kv_lora_rank, cfg.qk_rope, cfg.qk_nope, cfg.q_lora_rank]
        .iter()
        .all(|d| d.is_multiple_of(4));
    (row > MAX_ROW || !aligned).then(|| {
        format!(
            "kv_lora_rank {} + rope {} must be at most {MAX_ROW}, and they, nope {} and \
             q_lora_rank {} multiples of 4",
            cfg.kv_lora_rank, cfg.qk_rope, cfg.qk_nope, cfg.q_lora_rank
        )
    })
}

/// The buffers of one merge (those it shares with attn_partial are in [`attn_partial::Attention`]).
pub struct Combine<'a> {
    /// [heads][kv] out.
    pub kqv: &'a wgpu::Buffer,
    /// `[q_a | kv_cmpr | k_pe]` of the token: kv_cmpr starts at q_lora_rank.
    pub kv_a: &'a wgpu::Buffer,
    /// [kv] latent RMSNorm weight.
    pub kv_norm: &'a wgpu::Buffer,
}

pub fn dispatch(
    ctx: &GpuContext,
    pipes: &Pipelines,
    cfg: &Config,
    max_context: usize,
    a: &attn_partial::Attention,
    c: &Combine,
) -> Dispatch {
    assert!(unsupported(cfg).is_none());
    let params = uniform(
        ctx,
        "attn_combine params",
        &Params {
            max_splits: attn_partial::max_splits(max_context) as u32,
            head_dim: (cfg.qk_nope + cfg.qk_rope) as u32,
            nope: cfg.qk_nope as u32,
            scale: cfg.attn_scale(),
            kv_offset4: (cfg.q_lora_rank / 4) as u32,
            eps: cfg.rms_eps,
            ..Default::default()
        },
    );
    let constants = [
        KV4.set((cfg.kv_lora_rank / 4) as u32),
        ROW4.set((cfg.cache_row() / 4) as u32),
        CACHE_F16.set(a.cache_type == CacheType::F16),
    ];
    pipes.get(ctx, SHADER, &constants).dispatch(
        ctx,
        &[
            &params, a.token, a.partial, c.kqv, a.q_abs, a.q, c.kv_a, c.kv_norm, a.rope_cs, a.cache,
        ],
        [
            cfg.n_heads as u32,
            (cfg.kv_lora_rank / 4).div_ceil(QUADS) as u32,
            1,
        ],
    )
}
