//! Launcher of `attn_partial_coop.wgsl`: the first pass of a token's attention
//! (`attn_partial.wgsl`'s partial buffer, merged by `attn_combine.wgsl`) on cooperative
//! matrices, for an f16 cache on devices that have them, with the f16 parts of the batched
//! mat-mul's tile math. The heads are the rows of `lib/attn_tiles.wgsl`'s query blocks, and
//! splits of whole tiles of [`KD`] keys spread the positions over the GPU. One dispatch
//! with one f16 part per query value (each workgroup writes its queries to workgroup
//! memory); with two, the token's queries are prepared once by a dispatch before the
//! splits. Reference: `cpu::attention` (its per-head `attend` and `ops::rope` on q_pe).

use crate::config::Config;
use crate::gpu::cache::POSITION_TILE;
use crate::gpu::context::GpuContext;
use crate::gpu::kernels::attn_batch_coop::{self, AWG, CB, HEADS, KD, KV, QR, ROW};
use crate::gpu::kernels::attn_combine;
use crate::gpu::kernels::attn_partial::{self, Attention, TokenParams};
use crate::gpu::pipelines::{Dispatch, Pipelines};
use crate::gpu::shader::{self, wgsl_struct, Override, Shader, Slot, TileMath, WeightAccess};
use crate::gpu::upload::uniform;
use crate::ops_common::CacheType;

/// Splits a token's positions are spread over (at most; each split whole tiles of KD): about
/// one workgroup per compute unit of a large GPU, and few partial sums to merge.
pub const TARGET_SPLITS: usize = 128;

/// Cached positions from which a token's attention runs here rather than in
/// `attn_partial.wgsl` with the tile math `tiles`, or None where it does not pay at any
/// context measured. Its fixed cost (the queries, a staged tile per workgroup) is
/// repaid where the cache is long: from about 8K positions with f16-rounded values, and
/// about 16K with two parts per value, whose lo products take a third more time
/// (BENCHMARKS.md).
pub fn from_positions(tiles: TileMath) -> Option<usize> {
    match tiles {
        TileMath::F16 => Some(8 * 1024),
        TileMath::Split => Some(16 * 1024),
        TileMath::Fma => None,
    }
}

/// The pipeline prepares the token's queries (else it attends); the others are
/// `attn_batch_coop`'s.
pub const PREPARE: Override<bool> = Override::new("PREPARE");

pub const SHADER: Shader = Shader {
    name: "attn_partial_coop",
    source: include_str!("attn_partial_coop.wgsl"),
    bindings: &[
        Slot::Uniform(&Params::LAYOUT),
        Slot::Uniform(&TokenParams::LAYOUT),
        Slot::Read,
        Slot::Read,
        Slot::Read,
        Slot::Read,
        Slot::ReadWrite,
        Slot::ReadWrite,
    ],
    overrides: &[
        HEADS.decl(),
        KV.decl(),
        ROW.decl(),
        CB.decl(),
        PREPARE.decl(),
    ],
    consts: attn_batch_coop::TILE_CONSTS,
    structs: &[&TokenParams::LAYOUT],
    reduces: false,
    lanes: true,
    weights: WeightAccess::None,
    libraries: &[shader::ROPE, shader::ATTN_COMMON, shader::ATTN_TILES],
    cooperative: true,
};

wgsl_struct! {
    struct Params as "Params" {
        head_dim: u32,
        nope: u32,
        scale: f32,
        max_splits: u32,
    }
}

/// Why the kernel cannot run this model's attention, if it cannot: as the batched
/// cooperative attention ([`attn_batch_coop::unsupported`]), whose tile loop it shares.
pub fn unsupported(cfg: &Config) -> Option<String> {
    attn_batch_coop::unsupported(cfg)
}

/// Whether a token's attention can run on this kernel: the batched cooperative attention
/// runs ([`attn_batch_coop::runs`]; the device check counts this kernel's workgroup memory
/// too) and the model fits this kernel.
pub fn runs(ctx: &GpuContext, cfg: &Config, cache_type: CacheType) -> bool {
    attn_batch_coop::runs(ctx, cfg, cache_type) && unsupported(cfg).is_none()
}

/// Positions per split over `cached` positions: whole tiles, at most `target` splits, and
/// at least the f32 kernel's tile, which the partial buffer's splits are counted in
/// ([`attn_partial::max_splits`]).
pub fn split_len(cached: usize, target: usize) -> usize {
    const _: () = assert!(attn_partial::TILE.is_multiple_of(KD));
    cached
        .div_ceil(target)
        .next_multiple_of(KD)
        .max(attn_partial::TILE)
}

/// Row blocks of QR heads.
fn row_blocks(cfg: &Config) -> u32 {
    cfg.n_heads.div_ceil(QR) as u32
}

/// The grid over `cached` positions in splits of `split`: `[splits, row blocks, 1]`.
pub fn grid(cfg: &Config, cached: usize, split: usize) -> [u32; 3] {
    [
        attn_partial::splits(cached, split) as u32,
        row_blocks(cfg),
        1,
    ]
}

/// u32 words of the prepared queries: a region per row block.
pub fn q_parts_words(cfg: &Config) -> usize {
    (row_blocks(cfg) as usize * attn_batch_coop::query_region(cfg)).div_ceil(2)
}

/// A token's dispatches, recorded in order.
pub struct TokenDispatches {
    /// With two parts per query value: the token's queries prepared into `q_parts`
    /// ([`q_parts_words`]) for every split to load. With one, each workgroup of `attend`
    /// writes its own to workgroup memory.
    pub prepare: Option<Dispatch>,
    /// The attention of every split (its grid set per token: [`grid`], with the split of
    /// the token's [`TokenParams`]).
    pub attend: Dispatch,
}

impl TokenDispatches {
    /// Each dispatch in order with the grid it runs: the preparation's own, then `attend`'s
    /// for this token ([`grid`]).
    pub fn with_grids(&self, attend: [u32; 3]) -> Vec<(&Dispatch, [u32; 3])> {
        let prepare = self.prepare.iter().map(|d| (d, d.workgroups));
        prepare.chain([(&self.attend, attend)]).collect()
    }
}

/// The dispatches of a token: [`TokenDispatches`].
pub fn dispatches(
    ctx: &GpuContext,
    pipes: &Pipelines,
    cfg: &Config,
    max_context: usize,
    a: &Attention,
    q_parts: &wgpu::Buffer,
) -> TokenDispatches {
    assert!(unsupported(cfg).is_none() && a.cache_type == CacheType::F16);
    let params = uniform(
        ctx,
        "attn_partial_coop params",
        &Params {
            head_dim: (cfg.qk_nope + cfg.qk_rope) as u32,
            nope: cfg.qk_nope as u32,
            scale: cfg.attn_scale(),
            max_splits: attn_partial::max_splits(max_context) as u32,
        },
    );
    let buffers = [
        &params, a.token, a.q_abs, a.q, a.rope_cs, a.cache, q_parts, a.partial,
    ];
    let pipeline = |prepare: bool, grid| {
        let [heads, kv, row, cb] = attn_batch_coop::tile_constants(cfg);
        let constants = [heads, kv, row, cb, PREPARE.set(prepare)];
        pipes
            .get(ctx, SHADER, &constants)
            .dispatch(ctx, &buffers, grid)
    };
    TokenDispatches {
        // A subgroup of 32 per query row.
        prepare: (ctx.tiles.parts() == 2)
            .then(|| pipeline(true, [row_blocks(cfg) * (QR * 32 / AWG) as u32, 1, 1])),
        attend: pipeline(false, grid(cfg, 0, KD)),
    }
}

/// Runs this kernel and `attn_partial.wgsl` (f32 FMAs), each merged by `attn_combine.wgsl`,
/// on one token after 300 cached positions (splits of one tile and a part, random values),
/// and compares them within [`attn_batch_coop::error_bound`] of the device's tile math:
/// the engine calls it once at load and keeps the f32 kernel where they disagree (as
/// [`attn_batch_coop::check_against_fma`], whose reasons hold here too). Err says by how
/// much they differ.
pub fn check_against_fma(
    ctx: &GpuContext,
    pipes: &Pipelines,
    cfg: &Config,
) -> std::result::Result<(), String> {
    use crate::gpu::cache::encode_rows;
    use crate::gpu::upload::{storage_f32, storage_init, storage_zeroed};
    let pos = 300;
    let (heads, kv, row) = (cfg.n_heads, cfg.kv_lora_rank, cfg.cache_row());
    let head_dim = cfg.qk_nope + cfg.qk_rope;
    let mut values = attn_batch_coop::check_values();
    let q_abs = values(heads * kv, 1.0);
    let q = values(heads * head_dim, 4.0);
    let mut cache = values(pos * row, 1.0);
    cache.resize((pos + 1).next_multiple_of(POSITION_TILE) * row, 0.0);
    let kv_a = values(cfg.q_lora_rank + row, 1.0);
    let kv_norm = values(kv, 1.0);
    let table = attn_partial::rope_table(pos, cfg.qk_rope, cfg.rope_base);
    let zeroed = |label, n| storage_zeroed(ctx, label, n).map_err(|e| e.to_string());
    let (qa_b, q_b) = (
        storage_f32(ctx, "check q_abs", &q_abs),
        storage_f32(ctx, "check q", &q),
    );
    let rope_b = storage_init(ctx, "check rope", bytemuck::cast_slice(&table));
    let (kv_a_b, kv_norm_b) = (
        storage_f32(ctx, "check kv_a", &kv_a),
        storage_f32(ctx, "check kv_norm", &kv_norm),
    );
    let lanes = attn_partial::variants(cfg)[0];
    let splits = [attn_partial::split_len(pos), 4 * KD];
    let mut outputs = Vec::new();
    let mut enc = ctx.device.create_command_encoder(&Default::default());
    for (tiles, split) in [false, true].into_iter().zip(splits) {
        // Each run writes the token's row to its own copy of the cache.
        let cache_b = storage_init(ctx, "check cache", &encode_rows(CacheType::F16, &cache));
        let token = uniform(ctx, "check token", &TokenParams::new(pos, split));
        let partial = zeroed("check partial", attn_partial::partial_len(cfg, pos + 1))?;
        let q_parts = zeroed("check q parts", q_parts_words(cfg))?;
        let kqv = zeroed("check kqv", heads * kv)?;
        let a = Attention {
            token: &token,
            q_abs: &qa_b,
            q: &q_b,
            cache: &cache_b,
            cache_type: CacheType::F16,
            rope_cs: &rope_b,
            partial: &partial,
        };
        let merge = attn_combine::Combine {
            kqv: &kqv,
            kv_a: &kv_a_b,
            kv_norm: &kv_norm_b,
        };
        let combine = attn_combine::dispatch(ctx, pipes, cfg, pos + 1, &a, &merge);
        {
            let mut pass = enc.begin_compute_pass(&Default::default());
            if tiles {
                let token = dispatches(ctx, pipes, cfg, pos + 1, &a, &q_parts);
                for (d, workgroups) in token.with_grids(grid(cfg, pos, split)) {
                    d.record_sized(&mut pass, workgroups);
                }
            } else {
                let d = attn_partial::dispatch(ctx, pipes, cfg, pos + 1, &a, lanes);
                d.record_sized(&mut pass, attn_partial::grid(cfg, pos, split, lanes));
            }
            combine.record(&mut pass);
        }
        outputs.push(kqv);
    }
    ctx.queue.submit([enc.finish()]);
    let read = |b| ctx.read_f32(b, heads * kv).map_err(|e| e.to_string());
    let (want, got) = (read(&outputs[0])?, read(&outputs[1])?);
    let bound = attn_batch_coop::error_bound(ctx.tiles.parts(), cfg, &q_abs, &q);
    attn_batch_coop::agree("the cooperative decode attention", &want, &got, bound)
}
