//! Launcher of `embed.wgsl`: the tokens' embedding rows, dequantized into x.
//! Reference: `Matrix::dequantize_row`.

use crate::gpu::context::GpuContext;
use crate::gpu::pipelines::{Dispatch, Pipelines};
use crate::gpu::shader::{wgsl_struct, Shader, Slot, WeightAccess};
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
    overrides: &[],
    consts: &[],
    structs: &[],
    reduces: false,
    lanes: false,
    weights: WeightAccess::Units,
    libraries: &[],
    cooperative: false,
};

wgsl_struct! {
    struct Params as "Params" {
        cols: u32,
        row_start: u32,
        rows: u32,
        _pad: u32,
    }
}

/// One dispatch per chunk of the table; the one holding row `token_id[t]` writes x[t]. The
/// grid is one workgroup: token 0 (a batch records it with one per token).
pub fn dispatches(
    ctx: &GpuContext,
    pipes: &Pipelines,
    table: &GpuMatrix,
    token_id: &wgpu::Buffer,
    x: &wgpu::Buffer,
) -> Vec<Dispatch> {
    table
        .chunks
        .iter()
        .map(|c| {
            let kernel = pipes.get_for(ctx, SHADER, c.format, &[]);
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
