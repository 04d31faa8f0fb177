// SwiGLU gate/up of every expert a token uses, in one dispatch per chunk of the stack:
//   act[s][i] = silu(gate_e · h)[i] * (up_e · h)[i],  e = route ids[s],  h = rmsnorm(x) * norm_w
// Launcher: src/gpu/kernels/ffn_gate_up.rs. Appended: a lanes_*.wgsl, lib/group_sums.wgsl,
// the chunk's weight layout library and dot_rows4.wgsl.
//
// The stack interleaves gate and up rows: row 2i of expert e is gate row i, row 2i + 1 is up
// row i (global row e * 2 * ffn + 2i), so a pair never straddles a chunk. Shared experts are
// stacked after the routed ones and a dense FFN is a stack of one expert; the route buffer
// lists which experts run (ids, then f32 weights used by ffn_down). A chunk holds global rows
// [row_start, row_start + rows); pairs outside it are skipped (another dispatch does them).
// Each chunk has one weight layout (chunks of a stack may differ). Each workgroup computes PAIRS pairs of one
// slot after one routing: a lane group of QUAD_LANES invocations per two pairs (four rows:
// one per vec4 lane), all at once, and one sum of the input's squares for the norm.
//
// ROUTED (MoE layers): every workgroup first chooses the experts from the router logits
// (lib/route.wgsl, appended: cpu::ops::route exactly). Shared experts follow as slots
// TOP_K.. with ids EXPERTS.. and weight 1. The first workgroup writes the route for
// ffn_down. Recomputing the choice in every workgroup (64 logits from L2 and 64 x 64
// comparisons) is cheaper than a dispatch of its own.

// Prepended from src/gpu/kernels/ffn_gate_up.rs: AWG (invocations per workgroup) and
// QUAD_LANES (invocations sharing a row quad); MAX_EXPERTS (the largest expert count its
// workgroup arrays hold).
/// Row quads per workgroup: each takes two pairs.
const QUADS: u32 = AWG / QUAD_LANES;
const PAIRS: u32 = 2u * QUADS;
/// Invocations summed by lane_sum: QUAD_LANES, or the device's smallest subgroup if fewer.
override LANES: u32 = QUAD_LANES;
override ROUTED: bool = false;
// EXPERTS, TOP_K, NORM_WEIGHTS, WEIGHT_SCALE: lib/route.wgsl.

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
/// [slots] expert ids, then [slots] weights (f32 bits): read, or written when ROUTED.
@group(0) @binding(5) var<storage, read_write> route: array<u32>;
@group(0) @binding(6) var<storage, read_write> act: array<f32>;
/// ROUTED only: [EXPERTS] router logits and selection bias.
@group(0) @binding(7) var<storage, read> logits: array<f32>;
@group(0) @binding(8) var<storage, read> bias: array<f32>;

/// Input of the dot products: x times the norm weight (1/rms is applied to the results).
fn input4(base: u32, j: u32) -> vec4<f32> {
    return x[j] * norm_w[j];
}

fn silu(v: f32) -> f32 {
    return v / (1.0 + exp(-v));
}

/// The expert of `slot`: chosen from the router logits when ROUTED (the first workgroup
/// also writes the route of all `slots`), else read from the route buffer.
fn slot_expert(slot: u32, slots: u32, first_workgroup: bool, lid: u32) -> u32 {
    if (!ROUTED) {
        return route[slot];
    }
    choose_experts(0u, lid);
    if (first_workgroup && lid == 0u) {
        for (var j = 0u; j < slots; j++) {
            var id = EXPERTS + j - TOP_K;
            var weight = 1.0;
            if (j < TOP_K) {
                id = chosen[j];
                weight = chosen_weight(j);
            }
            route[j] = id;
            route[slots + j] = bitcast<u32>(weight);
        }
    }
    if (slot < TOP_K) {
        return chosen[slot];
    }
    return EXPERTS + slot - TOP_K;
}

/// Grid: (ceil(ffn / PAIRS), slots).
@compute @workgroup_size(AWG)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let slot = wid.y;
    let expert = slot_expert(slot, groups.y, wid.x == 0u && wid.y == 0u, lid);
    let quad = lid / QUAD_LANES;
    let first_pair = wid.x * PAIRS + 2u * quad;
    // lanes: gate of pair 0, up of pair 0, gate of pair 1, up of pair 1
    let lanes = vec4<u32>(0u, 1u, 2u, 3u);
    let global = vec4<u32>(expert * 2u * p.ffn + 2u * first_pair) + lanes;
    let inside = (vec4<u32>(first_pair) + lanes / 2u < vec4<u32>(p.ffn))
        & (global >= vec4<u32>(p.row_start)) & (global < vec4<u32>(p.row_start + p.rows));
    var acc = vec4<f32>(0.0);
    if (any(inside)) {
        let local = select(vec4<u32>(0u), global - vec4<u32>(p.row_start), inside);
        let part = dot_rows4(local, p.cols, 0u, lid % QUAD_LANES, QUAD_LANES);
        acc = select(vec4<f32>(0.0), part, inside);
    }
    // The norm's sum of squares after the products, so their weight loads go first.
    var ss = 0.0;
    for (var j = lid; j < p.cols / 4u; j += AWG) {
        ss += dot(x[j], x[j]);
    }
    let sums = group_sums(acc, ss, true, QUAD_LANES, lid);
    let lane = lid % QUAD_LANES;
    if (lane < 2u) {
        let total = sums.rows * inverseSqrt(sums.squares / f32(p.cols) + p.eps);
        let pair = first_pair + lane;
        let global = expert * 2u * p.ffn + 2u * pair;
        if (pair < p.ffn && global >= p.row_start && global < p.row_start + p.rows) {
            act[slot * p.ffn + pair] = silu(total[2u * lane]) * total[2u * lane + 1u];
        }
    }
}
