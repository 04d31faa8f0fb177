// Down projection of every expert a token uses, weighted and summed into the residual:
//   x[r] += Σ_s w[s] * (down_e · act[s])[r],  e = route ids[s]
// in one dispatch per chunk of the stack. Launcher: src/gpu/kernels/ffn_down.rs.
// Appended: a lanes_*.wgsl, lib/group_sums.wgsl, the chunk's weight layout library and
// dot_rows4.wgsl.
//
// The stack holds each expert's [hidden][ffn] rows one after another (global row
// e * hidden + r), shared experts after the routed ones. `route` holds the ids of the slots,
// then their weights as f32 bits (shared experts and a dense FFN have weight 1). A chunk
// holds global rows [row_start, row_start + rows); slots whose rows lie elsewhere add
// nothing here (their chunk's dispatch adds them). Each chunk has one weight layout (the
// shared expert's chunk may differ from the routed experts').
// Each workgroup computes 4 output rows: its AWG invocations (prepended from the launcher)
// take the (slot, dot unit) pairs of all slots in turn, so every slot's loads are in flight at
// once, and the sums meet in workgroup memory (group_sums).

/// Invocations summed by lane_sum: the device's smallest subgroup, at most AWG.
override LANES: u32 = 8u;


struct Params {
    /// Output rows per expert (hidden size).
    hidden: u32,
    /// Width of one expert (input length per slot).
    ffn: u32,
    slots: u32,
    row_start: u32,
    rows: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> quants: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read> scales: array<u32>;
@group(0) @binding(3) var<storage, read> act: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read> route: array<u32>;
@group(0) @binding(5) var<storage, read_write> x: array<f32>;

/// Input of the dot products: the activations of a slot.
fn input4(base: u32, j: u32) -> vec4<f32> {
    return act[base + j];
}

@compute @workgroup_size(AWG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let first = wid.x * 4u;
    let lanes = vec4<u32>(0u, 1u, 2u, 3u);
    let dots = p.ffn / (16u * DOT_RUNS);
    var acc = vec4<f32>(0.0);
    for (var i = lid; i < p.slots * dots; i += AWG) {
        let s = i / dots;
        let d = i % dots;
        let expert = route[s];
        let weight = bitcast<f32>(route[p.slots + s]);
        let global = vec4<u32>(expert * p.hidden + first) + lanes;
        let inside = (vec4<u32>(first) + lanes < vec4<u32>(p.hidden))
            & (global >= vec4<u32>(p.row_start)) & (global < vec4<u32>(p.row_start + p.rows));
        if (any(inside)) {
            let local = select(vec4<u32>(0u), global - vec4<u32>(p.row_start), inside);
            let part = dot_units4(local, dots, d, s * p.ffn / 4u);
            acc += select(vec4<f32>(0.0), weight * part, inside);
        }
    }
    let total = group_sums(acc, 0.0, false, AWG, lid).rows;
    if (lid < 4u && first + lid < p.hidden) {
        x[first + lid] += total[lid];
    }
}
