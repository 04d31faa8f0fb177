// MoE routing on the GPU, exactly cpu::ops::route: s = sigmoid(router logits); choose the k
// experts with the largest s + bias (ties to the lower id); weights are the unbiased s of
// those k, divided by their sum (clamped below at 6.1e-5) when NORM, times scale.
// Shared experts follow as slots k.. with ids n_experts.. and weight 1.
// (Formerly the engine's routing kernel; kept for examples/lavapipe_uniform_inlining.rs.)
// One workgroup: each invocation scores its experts, then ranks each against all others (rank = experts that beat it), so the k experts of
// rank < k land in selection order without a sort.
//
// route = [ids of the slots][weights of the slots as f32 bits]
//
// Params is a read-only storage buffer, not a uniform: lavapipe (Mesa 22.3) inlines uniform
// values that steer loops and branches into a fresh LLVM compile of the shader at every
// pipeline bind, for as long as it judges that worthwhile (here: up to 32 experts), and keeps
// each clone's NIR until the pipeline is destroyed: RSS grows and every route dispatch
// compiles (BENCHMARKS.md has the numbers). Mesa does not inline storage-buffer values. Repro:
// examples/lavapipe_uniform_inlining.rs.

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

@group(0) @binding(0) var<storage, read> p: Params;
@group(0) @binding(1) var<storage, read> logits: array<f32>;
@group(0) @binding(2) var<storage, read> bias: array<f32>;
@group(0) @binding(3) var<storage, read_write> route: array<u32>;

const WG: u32 = 64u;

var<workgroup> probs: array<f32, MAX_EXPERTS>;
var<workgroup> scores: array<f32, MAX_EXPERTS>;
var<workgroup> chosen: array<u32, MAX_EXPERTS>;

@compute @workgroup_size(WG)
fn main(@builtin(local_invocation_index) lid: u32) {
    for (var e = lid; e < p.experts; e += WG) {
        probs[e] = 1.0 / (1.0 + exp(-logits[e]));
        scores[e] = probs[e] + bias[e];
    }
    workgroupBarrier();
    for (var e = lid; e < p.experts; e += WG) {
        var rank = 0u;
        for (var o = 0u; o < p.experts; o++) {
            if (scores[o] > scores[e] || (scores[o] == scores[e] && o < e)) {
                rank++;
            }
        }
        if (rank < p.k) {
            chosen[rank] = e;
        }
    }
    workgroupBarrier();
    if (lid != 0u) {
        return;
    }
    let slots = p.k + p.n_shared;
    var sum = 0.0;
    for (var j = 0u; j < p.k; j++) {
        sum += probs[chosen[j]];
    }
    var div = 1.0;
    if (p.norm != 0u) {
        div = max(sum, 6.1e-5);
    }
    for (var j = 0u; j < p.k; j++) {
        route[j] = chosen[j];
        route[slots + j] = bitcast<u32>(probs[chosen[j]] / div * p.scale);
    }
    for (var j = 0u; j < p.n_shared; j++) {
        route[p.k + j] = p.experts + j;
        route[slots + p.k + j] = bitcast<u32>(1.0);
    }
}
