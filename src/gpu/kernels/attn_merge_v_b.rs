//! Launcher of `attn_merge_v_b.wgsl`: the attention's second pass (the token's own cache row,
//! the merge of `attn_partial`'s splits) and each head's `v_b` mat-vec in one dispatch, for
//! tokens with few splits (short contexts, where a token's time is mostly dispatches).
//! Reference: `cpu::attention` (its cache append and per-head softmax) and `ops::matvec`
//! with v_b per head.

use crate::config::Config;
use crate::gpu::context::{GpuContext, WORKGROUP_SIZE};
use crate::gpu::kernels::attn_combine::{self, MAX_ROW};
use crate::gpu::kernels::attn_partial::{self, TokenParams};
use crate::gpu::kernels::matvec;
use crate::gpu::pipelines::{Dispatch, Pipelines};
use crate::gpu::shader::{self, wgsl_struct, Shader, Slot, WeightAccess};
use crate::gpu::upload::{uniform, GpuMatrix};
use crate::ops_common::CacheType;

/// Splits a token may have for this kernel to run it: every workgroup of a head merges all
/// of them (2 KB of context each), which past a few costs more than the dispatch it saves.
pub const MAX_MERGED_SPLITS: usize = 16;
/// v_b rows per workgroup, about: few enough workgroups per head that the repeated merge
/// stays small, enough that every head's rows spread over several cores.
const ROWS_PER_WORKGROUP: usize = 32;

pub const SHADER: Shader = Shader {
    name: "attn_merge_v_b",
    source: include_str!("attn_merge_v_b.wgsl"),
    bindings: &[
        Slot::Uniform(&Params::LAYOUT),
        Slot::Uniform(&TokenParams::LAYOUT),
        Slot::Read,
        Slot::Read,
        Slot::Read,
        Slot::Read,
        Slot::Read,
        Slot::Read,
        Slot::ReadWrite,
        Slot::Read,
        Slot::Read,
        Slot::ReadWrite,
    ],
    overrides: &[
        attn_combine::KV4.decl(),
        attn_combine::ROW4.decl(),
        attn_combine::CACHE_F16.decl(),
        matvec::ROWS.decl(),
        matvec::LANES.decl(),
    ],
    consts: &[
        ("MAX_SPLITS", attn_partial::MAX_SPLITS as u32),
        ("MAX_ROW4", (MAX_ROW / 4) as u32),
    ],
    structs: &[&TokenParams::LAYOUT],
    reduces: true,
    lanes: true,
    weights: WeightAccess::RowDots,
    libraries: &[shader::ROPE, shader::CACHE_STORE, shader::ATTN_MERGE],
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
        head_rows: u32,
        _pad0: u32,
    }
}

/// Whether the token at `pos` has few enough splits for this kernel.
pub fn runs_at(pos: usize) -> bool {
    attn_partial::splits(pos) <= MAX_MERGED_SPLITS
}

/// The buffers of the fused merge and v_b (those it shares with attn_partial are in
/// [`attn_partial::Attention`]).
pub struct MergeVb<'a> {
    /// `[heads * v_head][kv]`.
    pub v_b: &'a GpuMatrix,
    /// `[q_a | kv_cmpr | k_pe]` of the token: kv_cmpr starts at q_lora_rank.
    pub kv_a: &'a wgpu::Buffer,
    /// [kv] latent RMSNorm weight.
    pub kv_norm: &'a wgpu::Buffer,
    /// [heads][v_head] out.
    pub kqv_out: &'a wgpu::Buffer,
}

/// The dispatch, where v_b is one binding (else the schedule merges and multiplies in two).
pub fn dispatch(
    ctx: &GpuContext,
    pipes: &Pipelines,
    cfg: &Config,
    max_context: usize,
    a: &attn_partial::Attention,
    m: &MergeVb,
) -> Option<Dispatch> {
    assert!(attn_combine::unsupported(cfg).is_none());
    let [chunk] = m.v_b.chunks.as_slice() else {
        return None;
    };
    let units = m.v_b.cols / chunk.format.unit_values();
    let lanes = matvec::lanes_per_quad(ctx, units);
    let lane_groups = WORKGROUP_SIZE as usize / lanes;
    let rows_per_group = (ROWS_PER_WORKGROUP / lane_groups).next_multiple_of(4);
    let rows_per_wg = rows_per_group * lane_groups;
    let params = uniform(
        ctx,
        "attn_merge_v_b params",
        &Params {
            max_splits: attn_partial::max_splits(max_context) as u32,
            head_dim: (cfg.qk_nope + cfg.qk_rope) as u32,
            nope: cfg.qk_nope as u32,
            scale: cfg.attn_scale(),
            kv_offset4: (cfg.q_lora_rank / 4) as u32,
            eps: cfg.rms_eps,
            head_rows: cfg.v_head as u32,
            ..Default::default()
        },
    );
    let constants = [
        attn_combine::KV4.set((cfg.kv_lora_rank / 4) as u32),
        attn_combine::ROW4.set((cfg.cache_row() / 4) as u32),
        attn_combine::CACHE_F16.set(a.cache_type == CacheType::F16),
        matvec::ROWS.set(rows_per_group as u32),
        matvec::LANES.set(lanes as u32),
    ];
    Some(
        pipes
            .get_for(ctx, SHADER, chunk.format, &constants)
            .dispatch(
                ctx,
                &[
                    &params,
                    a.token,
                    a.partial,
                    a.q_abs,
                    a.q,
                    m.kv_a,
                    m.kv_norm,
                    a.rope_cs,
                    a.cache,
                    &chunk.quants,
                    &chunk.scales,
                    m.kqv_out,
                ],
                [
                    cfg.v_head.div_ceil(rows_per_wg) as u32,
                    cfg.n_heads as u32,
                    1,
                ],
            ),
    )
}
