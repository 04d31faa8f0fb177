// MoE routing on the GPU, exactly cpu::ops::route: s = sigmoid(router logits); choose the k
// experts with the largest s + bias (ties to the lower id); weights are the unbiased s of
// those k, divided by their sum (clamped below at 6.1e-5) when NORM, times scale.
// Shared experts follow as slots k.. with ids n_experts.. and weight 1.
// Launcher: src/gpu/kernels/moe_route.rs. One invocation: k * n_experts comparisons.
//
// route = [ids of the slots][weights of the slots as f32 bits]

const MAX_EXPERTS: u32 = 256u;

struct Params {
    experts: u32,
    k: u32,
    n_shared: u32,
    norm: u32,
    scale: f32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> logits: array<f32>;
@group(0) @binding(2) var<storage, read> bias: array<f32>;
@group(0) @binding(3) var<storage, read_write> route: array<u32>;

@compute @workgroup_size(1)
fn main() {
    var chosen: array<bool, MAX_EXPERTS>;
    var probs: array<f32, MAX_EXPERTS>;
    for (var e = 0u; e < p.experts; e++) {
        probs[e] = 1.0 / (1.0 + exp(-logits[e]));
        chosen[e] = false;
    }
    let slots = p.k + p.n_shared;
    var sum = 0.0;
    for (var j = 0u; j < p.k; j++) {
        var best = 0u;
        var best_score = 0.0;
        var found = false;
        for (var e = 0u; e < p.experts; e++) {
            let score = probs[e] + bias[e];
            if (!chosen[e] && (!found || score > best_score)) {
                best = e;
                best_score = score;
                found = true;
            }
        }
        chosen[best] = true;
        route[j] = best;
        sum += probs[best];
    }
    var div = 1.0;
    if (p.norm != 0u) {
        div = max(sum, 6.1e-5);
    }
    for (var j = 0u; j < p.k; j++) {
        route[slots + j] = bitcast<u32>(probs[route[j]] / div * p.scale);
    }
    for (var j = 0u; j < p.n_shared; j++) {
        route[p.k + j] = p.experts + j;
        route[slots + p.k + j] = bitcast<u32>(1.0);
    }
}
