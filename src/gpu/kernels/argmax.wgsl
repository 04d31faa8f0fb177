// Argmax of the logits (greedy decoding reads back only this id), by the rule of
// ops_common::argmax: the first (lowest) index of the largest value; NaN never wins, and
// logits that are all NaN give index 0.
// Launcher: src/gpu/kernels/argmax.rs. Two dispatches of this kernel:
//   FINAL = false: grid ceil(n / SPAN); workgroup w finds the best of logits
//                  [w * SPAN, (w + 1) * SPAN) and writes the pair (value bits, index) to out[w];
//   FINAL = true:  one workgroup reduces those n pairs to the index in out[0].
// One workgroup for the whole vocabulary would walk ~600 logits per invocation in series.
// Prepended from Rust (src/gpu/kernels/argmax.rs): WG_ARGMAX, the invocations per
// workgroup, and SPAN, the logits per workgroup of the first pass (four per invocation,
// loaded together).

override FINAL: bool = false;

const NONE: u32 = 0xffffffffu;

struct Params {
    n: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
/// FINAL = false: the logits as f32 bits; true: the first pass's pairs.
@group(0) @binding(1) var<storage, read> input: array<u32>;
@group(0) @binding(2) var<storage, read_write> out: array<u32>;

var<workgroup> best_val: array<f32, WG_ARGMAX>;
var<workgroup> best_idx: array<u32, WG_ARGMAX>;

/// NaN, tested on the bits: a shader compiler may assume float compares never see NaN.
fn is_nan(v: f32) -> bool {
    return (bitcast<u32>(v) & 0x7fffffffu) > 0x7f800000u;
}

/// Whether candidate (v, i) beats the best so far (b, bi): a number, and larger, or equal and
/// earlier. (A best is never NaN.)
fn beats(v: f32, i: u32, b: f32, bi: u32) -> bool {
    return i != NONE && !is_nan(v) && (bi == NONE || v > b || (v == b && i < bi));
}

@compute @workgroup_size(WG_ARGMAX)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    var v = -3.4e38;
    var idx = NONE;
    if (FINAL) {
        for (var i = lid; i < p.n; i += WG_ARGMAX) {
            let c = bitcast<f32>(input[2u * i]);
            let ci = input[2u * i + 1u];
            if (beats(c, ci, v, idx)) {
                v = c;
                idx = ci;
            }
        }
    } else {
        let first = wid.x * SPAN + lid;
        let k = min(vec4<u32>(first) + vec4<u32>(0u, 1u, 2u, 3u) * WG_ARGMAX, vec4<u32>(p.n - 1u));
        let c = bitcast<vec4<f32>>(vec4<u32>(input[k.x], input[k.y], input[k.z], input[k.w]));
        // In index order, so that the first of equal values stays.
        for (var j = 0u; j < 4u; j++) {
            let i = first + j * WG_ARGMAX;
            if (i < p.n && beats(c[j], i, v, idx)) {
                v = c[j];
                idx = i;
            }
        }
    }
    best_val[lid] = v;
    best_idx[lid] = idx;
    workgroupBarrier();
    for (var s = WG_ARGMAX / 2u; s > 0u; s = s >> 1u) {
        if (lid < s && beats(best_val[lid + s], best_idx[lid + s], best_val[lid], best_idx[lid])) {
            best_val[lid] = best_val[lid + s];
            best_idx[lid] = best_idx[lid + s];
        }
        workgroupBarrier();
    }
    if (lid == 0u) {
        if (FINAL) {
            out[0] = select(best_idx[0], 0u, best_idx[0] == NONE);
        } else {
            out[2u * wid.x] = bitcast<u32>(best_val[0]);
            out[2u * wid.x + 1u] = best_idx[0];
        }
    }
}
