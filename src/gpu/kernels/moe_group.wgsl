// The pairs (token, slot) of a batch grouped by expert, for the expert-indexed mat-muls:
//   pairs[e]                   count of expert e's pairs
//   pairs[experts + e]         offset of its first pair in the expert-sorted order
//   pairs[2 * experts + q]     token of sorted pair q
//   pairs[positions_at + i]    sorted place of pair i = t * slots + s
//   pairs[tiles_at + z]        the z-th tile of TN pairs with an expert: e | (k << 16) for
//                              expert e's tile k, in the experts' order; NO_TILE past the
//                              last, up to tile_slots (the expert mat-muls' grid)
// from the route (route[i]: the expert of pair i; moe_route.wgsl). Within an expert the
// pairs' order is whatever the atomics give: each pair's results do not depend on it.
// Launcher: src/gpu/kernels/moe_group.rs. Prepended from Rust: GWG, MAX_GROUPS, TN (the
// mat-mul's tile of tokens) and struct Batch. Grid: one workgroup.

struct Params {
    /// Experts (routed and shared) in the list.
    experts: u32,
    slots: u32,
    positions_at: u32,
    tiles_at: u32,
    tile_slots: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<uniform> batch: Batch;
@group(0) @binding(2) var<storage, read> route: array<u32>;
@group(0) @binding(3) var<storage, read_write> pairs: array<u32>;

var<workgroup> fill: array<atomic<u32>, MAX_GROUPS>;
var<workgroup> offsets: array<u32, MAX_GROUPS>;
/// Each expert's first tile in the tile list, and the list's length.
var<workgroup> first_tile: array<u32, MAX_GROUPS>;
var<workgroup> tiles: u32;

const NO_TILE: u32 = 0xffffffffu;

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
        var tile = 0u;
        for (var e = 0u; e < p.experts; e++) {
            let count = atomicLoad(&fill[e]);
            pairs[e] = count;
            pairs[p.experts + e] = at;
            offsets[e] = at;
            first_tile[e] = tile;
            at += count;
            tile += (count + TN - 1u) / TN;
        }
        tiles = tile;
    }
    workgroupBarrier();
    for (var e = lid; e < p.experts; e += GWG) {
        let count = atomicLoad(&fill[e]);
        for (var k = 0u; k * TN < count; k++) {
            pairs[p.tiles_at + first_tile[e] + k] = e | (k << 16u);
        }
    }
    for (var z = tiles + lid; z < p.tile_slots; z += GWG) {
        pairs[p.tiles_at + z] = NO_TILE;
    }
    for (var i = lid; i < n; i += GWG) {
        let q = offsets[route[i]] + pairs[p.positions_at + i];
        pairs[p.positions_at + i] = q;
        pairs[2u * p.experts + q] = i / p.slots;
    }
}
