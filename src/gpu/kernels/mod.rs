//! One launcher per WGSL kernel, each beside its WGSL (`argmax.rs` launches `argmax.wgsl`;
//! `lib/` holds the WGSL appended to several kernels). A launcher builds the [`Dispatch`]es
//! of one use of its kernel (one per weight chunk where the weights are split); the decode
//! schedule creates them once and records them for every token.

pub mod argmax;
pub mod attn_combine;
pub mod attn_partial;
pub mod embed;
pub mod ffn_down;
pub mod ffn_gate_up;
pub mod matvec;

use crate::gpu::context::GpuContext;

/// Per-token values every kernel that needs them reads from one uniform buffer, written
/// before each token's submit. Matches `struct Token` in the WGSL files.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub struct TokenParams {
    /// Position of the token (its cache row).
    pub pos: u32,
    /// Positions attended: pos + 1.
    pub n_ctx: u32,
    /// Positions per attention split ([`attn_partial::split_len`]).
    pub attn_split: u32,
    pub _pad: u32,
}

impl TokenParams {
    /// The token at `pos`.
    pub fn new(pos: usize) -> TokenParams {
        let n_ctx = pos + 1;
        TokenParams {
            pos: pos as u32,
            n_ctx: n_ctx as u32,
            attn_split: attn_partial::split_len(n_ctx) as u32,
            _pad: 0,
        }
    }
}

/// Grid for `n` workgroups: x up to the per-dimension limit, the rest in y. Returns the grid
/// and its x extent (kernels rebuild the flat index as x + y * groups_x; surplus
/// workgroups find no rows).
pub fn grid(ctx: &GpuContext, n: usize) -> ([u32; 3], u32) {
    let max = ctx.limits.max_compute_workgroups_per_dimension as usize;
    if n <= max {
        ([n.max(1) as u32, 1, 1], n.max(1) as u32)
    } else {
        ([max as u32, n.div_ceil(max) as u32, 1], max as u32)
    }
}
