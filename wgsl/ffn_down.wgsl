// Down projection of every expert a token uses, weighted and summed into the residual:
//   x[r] += Σ_s w[s] * (down_e · act[s])[r],  e = route ids[s]
// in one dispatch per chunk of the stack. Launcher: src/gpu/kernels/ffn_down.rs.
// Appended: a reduce_*.wgsl.
//
// The stack holds each expert's [hidden][ffn] rows one after another (global row
// e * hidden + r), shared experts after the routed ones. `route` holds the ids of the slots,
// then their weights as f32 bits (shared experts and a dense FFN have weight 1). A chunk
// holds global rows [row_start, row_start + rows); slots whose rows lie elsewhere add
// nothing here (their chunk's dispatch adds them). Weight layout as in matvec.wgsl.
// Each workgroup computes 4 output rows.

override WEIGHTS_F32: bool = false;

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

fn q8(w: u32) -> vec4<f32> {
    return vec4<f32>(bitcast<vec4<i32>>(vec4<u32>(w << 24u, w << 16u, w << 8u, w)) >> vec4<u32>(24u));
}

/// This invocation's share of (local row `row`) · act[base..].
fn row_partial(row: u32, base: u32, lid: u32) -> f32 {
    var acc = 0.0;
    if (WEIGHTS_F32) {
        let units = p.ffn / 4u;
        for (var u = lid; u < units; u += WG) {
            acc += dot(bitcast<vec4<f32>>(quants[row * units + u]), act[base + u]);
        }
    } else {
        let units = p.ffn / 16u;
        let first_scale = row * (p.ffn / 32u);
        for (var u = lid; u < units; u += WG) {
            let q = quants[row * units + u];
            let si = first_scale + u / 2u;
            let d = unpack2x16float(scales[si / 2u])[si % 2u];
            let j = base + 4u * u;
            acc += d * (dot(q8(q.x), act[j]) + dot(q8(q.y), act[j + 1u])
                + dot(q8(q.z), act[j + 2u]) + dot(q8(q.w), act[j + 3u]));
        }
    }
    return acc;
}

/// Grid: ceil(hidden / 4) workgroups.
@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let first = wid.x * 4u;
    var acc = vec4<f32>(0.0);
    for (var s = 0u; s < p.slots; s++) {
        let expert = route[s];
        let weight = bitcast<f32>(route[p.slots + s]);
        for (var k = 0u; k < 4u; k++) {
            let r = first + k;
            let global = expert * p.hidden + r;
            if (r < p.hidden && global >= p.row_start && global < p.row_start + p.rows) {
                acc[k] += weight * row_partial(global - p.row_start, s * p.ffn / 4u, lid);
            }
        }
    }
    let total = reduce_sum4(acc, lid);
    if (lid < 4u && first + lid < p.hidden) {
        x[first + lid] += total[lid];
    }
}
