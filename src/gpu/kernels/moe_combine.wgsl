// The MoE output of every token of a batch, weighted and added to the residual:
//   x[t] += Σ_s w[t][s] * down[positions[t * slots + s]]
// (down: the expert-indexed down projection's rows, one per sorted pair; moe_group.wgsl).
// Launcher: src/gpu/kernels/moe_combine.rs. Prepended from Rust: struct Batch. Grid: one
// workgroup per token.

struct Params {
    /// Values per row (a multiple of 4).
    hidden: u32,
    slots: u32,
    weights_at: u32,
    positions_at: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<uniform> batch: Batch;
/// ids, then at weights_at the weights (f32 bits) of every pair
@group(0) @binding(2) var<storage, read> route: array<u32>;
@group(0) @binding(3) var<storage, read> pairs: array<u32>;
/// [sorted pairs][hidden]
@group(0) @binding(4) var<storage, read> down: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read_write> x: array<vec4<f32>>;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let t = wid.x;
    if (t >= batch.n) {
        return;
    }
    let h4 = p.hidden / 4u;
    for (var c = lid; c < h4; c += WG) {
        var acc = vec4<f32>(0.0);
        for (var s = 0u; s < p.slots; s++) {
            let i = t * p.slots + s;
            let w = bitcast<f32>(route[p.weights_at + i]);
            acc += w * down[pairs[p.positions_at + i] * h4 + c];
        }
        x[t * h4 + c] += acc;
    }
}
