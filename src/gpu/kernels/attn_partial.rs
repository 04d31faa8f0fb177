//! Launcher of `attn_partial.wgsl`: scores, softmax and latent context of a group of heads
//! over one split of the cached positions, each cache row read once for the whole group.
//! Reference: `cpu::attention` (its per-head loop, and `ops::rope` on q_pe). Also where a
//! token's attention is planned ([`Kernels::plan`]): this kernel's variant, or the
//! cooperative one (`attn_partial_coop`) at long contexts, and the split of the positions.

use crate::config::Config;
use crate::gpu::context::{GpuContext, MIN_SUBGROUP};
use crate::gpu::pipelines::{Dispatch, Pipelines};
use crate::gpu::shader::{self, wgsl_struct, Override, Shader, Slot, WeightAccess};
use crate::gpu::upload::uniform;
use crate::ops_common::{rope_angle, CacheType};

/// Invocations per workgroup.
pub const AWG: usize = 256;
/// Invocations that share one pair of positions' dot products in the score phase (and one
/// head's softmax): a power of two that fits every subgroup the engine uses.
pub const LANES: usize = 8;
const _: () = assert!(LANES <= MIN_SUBGROUP as usize && LANES.is_power_of_two());
/// Positions a workgroup scores at once: two per group of LANES.
pub const TILE: usize = 2 * AWG / LANES;
/// Heads per workgroup at most: one group of LANES per head in the softmax phase.
pub const MAX_HEADS_WG: usize = AWG / LANES;
/// Heads per invocation at most in the context phase (its accumulators: 8 columns each).
pub const MAX_HPB: usize = 8;
/// Positions the context phase reads per step (loads in flight per invocation).
pub const CTX_ROWS: usize = 4;
/// Splits of the context at most: enough workgroups to fill a large GPU at any context,
/// few enough that attn_combine merges them in one step.
pub const MAX_SPLITS: usize = 256;
/// Workgroups a token's attention should have to keep a large GPU busy: the variant
/// chosen is the widest (fewest head groups, each row read by fewest workgroups) that
/// reaches it at the context ([`choose`]).
pub const TARGET_WORKGROUPS: usize = 256;

pub const HEADS_WG: Override<u32> = Override::new("HEADS_WG");
pub const HPB: Override<u32> = Override::new("HPB");
pub const KV8: Override<u32> = Override::new("KV8");
pub const ROPE8: Override<u32> = Override::new("ROPE8");
/// The cache holds f16 values (else f32).
pub const CACHE_F16: Override<bool> = Override::new("CACHE_F16");

pub const SHADER: Shader = Shader {
    name: "attn_partial",
    source: include_str!("attn_partial.wgsl"),
    bindings: &[
        Slot::Uniform(&Params::LAYOUT),
        Slot::Uniform(&TokenParams::LAYOUT),
        Slot::Read,
        Slot::Read,
        Slot::Read,
        Slot::Read,
        Slot::ReadWrite,
    ],
    overrides: &[
        HEADS_WG.decl(),
        HPB.decl(),
        KV8.decl(),
        ROPE8.decl(),
        CACHE_F16.decl(),
    ],
    consts: &[
        ("AWG", AWG as u32),
        ("LANES", LANES as u32),
        ("TILE", TILE as u32),
        ("MAX_HEADS_WG", MAX_HEADS_WG as u32),
        ("MAX_HPB", MAX_HPB as u32),
        ("CTX_ROWS", CTX_ROWS as u32),
    ],
    structs: &[&TokenParams::LAYOUT],
    reduces: false,
    lanes: true,
    weights: WeightAccess::None,
    libraries: &[shader::ROPE],
    cooperative: false,
};

wgsl_struct! {
    struct Params as "Params" {
        heads: u32,
        head_dim: u32,
        nope: u32,
        scale: f32,
        max_splits: u32,
        _pad0: u32,
        _pad1: u32,
        _pad2: u32,
    }
}

wgsl_struct! {
    /// Per-token values the attention kernels read from one uniform buffer (WGSL `Token`,
    /// prepended to both), written before each token's submit.
    pub struct TokenParams as "Token" {
        /// Position of the token: the positions already cached, and its cache row.
        pub pos: u32,
        /// Positions per attention split ([`split_len`] of `pos`).
        pub attn_split: u32,
        pub _pad0: u32,
        pub _pad1: u32,
    }
}

impl TokenParams {
    /// The token at `pos`, its attention in splits of `split` positions ([`Plan::split`]).
    pub fn new(pos: usize, split: usize) -> TokenParams {
        TokenParams {
            pos: pos as u32,
            attn_split: split as u32,
            ..Default::default()
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

/// Positions per split over `cached` positions: whole tiles, at most [`MAX_SPLITS`] splits.
pub fn split_len(cached: usize) -> usize {
    cached.div_ceil(MAX_SPLITS).next_multiple_of(TILE).max(TILE)
}

/// Splits of `split` positions over `cached` positions: the x extent of the grid (one empty
/// split when nothing is cached, so a dispatch never has zero workgroups).
pub fn splits(cached: usize, split: usize) -> usize {
    cached.div_ceil(split).max(1)
}

/// The most splits any token up to `max_context` has: the partial buffer's stride between
/// heads.
pub fn max_splits(max_context: usize) -> usize {
    max_context.div_ceil(TILE).clamp(1, MAX_SPLITS)
}

/// Floats of the partial buffer for contexts up to `max_context`: per head and split the
/// context, then (max, sum, 0, 0).
pub fn partial_len(cfg: &Config, max_context: usize) -> usize {
    cfg.n_heads * max_splits(max_context) * (cfg.kv_lora_rank + 4)
}

/// Heads of the widest workgroup: all heads where the kernel holds them, else equal groups
/// of at most what it holds.
fn widest(cfg: &Config) -> usize {
    let blocks = AWG / (cfg.kv_lora_rank / 8);
    let most = MAX_HEADS_WG.min(blocks * MAX_HPB);
    cfg.n_heads.div_ceil(cfg.n_heads.div_ceil(most))
}

/// Heads per workgroup of each variant of the kernel, widest first: all heads (each row read
/// once), half of them, a fifth of them. Narrow workgroups finish sooner, which wins at short
/// contexts, where a token's attention has few tiles and reading the small cache once per
/// group costs little.
pub fn variants(cfg: &Config) -> Vec<usize> {
    let wide = widest(cfg);
    let mut v = vec![wide, wide.div_ceil(2), wide.div_ceil(5)];
    v.dedup();
    v
}

/// Which of `variants` ([`variants`], computed once at load) the token at `pos` runs: the
/// widest whose grid has [`TARGET_WORKGROUPS`], else the narrowest.
pub fn choose(cfg: &Config, v: &[usize], pos: usize) -> usize {
    let splits = splits(pos, split_len(pos));
    v.iter()
        .position(|&h| splits * cfg.n_heads.div_ceil(h) >= TARGET_WORKGROUPS)
        .unwrap_or(v.len() - 1)
}

/// The grid of the token at `pos` in splits of `split` with `heads_wg` heads per workgroup:
/// `[splits, head groups, 1]`.
pub fn grid(cfg: &Config, pos: usize, split: usize, heads_wg: usize) -> [u32; 3] {
    [
        splits(pos, split) as u32,
        cfg.n_heads.div_ceil(heads_wg) as u32,
        1,
    ]
}

/// The kernel that runs a token's attention over its cached positions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernel {
    /// This kernel's variant `i` of [`Kernels::lanes`].
    Lanes(usize),
    /// `attn_partial_coop.wgsl`, on cooperative matrices.
    Tiles,
}

/// A token's attention: its kernel, its positions per split ([`TokenParams::attn_split`])
/// and its grid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Plan {
    pub kernel: Kernel,
    pub split: usize,
    pub grid: [u32; 3],
}

/// The attention kernels a device runs for a model (decided once at load), and which one
/// each context gets.
#[derive(Clone, Debug)]
pub struct Kernels {
    /// Heads per workgroup of each variant of this kernel: [`variants`].
    pub lanes: Vec<usize>,
    /// Cached positions from which the cooperative kernel runs, where it does
    /// (`attn_partial_coop::from_positions`).
    pub tiles_from: Option<usize>,
}

impl Kernels {
    pub fn new(cfg: &Config, tiles_from: Option<usize>) -> Kernels {
        Kernels {
            lanes: variants(cfg),
            tiles_from,
        }
    }

    /// The attention of the token at `pos`.
    pub fn plan(&self, cfg: &Config, pos: usize) -> Plan {
        use crate::gpu::kernels::attn_partial_coop as coop;
        if self.tiles_from.is_some_and(|from| pos >= from) {
            let split = coop::split_len(pos, coop::TARGET_SPLITS);
            return Plan {
                kernel: Kernel::Tiles,
                split,
                grid: coop::grid(cfg, pos, split),
            };
        }
        let v = choose(cfg, &self.lanes, pos);
        let split = split_len(pos);
        Plan {
            kernel: Kernel::Lanes(v),
            split,
            grid: grid(cfg, pos, split, self.lanes[v]),
        }
    }
}

/// Why the kernel cannot run this model's attention, if it cannot.
pub fn unsupported(cfg: &Config) -> Option<String> {
    let (kv, rope) = (cfg.kv_lora_rank, cfg.qk_rope);
    let units = kv / 8;
    let ok = kv.is_multiple_of(8)
        && rope.is_multiple_of(8)
        && units > 0
        && AWG.is_multiple_of(units)
        && cfg.qk_nope.is_multiple_of(4);
    (!ok).then(|| {
        format!(
            "kv_lora_rank {kv} must be 8 times a power of two up to {AWG}, and rope {rope} \
             and nope {} multiples of 8 and 4",
            cfg.qk_nope
        )
    })
}

/// The buffers one attention dispatch reads and writes.
pub struct Attention<'a> {
    /// Per-token uniform (position, split length).
    pub token: &'a wgpu::Buffer,
    /// [heads][kv] k_b-absorbed q_nope.
    pub q_abs: &'a wgpu::Buffer,
    /// [heads][nope + rope], q_pe not yet roped.
    pub q: &'a wgpu::Buffer,
    /// [positions][kv + rope], read.
    pub cache: &'a wgpu::Buffer,
    /// How `cache` stores its values.
    pub cache_type: CacheType,
    /// [rope / 2] (cos, sin) of the token's position: [`rope_table`].
    pub rope_cs: &'a wgpu::Buffer,
    /// [heads][max_splits][kv + 4] out: [`partial_len`].
    pub partial: &'a wgpu::Buffer,
}

/// The dispatch of the variant with `heads_wg` heads per workgroup; the grid is set per
/// token: [`grid`].
pub fn dispatch(
    ctx: &GpuContext,
    pipes: &Pipelines,
    cfg: &Config,
    max_context: usize,
    a: &Attention,
    heads_wg: usize,
) -> Dispatch {
    assert!(unsupported(cfg).is_none());
    let units = cfg.kv_lora_rank / 8;
    let hpb = heads_wg.div_ceil(AWG / units);
    assert!(
        heads_wg <= MAX_HEADS_WG && hpb <= MAX_HPB,
        "{heads_wg} heads per workgroup"
    );
    let params = uniform(
        ctx,
        "attn_partial params",
        &Params {
            heads: cfg.n_heads as u32,
            head_dim: (cfg.qk_nope + cfg.qk_rope) as u32,
            nope: cfg.qk_nope as u32,
            scale: cfg.attn_scale(),
            max_splits: max_splits(max_context) as u32,
            ..Default::default()
        },
    );
    let constants = [
        HEADS_WG.set(heads_wg as u32),
        HPB.set(hpb as u32),
        KV8.set(units as u32),
        ROPE8.set((cfg.qk_rope / 8) as u32),
        CACHE_F16.set(a.cache_type == CacheType::F16),
    ];
    pipes.get(ctx, SHADER, &constants).dispatch(
        ctx,
        &[
            &params, a.token, a.q_abs, a.q, a.cache, a.rope_cs, a.partial,
        ],
        grid(cfg, 0, TILE, heads_wg),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every plan's splits cover the cached positions in whole tiles of its kernel, fit the
    /// partial buffer of a context holding the token, and are as many as the grid has; the
    /// cooperative kernel takes the long contexts only where it runs.
    #[test]
    fn plans_split_the_positions_within_the_partial_buffer() {
        let cfg = crate::synth::Preset::Full.config();
        for tiles_from in [None, Some(16384), Some(0)] {
            let kernels = Kernels::new(&cfg, tiles_from);
            for pos in (0..70_000).step_by(97).chain([2047, 2048, 32768, 202_751]) {
                let plan = kernels.plan(&cfg, pos);
                let tile = match plan.kernel {
                    Kernel::Tiles => crate::gpu::kernels::attn_batch_coop::KD,
                    Kernel::Lanes(_) => TILE,
                };
                let splits = splits(pos, plan.split);
                assert_eq!(
                    plan.kernel == Kernel::Tiles,
                    tiles_from.is_some_and(|from| pos >= from),
                    "pos {pos}"
                );
                assert!(
                    plan.split > 0 && plan.split.is_multiple_of(tile),
                    "pos {pos}"
                );
                assert!(splits * plan.split >= pos, "pos {pos}: positions left out");
                assert!(splits <= max_splits(pos + 1), "pos {pos}: {splits} splits");
                assert_eq!(plan.grid[0] as usize, splits, "pos {pos}");
            }
        }
    }
}
