// The MoE router's choice of experts, exactly cpu::ops::route: s = sigmoid(logits); the
// TOP_K experts with the largest s + bias (ties to the lower id), each invocation ranking
// its experts against all others (rank = experts that beat it), so they land in selection
// order without a sort; weights are the unbiased s of those, divided by their sum (clamped
// below at 6.1e-5) when NORM_WEIGHTS, times WEIGHT_SCALE. Appended by src/gpu/shader.rs
// to the kernels that list it (shader::ROUTE: ffn_gate_up for one token, moe_route for a
// batch). The kernel declares `logits` and `bias` (array<f32>) and its workgroup size AWG,
// and MAX_EXPERTS is prepended. The routing numbers are pipeline constants: lavapipe
// recompiles a shader at every bind when uniforms steer its loops (see
// examples/lavapipe_uniform_inlining.rs).

override EXPERTS: u32 = 1u;
override TOP_K: u32 = 1u;
override NORM_WEIGHTS: bool = false;
override WEIGHT_SCALE: f32 = 1.0;

var<workgroup> probs: array<f32, MAX_EXPERTS>;
/// Selection scores, four per element for the ranking's vector compares; past EXPERTS the
/// lowest float, which beats no expert.
var<workgroup> scores: array<vec4<f32>, MAX_EXPERTS / 4u>;
var<workgroup> chosen: array<u32, MAX_EXPERTS>;

/// Chooses the experts of the router logits `logits[base..base + EXPERTS]`: afterwards
/// chosen[0..TOP_K] holds them in selection order and probs their sigmoids. Call from
/// uniform control flow (every invocation of the workgroup).
fn choose_experts(base: u32, lid: u32) {
    let groups4 = (EXPERTS + 3u) / 4u;
    for (var g = lid; g < groups4; g += AWG) {
        var v = vec4<f32>(-3.4e38);
        for (var j = 0u; j < 4u; j++) {
            let e = 4u * g + j;
            if (e < EXPERTS) {
                probs[e] = 1.0 / (1.0 + exp(-logits[base + e]));
                v[j] = probs[e] + bias[e];
            }
        }
        scores[g] = v;
    }
    workgroupBarrier();
    for (var e = lid; e < EXPERTS; e += AWG) {
        let mine = vec4<f32>(scores[e / 4u][e % 4u]);
        var beaten_by = vec4<u32>(0u);
        for (var g = 0u; g < groups4; g++) {
            let o = scores[g];
            let ids = vec4<u32>(4u * g) + vec4<u32>(0u, 1u, 2u, 3u);
            let beats = (o > mine) | ((o == mine) & (ids < vec4<u32>(e)));
            beaten_by += select(vec4<u32>(0u), vec4<u32>(1u), beats);
        }
        let rank = beaten_by.x + beaten_by.y + beaten_by.z + beaten_by.w;
        if (rank < TOP_K) {
            chosen[rank] = e;
        }
    }
    workgroupBarrier();
}

/// The weight of chosen expert `j` (after choose_experts).
fn chosen_weight(j: u32) -> f32 {
    var div = 1.0;
    if (NORM_WEIGHTS) {
        var sum = 0.0;
        for (var i = 0u; i < TOP_K; i++) {
            sum += probs[chosen[i]];
        }
        div = max(sum, 6.1e-5);
    }
    return probs[chosen[j]] / div * WEIGHT_SCALE;
}
