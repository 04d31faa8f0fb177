//! Launcher of `argmax.wgsl`: the id of the largest logit, so greedy decoding reads back 4
//! bytes. Reference: `ops_common::argmax` (its NaN rule included).

use crate::error::Result;
use crate::gpu::context::GpuContext;
use crate::gpu::pipelines::{Dispatch, Pipelines};
use crate::gpu::shader::{wgsl_struct, Override, Shader, Slot, WeightAccess};
use crate::gpu::upload::{storage_zeroed, uniform};

/// Invocations per workgroup (the kernel's WG_ARGMAX).
pub const WORKGROUP: u32 = 256;
/// Logits each workgroup of the first pass reduces (the kernel's SPAN).
pub const SPAN: usize = 4 * WORKGROUP as usize;

/// false: the first pass (per-span bests); true: the best of those.
pub const FINAL: Override<bool> = Override::new("FINAL");

pub const SHADER: Shader = Shader {
    name: "argmax",
    source: include_str!("argmax.wgsl"),
    bindings: &[Slot::Uniform(&Params::LAYOUT), Slot::Read, Slot::ReadWrite],
    overrides: &[FINAL.decl()],
    consts: &[("WG_ARGMAX", WORKGROUP), ("SPAN", SPAN as u32)],
    structs: &[],
    reduces: false,
    lanes: false,
    weights: WeightAccess::None,
    libraries: &[],
    cooperative: false,
};

wgsl_struct! {
    struct Params as "Params" {
        n: u32,
        _pad0: u32,
        _pad1: u32,
        _pad2: u32,
    }
}

/// The two dispatches (per-span bests, then the best of those) writing the index of the
/// largest of `n` logits to `result[0]`.
pub fn dispatches(
    ctx: &GpuContext,
    pipes: &Pipelines,
    n: usize,
    logits: &wgpu::Buffer,
    result: &wgpu::Buffer,
) -> Result<Vec<Dispatch>> {
    let spans = n.div_ceil(SPAN);
    let pairs = storage_zeroed(ctx, "argmax pairs", 2 * spans)?;
    let pass = |last: bool, count: usize, input: &wgpu::Buffer, out: &wgpu::Buffer, grid| {
        let params = Params {
            n: count as u32,
            ..Default::default()
        };
        let params = uniform(ctx, "argmax params", &params);
        pipes.get(ctx, SHADER, &[FINAL.set(last)]).dispatch(
            ctx,
            &[&params, input, out],
            [grid, 1, 1],
        )
    };
    Ok(vec![
        pass(false, n, logits, &pairs, spans as u32),
        pass(true, spans, &pairs, result, 1),
    ])
}
