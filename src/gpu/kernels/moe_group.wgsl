// The pairs (token, slot) of a batch grouped by expert, for the expert-indexed mat-muls:
//   pairs[e]                   count of expert e's pairs
//   pairs[experts + e]         offset of its first pair in the expert-sorted order
//   pairs[2 * experts + q]     token of sorted pair q
//   pairs[positions_at + i]    sorted place of pair i = t * slots + s
// from the route (route[i]: the expert of pair i; moe_route.wgsl). Within an expert the
// pairs' order is whatever the atomics give: each pair's results do not depend on it.
// Launcher: src/gpu/kernels/moe_group.rs. Prepended from Rust: GWG, MAX_GROUPS and struct
// Batch. Grid: one workgroup.

struct Params {
    /// Experts (routed and shared) in the list.
    experts: u32,
    slots: u32,
    positions_at: u32,
    _pad0: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<uniform> batch: Batch;
@group(0) @binding(2) var<storage, read> route: array<u32>;
@group(0) @binding(3) var<storage, read_write> pairs: array<u32>;

var<workgroup> fill: array<atomic<u32>, MAX_GROUPS>;
var<workgroup> offsets: array<u32, MAX_GROUPS>;

@compute @workgroup_size(GWG)
fn main(@builtin(local_invocation_index) lid: u32) {
    let n = batch.n * p.slots;
    for (var e = lid; e < p.experts; e += GWG) {
        atomicStore(&fill[e], 0u);
    }
    workgroupBarrier();
    // Each pair's rank among its expert's pairs.
    for (var i = lid; i < n; i += GWG) {
        pairs[p.positions_at + i] = atomicAdd(&fill[route[i]], 1u);
    }
    workgroupBarrier();
    if (lid == 0u) {
        var at = 0u;
        for (var e = 0u; e < p.experts; e++) {
            let count = atomicLoad(&fill[e]);
            pairs[e] = count;
            pairs[p.experts + e] = at;
            offsets[e] = at;
            at += count;
        }
    }
    workgroupBarrier();
    for (var i = lid; i < n; i += GWG) {
        let q = offsets[route[i]] + pairs[p.positions_at + i];
        pairs[p.positions_at + i] = q;
        pairs[2u * p.experts + q] = i / p.slots;
    }
}
