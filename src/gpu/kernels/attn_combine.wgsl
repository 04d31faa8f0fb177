// Absorbed MLA attention, second pass: the token's own position, and the merge of the splits
// of attn_partial.wgsl (which attends the tok.pos positions cached before it).
// First the token's cache row, from kv_a = [q_a | kv_cmpr | k_pe]:
//   row = [rmsnorm(kv_cmpr) * kv_norm | rope(k_pe)]   as the cache stores it (f16 or f32)
// which one workgroup writes to cache[pos] and every workgroup uses at once (nothing reads
// cache[pos] in this dispatch); its score for head h: s = (q_abs[h] · latent + rope(q_pe[h])
// · k_pe) * scale. Then, over the splits c and the token:
//   M = max(s, max_c m_c),  L = exp(s - M) + Σ_c exp(m_c - M) l_c,
//   kqv[h] = (exp(s - M) latent + Σ_c exp(m_c - M) ctx_c) / L
// RoPE rotates consecutive pairs (x0, x1), (x2, x3), ... by the angles of pos, whose
// (cos, sin) the host computes in f64.
// Launcher: src/gpu/kernels/attn_combine.rs. Prepended from Rust: MAX_SPLITS (splits per
// head at most), MAX_ROW4 (the largest row, kv + rope, in vec4), SPLIT_LANES and struct
// Token. Appended: a reduce_*.wgsl, lib/rope.wgsl and lib/cache_store.wgsl.
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

/// exp(m_c - M) of every split.
var<workgroup> split_weight: array<f32, MAX_SPLITS>;
/// The token's row as the cache stores it.
var<workgroup> row: array<vec4<f32>, MAX_ROW4>;
/// Each invocation's share of its column's weighted sum.
var<workgroup> lane_sums: array<vec4<f32>, WG>;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let h = wid.x;
    let quad = wid.y * QUADS + lid % QUADS;
    let lane = lid / QUADS;

    // The token's row; workgroup (0, 0) writes it to the cache.
    var ss = 0.0;
    for (var j = lid; j < KV4; j += WG) {
        let v = kv_a[p.kv_offset4 + j];
        ss += dot(v, v);
    }
    let inv = inverseSqrt(reduce_sum4(vec4<f32>(ss, 0.0, 0.0, 0.0), lid).x / f32(4u * KV4) + p.eps);
    let writer = wid.x == 0u && wid.y == 0u;
    for (var j = lid; j < ROW4; j += WG) {
        var v: vec4<f32>;
        if (j < KV4) {
            v = kv_a[p.kv_offset4 + j] * inv * kv_norm[j];
        } else {
            v = rotate2(kv_a[p.kv_offset4 + j], rope_cs[j - KV4]);
        }
        if (writer) {
            row[j] = store4(tok.pos * ROW4 + j, v);
        } else {
            row[j] = as_stored(v);
        }
    }
    workgroupBarrier();

    // Head h's score of the token's own position.
    var sd = 0.0;
    for (var j = lid; j < ROW4; j += WG) {
        var qv: vec4<f32>;
        if (j < KV4) {
            qv = q_abs[h * KV4 + j];
        } else {
            qv = rotate2(q[(h * p.head_dim + p.nope) / 4u + j - KV4], rope_cs[j - KV4]);
        }
        sd += dot(qv, row[j]);
    }
    let s = reduce_sum4(vec4<f32>(sd, 0.0, 0.0, 0.0), lid).x * p.scale;

    // Merge the splits with the token.
    let splits = (tok.pos + tok.attn_split - 1u) / tok.attn_split;
    let stride = KV4 + 1u;
    let head = h * p.max_splits * stride;
    var m = s;
    for (var c = lid; c < splits; c += WG) {
        m = max(m, partial[head + c * stride + KV4].x);
    }
    let big_m = reduce_max4(vec4<f32>(m), lid).x;
    var l = 0.0;
    for (var c = lid; c < splits; c += WG) {
        let ml = partial[head + c * stride + KV4];
        let w = exp(ml.x - big_m);
        split_weight[c] = w;
        l += w * ml.y;
    }
    let own = exp(s - big_m);
    let inv_l = 1.0 / (reduce_sum4(vec4<f32>(l, 0.0, 0.0, 0.0), lid).x + own);
    workgroupBarrier();
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
