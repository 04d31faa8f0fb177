//! Launcher of `matmul.wgsl`: a weight matrix in any GPU layout times a block of activation
//! rows, tiled through workgroup memory; per-head groups, the residual add, a SwiGLU
//! epilogue and the expert-indexed form of MoE layers (llama.cpp's mul_mat_id).
//! Reference: `cpu::matmul::matmul` (each output a `Matrix::dot_row`), `ops::swiglu`.

use crate::gpu::context::GpuContext;
use crate::gpu::kernels::moe_group::tile_slots;
use crate::gpu::pipelines::{Dispatch, Pipelines};
use crate::gpu::shader::{wgsl_struct, Override, Shader, Slot, TileMath, WeightAccess};
use crate::gpu::upload::{uniform, GpuMatrix};

/// Tokens of a workgroup's tile; its rows are the tile library's (`TileMath::tile_rows`).
pub const TN: usize = 64;
/// Invocations per workgroup: eight subgroups of 32 for the cooperative tiles.
pub const MWG: usize = 256;
// The f32 tiles' mapping of invocations to blocks: one 4 x 4 block each, groups of 32
// taking 8 row quads x 4 token quads, the tile's row quads in TM / 32 such groups.
const FMA_ROWS: usize = TileMath::Fma.tile_rows() as usize;
const _: () = assert!(
    FMA_ROWS.is_multiple_of(32)
        && TN.is_multiple_of(16)
        && MWG == FMA_ROWS * TN / 16
        && MWG == 32 * (FMA_ROWS / 32) * (TN / 16)
);

pub const ACCUMULATE: Override<bool> = Override::new("ACCUMULATE");
pub const SWIGLU: Override<bool> = Override::new("SWIGLU");
pub const EXPERTS: Override<bool> = Override::new("EXPERTS");
pub const GATHER: Override<bool> = Override::new("GATHER");

pub const SHADER: Shader = Shader {
    name: "matmul",
    source: include_str!("matmul.wgsl"),
    bindings: &[
        Slot::Uniform(&Params::LAYOUT),
        Slot::Uniform(&BatchParams::LAYOUT),
        Slot::Read,
        Slot::Read,
        Slot::Read,
        Slot::ReadWrite,
        Slot::Read,
    ],
    overrides: &[
        ACCUMULATE.decl(),
        SWIGLU.decl(),
        EXPERTS.decl(),
        GATHER.decl(),
    ],
    consts: &[("TN", TN as u32), ("MWG", MWG as u32)],
    structs: &[&BatchParams::LAYOUT],
    reduces: false,
    lanes: false,
    weights: WeightAccess::Tiles,
    libraries: &[],
    cooperative: false,
};

wgsl_struct! {
    /// What one batch (a chunk of a prompt, or the rows the LM head takes) tells the batched
    /// kernels (WGSL `Batch`, prepended to them), written before each chunk's submit.
    pub struct BatchParams as "Batch" {
        /// Rows (tokens) of the batch.
        pub n: u32,
        /// Position of the first token (the positions already cached).
        pub pos: u32,
        /// First row of the input the batch reads (the LM head's rows of the residual).
        pub first: u32,
        pub _pad0: u32,
    }
}

wgsl_struct! {
    struct Params as "Params" {
        cols: u32,
        row_start: u32,
        rows: u32,
        group_rows: u32,
        group_stride: u32,
        out_group_stride: u32,
        in_offset: u32,
        x_stride: u32,
        y_stride: u32,
        first_group: u32,
        experts: u32,
        tiles_at: u32,
    }
}

/// The expert-indexed form: group g of the matrix is expert g, run over its pairs.
pub struct Experts<'a> {
    /// `[experts] counts, [experts] offsets, [pairs] token of each pair`, and the tile list
    /// at `tiles_at` (moe_group).
    pub pairs: &'a wgpu::Buffer,
    pub tiles_at: usize,
    /// Experts in the list (routed and shared): the matrix's groups.
    pub experts: usize,
    /// Pairs per token: a batch of n tokens has n * slots pairs.
    pub slots: usize,
    /// The input row of a pair is its token (else the pair's own row).
    pub gather: bool,
}

/// A mat-mul dispatch and how its grid follows the batch ([`MatmulDispatch::grid`]).
pub struct MatmulDispatch {
    pub dispatch: Dispatch,
    /// Expert-indexed: (pairs per token, experts in the list).
    experts: Option<(usize, usize)>,
}

impl MatmulDispatch {
    /// The grid for a batch of `n` tokens: row tiles x groups x token tiles, or for experts
    /// row tiles x 1 x the entries of the tile list that n tokens' pairs can fill.
    pub fn grid(&self, n: usize) -> [u32; 3] {
        let [row_tiles, groups, _] = self.dispatch.workgroups;
        match self.experts {
            None => [row_tiles, groups, n.div_ceil(TN).max(1) as u32],
            Some((slots, experts)) => [row_tiles, 1, tile_slots(n * slots, experts) as u32],
        }
    }
}

/// How one mat-mul reads its input and writes its output.
pub struct Matmul<'a> {
    /// The batch's uniform ([`BatchParams`]: its token count).
    pub batch: &'a wgpu::Buffer,
    /// `[rows][x_stride]`; a row reads `cols` values from `in_offset` (+ the group's offset).
    pub x: &'a wgpu::Buffer,
    pub x_stride: usize,
    pub in_offset: usize,
    /// `(rows per group, input offset between groups)`: per-head mat-muls. None: one group.
    pub groups: Option<(usize, usize)>,
    /// `[rows][y_stride]`.
    pub y: &'a wgpu::Buffer,
    pub y_stride: usize,
    pub accumulate: bool,
    pub swiglu: bool,
    pub experts: Option<Experts<'a>>,
}

/// One dispatch per chunk of `m`, its grid `[row tiles, groups, 1]`: the token tiles are set
/// per batch ([`MatmulDispatch::grid`]).
pub fn dispatches(
    ctx: &GpuContext,
    pipes: &Pipelines,
    m: &GpuMatrix,
    a: &Matmul,
) -> Vec<MatmulDispatch> {
    let (group_rows, group_stride) = match (&a.groups, &a.experts) {
        (Some(g), _) => *g,
        (None, Some(e)) => (m.rows / e.experts, 0),
        (None, None) => (m.rows, 0),
    };
    assert!(
        a.in_offset.is_multiple_of(4) && group_stride % 4 == 0 && a.x_stride.is_multiple_of(4),
        "matmul input rows must be vec4-aligned"
    );
    assert!(group_rows > 0 && m.rows.is_multiple_of(group_rows));
    if let Some(e) = &a.experts {
        assert_eq!(m.rows, e.experts * group_rows, "matmul: rows per expert");
    }
    // Per-head outputs follow the global row; an expert's go to its pairs' rows.
    let out_group_stride = match (&a.experts, a.swiglu) {
        (Some(_), _) => 0,
        (None, true) => group_rows / 2,
        (None, false) => group_rows,
    };
    if a.swiglu {
        assert!(
            group_rows % 2 == 0 && m.chunks.iter().all(|c| c.row_start % 2 == 0),
            "SwiGLU pairs must not straddle a group or a chunk"
        );
    }
    m.chunks
        .iter()
        .map(|c| {
            let first_group = c.row_start / group_rows;
            let last_group = (c.row_start + c.rows - 1) / group_rows;
            let kernel = pipes.get_for(
                ctx,
                SHADER,
                c.format,
                &[
                    ACCUMULATE.set(a.accumulate),
                    SWIGLU.set(a.swiglu),
                    EXPERTS.set(a.experts.is_some()),
                    GATHER.set(a.experts.as_ref().is_some_and(|e| e.gather)),
                ],
            );
            let params = uniform(
                ctx,
                "matmul params",
                &Params {
                    cols: m.cols as u32,
                    row_start: c.row_start as u32,
                    rows: c.rows as u32,
                    group_rows: group_rows as u32,
                    group_stride: group_stride as u32,
                    out_group_stride: out_group_stride as u32,
                    in_offset: a.in_offset as u32,
                    x_stride: a.x_stride as u32,
                    y_stride: a.y_stride as u32,
                    first_group: first_group as u32,
                    experts: a.experts.as_ref().map_or(0, |e| e.experts as u32),
                    tiles_at: a.experts.as_ref().map_or(0, |e| e.tiles_at as u32),
                },
            );
            let pairs = a.experts.as_ref().map_or(&ctx.dummy, |e| e.pairs);
            // A group's rows inside the chunk are at most the fewer of the two.
            let tiles = group_rows
                .min(c.rows)
                .div_ceil(ctx.tiles.tile_rows() as usize);
            MatmulDispatch {
                dispatch: kernel.dispatch(
                    ctx,
                    &[&params, a.batch, &c.quants, &c.scales, a.x, a.y, pairs],
                    [tiles as u32, (last_group - first_group + 1) as u32, 1],
                ),
                experts: a.experts.as_ref().map(|e| (e.slots, e.experts)),
            }
        })
        .collect()
}
