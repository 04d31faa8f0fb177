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
//   context: each invocation owns 8 latent columns (cu) of RPI query rows (block rg), and
//            reads its columns of every key of the tile.
// The cache holds f16 values, two per u32 (CACHE_F16), or f32 bits.

/// Heads of the model, kv / 4 and (kv + rope) / 4.
override HEADS: u32 = 20u;
override KV4: u32 = 128u;
override ROW4: u32 = 144u;
/// Query rows per invocation in the context phase: QB / (AWG / (kv / 8)).
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
/// [row][k] scores of the tile, then exp(score - m).
var<workgroup> prob: array<f32, QB * KB>;
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

/// Values 8u..8u+7 of cache row `key`.
fn latent8(key: u32, u: u32) -> array<vec4<f32>, 2> {
    let i = key * (ROW4 / 2u) + u;
    if (CACHE_F16) {
        let w = cache[i];
        return array<vec4<f32>, 2>(
            vec4<f32>(unpack2x16float(w.x), unpack2x16float(w.y)),
            vec4<f32>(unpack2x16float(w.z), unpack2x16float(w.w)),
        );
    }
    return array<vec4<f32>, 2>(bitcast<vec4<f32>>(cache[2u * i]), bitcast<vec4<f32>>(cache[2u * i + 1u]));
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
    // Context: latent unit cu of rows rg * RPI...
    let cu = lid % (KV4 / 2u);
    let rg = lid / (KV4 / 2u);

    // Softmax state of row sr (the same bits in every lane of its group).
    var m = -3.0e38;
    var l = 0.0;
    var ctx: array<vec4<f32>, 2 * MAX_RPI>;
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
            prob[r * KB + k] = select(-3.0e38, s[e] * p.scale, t0 + k <= own);
        }
        workgroupBarrier();

        // Online softmax of row sr over the tile (key 0 of the first tile is seen by every
        // row, so m is finite from then on and masked scores weigh exp(-3e38 - m) = 0).
        var tile_max = -3.0e38;
        for (var k = lane; k < KB; k += LANES) {
            tile_max = max(tile_max, prob[sr * KB + k]);
        }
        let new_m = max(m, lane_max(vec4<f32>(tile_max), lid).x);
        let c = exp(m - new_m);
        var sum = 0.0;
        for (var k = lane; k < KB; k += LANES) {
            let e = exp(prob[sr * KB + k] - new_m);
            prob[sr * KB + k] = e;
            sum += e;
        }
        l = l * c + lane_sum(vec4<f32>(sum, 0.0, 0.0, 0.0), lid).x;
        m = new_m;
        if (lane == 0u) {
            corr[sr] = c;
        }
        workgroupBarrier();

        // Context: rescale, then add the tile's latents.
        for (var i = 0u; i < RPI; i++) {
            let ci = corr[rg * RPI + i];
            ctx[2u * i] *= ci;
            ctx[2u * i + 1u] *= ci;
        }
        let kn = min(KB, n_keys - t0);
        for (var k = 0u; k < kn; k++) {
            let v = latent8(t0 + k, cu);
            for (var i = 0u; i < RPI; i++) {
                let pk = prob[(rg * RPI + i) * KB + k];
                ctx[2u * i] += pk * v[0];
                ctx[2u * i + 1u] += pk * v[1];
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
            let at = (q0 + r) * KV4 + 2u * cu;
            kqv[at] = ctx[2u * i] * corr[r];
            kqv[at + 1u] = ctx[2u * i + 1u] * corr[r];
        }
    }
}
