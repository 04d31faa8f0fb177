//! Launcher of `moe_group.wgsl`: a batch's (token, slot) pairs grouped by expert (counts,
//! offsets, the sorted pairs' tokens and each pair's place), and [`Routing`], where the MoE
//! kernels of a batch keep the route and the groups. Reference: the grouping of
//! `cpu::moe_ffn` (`tokens_of`).

use crate::gpu::context::GpuContext;
use crate::gpu::kernels::matmul::{BatchParams, TN};
use crate::gpu::pipelines::{Dispatch, Pipelines};
use crate::gpu::shader::{wgsl_struct, Shader, Slot, WeightAccess};
use crate::gpu::upload::uniform;

/// Invocations of the one workgroup.
pub const GWG: usize = 256;
/// Experts (routed and shared) the workgroup arrays hold.
pub const MAX_GROUPS: usize = 512;

pub const SHADER: Shader = Shader {
    name: "moe_group",
    source: include_str!("moe_group.wgsl"),
    bindings: &[
        Slot::Uniform(&Params::LAYOUT),
        Slot::Uniform(&BatchParams::LAYOUT),
        Slot::Read,
        Slot::ReadWrite,
    ],
    overrides: &[],
    consts: &[
        ("GWG", GWG as u32),
        ("MAX_GROUPS", MAX_GROUPS as u32),
        ("TN", TN as u32),
    ],
    structs: &[&BatchParams::LAYOUT],
    reduces: false,
    lanes: false,
    weights: WeightAccess::None,
    libraries: &[],
    cooperative: false,
};

wgsl_struct! {
    struct Params as "Params" {
        experts: u32,
        slots: u32,
        positions_at: u32,
        tiles_at: u32,
        tile_slots: u32,
        _pad0: u32,
        _pad1: u32,
        _pad2: u32,
    }
}

/// Where a batch's MoE kernels keep their state, in u32 words. The route buffer holds the
/// expert of every pair (`t * slots + s`), then (at [`Routing::weights_at`]) their weights
/// as f32 bits; the pairs buffer the counts, the offsets and the sorted pairs' tokens of
/// the experts, then (at [`Routing::positions_at`]) each pair's place in that order, then
/// (at [`Routing::tiles_at`]) the list of the experts' tiles of pairs that the expert
/// mat-muls' workgroups take one each.
#[derive(Clone, Copy, Debug)]
pub struct Routing {
    /// Routed and shared experts.
    pub experts: usize,
    /// Experts per token (routed and shared).
    pub slots: usize,
    /// Tokens of the largest batch.
    pub max_tokens: usize,
}

impl Routing {
    pub fn weights_at(&self) -> usize {
        self.max_tokens * self.slots
    }

    pub fn route_len(&self) -> usize {
        2 * self.max_tokens * self.slots
    }

    pub fn positions_at(&self) -> usize {
        2 * self.experts + self.max_tokens * self.slots
    }

    pub fn tiles_at(&self) -> usize {
        self.positions_at() + self.max_tokens * self.slots
    }

    pub fn pairs_len(&self) -> usize {
        self.tiles_at() + tile_slots(self.max_tokens * self.slots, self.experts)
    }
}

/// The one-workgroup dispatch grouping the pairs of `route` into `pairs`.
pub fn dispatch(
    ctx: &GpuContext,
    pipes: &Pipelines,
    r: &Routing,
    batch: &wgpu::Buffer,
    route: &wgpu::Buffer,
    pairs: &wgpu::Buffer,
) -> Dispatch {
    assert!(r.experts <= MAX_GROUPS, "{} experts", r.experts);
    // A tile list entry holds the expert and its tile in 16 bits each.
    assert!(
        r.max_tokens.div_ceil(TN) <= 1 << 16,
        "{} tokens per batch",
        r.max_tokens
    );
    let params = uniform(
        ctx,
        "moe_group params",
        &Params {
            experts: r.experts as u32,
            slots: r.slots as u32,
            positions_at: r.positions_at() as u32,
            tiles_at: r.tiles_at() as u32,
            tile_slots: tile_slots(r.max_tokens * r.slots, r.experts) as u32,
            _pad0: 0,
            _pad1: 0,
            _pad2: 0,
        },
    );
    pipes
        .get(ctx, SHADER, &[])
        .dispatch(ctx, &[&params, batch, route, pairs], [1, 1, 1])
}

/// Entries of the tile list for up to `pairs` pairs among `experts` experts: each expert's
/// last tile may be partial, so at most one tile more per expert than the pairs fill.
pub fn tile_slots(pairs: usize, experts: usize) -> usize {
    pairs.div_ceil(TN) + experts
}
