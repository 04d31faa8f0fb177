//! Launcher of `embed.wgsl`: the token's embedding row, dequantized into x.
//! Reference: `Matrix::dequantize_row`.

use crate::gpu::context::GpuContext;
use crate::gpu::pipelines::{flag, Dispatch, Pipelines, Shader, Slot};
use crate::gpu::upload::{uniform, GpuMatrix};

pub const SHADER: Shader = Shader {
    name: "embed",
    source: include_str!("embed.wgsl"),
    bindings: &[
        Slot::Uniform,
        Slot::Read,
        Slot::Read,
        Slot::Read,
        Slot::ReadWrite,
    ],
    reduces: false,
    dots: false,
};

/// One dispatch per chunk of the table; the one holding row `token_id[0]` writes x.
pub fn dispatches(
    ctx: &GpuContext,
    pipes: &Pipelines,
    table: &GpuMatrix,
    token_id: &wgpu::Buffer,
    x: &wgpu::Buffer,
) -> Vec<Dispatch> {
    let kernel = pipes.get(ctx, SHADER, &[("WEIGHTS_F32", flag(table.format.is_f32()))]);
    table
        .chunks
        .iter()
        .map(|c| {
            let params = [table.cols as u32, c.row_start as u32, c.rows as u32, 0];
            let params = uniform(ctx, "embed params", &params);
            kernel.dispatch(
                ctx,
                &[&params, token_id, &c.quants, &c.scales, x],
                [1, 1, 1],
            )
        })
        .collect()
}
