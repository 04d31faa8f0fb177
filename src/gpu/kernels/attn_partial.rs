//! Launcher of `attn_partial.wgsl`: scores, softmax and latent context of four heads
//! over one split of cache positions, with RoPE on q_pe and the token's own cache row
//! (RMSNorm of the latent, RoPE on k_pe) done on the way. Reference: `cpu::attention`
//! (its cache append, `ops::rope`, `ops::rmsnorm` and the per-head loop).

use crate::config::Config;
use crate::gpu::context::{GpuContext, WORKGROUP_SIZE};
use crate::gpu::pipelines::{Dispatch, Pipelines};
use crate::gpu::shader::{wgsl_struct, Override, Shader, Slot};
use crate::gpu::upload::uniform;
use crate::ops_common::rope_angle;

/// Positions a workgroup scores at once (the kernel's TILE): one per four invocations.
pub const TILE: usize = WORKGROUP_SIZE as usize / 4;
/// Heads per workgroup (the kernel's HEADS).
pub const HEADS: usize = 4;
/// Splits of the context at most: enough workgroups to fill a large GPU at any context,
/// few enough that attn_combine merges them in one step.
pub const MAX_SPLITS: usize = 64;
/// Largest cache row (kv + rope) the kernel holds in workgroup memory.
pub const MAX_ROW: usize = 640;
/// Largest latent (kv): each invocation owns two of its vec4 columns.
pub const MAX_KV: usize = 2 * 4 * WORKGROUP_SIZE as usize;

/// The model's cache row (kv + rope) and latent (kv), in vec4.
pub const ROW4: Override<u32> = Override::new("ROW4");
pub const KV4: Override<u32> = Override::new("KV4");

pub const SHADER: Shader = Shader {
    name: "attn_partial",
    source: include_str!("attn_partial.wgsl"),
    bindings: &[
        Slot::Uniform(&Params::LAYOUT),
        Slot::Uniform(&TokenParams::LAYOUT),
        Slot::Read,
        Slot::Read,
        Slot::ReadWrite,
        Slot::ReadWrite,
        Slot::Read,
        Slot::Read,
        Slot::Read,
    ],
    overrides: &[ROW4.decl(), KV4.decl()],
    consts: &[
        ("TILE", TILE as u32),
        ("HEADS", HEADS as u32),
        ("MAX_ROW4", (MAX_ROW / 4) as u32),
    ],
    structs: &[&TokenParams::LAYOUT],
    reduces: true,
    dots: false,
};

wgsl_struct! {
    struct Params as "Params" {
        heads: u32,
        head_dim: u32,
        nope: u32,
        scale: f32,
        max_splits: u32,
        kv_offset4: u32,
        eps: f32,
        _pad: u32,
    }
}

wgsl_struct! {
    /// Per-token values the attention kernels read from one uniform buffer (WGSL `Token`,
    /// prepended to both), written before each token's submit.
    pub struct TokenParams as "Token" {
        /// Position of the token (its cache row).
        pub pos: u32,
        /// Positions attended: pos + 1.
        pub n_ctx: u32,
        /// Positions per attention split ([`split_len`]).
        pub attn_split: u32,
        pub _pad: u32,
    }
}

impl TokenParams {
    /// The token at `pos`.
    pub fn new(pos: usize) -> TokenParams {
        let n_ctx = pos + 1;
        TokenParams {
            pos: pos as u32,
            n_ctx: n_ctx as u32,
            attn_split: split_len(n_ctx) as u32,
            _pad: 0,
        }
    }
}

/// (cos, sin) of the RoPE angles of `pos` ([`rope_angle`], in f64 as `cpu::ops::rope`);
/// uploaded per token.
pub fn rope_table(pos: usize, dims: usize, base: f32) -> Vec<[f32; 2]> {
    (0..dims / 2)
        .map(|i| {
            let (sin, cos) = rope_angle(pos, i, dims, base).sin_cos();
            [cos as f32, sin as f32]
        })
        .collect()
}

/// Positions per split for a context of `n_ctx`: whole tiles, at most [`MAX_SPLITS`] splits.
/// Short contexts get one tile per workgroup (the shortest chain of dependent loads); long
/// ones spread over all splits.
pub fn split_len(n_ctx: usize) -> usize {
    n_ctx.div_ceil(MAX_SPLITS).next_multiple_of(TILE).max(TILE)
}

/// Splits of `n_ctx` positions: the x extent of the grid.
pub fn splits(n_ctx: usize) -> usize {
    n_ctx.div_ceil(split_len(n_ctx))
}

/// The grid for a context of `n_ctx`: `[splits, head groups, 1]`.
pub fn grid(cfg: &Config, n_ctx: usize) -> [u32; 3] {
    [splits(n_ctx) as u32, cfg.n_heads.div_ceil(HEADS) as u32, 1]
}

/// The most splits any context up to `max_context` has: the partial buffer's stride
/// between heads.
pub fn max_splits(max_context: usize) -> usize {
    max_context.div_ceil(TILE).clamp(1, MAX_SPLITS)
}

/// Floats of the partial buffer for contexts up to `max_context`.
pub fn partial_len(cfg: &Config, max_context: usize) -> usize {
    cfg.n_heads * max_splits(max_context) * (2 + cfg.kv_lora_rank)
}

/// Why the kernel cannot run this model's attention, if it cannot.
pub fn unsupported(cfg: &Config) -> Option<String> {
    let (row, kv) = (cfg.cache_row(), cfg.kv_lora_rank);
    let dims = [kv, cfg.qk_rope, cfg.qk_nope, cfg.q_lora_rank];
    let aligned = dims.iter().all(|d| d.is_multiple_of(4));
    (row > MAX_ROW || kv > MAX_KV || !aligned).then(|| {
        format!(
            "kv_lora_rank {kv}, rope {}, nope {} and q_lora_rank {} must be multiples of 4, \
             kv at most {MAX_KV} and kv + rope at most {MAX_ROW}",
            cfg.qk_rope, cfg.qk_nope, cfg.q_lora_rank
        )
    })
}

/// The buffers one attention dispatch reads and writes.
pub struct Attention<'a> {
    /// Per-token uniform (position, context, split length).
    pub token: &'a wgpu::Buffer,
    /// [heads][kv] k_b-absorbed q_nope.
    pub q_abs: &'a wgpu::Buffer,
    /// [heads][nope + rope], q_pe not yet roped.
    pub q: &'a wgpu::Buffer,
    /// `[q_a | kv_cmpr | k_pe]` of the token: kv_cmpr starts at q_lora_rank.
    pub kv_a: &'a wgpu::Buffer,
    /// [kv] latent RMSNorm weight.
    pub kv_norm: &'a wgpu::Buffer,
    /// [rope / 2] (cos, sin) of the token's position: [`rope_table`].
    pub rope_cs: &'a wgpu::Buffer,
    /// [positions][kv + rope]; row `pos` is written.
    pub cache: &'a wgpu::Buffer,
    /// [heads][max_splits][2 + kv] out.
    pub partial: &'a wgpu::Buffer,
}

/// The grid is set per token: [`grid`].
pub fn dispatch(
    ctx: &GpuContext,
    pipes: &Pipelines,
    cfg: &Config,
    max_context: usize,
    a: &Attention,
) -> Dispatch {
    assert!(unsupported(cfg).is_none());
    let params = uniform(
        ctx,
        "attn_partial params",
        &Params {
            heads: cfg.n_heads as u32,
            head_dim: (cfg.qk_nope + cfg.qk_rope) as u32,
            nope: cfg.qk_nope as u32,
            scale: cfg.attn_scale(),
            max_splits: max_splits(max_context) as u32,
            kv_offset4: (cfg.q_lora_rank / 4) as u32,
            eps: cfg.rms_eps,
            _pad: 0,
        },
    );
    let constants = [
        ROW4.set((cfg.cache_row() / 4) as u32),
        KV4.set((cfg.kv_lora_rank / 4) as u32),
    ];
    pipes.get(ctx, SHADER, &constants).dispatch(
        ctx,
        &[
            &params, a.token, a.q_abs, a.q, a.cache, a.partial, a.kv_a, a.kv_norm, a.rope_cs,
        ],
        grid(cfg, 1),
    )
}
