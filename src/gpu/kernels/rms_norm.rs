//! Launcher of `rms_norm.wgsl`: RMSNorm of the rows of a batch. Reference: `cpu::ops::rmsnorm`.

use crate::gpu::context::GpuContext;
use crate::gpu::kernels::matmul::BatchParams;
use crate::gpu::pipelines::{Dispatch, Pipelines};
use crate::gpu::shader::{wgsl_struct, Shader, Slot, WeightAccess};
use crate::gpu::upload::uniform;

pub const SHADER: Shader = Shader {
    name: "rms_norm",
    source: include_str!("rms_norm.wgsl"),
    bindings: &[
        Slot::Uniform(&Params::LAYOUT),
        Slot::Uniform(&BatchParams::LAYOUT),
        Slot::Read,
        Slot::Read,
        Slot::ReadWrite,
    ],
    overrides: &[],
    consts: &[],
    structs: &[&BatchParams::LAYOUT],
    reduces: true,
    lanes: false,
    weights: WeightAccess::None,
    libraries: &[],
    cooperative: false,
};

wgsl_struct! {
    struct Params as "Params" {
        cols: u32,
        in_stride: u32,
        in_offset: u32,
        out_stride: u32,
        eps: f32,
        _pad0: u32,
        _pad1: u32,
        _pad2: u32,
    }
}

/// Rows `batch.first + r` of `x` (`cols` values from `in_offset` of rows `in_stride` apart),
/// normed with `(weight, eps)`, to rows r of `out` (`out_stride` apart). The grid is one
/// workgroup per row, set per batch.
#[allow(clippy::too_many_arguments)]
pub fn dispatch(
    ctx: &GpuContext,
    pipes: &Pipelines,
    batch: &wgpu::Buffer,
    x: &wgpu::Buffer,
    (in_stride, in_offset): (usize, usize),
    cols: usize,
    (weight, eps): (&wgpu::Buffer, f32),
    out: &wgpu::Buffer,
    out_stride: usize,
) -> Dispatch {
    assert!(
        [cols, in_stride, in_offset, out_stride]
            .iter()
            .all(|v| v % 4 == 0),
        "rms_norm rows must be vec4-aligned"
    );
    let params = uniform(
        ctx,
        "rms_norm params",
        &Params {
            cols: cols as u32,
            in_stride: in_stride as u32,
            in_offset: in_offset as u32,
            out_stride: out_stride as u32,
            eps,
            ..Default::default()
        },
    );
    pipes
        .get(ctx, SHADER, &[])
        .dispatch(ctx, &[&params, batch, x, weight, out], [1, 1, 1])
}
