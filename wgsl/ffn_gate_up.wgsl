// SwiGLU gate/up of every expert a token uses, in one dispatch per chunk of the stack:
//   act[s][i] = silu(gate_e · h)[i] * (up_e · h)[i],  e = route ids[s],  h = rmsnorm(x) * norm_w
// Launcher: src/gpu/kernels/ffn_gate_up.rs. Appended: a reduce_*.wgsl.
//
// The stack interleaves gate and up rows: row 2i of expert e is gate row i, row 2i + 1 is up
// row i (global row e * 2 * ffn + 2i), so a pair never straddles a chunk. Shared experts are
// stacked after the routed ones and a dense FFN is a stack of one expert; the route buffer
// lists which experts run (ids, then f32 weights unused here). A chunk holds global rows
// [row_start, row_start + rows); pairs outside it are skipped (another dispatch does them).
// Weight layout as in matvec.wgsl (Q8_0 or F32). Each workgroup computes 2 pairs of one slot.

override WEIGHTS_F32: bool = false;

struct Params {
    /// Width of one expert (pairs per expert).
    ffn: u32,
    /// Input length (hidden size).
    cols: u32,
    row_start: u32,
    rows: u32,
    eps: f32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> quants: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read> scales: array<u32>;
@group(0) @binding(3) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read> norm_w: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read> route: array<u32>;
@group(0) @binding(6) var<storage, read_write> act: array<f32>;

/// Input of the dot products: x times the norm weight (1/rms is applied to the results).
fn input4(base: u32, j: u32) -> vec4<f32> {
    return x[j] * norm_w[j];
}

fn silu(v: f32) -> f32 {
    return v / (1.0 + exp(-v));
}

/// Grid: (ceil(ffn / 2), slots).
@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let slot = wid.y;
    let expert = route[slot];
    let first_pair = wid.x * 2u;
    var ss = 0.0;
    for (var j = lid; j < p.cols / 4u; j += WG) {
        ss += dot(x[j], x[j]);
    }
    let s = reduce_sum4(vec4<f32>(ss, 0.0, 0.0, 0.0), lid).x;
    let scale = inverseSqrt(s / f32(p.cols) + p.eps);
    // lanes: gate of pair 0, up of pair 0, gate of pair 1, up of pair 1
    let lanes = vec4<u32>(0u, 1u, 2u, 3u);
    let global = vec4<u32>(expert * 2u * p.ffn + 2u * first_pair) + lanes;
    let inside = (vec4<u32>(first_pair) + lanes / 2u < vec4<u32>(p.ffn))
        & (global >= vec4<u32>(p.row_start)) & (global < vec4<u32>(p.row_start + p.rows));
    var acc = vec4<f32>(0.0);
    if (any(inside)) {
        let local = select(vec4<u32>(0u), global - vec4<u32>(p.row_start), inside);
        acc = select(vec4<f32>(0.0), dot_rows4(local, p.cols, 0u, lid), inside);
    }
    let total = reduce_sum4(acc, lid) * scale;
    if (lid < 2u) {
        let pair = first_pair + lid;
        let global = expert * 2u * p.ffn + 2u * pair;
        if (pair < p.ffn && global >= p.row_start && global < p.row_start + p.rows) {
            act[slot * p.ffn + pair] = silu(total[2u * lid]) * total[2u * lid + 1u];
        }
    }
}
