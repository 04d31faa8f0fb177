// Absorbed MLA attention over the latent cache, first pass (split over positions, as in
// flash-decoding): for head h and split c (tok.attn_split consecutive positions),
//   score[t] = (q_abs[h] · latent[t] + rope(q_pe[h]) · k_pe[t]) * scale
//   m = max score, l = Σ exp(score - m), ctx = Σ exp(score[t] - m) * latent[t]
// written to partial[h][c] = [m, l, ctx[kv]]; attn_combine.wgsl merges the splits.
// Launcher: src/gpu/kernels/attn_partial.rs. Appended: a reduce_*.wgsl.
//
// The kernel also does what would otherwise cost dispatches of their own: RoPE on q_pe as
// it loads q, and the token's own cache row
//   cache[pos] = [rmsnorm(kv_cmpr) * kv_norm | rope(k_pe)]   (from kv_a = [q_a | kv_cmpr | k_pe])
// which the workgroups of the last split compute into workgroup memory and use for
// position pos (the first head group also writes it to the cache for later tokens; no
// workgroup reads row pos from the cache in this dispatch). RoPE rotates consecutive pairs
// (x0, x1), (x2, x3), ... by the angles of pos, whose (cos, sin) the host computes in f64.
//
// Grid: (splits, ceil(heads / HEADS)). All heads read the same cache rows (MLA is
// multi-query over the latent), so a workgroup takes HEADS heads and every cache load
// serves all of them. It walks its split in tiles of TILE positions with an online softmax:
//   scores: LANES invocations per position, each a strided quarter of the row (neighbouring
//           lanes read neighbouring 16 bytes, so loads coalesce), HEADS dots per load;
//   context: each invocation owns latent columns lid and lid + WG for all HEADS heads.
// At short contexts this kernel is bound by load latency, so its loops issue several
// independent loads before using them (the driver's compiler does not overlap loop
// iterations on its own); ROW4 and KV4 are pipeline constants.

// Prepended from Rust (src/gpu/kernels/attn_partial.rs): TILE (positions per tile), HEADS
// (heads per workgroup; their values travel as the four lanes of a vec4), MAX_ROW4 (the
// largest cache row, kv + rope, in vec4; the launcher checks) and struct Token.

/// Invocations per position of a tile.
const LANES: u32 = WG / TILE;

/// (kv + rope) / 4 and kv / 4 of the model.
override ROW4: u32 = 144u;
override KV4: u32 = 128u;

struct Params {
    heads: u32,
    /// Stride of q between heads (nope + rope) and offset of q_pe within a head.
    head_dim: u32,
    nope: u32,
    scale: f32,
    /// Splits per head in `partial` (the stride between heads).
    max_splits: u32,
    /// Offset of [kv_cmpr | k_pe] in kv_a, in vec4.
    kv_offset4: u32,
    eps: f32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<uniform> tok: Token;
/// [heads][kv]
@group(0) @binding(2) var<storage, read> q_abs: array<vec4<f32>>;
/// [heads][nope + rope], q_pe not yet roped
@group(0) @binding(3) var<storage, read> q: array<vec4<f32>>;
/// [positions][kv + rope]; row pos is written here
@group(0) @binding(4) var<storage, read_write> cache: array<vec4<f32>>;
/// [heads][max_splits][2 + kv]
@group(0) @binding(5) var<storage, read_write> partial: array<f32>;
/// [q_a | kv_cmpr | k_pe] of this token
@group(0) @binding(6) var<storage, read> kv_a: array<vec4<f32>>;
/// [kv] RMSNorm weight of the latent
@group(0) @binding(7) var<storage, read> kv_norm: array<vec4<f32>>;
/// [rope / 2] (cos, sin) of pos's angles, two pairs per vec4
@group(0) @binding(8) var<storage, read> rope_cs: array<vec4<f32>>;

/// [q_abs | q_pe] of the workgroup's heads: head k at k * ROW4.
var<workgroup> qk: array<vec4<f32>, HEADS * MAX_ROW4>;
/// Each invocation's share of its position's HEADS dot products.
var<workgroup> part: array<vec4<f32>, WG>;
/// Scores of the tile's positions, one vec4 of HEADS heads each.
var<workgroup> scores: array<vec4<f32>, TILE>;
/// The cache row of position pos (last split only).
var<workgroup> fresh: array<vec4<f32>, MAX_ROW4>;

/// Two RoPE pairs (v.xy, v.zw) rotated by cs = (cos, sin, cos, sin).
fn rotate2(v: vec4<f32>, cs: vec4<f32>) -> vec4<f32> {
    return vec4<f32>(
        v.x * cs.x - v.y * cs.y,
        v.x * cs.y + v.y * cs.x,
        v.z * cs.z - v.w * cs.w,
        v.z * cs.w + v.w * cs.z,
    );
}

/// Head k of this workgroup (heads past the last repeat it; their results are not written).
fn head(first: u32, k: u32) -> u32 {
    return min(first + k, p.heads - 1u);
}

/// Element j (vec4) of a cache row, clamped into the row; `head_dots` zeroes what is past it.
fn cache4(row: u32, j: u32) -> vec4<f32> {
    return cache[row + min(j, ROW4 - 1u)];
}

/// The four heads' dot products with cache vec4 `c` at row element j (0 past the row).
fn head_dots(j: u32, c: vec4<f32>) -> vec4<f32> {
    if (j >= ROW4) {
        return vec4<f32>(0.0);
    }
    return vec4<f32>(dot(qk[j], c), dot(qk[ROW4 + j], c), dot(qk[2u * ROW4 + j], c), dot(qk[3u * ROW4 + j], c));
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let split = wid.x;
    let first_head = wid.y * HEADS;
    for (var i = lid; i < HEADS * ROW4; i += WG) {
        let h = head(first_head, i / ROW4);
        let j = i % ROW4;
        if (j < KV4) {
            qk[i] = q_abs[h * KV4 + j];
        } else {
            qk[i] = rotate2(q[(h * p.head_dim + p.nope) / 4u + j - KV4], rope_cs[j - KV4]);
        }
    }
    let begin = split * tok.attn_split;
    // The last split holds pos, whose row comes from kv_a, not from the cache.
    let last = begin + tok.attn_split >= tok.n_ctx;
    if (last) {
        var ss = 0.0;
        for (var j = lid; j < KV4; j += WG) {
            let v = kv_a[p.kv_offset4 + j];
            ss += dot(v, v);
        }
        let inv = inverseSqrt(reduce_sum4(vec4<f32>(ss, 0.0, 0.0, 0.0), lid).x / f32(4u * KV4) + p.eps);
        for (var j = lid; j < ROW4; j += WG) {
            if (j < KV4) {
                fresh[j] = kv_a[p.kv_offset4 + j] * inv * kv_norm[j];
            } else {
                fresh[j] = rotate2(kv_a[p.kv_offset4 + j], rope_cs[j - KV4]);
            }
            if (wid.y == 0u) {
                cache[tok.pos * ROW4 + j] = fresh[j];
            }
        }
    }
    workgroupBarrier();

    let end = min(begin + tok.attn_split, tok.pos);
    let lane = lid % LANES;
    let col0 = min(lid, KV4 - 1u);
    let col1 = min(lid + WG, KV4 - 1u);
    var m = vec4<f32>(-3.0e38);
    var l = vec4<f32>(0.0);
    // ctx0[k] / ctx1[k]: head k's context at latent columns lid / lid + WG.
    var ctx0 = mat4x4<f32>();
    var ctx1 = mat4x4<f32>();
    for (var t0 = begin; t0 < end; t0 += TILE) {
        // Positions past the split's end read its last row and get probability 0.
        let row = min(t0 + lid / LANES, end - 1u) * ROW4;
        // Six loads per step, issued before they are used, so they are in flight together.
        var d = vec4<f32>(0.0);
        for (var j = lane; j < ROW4; j += 6u * LANES) {
            let c0 = cache4(row, j);
            let c1 = cache4(row, j + LANES);
            let c2 = cache4(row, j + 2u * LANES);
            let c3 = cache4(row, j + 3u * LANES);
            let c4 = cache4(row, j + 4u * LANES);
            let c5 = cache4(row, j + 5u * LANES);
            d += head_dots(j, c0) + head_dots(j + LANES, c1) + head_dots(j + 2u * LANES, c2)
                + head_dots(j + 3u * LANES, c3) + head_dots(j + 4u * LANES, c4) + head_dots(j + 5u * LANES, c5);
        }
        part[lid] = d;
        workgroupBarrier();
        if (lid < TILE) {
            let i = LANES * lid;
            var s = (part[i] + part[i + 1u] + part[i + 2u] + part[i + 3u]) * p.scale;
            if (t0 + lid >= end) {
                s = vec4<f32>(-3.0e38);
            }
            scores[lid] = s;
        }
        workgroupBarrier();
        var tile_max = scores[0];
        for (var i = 1u; i < TILE; i++) {
            tile_max = max(tile_max, scores[i]);
        }
        let new_m = max(m, tile_max);
        let correction = exp(m - new_m);
        m = new_m;
        l *= correction;
        ctx0 = mat4x4<f32>(ctx0[0] * correction.x, ctx0[1] * correction.y, ctx0[2] * correction.z, ctx0[3] * correction.w);
        ctx1 = mat4x4<f32>(ctx1[0] * correction.x, ctx1[1] * correction.y, ctx1[2] * correction.z, ctx1[3] * correction.w);
        // Four positions per step: eight loads in flight.
        for (var i = 0u; i < TILE; i += 4u) {
            let r = min(vec4<u32>(t0 + i) + vec4<u32>(0u, 1u, 2u, 3u), vec4<u32>(end - 1u)) * ROW4;
            let a0 = cache[r.x + col0];
            let a1 = cache[r.y + col0];
            let a2 = cache[r.z + col0];
            let a3 = cache[r.w + col0];
            let b0 = cache[r.x + col1];
            let b1 = cache[r.y + col1];
            let b2 = cache[r.z + col1];
            let b3 = cache[r.w + col1];
            let p0 = exp(scores[i] - m);
            let p1 = exp(scores[i + 1u] - m);
            let p2 = exp(scores[i + 2u] - m);
            let p3 = exp(scores[i + 3u] - m);
            l += (p0 + p1) + (p2 + p3);
            ctx0 += mat4x4<f32>(a0 * p0.x, a0 * p0.y, a0 * p0.z, a0 * p0.w)
                + mat4x4<f32>(a1 * p1.x, a1 * p1.y, a1 * p1.z, a1 * p1.w)
                + mat4x4<f32>(a2 * p2.x, a2 * p2.y, a2 * p2.z, a2 * p2.w)
                + mat4x4<f32>(a3 * p3.x, a3 * p3.y, a3 * p3.z, a3 * p3.w);
            ctx1 += mat4x4<f32>(b0 * p0.x, b0 * p0.y, b0 * p0.z, b0 * p0.w)
                + mat4x4<f32>(b1 * p1.x, b1 * p1.y, b1 * p1.z, b1 * p1.w)
                + mat4x4<f32>(b2 * p2.x, b2 * p2.y, b2 * p2.z, b2 * p2.w)
                + mat4x4<f32>(b3 * p3.x, b3 * p3.y, b3 * p3.z, b3 * p3.w);
        }
    }

    if (last) {
        var d = vec4<f32>(0.0);
        for (var j = lid; j < ROW4; j += WG) {
            d += head_dots(j, fresh[j]);
        }
        let s = reduce_sum4(d, lid) * p.scale;
        let new_m = max(m, s);
        let correction = exp(m - new_m);
        let pr = exp(s - new_m);
        m = new_m;
        l = l * correction + pr;
        let c0 = fresh[col0];
        let c1 = fresh[col1];
        ctx0 = mat4x4<f32>(ctx0[0] * correction.x + c0 * pr.x, ctx0[1] * correction.y + c0 * pr.y,
            ctx0[2] * correction.z + c0 * pr.z, ctx0[3] * correction.w + c0 * pr.w);
        ctx1 = mat4x4<f32>(ctx1[0] * correction.x + c1 * pr.x, ctx1[1] * correction.y + c1 * pr.y,
            ctx1[2] * correction.z + c1 * pr.z, ctx1[3] * correction.w + c1 * pr.w);
    }

    for (var k = 0u; k < HEADS; k++) {
        let h = first_head + k;
        if (h >= p.heads) {
            break;
        }
        let out = (h * p.max_splits + split) * (2u + 4u * KV4);
        if (lid == 0u) {
            partial[out] = m[k];
            partial[out + 1u] = l[k];
        }
        if (lid < KV4) {
            let o = out + 2u + 4u * lid;
            partial[o] = ctx0[k].x;
            partial[o + 1u] = ctx0[k].y;
            partial[o + 2u] = ctx0[k].z;
            partial[o + 3u] = ctx0[k].w;
        }
        if (lid + WG < KV4) {
            let o = out + 2u + 4u * (lid + WG);
            partial[o] = ctx1[k].x;
            partial[o + 1u] = ctx1[k].y;
            partial[o + 2u] = ctx1[k].z;
            partial[o + 3u] = ctx1[k].w;
        }
    }
}
