// Absorbed MLA attention over the latent cache, first pass (split over positions, as in
// flash-decoding): the workgroup of split c and head group g attends HEADS_WG heads over
// the tok.attn_split consecutive positions of its split, among the tok.pos positions already
// in the cache (attn_combine.wgsl appends the token's own row and merges the splits):
//   score[h][t] = (q_abs[h] · latent[t] + rope(q_pe[h]) · k_pe[t]) * scale
//   m = max score, l = Σ exp(score - m), ctx = Σ exp(score[t] - m) * latent[t]
// written to partial[h][c] = [ctx[kv] | m, l, 0, 0]. An empty split (tok.pos = 0) writes
// ctx = 0, m = -3e38, l = 0, which the merge ignores.
// Launcher: src/gpu/kernels/attn_partial.rs. Appended: a lanes_*.wgsl and lib/rope.wgsl.
//
// MLA is multi-query over the latent: every head reads the same cache rows, so a workgroup
// takes many heads (all of them at long contexts) and each row is read once for all of
// them. It walks its split in tiles of TILE positions with an online softmax; per tile:
//   scores:  LANES invocations per pair of positions (ta, ta + TILE / 2), each a strided
//            share of the row (neighbouring lanes read neighbouring 16 bytes), HEADS_WG
//            heads per load; lane_sum combines the lanes;
//   softmax: LANES invocations per head update its running max and sum over the tile;
//   context: each invocation owns 8 latent columns (cu) of HPB heads (block hb), and reads
//            its columns of every row of the tile.
// The cache holds f16 values, two per u32 (CACHE_F16), or f32 bits; a unit is 8 values: one
// vec4<u32> of f16 or two of f32. q_pe is rotated by RoPE as it is read: the angles of the
// token's position, whose (cos, sin) the host computes in f64.

// Prepended from Rust (src/gpu/kernels/attn_partial.rs): AWG (invocations per workgroup),
// LANES, TILE (= 2 * AWG / LANES), MAX_HEADS_WG (= AWG / LANES), MAX_HPB, CTX_ROWS and
// struct Token.

/// Heads per workgroup (at most MAX_HEADS_WG).
override HEADS_WG: u32 = 20u;
/// Heads per invocation in the context phase: HEADS_WG over the AWG / KV8 head blocks.
override HPB: u32 = 5u;
/// kv / 8 and rope / 8 of the model: units of a row's latent and of its k_pe.
override KV8: u32 = 64u;
override ROPE8: u32 = 8u;
/// The cache holds f16 values (else f32).
override CACHE_F16: bool = true;

struct Params {
    heads: u32,
    /// Stride of q between heads (nope + rope) and offset of q_pe within a head.
    head_dim: u32,
    nope: u32,
    scale: f32,
    /// Splits per head in `partial` (the stride between heads).
    max_splits: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<uniform> tok: Token;
/// [heads][kv]
@group(0) @binding(2) var<storage, read> q_abs: array<vec4<f32>>;
/// [heads][nope + rope], q_pe not yet roped
@group(0) @binding(3) var<storage, read> q: array<vec4<f32>>;
/// [positions][kv + rope]: f16 pairs or f32 bits
@group(0) @binding(4) var<storage, read> cache: array<vec4<u32>>;
/// [rope / 2] (cos, sin) of the token's angles, two pairs per vec4
@group(0) @binding(5) var<storage, read> rope_cs: array<vec4<f32>>;
/// [heads][max_splits][kv / 4 + 1]: ctx, then (m, l, 0, 0)
@group(0) @binding(6) var<storage, read_write> partial: array<vec4<f32>>;

/// [t][k] of the tile: head k's score of position t, then exp(score - m).
var<workgroup> prob: array<f32, TILE * MAX_HEADS_WG>;
/// exp(m_before - m_after) of each head for this tile.
var<workgroup> corr: array<f32, MAX_HEADS_WG>;

/// Values 8u..8u+7 of cache row `row`.
fn unit(row: u32, u: u32) -> mat2x4<f32> {
    let i = row * (KV8 + ROPE8) + u;
    if (CACHE_F16) {
        let w = cache[i];
        return mat2x4<f32>(
            vec4<f32>(unpack2x16float(w.x), unpack2x16float(w.y)),
            vec4<f32>(unpack2x16float(w.z), unpack2x16float(w.w)),
        );
    }
    return mat2x4<f32>(bitcast<vec4<f32>>(cache[2u * i]), bitcast<vec4<f32>>(cache[2u * i + 1u]));
}

/// Head k of this workgroup (heads past the last repeat it; their results are not written).
fn head(first: u32, k: u32) -> u32 {
    return min(first + k, p.heads - 1u);
}

/// Dot products of two units with the same 8 query values, for positions a and b.
fn dots2(q0: vec4<f32>, q1: vec4<f32>, a: mat2x4<f32>, b: mat2x4<f32>) -> vec2<f32> {
    return vec2<f32>(dot(q0, a[0]) + dot(q1, a[1]), dot(q0, b[0]) + dot(q1, b[1]));
}

@compute @workgroup_size(AWG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let split = wid.x;
    let first = wid.y * HEADS_WG;
    let begin = split * tok.attn_split;
    let end = min(begin + tok.attn_split, tok.pos);
    // Scores and softmax: group `pair` of LANES invocations, `lane` within it.
    let lane = lid % LANES;
    let pair = lid / LANES;
    // Context: latent unit cu of head block hb.
    let cu = lid % KV8;
    let hb = lid / KV8;

    // Softmax state of head `pair` (the same bits in every lane of the group).
    var m = -3.0e38;
    var l = 0.0;
    // ctx[2j], ctx[2j + 1]: latent columns 8cu..8cu+7 of head hb * HPB + j.
    var ctx: array<vec4<f32>, 2 * MAX_HPB>;
    for (var t0 = begin; t0 < end; t0 += TILE) {
        let n = min(TILE, end - t0);
        let ta = pair;
        let tb = pair + TILE / 2u;
        // Positions past the tile read its last row; their scores are never used.
        let ra = t0 + min(ta, n - 1u);
        let rb = t0 + min(tb, n - 1u);
        var s: array<vec2<f32>, MAX_HEADS_WG>;
        // Units u and u2 = u + LANES of each position per step: four loads in flight (a
        // small model's u2 may be past the row: it reads u again and counts 0).
        for (var u = lane; u < KV8; u += 2u * LANES) {
            let second = u + LANES < KV8;
            let u2 = select(u, u + LANES, second);
            let a = unit(ra, u);
            let b = unit(rb, u);
            let a2 = unit(ra, u2);
            let b2 = unit(rb, u2);
            for (var k = 0u; k < HEADS_WG; k++) {
                let qi = 2u * (head(first, k) * KV8 + u);
                let qj = 2u * (head(first, k) * KV8 + u2);
                let d2 = dots2(q_abs[qj], q_abs[qj + 1u], a2, b2);
                s[k] += dots2(q_abs[qi], q_abs[qi + 1u], a, b) + select(vec2<f32>(0.0), d2, second);
            }
        }
        for (var u = lane; u < ROPE8; u += LANES) {
            let a = unit(ra, KV8 + u);
            let b = unit(rb, KV8 + u);
            let cs0 = rope_cs[2u * u];
            let cs1 = rope_cs[2u * u + 1u];
            for (var k = 0u; k < HEADS_WG; k++) {
                let qi = (head(first, k) * p.head_dim + p.nope) / 4u + 2u * u;
                s[k] += dots2(rotate2(q[qi], cs0), rotate2(q[qi + 1u], cs1), a, b);
            }
        }
        // Heads k and k + 1 in one vec4 (s[HEADS_WG] of an odd count is an unused zero).
        for (var k = 0u; k < HEADS_WG; k += 2u) {
            let total = lane_sum(vec4<f32>(s[k], s[k + 1u]), lid) * p.scale;
            if (lane == (k / 2u) % LANES) {
                prob[ta * HEADS_WG + k] = total.x;
                prob[tb * HEADS_WG + k] = total.y;
                if (k + 1u < HEADS_WG) {
                    prob[ta * HEADS_WG + k + 1u] = total.z;
                    prob[tb * HEADS_WG + k + 1u] = total.w;
                }
            }
        }
        workgroupBarrier();

        // Online softmax of head `pair` over the tile's n positions.
        let k = pair;
        var tile_max = -3.0e38;
        if (k < HEADS_WG) {
            for (var i = lane; i < n; i += LANES) {
                tile_max = max(tile_max, prob[i * HEADS_WG + k]);
            }
        }
        let new_m = max(m, lane_max(vec4<f32>(tile_max), lid).x);
        let c = exp(m - new_m);
        var sum = 0.0;
        if (k < HEADS_WG) {
            for (var i = lane; i < n; i += LANES) {
                let e = exp(prob[i * HEADS_WG + k] - new_m);
                prob[i * HEADS_WG + k] = e;
                sum += e;
            }
        }
        l = l * c + lane_sum(vec4<f32>(sum, 0.0, 0.0, 0.0), lid).x;
        m = new_m;
        if (lane == 0u && k < HEADS_WG) {
            corr[k] = c;
        }
        workgroupBarrier();

        // Context: rescale, then add the tile's rows, CTX_ROWS positions per step (their
        // loads issued together: one wait for the memory per step, not per position).
        for (var j = 0u; j < HPB; j++) {
            let cj = corr[min(hb * HPB + j, HEADS_WG - 1u)];
            ctx[2u * j] *= cj;
            ctx[2u * j + 1u] *= cj;
        }
        var i = 0u;
        for (; i + CTX_ROWS <= n; i += CTX_ROWS) {
            var x: array<mat2x4<f32>, CTX_ROWS>;
            for (var e = 0u; e < CTX_ROWS; e++) {
                x[e] = unit(t0 + i + e, cu);
            }
            for (var j = 0u; j < HPB; j++) {
                let kj = min(hb * HPB + j, HEADS_WG - 1u);
                for (var e = 0u; e < CTX_ROWS; e++) {
                    let pe = prob[(i + e) * HEADS_WG + kj];
                    ctx[2u * j] += pe * x[e][0];
                    ctx[2u * j + 1u] += pe * x[e][1];
                }
            }
        }
        for (; i < n; i++) {
            let x0 = unit(t0 + i, cu);
            for (var j = 0u; j < HPB; j++) {
                let p0 = prob[i * HEADS_WG + min(hb * HPB + j, HEADS_WG - 1u)];
                ctx[2u * j] += p0 * x0[0];
                ctx[2u * j + 1u] += p0 * x0[1];
            }
        }
        workgroupBarrier(); // the next tile overwrites prob and corr
    }

    let stride = 2u * KV8 + 1u;
    if (lane == 0u && pair < HEADS_WG && first + pair < p.heads) {
        partial[((first + pair) * p.max_splits + split) * stride + 2u * KV8] = vec4<f32>(m, l, 0.0, 0.0);
    }
    for (var j = 0u; j < HPB; j++) {
        let k = hb * HPB + j;
        if (k < HEADS_WG && first + k < p.heads) {
            let o = ((first + k) * p.max_splits + split) * stride + 2u * cu;
            partial[o] = ctx[2u * j];
            partial[o + 1u] = ctx[2u * j + 1u];
        }
    }
}
