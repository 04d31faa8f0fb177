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

fn q8(w: u32) -> vec4<f32> {
    return vec4<f32>(bitcast<vec4<i32>>(vec4<u32>(w << 24u, w << 16u, w << 8u, w)) >> vec4<u32>(24u));
}

/// This invocation's share of (local row `row`) · (x * norm_w).
fn row_partial(row: u32, lid: u32) -> f32 {
    var acc = 0.0;
    if (WEIGHTS_F32) {
        let units = p.cols / 4u;
        for (var u = lid; u < units; u += WG) {
            acc += dot(bitcast<vec4<f32>>(quants[row * units + u]), x[u] * norm_w[u]);
        }
    } else {
        let units = p.cols / 16u;
        let first_scale = row * (p.cols / 32u);
        for (var u = lid; u < units; u += WG) {
            let q = quants[row * units + u];
            let si = first_scale + u / 2u;
            let d = unpack2x16float(scales[si / 2u])[si % 2u];
            let j = 4u * u;
            acc += d * (dot(q8(q.x), x[j] * norm_w[j]) + dot(q8(q.y), x[j + 1u] * norm_w[j + 1u])
                + dot(q8(q.z), x[j + 2u] * norm_w[j + 2u]) + dot(q8(q.w), x[j + 3u] * norm_w[j + 3u]));
        }
    }
    return acc;
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
    var acc = vec4<f32>(0.0);
    for (var k = 0u; k < 4u; k++) {
        let pair = first_pair + k / 2u;
        let global = expert * 2u * p.ffn + 2u * pair + k % 2u;
        if (pair < p.ffn && global >= p.row_start && global < p.row_start + p.rows) {
            acc[k] = row_partial(global - p.row_start, lid);
        }
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
