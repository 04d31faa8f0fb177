// Absorbed MLA attention, second pass: the token's own position, and the merge of the splits
// of attn_partial.wgsl (which attends the tok.pos positions cached before it) into each
// head's softmax-weighted latent context kqv[h] (lib/attn_merge.wgsl: the token's cache row,
// its score and the weights of the splits). At contexts of few splits the decode schedule
// runs attn_merge_v_b.wgsl instead, which merges and multiplies by v_b in one dispatch.
// Launcher: src/gpu/kernels/attn_combine.rs. Prepended from Rust: MAX_SPLITS (splits per
// head at most), MAX_ROW4 (the largest row, kv + rope, in vec4), SPLIT_LANES and struct
// Token. Appended: a reduce_*.wgsl, lib/rope.wgsl, lib/cache_store.wgsl, lib/attn_merge.wgsl.
// Grid: (heads, kv / (4 * QUADS)): a workgroup takes QUADS vec4 columns of one head, with
// SPLIT_LANES invocations per column each summing every SPLIT_LANES-th split (so many loads
// are in flight at once however many splits there are). Each workgroup recomputes the row,
// its head's score, M and L (a few thousand cached reads).

/// vec4 columns per workgroup.
const QUADS: u32 = WG / SPLIT_LANES;

/// kv / 4 and (kv + rope) / 4 of the model.
override KV4: u32 = 128u;
override ROW4: u32 = 144u;
/// The cache holds f16 values, two per u32 (else f32 bits, two u32 per vec2).
override CACHE_F16: bool = true;

struct Params {
    max_splits: u32,
    /// Stride of q between heads (nope + rope) and offset of q_pe within a head.
    head_dim: u32,
    nope: u32,
    scale: f32,
    /// Offset of [kv_cmpr | k_pe] in kv_a, in vec4.
    kv_offset4: u32,
    eps: f32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<uniform> tok: Token;
/// [heads][max_splits][kv / 4 + 1]: ctx, then (m, l, 0, 0)
@group(0) @binding(2) var<storage, read> partial: array<vec4<f32>>;
/// [heads][kv]
@group(0) @binding(3) var<storage, read_write> kqv: array<vec4<f32>>;
/// [heads][kv]
@group(0) @binding(4) var<storage, read> q_abs: array<vec4<f32>>;
/// [heads][nope + rope], q_pe not yet roped
@group(0) @binding(5) var<storage, read> q: array<vec4<f32>>;
/// [q_a | kv_cmpr | k_pe] of this token
@group(0) @binding(6) var<storage, read> kv_a: array<vec4<f32>>;
/// [kv] RMSNorm weight of the latent
@group(0) @binding(7) var<storage, read> kv_norm: array<vec4<f32>>;
/// [rope / 2] (cos, sin) of pos's angles, two pairs per vec4
@group(0) @binding(8) var<storage, read> rope_cs: array<vec4<f32>>;
/// [positions][kv + rope], f16 pairs or f32 bits; row pos is written here
@group(0) @binding(9) var<storage, read_write> cache: array<vec2<u32>>;

/// Each invocation's share of its column's weighted sum.
var<workgroup> lane_sums: array<vec4<f32>, WG>;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let h = wid.x;
    let quad = wid.y * QUADS + lid % QUADS;
    let lane = lid / QUADS;

    // The token's row (workgroup (0, 0) writes it to the cache) and the splits' weights.
    let w = merge_weights(h, lid, wid.x == 0u && wid.y == 0u);
    let own = w.x;
    let inv_l = w.y;
    let splits = split_count();
    let stride = KV4 + 1u;
    let head = split_at(h, 0u);
    // This lane's splits, four per step with independent sums: four loads in flight.
    let col = min(quad, KV4 - 1u);
    var a0 = vec4<f32>(0.0);
    var a1 = vec4<f32>(0.0);
    var c = lane;
    for (; c + 3u * SPLIT_LANES < splits; c += 4u * SPLIT_LANES) {
        let at = head + c * stride + col;
        let step = SPLIT_LANES * stride;
        a0 += split_weight[c] * partial[at] + split_weight[c + SPLIT_LANES] * partial[at + step];
        a1 += split_weight[c + 2u * SPLIT_LANES] * partial[at + 2u * step]
            + split_weight[c + 3u * SPLIT_LANES] * partial[at + 3u * step];
    }
    for (; c < splits; c += SPLIT_LANES) {
        a0 += split_weight[c] * partial[head + c * stride + col];
    }
    lane_sums[lid] = a0 + a1;
    workgroupBarrier();
    if (lane == 0u && quad < KV4) {
        var total = own * row[quad];
        for (var i = 0u; i < SPLIT_LANES; i++) {
            total += lane_sums[i * QUADS + lid];
        }
        kqv[h * KV4 + quad] = total * inv_l;
    }
}
