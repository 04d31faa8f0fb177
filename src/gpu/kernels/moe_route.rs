//! Launcher of `wgsl/moe_route.wgsl`: expert choice and weights on the GPU, so the expert
//! kernels read the ids from a buffer with no CPU round trip. Reference: `cpu::ops::route`.

use crate::gpu::context::GpuContext;
use crate::gpu::shaders::{Dispatch, Pipelines, Shader, Slot};
use crate::gpu::upload::storage_init;

pub const SHADER: Shader = Shader {
    name: "moe_route",
    source: include_str!("../../../wgsl/moe_route.wgsl"),
    // Params are read from storage, not a uniform: see the shader's header (lavapipe
    // recompiles and keeps a copy of the shader per bind when uniforms bound its loops).
    bindings: &[Slot::Read, Slot::Read, Slot::Read, Slot::ReadWrite],
    reduces: false,
    dots: false,
};

/// The kernel keeps per-expert state in workgroup arrays of this size.
pub const MAX_EXPERTS: usize = 256;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    experts: u32,
    k: u32,
    n_shared: u32,
    norm: u32,
    scale: f32,
    _pad: [u32; 3],
}

/// `logits`: [experts] router output; `bias`: [experts]; `route` gets
/// `[ids of k + shared slots][their weights as f32 bits]`.
#[allow(clippy::too_many_arguments)]
pub fn dispatch(
    ctx: &GpuContext,
    pipes: &Pipelines,
    experts: usize,
    k: usize,
    shared: usize,
    norm: bool,
    scale: f32,
    logits: &wgpu::Buffer,
    bias: &wgpu::Buffer,
    route: &wgpu::Buffer,
) -> Dispatch {
    assert!(
        experts <= MAX_EXPERTS,
        "moe_route handles up to {MAX_EXPERTS} experts"
    );
    let params = storage_init(
        ctx,
        "moe_route params",
        bytemuck::bytes_of(&Params {
            experts: experts as u32,
            k: k as u32,
            n_shared: shared as u32,
            norm: norm as u32,
            scale,
            _pad: [0; 3],
        }),
    );
    pipes
        .get(ctx, SHADER, &[])
        .dispatch(ctx, &[&params, logits, bias, route], [1, 1, 1])
}
