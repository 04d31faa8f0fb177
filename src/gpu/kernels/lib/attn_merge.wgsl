// The first half of the merge of the attention splits (attn_partial.wgsl attends the tok.pos
// positions cached before the token), shared by attn_combine.wgsl and attn_merge_v_b.wgsl:
// the token's own cache row, from kv_a = [q_a | kv_cmpr | k_pe]:
//   row = [rmsnorm(kv_cmpr) * kv_norm | rope(k_pe)]   as the cache stores it (f16 or f32)
// which the writer workgroup stores to cache[pos] and every workgroup uses at once (nothing
// reads cache[pos] in the dispatch); head h's score of it: s = (q_abs[h] · latent +
// rope(q_pe[h]) · k_pe) * scale; and the weights over the splits c and the token:
//   M = max(s, max_c m_c),  L = exp(s - M) + Σ_c exp(m_c - M) l_c,
// so that kqv[h] = (exp(s - M) latent + Σ_c exp(m_c - M) ctx_c) / L.
// RoPE rotates consecutive pairs by the angles of pos, whose (cos, sin) the host computes
// in f64. The kernel declares the bindings p (with max_splits, head_dim, nope, scale,
// kv_offset4, eps), tok, partial, q_abs, q, kv_a, kv_norm, rope_cs and cache, the overrides
// KV4 and ROW4, and the workgroup arrays below; lib/rope.wgsl, lib/cache_store.wgsl and a
// reduce_*.wgsl are appended with this.

/// exp(m_c - M) of every split.
var<workgroup> split_weight: array<f32, MAX_SPLITS>;
/// The token's row as the cache stores it.
var<workgroup> row: array<vec4<f32>, MAX_ROW4>;

/// Splits of the context attn_partial wrote for this token.
fn split_count() -> u32 {
    return (tok.pos + tok.attn_split - 1u) / tok.attn_split;
}

/// vec4 index of split c's first context column of head h in `partial`; its (m, l) follow
/// the context, at + KV4.
fn split_at(h: u32, c: u32) -> u32 {
    return (h * p.max_splits + c) * (KV4 + 1u);
}

/// Fills `row` and `split_weight` (the writer also stores the row to the cache) and returns
/// (exp(s - M), 1 / L) of head h. Ends with a barrier: `row` and `split_weight` are ready.
fn merge_weights(h: u32, lid: u32, writer: bool) -> vec2<f32> {
    var ss = 0.0;
    for (var j = lid; j < KV4; j += WG) {
        let v = kv_a[p.kv_offset4 + j];
        ss += dot(v, v);
    }
    let inv = inverseSqrt(reduce_sum4(vec4<f32>(ss, 0.0, 0.0, 0.0), lid).x / f32(4u * KV4) + p.eps);
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

    let splits = split_count();
    var m = s;
    for (var c = lid; c < splits; c += WG) {
        m = max(m, partial[split_at(h, c) + KV4].x);
    }
    let big_m = reduce_max4(vec4<f32>(m), lid).x;
    var l = 0.0;
    for (var c = lid; c < splits; c += WG) {
        let ml = partial[split_at(h, c) + KV4];
        let w = exp(ml.x - big_m);
        split_weight[c] = w;
        l += w * ml.y;
    }
    let own = exp(s - big_m);
    let inv_l = 1.0 / (reduce_sum4(vec4<f32>(l, 0.0, 0.0, 0.0), lid).x + own);
    workgroupBarrier();
    return vec2<f32>(own, inv_l);
}
