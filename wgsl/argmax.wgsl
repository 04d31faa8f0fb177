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

@compute @workgroup_size(WG_ARGMAX)
fn main(@builtin(local_invocation_index) lid: u32) {
    var v = -3.4e38;
    var idx = 0xffffffffu;
    for (var i = lid; i < p.n; i += WG_ARGMAX) {
        let l = logits[i];
        if (idx == 0xffffffffu || l > v) {
            v = l;
            idx = i;
        }
    }
    best_val[lid] = v;
    best_idx[lid] = idx;
    workgroupBarrier();
    for (var s = WG_ARGMAX / 2u; s > 0u; s = s >> 1u) {
        if (lid < s) {
            let ov = best_val[lid + s];
            let oi = best_idx[lid + s];
            let mine = best_idx[lid];
            if (oi != 0xffffffffu && (mine == 0xffffffffu || ov > best_val[lid] || (ov == best_val[lid] && oi < mine))) {
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
