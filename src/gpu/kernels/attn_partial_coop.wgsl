// The first pass of attn_partial.wgsl (same inputs, same partial output, merged by
// attn_combine.wgsl) on cooperative matrices of 16x16x16 f16 inputs and f32 accumulators,
// for an f16 cache: the workgroup of split c and row block b attends the token's heads
// 32 b.. (all 20 of GLM-4.7-Flash: heads are the query rows) over the tok.attn_split
// positions of its split (whole tiles of KD), among the tok.pos positions already cached,
// and writes
//   partial[h][c] = [ctx[kv] | m, l, 0, 0],  ctx = Σ exp(s - m) latent, l = Σ exp(s - m)
// for a reference max m (the running max as the softmax keeps it, so ctx / l and m + ln l
// are those of the exact max). An empty split (tok.pos = 0) writes ctx = 0, m = -3e38, l = 0.
// Two pipelines of this module run per token: PREPARE writes the token's queries as f16
// parts to q_parts once (lib/attn_common.wgsl; grid: a workgroup per 8 query rows), then
// the attention reads them from every split (grid: splits x row blocks).
//
// A token's attention reads each cache row once for all its heads (MLA is multi-query over
// the latent), so its speed is the speed the cache is read at. Each tile of KD keys is
// staged in workgroup memory with wide loads issued a tile ahead (every invocation holds
// its share of the next tile's latents in registers while the current one is multiplied),
// so a workgroup waits for memory about once per split rather than at every product. Per
// tile:
//   stage:    the tile's latents (their first KV values) into k_tile; the rope values stay
//             in the cache, their blocks loaded a tile ahead as cooperative matrices;
//   scores:   subgroup sg takes row block sg % 2, key block (sg / 2) % 2 and side sg / 4 of
//             the row (half its latent blocks and half its rope blocks), its query parts
//             into one accumulator, stored to its side's scores in s_half;
//   softmax:  LANES = 8 invocations per row add the halves and update the row's reference
//             max m and sum l as lib/attn_tiles.wgsl does (m moves only past GROWTH), the
//             weights as f16 parts of P_SCALE exp(s - m) into p_parts;
//   context:  subgroup sg's accumulators (lib/attn_common.wgsl: acc_rows, acc_col) add the
//             tile's latents (column-major A blocks of k_tile) times the weights, rescaled
//             first where a row's m moved.
// Keys at or past the split's end weigh 0; the cache buffer holds whole tiles of positions
// (src/gpu/cache.rs), so a tile never reads past it.
// Launcher: src/gpu/kernels/attn_partial_coop.rs. Appended: lanes_subgroup.wgsl,
// lib/rope.wgsl and lib/attn_common.wgsl. Prepended from Rust: the f16 and
// cooperative-matrix enables, AWG, QR, KD, KS, LANES, STAGED, PARTS and struct
// Token.

/// Heads of the model, kv and kv + rope (a cache row).
override HEADS: u32 = 20u;
override KV: u32 = 512u;
override ROW: u32 = 576u;
/// Latent column blocks of 16 per subgroup in the context phase: KV / 64.
override CB: u32 = 8u;
/// This pipeline prepares the queries (else it attends).
override PREPARE: bool = false;

struct Params {
    /// Stride of q between heads (nope + rope) and offset of q_pe within a head.
    head_dim: u32,
    nope: u32,
    scale: f32,
    /// Splits per head in `partial` (the stride between heads).
    max_splits: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<uniform> tok: Token;
/// [heads][kv]
@group(0) @binding(2) var<storage, read> q_abs: array<vec4<f32>>;
/// [heads][nope + rope], q_pe not yet roped
@group(0) @binding(3) var<storage, read> q: array<vec4<f32>>;
/// [rope / 2] (cos, sin) of the token's angles, two pairs per vec4
@group(0) @binding(4) var<storage, read> rope_cs: array<vec4<f32>>;
/// [positions][kv + rope] f16
@group(0) @binding(5) var<storage, read> cache: array<f16>;
/// Per row block its queries' f16 parts and scales (`query_region()` values).
@group(0) @binding(6) var<storage, read_write> q_parts: array<f16>;
/// [heads][max_splits][kv + 4]: ctx, then (m, l, 0, 0)
@group(0) @binding(7) var<storage, read_write> partial: array<f32>;
/// The cache again, as words of eight f16 values, for the staging loads.
@group(0) @binding(8) var<storage, read> cache_words: array<vec4<u32>>;

/// Strides: QS of the scores (f32, between keys), PS of the weights (f16, between rows).
/// KS, of the staged latents (f16, between keys), is the widest latent plus 8: 16 bytes past
/// a multiple of 128, so a block's 16 rows fall on different banks.
const QS: u32 = QR + 4u;
const PS: u32 = KD + 8u;

/// [key][column] the first KV values of the tile's keys.
var<workgroup> k_tile: array<f16, KD * KS>;
/// [side][key][row] the scores over each half of the row; also each subgroup's 16 x 16
/// block of the context on its way to being rescaled or written (256 floats from sg * 256).
var<workgroup> s_half: array<f32, 2u * KD * QS>;
/// [part][row][key] the parts of the tile's weights.
var<workgroup> p_parts: array<f16, PARTS * QR * PS>;
/// Per row: the scores' factor (attention scale over the query's) and exp(m_before - m_after)
/// of this tile.
var<workgroup> unscale: array<f32, QR>;
var<workgroup> corr: array<f32, QR>;
/// Set when a row's reference max moved in this tile (all writers write 1).
var<workgroup> rescale: u32;

/// The workgroup's split, and the end of its keys.
var<private> split: u32;
var<private> keys_end: u32;

// The sums carry the weights times P_SCALE; the merge adds the token's own weight unscaled.
fn emit_row(qr: u32, m: f32, l: f32) {
    let at = (qr * p.max_splits + split) * (KV + 4u) + KV;
    partial[at] = m;
    partial[at + 1u] = l / P_SCALE;
    partial[at + 2u] = 0.0;
    partial[at + 3u] = 0.0;
}

fn emit(qr: u32, col: u32, o: f32) {
    partial[(qr * p.max_splits + split) * (KV + 4u) + col] = o / P_SCALE;
}

/// Words of eight latent values in a tile, and this invocation's unit u of them.
fn tile_words() -> u32 {
    return KD * KV / 8u;
}

fn word_of(lid: u32, u: u32) -> u32 {
    return lid + AWG * u;
}

/// Loads this invocation's share of the latents of keys t0.. (STAGED words at most).
fn stage_load(lid: u32, t0: u32) -> array<vec4<u32>, STAGED> {
    var words: array<vec4<u32>, STAGED>;
    for (var u = 0u; u < STAGED; u++) {
        let w = word_of(lid, u);
        if (w < tile_words()) {
            let key = w / (KV / 8u);
            words[u] = cache_words[((t0 + key) * ROW) / 8u + w % (KV / 8u)];
        }
    }
    return words;
}

/// Stores a share `stage_load` gave to k_tile.
fn stage_store(lid: u32, words: array<vec4<u32>, STAGED>) {
    for (var u = 0u; u < STAGED; u++) {
        let w = word_of(lid, u);
        if (w < tile_words()) {
            let at = (w / (KV / 8u)) * KS + 8u * (w % (KV / 8u));
            for (var i = 0u; i < 4u; i++) {
                let pair = unpack2x16float(words[u][i]);
                k_tile[at + 2u * i] = f16(pair.x);
                k_tile[at + 2u * i + 1u] = f16(pair.y);
            }
        }
    }
}

/// The index in `cache` of the first rope block of keys t0 + 16 kb.. that side `side` of the
/// row takes (the rope blocks are split between the halves; its second, if any, follows).
fn rope_at(t0: u32, kb: u32, side: u32) -> u32 {
    return (t0 + 16u * kb) * ROW + KV + 16u * side * ((ROW - KV) / 32u);
}

/// Attends the token's query rows q0.. over keys k0..k1 (k0 a whole tile), their queries
/// prepared in the region of q_parts from `base`, and emits each row's context and softmax
/// state. Call from uniform control flow.
fn attend_split(lid: u32, q0: u32, base: u32, k0: u32, k1: u32) {
    if (lid < QR) {
        unscale[lid] = ldexp(p.scale, -i32(q_parts[base + 2u * QR * ROW + lid]));
    }
    let sg = lid / 32u;
    let lane = lid % 32u;
    let rb = sg % 2u;
    let kb = (sg / 2u) % 2u;
    let side = sg / 4u;
    // Softmax: row sr, `sl` within its LANES, keys sl + LANES i.
    let sr = lid / LANES;
    let sl = lid % LANES;
    // Blocks of 16 columns of each half of the row: latent, then rope.
    let latent_blocks = KV / 32u;
    let rope_blocks = (ROW - KV) / 32u;
    var m = -3.0e38;
    var l = 0.0;
    var o0 = coop_mat16x16<f32, C>();
    var o1 = coop_mat16x16<f32, C>();
    var o2 = coop_mat16x16<f32, C>();
    var o3 = coop_mat16x16<f32, C>();
    var o4 = coop_mat16x16<f32, C>();
    var o5 = coop_mat16x16<f32, C>();
    var o6 = coop_mat16x16<f32, C>();
    var o7 = coop_mat16x16<f32, C>();
    let qa = base + 16u * rb * ROW;
    // The first tile's latents and rope blocks, in flight before the loop.
    var words = stage_load(lid, k0);
    var rope0 = coopLoad<coop_mat16x16<f16, B>>(&cache[rope_at(k0, kb, side)], ROW);
    var rope1 = coopLoad<coop_mat16x16<f16, B>>(
        &cache[rope_at(k0, kb, side) + 16u * min(1u, rope_blocks - 1u)],
        ROW,
    );
    for (var t0 = k0; t0 < k1; t0 += KD) {
        stage_store(lid, words);
        // The next tile's loads (this tile's again after the last: never past the buffer)
        // fly while this one is multiplied.
        let next = select(t0, t0 + KD, t0 + KD < k1);
        words = stage_load(lid, next);
        let r0 = rope0;
        let r1 = rope1;
        rope0 = coopLoad<coop_mat16x16<f16, B>>(&cache[rope_at(next, kb, side)], ROW);
        rope1 = coopLoad<coop_mat16x16<f16, B>>(
            &cache[rope_at(next, kb, side) + 16u * min(1u, rope_blocks - 1u)],
            ROW,
        );
        if (lid == 0u) {
            rescale = 0u;
        }
        workgroupBarrier();

        // Scores of rows 16 rb.. and keys 16 kb.. over the subgroup's side of the row.
        var s = coop_mat16x16<f32, C>();
        for (var i = 0u; i < latent_blocks; i++) {
            let d = 16u * (side * latent_blocks + i);
            let k = coopLoad<coop_mat16x16<f16, B>>(&k_tile[16u * kb * KS + d], KS);
            if (PARTS == 2u) {
                let lo = coopLoadT<coop_mat16x16<f16, A>>(&q_parts[qa + QR * ROW + d], ROW);
                s = coopMultiplyAdd(lo, k, s);
            }
            let hi = coopLoadT<coop_mat16x16<f16, A>>(&q_parts[qa + d], ROW);
            s = coopMultiplyAdd(hi, k, s);
        }
        for (var i = 0u; i < min(rope_blocks, 2u); i++) {
            let d = KV + 16u * (side * rope_blocks + i);
            var k = r0;
            if (i == 1u) {
                k = r1;
            }
            if (PARTS == 2u) {
                let lo = coopLoadT<coop_mat16x16<f16, A>>(&q_parts[qa + QR * ROW + d], ROW);
                s = coopMultiplyAdd(lo, k, s);
            }
            let hi = coopLoadT<coop_mat16x16<f16, A>>(&q_parts[qa + d], ROW);
            s = coopMultiplyAdd(hi, k, s);
        }
        coopStore(s, &s_half[side * KD * QS + 16u * kb * QS + 16u * rb], QS);
        workgroupBarrier();

        // Online softmax of row sr over the tile.
        var sc: array<f32, KD / LANES>;
        var tile_max = -3.0e38;
        for (var i = 0u; i < KD / LANES; i++) {
            let k = sl + LANES * i;
            let v = (s_half[k * QS + sr] + s_half[KD * QS + k * QS + sr]) * unscale[sr];
            sc[i] = select(-3.0e38, v, t0 + k < keys_end);
            tile_max = max(tile_max, sc[i]);
        }
        let top = lane_max(vec4<f32>(tile_max), lid).x;
        let new_m = select(m, top, top > m + GROWTH);
        let c = exp(m - new_m);
        var sum = 0.0;
        for (var i = 0u; i < KD / LANES; i++) {
            let w = exp(sc[i] - new_m) * P_SCALE;
            let at = sr * PS + sl + LANES * i;
            if (PARTS == 1u) {
                let rounded = f16(w);
                p_parts[at] = rounded;
                sum += f32(rounded);
                continue;
            }
            let hi = hi_part(w);
            let lo = f16(w - hi);
            p_parts[at] = f16(hi);
            p_parts[QR * PS + at] = lo;
            sum += hi + f32(lo);
        }
        l = l * c + lane_sum(vec4<f32>(sum, 0.0, 0.0, 0.0), lid).x;
        m = new_m;
        if (sl == 0u) {
            corr[sr] = c;
            if (c != 1.0 && t0 > k0) {
                rescale = 1u;
            }
        }
        workgroupBarrier();

        // Rescale the context where a max grew (after the first tile: it is still 0).
        if (workgroupUniformLoad(&rescale) != 0u) {
            for (var j = 0u; j < CB; j++) {
                var o = o0;
                switch j {
                    case 1u: { o = o1; }
                    case 2u: { o = o2; }
                    case 3u: { o = o3; }
                    case 4u: { o = o4; }
                    case 5u: { o = o5; }
                    case 6u: { o = o6; }
                    case 7u: { o = o7; }
                    default: {}
                }
                coopStore(o, &s_half[sg * 256u], 16u);
                workgroupBarrier();
                for (var i = 0u; i < 8u; i++) {
                    let e = lane + 32u * i;
                    s_half[sg * 256u + e] *= corr[16u * acc_rows(j, sg) + e / 16u];
                }
                workgroupBarrier();
                o = coopLoad<coop_mat16x16<f32, C>>(&s_half[sg * 256u], 16u);
                switch j {
                    case 0u: { o0 = o; }
                    case 1u: { o1 = o; }
                    case 2u: { o2 = o; }
                    case 3u: { o3 = o; }
                    case 4u: { o4 = o; }
                    case 5u: { o5 = o; }
                    case 6u: { o6 = o; }
                    default: { o7 = o; }
                }
                workgroupBarrier();
            }
        }

        // Context, transposed (each block is latent columns x query rows): add the tile's
        // latents (column-major A blocks of k_tile) times its weights (column-major B
        // blocks of the [row][key] weights), as lib/attn_tiles.wgsl does.
        let rows_a = acc_rows(0u, sg);
        let rows_b = acc_rows(1u, sg);
        let col0 = acc_col(0u, sg);
        for (var kk = 0u; kk < KD; kk += 16u) {
            let v = kk * KS + col0;
            let last = col_blocks() - 1u;
            let a0 = coopLoad<coop_mat16x16<f16, A>>(&k_tile[v], KS);
            let a1 = coopLoad<coop_mat16x16<f16, A>>(&k_tile[v + 16u * min(1u, last)], KS);
            let a2 = coopLoad<coop_mat16x16<f16, A>>(&k_tile[v + 16u * min(2u, last)], KS);
            let a3 = coopLoad<coop_mat16x16<f16, A>>(&k_tile[v + 16u * min(3u, last)], KS);
            for (var part = 0u; part < PARTS; part++) {
                let at = part * QR * PS + kk;
                let pa = coopLoad<coop_mat16x16<f16, B>>(&p_parts[at + 16u * rows_a * PS], PS);
                let pb = coopLoad<coop_mat16x16<f16, B>>(&p_parts[at + 16u * rows_b * PS], PS);
                o0 = coopMultiplyAdd(a0, pa, o0);
                if (CB > 1u) { o1 = coopMultiplyAdd(a0, pb, o1); }
                if (CB > 2u) { o2 = coopMultiplyAdd(a1, pa, o2); }
                if (CB > 3u) { o3 = coopMultiplyAdd(a1, pb, o3); }
                if (CB > 4u) { o4 = coopMultiplyAdd(a2, pa, o4); }
                if (CB > 5u) { o5 = coopMultiplyAdd(a2, pb, o5); }
                if (CB > 6u) { o6 = coopMultiplyAdd(a3, pa, o6); }
                if (CB > 7u) { o7 = coopMultiplyAdd(a3, pb, o7); }
            }
        }
        workgroupBarrier(); // the next tile overwrites the latents, scores and weights
    }

    if (sl == 0u && q0 + sr < HEADS) {
        emit_row(q0 + sr, m, l);
    }
    // Each block (columns x rows) through workgroup memory, column-major: a lane writes 8 of
    // its values, 16 neighbouring columns of a row side by side.
    for (var j = 0u; j < CB; j++) {
        var o = o0;
        switch j {
            case 1u: { o = o1; }
            case 2u: { o = o2; }
            case 3u: { o = o3; }
            case 4u: { o = o4; }
            case 5u: { o = o5; }
            case 6u: { o = o6; }
            case 7u: { o = o7; }
            default: {}
        }
        coopStore(o, &s_half[sg * 256u], 16u);
        workgroupBarrier();
        for (var i = 0u; i < 8u; i++) {
            let e = lane + 32u * i;
            let r = 16u * acc_rows(j, sg) + e / 16u;
            if (q0 + r < HEADS) {
                emit(q0 + r, acc_col(j, sg) + e % 16u, s_half[sg * 256u + e]);
            }
        }
        workgroupBarrier();
    }
}

@compute @workgroup_size(AWG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    if (PREPARE) {
        // Query row r (of all row blocks; rows past the last head repeat it) by subgroup
        // lid / 32 of workgroup r / 8, its scale from the subgroup's max: more invocations
        // per row than attend's LANES, and no barrier, since one workgroup would take long.
        let r = wid.x * (AWG / 32u) + lid / 32u;
        let lane = lid % 32u;
        let qr = min(r, HEADS - 1u);
        let e = query_exponent(subgroupMax(query_top(qr, lane, 32u)));
        put_query_row((r / QR) * query_region(), r % QR, qr, e, lane, 32u);
        return;
    }
    split = wid.x;
    let k0 = wid.x * tok.attn_split;
    keys_end = min(k0 + tok.attn_split, tok.pos);
    attend_split(lid, wid.y * QR, wid.y * query_region(), k0, keys_end);
}
