// Argmax of the logits (greedy decoding reads back only this id). Ties and order as
// cpu::ops::argmax: the first (lowest) index of the largest value.
// Launcher: src/gpu/kernels/argmax.rs. Grid: 1 workgroup of WG_ARGMAX.

const WG_ARGMAX: u32 = 256u;

struct Params {
    n: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> logits: array<f32>;
@group(0) @binding(2) var<storage, read_write> result: array<u32>;

var<workgroup> best_val: array<f32, WG_ARGMAX>;
var<workgroup> best_idx: array<u32, WG_ARGMAX>;

/// The better of two candidates: the larger value, ties to the lower index (none = 0xffffffff).
fn better(v: f32, i: u32, ov: f32, oi: u32) -> bool {
    return oi != 0xffffffffu && (i == 0xffffffffu || ov > v || (ov == v && oi < i));
}

@compute @workgroup_size(WG_ARGMAX)
fn main(@builtin(local_invocation_index) lid: u32) {
    // Four interleaved streams per invocation (four loads in flight), merged at the end.
    var vs = vec4<f32>(-3.4e38);
    var is = vec4<u32>(0xffffffffu);
    for (var i = lid; i < p.n; i += 4u * WG_ARGMAX) {
        for (var k = 0u; k < 4u; k++) {
            let at = i + k * WG_ARGMAX;
            if (at < p.n) {
                let l = logits[at];
                if (better(vs[k], is[k], l, at)) {
                    vs[k] = l;
                    is[k] = at;
                }
            }
        }
    }
    var v = vs.x;
    var idx = is.x;
    for (var k = 1u; k < 4u; k++) {
        if (better(v, idx, vs[k], is[k])) {
            v = vs[k];
            idx = is[k];
        }
    }
    best_val[lid] = v;
    best_idx[lid] = idx;
    workgroupBarrier();
    for (var s = WG_ARGMAX / 2u; s > 0u; s = s >> 1u) {
        if (lid < s) {
            let ov = best_val[lid + s];
            let oi = best_idx[lid + s];
            if (better(best_val[lid], best_idx[lid], ov, oi)) {
                best_val[lid] = ov;
                best_idx[lid] = oi;
            }
        }
        workgroupBarrier();
    }
    if (lid == 0u) {
        result[0] = best_idx[0];
    }
}
