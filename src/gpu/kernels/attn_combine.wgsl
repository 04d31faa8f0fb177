// Absorbed MLA attention, second pass: merge the splits of attn_partial.wgsl into the
// softmax-weighted latent context of each head:
//   M = max_c m_c,  L = Σ_c exp(m_c - M) l_c,  kqv[h] = Σ_c exp(m_c - M) ctx_c / L
// Launcher: src/gpu/kernels/attn_combine.rs. Prepended from Rust: MAX_SPLITS (splits per
// head at most) and struct Token. Appended: a reduce_*.wgsl.
// Grid: (heads, kv / WG); one invocation per latent element, each workgroup recomputing its
// head's M and L (at most MAX_SPLITS cached reads).

struct Params {
    kv: u32,
    max_splits: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<uniform> tok: Token;
/// [heads][max_splits][2 + kv]
@group(0) @binding(2) var<storage, read> partial: array<f32>;
/// [heads][kv]
@group(0) @binding(3) var<storage, read_write> kqv: array<f32>;

/// exp(m_c - M) of every split.
var<workgroup> split_weight: array<f32, MAX_SPLITS>;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let h = wid.x;
    let d = wid.y * WG + lid;
    let splits = (tok.n_ctx + tok.attn_split - 1u) / tok.attn_split;
    let stride = 2u + p.kv;
    let head = h * p.max_splits * stride;
    var m = -3.0e38;
    for (var c = lid; c < splits; c += WG) {
        m = max(m, partial[head + c * stride]);
    }
    let big_m = reduce_max4(vec4<f32>(m), lid).x;
    var l = 0.0;
    for (var c = lid; c < splits; c += WG) {
        let w = exp(partial[head + c * stride] - big_m);
        split_weight[c] = w;
        l += w * partial[head + c * stride + 1u];
    }
    let inv = 1.0 / reduce_sum4(vec4<f32>(l, 0.0, 0.0, 0.0), lid).x;
    workgroupBarrier();
    if (d < p.kv) {
        // Four splits per step with independent sums: four loads in flight.
        var a = vec4<f32>(0.0);
        var c = 0u;
        for (; c + 4u <= splits; c += 4u) {
            let at = head + c * stride + 2u + d;
            a += vec4<f32>(split_weight[c], split_weight[c + 1u], split_weight[c + 2u], split_weight[c + 3u])
                * vec4<f32>(partial[at], partial[at + stride], partial[at + 2u * stride], partial[at + 3u * stride]);
        }
        var acc = (a.x + a.y) + (a.z + a.w);
        for (; c < splits; c++) {
            acc += split_weight[c] * partial[head + c * stride + 2u + d];
        }
        kqv[h * p.kv + d] = acc * inv;
    }
}
