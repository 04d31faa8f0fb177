//! Launcher of `attn_batch_coop.wgsl`: the batched attention of `attn_batch.wgsl` (same
//! buffers, same result within [`error_bound`]) on cooperative matrices, for an f16 cache on
//! devices that have them, with the f16 parts of the batched mat-mul's tile math (two for
//! `TileMath::Split`, one for `TileMath::F16`). Reference: `cpu::attention` (its per-head
//! `attend` and `ops::rope` on q_pe).

use crate::config::Config;
use crate::gpu::cache::POSITION_TILE;
use crate::gpu::context::{GpuContext, MIN_SUBGROUP};
use crate::gpu::kernels::attn_batch::{AttnBatch, Params};
use crate::gpu::kernels::matmul::BatchParams;
use crate::gpu::pipelines::{Dispatch, Pipelines};
use crate::gpu::shader::{self, Constant, Override, Shader, Slot, TileMath, WeightAccess};
use crate::gpu::upload::uniform;
use crate::ops_common::CacheType;

/// Invocations per workgroup: eight subgroups of 32.
pub const AWG: usize = 256;
/// Query rows ((token, head) pairs) per workgroup: two blocks of 16.
pub const QR: usize = 32;
/// Keys per tile staged in workgroup memory: two blocks of 16.
pub const KD: usize = 32;
/// Invocations per query row when its queries are split and its softmax updated.
pub const LANES: usize = AWG / QR;
/// The widest latent and rope the staging holds, and the words of eight f16 values each
/// invocation holds of a tile in flight.
const MAX_KV: usize = 512;
const MAX_ROPE: usize = 64;
const STAGED: usize = (KD * (MAX_KV + MAX_ROPE) / 8).div_ceil(AWG);
const _: () = assert!(POSITION_TILE.is_multiple_of(KD) && LANES <= MIN_SUBGROUP as usize);

/// Workgroup memory of `lib/attn_tiles.wgsl` with `tiles`' parts of the weights: the staged
/// latents (f16, [key][kv], padded by 8), the two halves' scores (f32, [key][row], rows
/// padded by 4), the staged rope values (f16, [key][rope], padded by 8) sharing an array
/// with the weights' parts (f16, [row][key], keys padded by 8), three floats per row and a
/// flag (a driver may give each variable 16 bytes).
pub const fn workgroup_bytes(tiles: TileMath) -> u32 {
    let parts = tiles.parts() as usize;
    let rope = KD * (MAX_ROPE + 8);
    let weights = parts * QR * (KD + 8);
    let rope_or_parts = if rope > weights { rope } else { weights };
    (KD * (MAX_KV + 8) * 2 + 2 * KD * (QR + 4) * 4 + rope_or_parts * 2 + 3 * QR * 4 + 16) as u32
}

/// The overrides `lib/attn_tiles.wgsl` asks of the kernels that append it (this one and
/// `attn_partial_coop`): heads, kv and kv + rope, and kv / 64.
pub const HEADS: Override<u32> = Override::new("HEADS");
pub const KV: Override<u32> = Override::new("KV");
pub const ROW: Override<u32> = Override::new("ROW");
pub const CB: Override<u32> = Override::new("CB");

/// The sizes `lib/attn_tiles.wgsl` asks of the kernels that append it, prepended to them;
/// KS and RS are the strides of the staged latents and rope values, the widest of each plus
/// 8 (16 bytes past a multiple of 128, so a block's 16 rows fall on different banks).
pub const TILE_CONSTS: &[(&str, u32)] = &[
    ("AWG", AWG as u32),
    ("QR", QR as u32),
    ("KD", KD as u32),
    ("KS", (MAX_KV + 8) as u32),
    ("RS", (MAX_ROPE + 8) as u32),
    ("LANES", LANES as u32),
    ("STAGED", STAGED as u32),
    ("HELD", (MAX_KV / 32 + MAX_ROPE / 32) as u32),
];

/// The values of those overrides for a model.
pub fn tile_constants(cfg: &Config) -> [Constant; 4] {
    [
        HEADS.set(cfg.n_heads as u32),
        KV.set(cfg.kv_lora_rank as u32),
        ROW.set(cfg.cache_row() as u32),
        CB.set((cfg.kv_lora_rank / 64) as u32),
    ]
}

pub const SHADER: Shader = Shader {
    name: "attn_batch_coop",
    source: include_str!("attn_batch_coop.wgsl"),
    bindings: &[
        Slot::Uniform(&Params::LAYOUT),
        Slot::Uniform(&BatchParams::LAYOUT),
        Slot::Read,
        Slot::Read,
        Slot::Read,
        Slot::Read,
        Slot::ReadWrite,
        Slot::ReadWrite,
    ],
    overrides: &[HEADS.decl(), KV.decl(), ROW.decl(), CB.decl()],
    consts: TILE_CONSTS,
    structs: &[&BatchParams::LAYOUT],
    reduces: false,
    lanes: true,
    weights: WeightAccess::None,
    libraries: &[shader::ROPE, shader::ATTN_COMMON, shader::ATTN_TILES],
    cooperative: true,
};

/// Why the kernel cannot run this model's attention, if it cannot: each subgroup owns
/// kv / 64 accumulators of 16 latent columns (at most 8; one, or half of them for each of
/// the two row blocks), and rows are whole blocks of 16.
pub fn unsupported(cfg: &Config) -> Option<String> {
    let (kv, rope) = (cfg.kv_lora_rank, cfg.qk_rope);
    let ok = (kv == 64 || kv.is_multiple_of(128))
        && kv <= MAX_KV
        && [32, MAX_ROPE].contains(&rope)
        && cfg.qk_nope.is_multiple_of(4);
    (!ok).then(|| {
        format!(
            "the cooperative attention needs kv_lora_rank {kv} to be 64 or a multiple of 128 \
             up to {MAX_KV}, rope {rope} to be 32 or {MAX_ROPE} and nope {} a multiple of 4",
            cfg.qk_nope
        )
    })
}

/// Whether a batch's attention runs on this kernel: the device has cooperative matrices
/// (and the batched mat-mul uses them) and subgroups, the cache is f16 and the model fits
/// the kernel.
pub fn runs(ctx: &GpuContext, cfg: &Config, cache_type: CacheType) -> bool {
    ctx.tiles.cooperative()
        && ctx.subgroups
        && cache_type == CacheType::F16
        && unsupported(cfg).is_none()
}

/// f16 values of one workgroup's prepared queries (`query_region()` in
/// lib/attn_tiles.wgsl): [part][QR][kv + rope] parts, then a scale per row.
pub fn query_region(cfg: &Config) -> usize {
    2 * QR * cfg.cache_row() + QR
}

/// u32 words of the scratch of a batch of up to `tokens`: per workgroup its queries' parts.
pub fn q_parts_words(cfg: &Config, tokens: usize) -> usize {
    (grid(cfg, tokens)[0] as usize * query_region(cfg)).div_ceil(2)
}

/// The dispatch; its grid is set per batch ([`grid`]). `q_parts` holds
/// [`q_parts_words`] for the largest batch; the cache holds whole tiles of positions.
pub fn dispatch(
    ctx: &GpuContext,
    pipes: &Pipelines,
    cfg: &Config,
    a: &AttnBatch,
    q_parts: &wgpu::Buffer,
) -> Dispatch {
    assert!(unsupported(cfg).is_none() && a.cache_type == CacheType::F16);
    let params = uniform(
        ctx,
        "attn_batch_coop params",
        &Params {
            head_dim: (cfg.qk_nope + cfg.qk_rope) as u32,
            nope: cfg.qk_nope as u32,
            scale: cfg.attn_scale(),
            _pad0: 0,
        },
    );
    pipes.get(ctx, SHADER, &tile_constants(cfg)).dispatch(
        ctx,
        &[
            &params, a.batch, a.q_abs, a.q, a.rope_cs, a.cache, q_parts, a.kqv,
        ],
        [1, 1, 1],
    )
}

/// The grid for a batch of `n` tokens: one workgroup per QR query rows.
pub fn grid(cfg: &Config, n: usize) -> [u32; 3] {
    [(n * cfg.n_heads).div_ceil(QR).max(1) as u32, 1, 1]
}

/// Runs this kernel and `attn_batch.wgsl` (f32 FMAs) on one small batch that crosses key
/// tiles (3 tokens after 150 cached positions, random values) and compares them within
/// [`error_bound`] of the device's tile math: the engine calls it once at load and keeps
/// the f32 kernel where they disagree, since no test machine without cooperative matrices
/// can run this one, and drivers differ in how they lay out cooperative loads. Err says by
/// how much they differ.
pub fn check_against_fma(
    ctx: &GpuContext,
    pipes: &Pipelines,
    cfg: &Config,
) -> std::result::Result<(), String> {
    use crate::gpu::cache::encode_rows;
    use crate::gpu::kernels::{attn_batch, attn_partial};
    use crate::gpu::upload::{storage_f32, storage_init, storage_zeroed};
    let (pos, n) = (150, 3);
    let (heads, kv, row) = (cfg.n_heads, cfg.kv_lora_rank, cfg.cache_row());
    let head_dim = cfg.qk_nope + cfg.qk_rope;
    let mut values = check_values();
    let q_abs = values(n * heads * kv, 1.0);
    let q = values(n * heads * head_dim, 4.0);
    let mut cache = values((pos + n) * row, 1.0);
    cache.resize((pos + n).next_multiple_of(POSITION_TILE) * row, 0.0);
    let rope: Vec<[f32; 2]> = (pos..pos + n)
        .flat_map(|p| attn_partial::rope_table(p, cfg.qk_rope, cfg.rope_base))
        .collect();
    let batch = uniform(
        ctx,
        "attention check batch",
        &BatchParams {
            n: n as u32,
            pos: pos as u32,
            ..Default::default()
        },
    );
    let (qa_b, q_b) = (
        storage_f32(ctx, "check q_abs", &q_abs),
        storage_f32(ctx, "check q", &q),
    );
    let rope_b = storage_init(ctx, "check rope", bytemuck::cast_slice(&rope));
    let cache_b = storage_init(ctx, "check cache", &encode_rows(CacheType::F16, &cache));
    let outputs = [
        storage_zeroed(ctx, "check kqv f32", n * heads * kv).map_err(|e| e.to_string())?,
        storage_zeroed(ctx, "check kqv coop", n * heads * kv).map_err(|e| e.to_string())?,
    ];
    let q_parts =
        storage_zeroed(ctx, "check q parts", q_parts_words(cfg, n)).map_err(|e| e.to_string())?;
    let inputs = |kqv| AttnBatch {
        batch: &batch,
        q_abs: &qa_b,
        q: &q_b,
        rope_cs: &rope_b,
        cache: &cache_b,
        cache_type: CacheType::F16,
        kqv,
    };
    let fma = attn_batch::dispatch(ctx, pipes, cfg, &inputs(&outputs[0]));
    let coop = dispatch(ctx, pipes, cfg, &inputs(&outputs[1]), &q_parts);
    let mut enc = ctx.device.create_command_encoder(&Default::default());
    {
        let mut pass = enc.begin_compute_pass(&Default::default());
        fma.record_sized(&mut pass, attn_batch::grid(cfg, n));
        coop.record_sized(&mut pass, grid(cfg, n));
    }
    ctx.queue.submit([enc.finish()]);
    let read = |b| ctx.read_f32(b, n * heads * kv).map_err(|e| e.to_string());
    let (want, got) = (read(&outputs[0])?, read(&outputs[1])?);
    let bound = error_bound(ctx.tiles.parts(), cfg, &q_abs, &q);
    agree("the cooperative batched attention", &want, &got, bound)
}

/// The load-time checks' values: in [-1, 1) times a scale, from a fixed linear
/// congruential sequence.
pub(crate) fn check_values() -> impl FnMut(usize, f32) -> Vec<f32> {
    let mut state = 0x2545_f491_u32;
    move |count, scale| {
        (0..count)
            .map(|_| {
                state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                scale * ((state >> 8) as f32 / (1u32 << 23) as f32 - 1.0)
            })
            .collect()
    }
}

/// Whether a cooperative kernel's outputs `got` agree with the f32 kernel's `want` within
/// `bound` (and at least [`CHECK_TOL`]) of the largest value; Err names the kernel and says
/// by how much they differ.
pub(crate) fn agree(
    kernel: &str,
    want: &[f32],
    got: &[f32],
    bound: f32,
) -> std::result::Result<(), String> {
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-3);
    let worst = want
        .iter()
        .zip(got)
        .map(|(w, g)| (w - g).abs())
        .fold(0f32, |m, e| {
            if e.is_nan() || m.is_nan() {
                f32::NAN
            } else {
                m.max(e)
            }
        });
    if worst <= CHECK_TOL.max(bound) * scale {
        Ok(())
    } else {
        Err(format!(
            "{kernel} differs from the f32 kernel by {worst:e} (values up to {scale:e})"
        ))
    }
}

/// Whether a cooperative attention kernel that runs here may be used: its load-time check
/// (`check`, run only if asked for) agrees with the f32 kernel; else a warning says how far
/// off it was and that `role` runs in f32.
pub fn passes(
    ctx: &GpuContext,
    role: &str,
    check: impl FnOnce() -> std::result::Result<(), String>,
) -> bool {
    match check() {
        Ok(()) => true,
        Err(why) => {
            log::warn!("{why} on {}: {role} runs in f32", ctx.describe());
            false
        }
    }
}

/// Agreement the load-time check asks for at least, relative to the largest value: both
/// compute the same sums in f32, this kernel on operands of about 21 bits with two parts.
const CHECK_TOL: f32 = 1e-4;

/// How far this kernel's outputs may be from exact sums, relative to the largest latent
/// value, for queries `q_abs` and `q` (as the kernel reads them, q_pe not yet roped) over
/// cache values below 1 in magnitude, when the queries and the softmax weights enter as
/// `parts` f16 parts (the tile math's): each such value carries a relative error u (2^-21
/// with two parts, f16's 2^-11 with one). A score then moves by up to u·Σ|q·k| times the
/// attention scale, Σ|q·k| at most the row's Σ|q| (roping a pair raises its |x| + |y| by
/// at most √2), which scales its weight by about 1 ± that; the weights' own parts add u; and
/// an average of latents moves by twice its weights' relative error.
pub fn error_bound(parts: u32, cfg: &Config, q_abs: &[f32], q: &[f32]) -> f32 {
    let (kv, nope, head_dim) = (cfg.kv_lora_rank, cfg.qk_nope, cfg.qk_nope + cfg.qk_rope);
    let l1 = |v: &[f32]| v.iter().map(|v| v.abs()).sum::<f32>();
    let score_sum = q_abs
        .chunks_exact(kv)
        .zip(q.chunks_exact(head_dim))
        .map(|(a, b)| l1(a) + std::f32::consts::SQRT_2 * l1(&b[nope..]))
        .fold(0f32, f32::max)
        * cfg.attn_scale();
    let u = if parts >= 2 {
        2f32.powi(-21)
    } else {
        2f32.powi(-11)
    };
    2.0 * u * (score_sum + 1.0)
}
