//! Launcher of `embed.wgsl`: the token's embedding row, dequantized into x.
//! Reference: `Matrix::dequantize_row`.

use crate::gpu::context::GpuContext;
use crate::gpu::pipelines::{Dispatch, Pipelines};
use crate::gpu::shader::{wgsl_struct, Shader, Slot, WEIGHTS_F32};
use crate::gpu::upload::{uniform, GpuMatrix};

pub const SHADER: Shader = Shader {
    name: "embed",
    source: include_str!("embed.wgsl"),
    bindings: &[
        Slot::Uniform(&Params::LAYOUT),
        Slot::Read,
        Slot::Read,
        Slot::Read,
        Slot::ReadWrite,
    ],
    overrides: &[WEIGHTS_F32.decl()],
    consts: &[],
    structs: &[],
    reduces: false,
    dots: false,
};

wgsl_struct! {
    struct Params as "Params" {
        cols: u32,
        row_start: u32,
        rows: u32,
        _pad: u32,
    }
}

/// One dispatch per chunk of the table; the one holding row `token_id[0]` writes x.
pub fn dispatches(
    ctx: &GpuContext,
    pipes: &Pipelines,
    table: &GpuMatrix,
    token_id: &wgpu::Buffer,
    x: &wgpu::Buffer,
) -> Vec<Dispatch> {
    let kernel = pipes.get(ctx, SHADER, &[WEIGHTS_F32.set(table.format.is_f32())]);
    table
        .chunks
        .iter()
        .map(|c| {
            let params = Params {
                cols: table.cols as u32,
                row_start: c.row_start as u32,
                rows: c.rows as u32,
                _pad: 0,
            };
            let params = uniform(ctx, "embed params", &params);
            kernel.dispatch(
                ctx,
                &[&params, token_id, &c.quants, &c.scales, x],
                [1, 1, 1],
            )
        })
        .collect()
}
