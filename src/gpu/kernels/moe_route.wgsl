// The experts of every token of a batch: the TOP_K chosen from the token's router logits
// (lib/route.wgsl, appended: cpu::ops::route exactly), then the shared experts (ids
// EXPERTS.., weight 1), as slots 0..slots of the token:
//   route[t * slots + s] = expert id,  route[weights_at + t * slots + s] = weight (f32 bits)
// Launcher: src/gpu/kernels/moe_route.rs. Prepended from Rust: MAX_EXPERTS and struct
// Batch. Grid: one workgroup per token.

struct Params {
    slots: u32,
    weights_at: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<uniform> batch: Batch;
/// [tokens][EXPERTS] router logits
@group(0) @binding(2) var<storage, read> logits: array<f32>;
/// [EXPERTS] selection bias
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> route: array<u32>;

/// The route library's name for the workgroup size.
const AWG: u32 = WG;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let t = wid.x;
    if (t >= batch.n) {
        return;
    }
    choose_experts(t * EXPERTS, lid);
    if (lid < p.slots) {
        var id = EXPERTS + lid - TOP_K;
        var weight = 1.0;
        if (lid < TOP_K) {
            id = chosen[lid];
            weight = chosen_weight(lid);
        }
        route[t * p.slots + lid] = id;
        route[p.weights_at + t * p.slots + lid] = bitcast<u32>(weight);
    }
}
