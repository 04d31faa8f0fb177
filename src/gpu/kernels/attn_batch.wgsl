// Absorbed MLA attention of a batch of tokens over the latent cache, flash-attention style
// (one pass over the keys with an online softmax; no scores matrix in memory). The batch's
// rows are already in the cache (kv_rows.wgsl). For token t (position batch.pos + t) and
// head h, query row qr = t * HEADS + h:
//   query  = [q_abs[qr] | rope(q_pe[t][h])]           (kv + rope values, as a cache row)
//   s[k]   = (query · cache[k]) * scale                for k <= batch.pos + t (causal)
//   kqv[qr] = Σ_k softmax(s)[k] · latent[k]            (the first kv values of cache[k])
// Launcher: src/gpu/kernels/attn_batch.rs. Appended: a lanes_*.wgsl and lib/rope.wgsl.
// Prepended from Rust: AWG, QB, KB, DC4, LANES, MAX_RPI and struct Batch.
//
// MLA is multi-query over the latent: every head reads the same cache rows, so a workgroup
// takes QB query rows of the flattened (token, head) order, all heads of neighbouring
// tokens, and reads each key once for all of them. It walks the keys in tiles of KB:
//   scores:  the query and key values go through workgroup memory DC4 vec4 at a time, each
//            invocation accumulating 2 queries x 2 keys;
//   softmax: LANES invocations per query row update its running max and sum;
//   context: each invocation owns 2 latent columns (pair cu) of RPI query rows (block rg;
//            one block, all QB rows, at kv = 2 * AWG), and reads its pair of every key of
//            the tile: neighbouring invocations read a key's latent once, side by side.
// The cache holds f16 values, two per u32 (CACHE_F16), or f32 bits.

/// Heads of the model, kv / 4 and (kv + rope) / 4.
override HEADS: u32 = 20u;
override KV4: u32 = 128u;
override ROW4: u32 = 144u;
/// Query rows per invocation in the context phase: QB / (AWG / (kv / 2)).
override RPI: u32 = 8u;
override CACHE_F16: bool = true;

struct Params {
    /// Stride of q between (token, head) rows (nope + rope) and offset of q_pe in a row.
    head_dim: u32,
    nope: u32,
    scale: f32,
    _pad0: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<uniform> batch: Batch;
/// [tokens][heads][kv]
@group(0) @binding(2) var<storage, read> q_abs: array<vec4<f32>>;
/// [tokens][heads][nope + rope], q_pe not yet roped
@group(0) @binding(3) var<storage, read> q: array<vec4<f32>>;
/// [tokens][rope / 2] (cos, sin) of each token's angles, two pairs per vec4
@group(0) @binding(4) var<storage, read> rope_cs: array<vec4<f32>>;
/// [positions][kv + rope]: f16 pairs or f32 bits
@group(0) @binding(5) var<storage, read> cache: array<vec4<u32>>;
/// [tokens][heads][kv] out
@group(0) @binding(6) var<storage, read_write> kqv: array<vec4<f32>>;

/// Padded stride of the tiles' rows (in vec4): neighbouring rows start in other banks.
const STRIDE: u32 = DC4 + 1u;

/// [row][d] query values and [key][d] key values of DC4 vec4 of the row.
var<workgroup> q_tile: array<vec4<f32>, QB * STRIDE>;
var<workgroup> k_tile: array<vec4<f32>, KB * STRIDE>;
/// [row][k] scores of the tile, then exp(score - m); four keys per vec4.
var<workgroup> prob: array<vec4<f32>, QB * KB / 4u>;
/// Per query row: exp(m_before - m_after) for this tile; at the end 1 / l.
var<workgroup> corr: array<f32, QB>;

/// Values 4d..4d+3 of cache row `key`.
fn cache4(key: u32, d: u32) -> vec4<f32> {
    let i = key * ROW4 + d;
    if (CACHE_F16) {
        let w = cache[i / 2u];
        var h = w.xy;
        if (i % 2u == 1u) {
            h = w.zw;
        }
        return vec4<f32>(unpack2x16float(h.x), unpack2x16float(h.y));
    }
    return bitcast<vec4<f32>>(cache[i]);
}

/// Values 2u and 2u + 1 of cache row `key`.
fn latent2(key: u32, u: u32) -> vec2<f32> {
    if (CACHE_F16) {
        let w = key * ROW4 * 2u + u;
        return unpack2x16float(cache[w / 4u][w % 4u]);
    }
    let i = key * ROW4 * 4u + 2u * u;
    let v = cache[i / 4u];
    return bitcast<vec2<f32>>(select(v.xy, v.zw, i % 4u == 2u));
}

/// Score or weight of tile row r and key k.
fn prob_at(r: u32, k: u32) -> f32 {
    let i = r * KB + k;
    return prob[i / 4u][i % 4u];
}

fn set_prob(r: u32, k: u32, v: f32) {
    let i = r * KB + k;
    prob[i / 4u][i % 4u] = v;
}

@compute @workgroup_size(AWG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let rows = batch.n * HEADS;
    let q0 = wid.x * QB;
    if (q0 >= rows) {
        return;
    }
    // Keys up to the last row's own position.
    let n_keys = batch.pos + (min(q0 + QB, rows) - 1u) / HEADS + 1u;
    let rope4 = ROW4 - KV4;
    // Scores: rows qp and qp + QB/2, keys kp and kp + KB/2. Each group of 32 invocations
    // takes 8 rows x 4 keys, so its loads of a step touch 8 and 4 distinct vec4 (a broadcast
    // each, where a subgroup is those 32).
    let qp = lid % 8u + 8u * ((lid / 32u) % (QB / 16u));
    let kp = (lid % 32u) / 8u + 4u * (lid / (2u * QB));
    // Softmax: row sr, `lane` within its group.
    let sr = lid / LANES;
    let lane = lid % LANES;
    // Context: latent pair cu of rows rg * RPI...
    let cu = lid % (KV4 * 2u);
    let rg = lid / (KV4 * 2u);

    // Softmax state of row sr (the same bits in every lane of its group).
    var m = -3.0e38;
    var l = 0.0;
    var ctx: array<vec2<f32>, MAX_RPI>;
    for (var t0 = 0u; t0 < n_keys; t0 += KB) {
        var s = vec4<f32>(0.0);
        for (var d0 = 0u; d0 < ROW4; d0 += DC4) {
            for (var i = lid; i < QB * DC4; i += AWG) {
                let r = i / DC4;
                let d = d0 + i % DC4;
                // Rows past the batch repeat its last; they are never written.
                let qr = min(q0 + r, rows - 1u);
                var v = vec4<f32>(0.0);
                if (d < KV4) {
                    v = q_abs[qr * KV4 + d];
                } else if (d < ROW4) {
                    let pe = q[(qr * p.head_dim + p.nope) / 4u + d - KV4];
                    v = rotate2(pe, rope_cs[(qr / HEADS) * rope4 + d - KV4]);
                }
                q_tile[r * STRIDE + i % DC4] = v;
            }
            for (var i = lid; i < KB * DC4; i += AWG) {
                let k = i / DC4;
                let d = d0 + i % DC4;
                var v = vec4<f32>(0.0);
                if (d < ROW4) {
                    v = cache4(min(t0 + k, n_keys - 1u), d);
                }
                k_tile[k * STRIDE + i % DC4] = v;
            }
            workgroupBarrier();
            for (var d = 0u; d < DC4; d++) {
                let qa = q_tile[qp * STRIDE + d];
                let qb = q_tile[(qp + QB / 2u) * STRIDE + d];
                let ka = k_tile[kp * STRIDE + d];
                let kb = k_tile[(kp + KB / 2u) * STRIDE + d];
                s += vec4<f32>(dot(qa, ka), dot(qa, kb), dot(qb, ka), dot(qb, kb));
            }
            workgroupBarrier();
        }
        for (var e = 0u; e < 4u; e++) {
            let r = qp + (QB / 2u) * (e / 2u);
            let k = kp + (KB / 2u) * (e % 2u);
            let own = batch.pos + min(q0 + r, rows - 1u) / HEADS;
            set_prob(r, k, select(-3.0e38, s[e] * p.scale, t0 + k <= own));
        }
        workgroupBarrier();

        // Online softmax of row sr over the tile (key 0 of the first tile is seen by every
        // row, so m is finite from then on and masked scores weigh exp(-3e38 - m) = 0).
        var tile_max = -3.0e38;
        for (var k = lane; k < KB; k += LANES) {
            tile_max = max(tile_max, prob_at(sr, k));
        }
        let new_m = max(m, lane_max(vec4<f32>(tile_max), lid).x);
        let c = exp(m - new_m);
        var sum = 0.0;
        for (var k = lane; k < KB; k += LANES) {
            let e = exp(prob_at(sr, k) - new_m);
            set_prob(sr, k, e);
            sum += e;
        }
        l = l * c + lane_sum(vec4<f32>(sum, 0.0, 0.0, 0.0), lid).x;
        m = new_m;
        if (lane == 0u) {
            corr[sr] = c;
        }
        workgroupBarrier();

        // Context: rescale, then add the tile's latents, four keys at a time (keys past the
        // tile's end weigh 0 and read the last key's latents).
        for (var i = 0u; i < RPI; i++) {
            ctx[i] *= corr[rg * RPI + i];
        }
        let kn = min(KB, n_keys - t0);
        for (var k = 0u; k < kn; k += 4u) {
            let v0 = latent2(t0 + k, cu);
            let v1 = latent2(min(t0 + k + 1u, n_keys - 1u), cu);
            let v2 = latent2(min(t0 + k + 2u, n_keys - 1u), cu);
            let v3 = latent2(min(t0 + k + 3u, n_keys - 1u), cu);
            for (var i = 0u; i < RPI; i++) {
                let pk = prob[((rg * RPI + i) * KB + k) / 4u];
                ctx[i] += pk.x * v0 + pk.y * v1 + pk.z * v2 + pk.w * v3;
            }
        }
        workgroupBarrier(); // the next tile overwrites prob and corr
    }

    if (lane == 0u) {
        corr[sr] = 1.0 / l;
    }
    workgroupBarrier();
    for (var i = 0u; i < RPI; i++) {
        let r = rg * RPI + i;
        if (q0 + r < rows) {
            let at = (q0 + r) * KV4 * 4u + 2u * cu;
            let v = ctx[i] * corr[r];
            kqv[at / 4u][at % 4u] = v.x;
            kqv[at / 4u][at % 4u + 1u] = v.y;
        }
    }
}
