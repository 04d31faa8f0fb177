// Attention tiles on cooperative matrices of 16x16x16 f16 inputs and f32 accumulators, in
// subgroups of 32, over an f16 latent cache: the loop of attn_batch_coop.wgsl (a batch's
// queries), which appends it after lib/attn_queries.wgsl. The kernel declares the overrides
// HEADS, KV, ROW (kv + rope) and CB (KV / 64: 1 or even), `p` (with head_dim, nope and
// scale), the bindings q_abs, q, rope_cs, cache (array<f16>) and q_parts (array<f16>,
// read_write), and three functions the loop calls:
//   key_end(qr) -> u32         the end (exclusive) of query row qr's keys
//   emit_row(qr, m, l)         row qr's running max and sum (l in units of P_SCALE)
//   emit(qr, col, o, l)        column col of row qr's context, Σ P_SCALE exp(s - m) latent
//
// Two steps, which run in one workgroup (storageBarrier between):
//   prepare_queries  (lib/attn_queries.wgsl) writes QR = 32 query rows (two blocks of 16)
//                    as f16 parts to a region of q_parts, with each row's scale;
//   attend           walks the rows' keys in tiles of KT = 128 with an online softmax,
//                    each key read once for all its rows (MLA is multi-query over the
//                    latent).
// The cache values are f16 already, so they enter the products exactly; the queries enter
// as their PARTS parts, the lo products skipped with one:
//   scores:  subgroup sg multiplies row block sg % 2 by key blocks sg / 2 and 4 + sg / 2
//            over the row (each query block loaded once for both), hi and lo products into
//            one accumulator per key block, then through workgroup memory to s_tile;
//   softmax: LANES = 8 invocations per row update its reference max m and sum l. m moves
//            only when a tile's scores pass it by more than GROWTH (8 ln 2), so the weights
//            exp(s - m) stay below 256 and the context is rarely rescaled (any of the 32
//            rows' max growing at all would rescale about every other tile). The weights
//            enter as parts of 2^7 exp(s - m) (hi cut, lo the rest, unscaled: both multiply
//            the same latents into one accumulator; or rounded, with one part), and l sums
//            the weights as the parts carry them, so the normalisation matches the products;
//   context: subgroup sg owns CB / 2 blocks of 16 latent columns (from 8 CB sg) of both
//            row blocks, each latent block loaded once for both (where CB is 1: one block,
//            from 16 (sg / 2), of row block sg % 2), transposed (columns x rows: the cache
//            rows are then column-major A blocks, the weights column-major B blocks), in CB
//            accumulators;
//            when a row's m moves, they go through workgroup memory to be rescaled (rare
//            after the first tile).
// Keys at or past a row's key_end weigh 0; the cache buffer holds whole tiles of positions
// (src/gpu/cache.rs), so a tile never reads past it.

/// Strides: QS of the scores (f32, between keys), PS of the weights (f16, between rows).
const QS: u32 = QR + 4u;
const PS: u32 = KT + 8u;
/// [key][row] scores of the tile; also each subgroup's 16 x 16 block of the context on its
/// way to being rescaled or written (256 floats from sg * 256).
var<workgroup> s_tile: array<f32, KT * QS>;
/// [part][row][key] the parts of the tile's weights (the lo part unused with one).
var<workgroup> p_parts: array<f16, 2u * QR * PS>;
/// Per row: the scores' factor (attention scale over the query's), exp(m_before - m_after)
/// of this tile, and at the end l.
var<workgroup> unscale: array<f32, QR>;
var<workgroup> corr: array<f32, QR>;
var<workgroup> row_l: array<f32, QR>;
/// Set when a row's reference max moved in this tile (all writers write 1).
var<workgroup> rescale: u32;

/// Attends query rows q0.. (of `rows`) over keys k0..k1 (k0 a whole tile), their queries
/// prepared in the region of q_parts from `base`, and emits each row's context and softmax
/// state. Call from uniform control flow.
fn attend(lid: u32, q0: u32, rows: u32, base: u32, k0: u32, k1: u32) {
    if (lid < QR) {
        unscale[lid] = ldexp(p.scale, -i32(q_parts[base + 2u * QR * ROW + lid]));
    }
    let sg = lid / 32u;
    let lane = lid % 32u;
    let rb = sg % 2u;
    let kb = sg / 2u;
    // Softmax: row sr, `sl` within its LANES, keys sl + LANES i; the end of its keys.
    let sr = lid / LANES;
    let sl = lid % LANES;
    let end = key_end(min(q0 + sr, rows - 1u));
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
    for (var t0 = k0; t0 < k1; t0 += KT) {
        // Scores of rows 16 rb.. and keys t0 + 16 kb.. and t0 + 64 + 16 kb.., each query
        // block loaded once for both key blocks; hi and lo products into one accumulator.
        var s0 = coop_mat16x16<f32, C>();
        var s1 = coop_mat16x16<f32, C>();
        let kr0 = (t0 + 16u * kb) * ROW;
        let kr1 = kr0 + 64u * ROW;
        // Two blocks of 16 values per pass, all their loads issued before the products, so
        // the loads' latencies overlap; then the rest, if any.
        var d = 0u;
        while (d + 32u <= ROW) {
            let k00 = coopLoad<coop_mat16x16<f16, B>>(&cache[kr0 + d], ROW);
            let k01 = coopLoad<coop_mat16x16<f16, B>>(&cache[kr0 + d + 16u], ROW);
            let k10 = coopLoad<coop_mat16x16<f16, B>>(&cache[kr1 + d], ROW);
            let k11 = coopLoad<coop_mat16x16<f16, B>>(&cache[kr1 + d + 16u], ROW);
            let a0 = coopLoadT<coop_mat16x16<f16, A>>(&q_parts[qa + d], ROW);
            let a1 = coopLoadT<coop_mat16x16<f16, A>>(&q_parts[qa + d + 16u], ROW);
            if (PARTS == 2u) {
                let lo = qa + QR * ROW + d;
                let l0 = coopLoadT<coop_mat16x16<f16, A>>(&q_parts[lo], ROW);
                let l1 = coopLoadT<coop_mat16x16<f16, A>>(&q_parts[lo + 16u], ROW);
                s0 = coopMultiplyAdd(l0, k00, s0);
                s0 = coopMultiplyAdd(l1, k01, s0);
                s1 = coopMultiplyAdd(l0, k10, s1);
                s1 = coopMultiplyAdd(l1, k11, s1);
            }
            s0 = coopMultiplyAdd(a0, k00, s0);
            s0 = coopMultiplyAdd(a1, k01, s0);
            s1 = coopMultiplyAdd(a0, k10, s1);
            s1 = coopMultiplyAdd(a1, k11, s1);
            d += 32u;
        }
        while (d < ROW) {
            let k0 = coopLoad<coop_mat16x16<f16, B>>(&cache[kr0 + d], ROW);
            let k1 = coopLoad<coop_mat16x16<f16, B>>(&cache[kr1 + d], ROW);
            let a = coopLoadT<coop_mat16x16<f16, A>>(&q_parts[qa + d], ROW);
            if (PARTS == 2u) {
                let l = coopLoadT<coop_mat16x16<f16, A>>(&q_parts[qa + QR * ROW + d], ROW);
                s0 = coopMultiplyAdd(l, k0, s0);
                s1 = coopMultiplyAdd(l, k1, s1);
            }
            s0 = coopMultiplyAdd(a, k0, s0);
            s1 = coopMultiplyAdd(a, k1, s1);
            d += 16u;
        }
        if (lid == 0u) {
            rescale = 0u;
        }
        let at = 16u * kb * QS + 16u * rb;
        coopStore(s0, &s_tile[at], QS);
        coopStore(s1, &s_tile[at + 64u * QS], QS);
        workgroupBarrier();

        // Online softmax of row sr over the tile.
        var sc: array<f32, KT / LANES>;
        var tile_max = -3.0e38;
        for (var i = 0u; i < KT / LANES; i++) {
            let k = sl + LANES * i;
            let v = s_tile[k * QS + sr] * unscale[sr];
            sc[i] = select(-3.0e38, v, t0 + k < end);
            tile_max = max(tile_max, sc[i]);
        }
        let top = lane_max(vec4<f32>(tile_max), lid).x;
        let new_m = select(m, top, top > m + GROWTH);
        let c = exp(m - new_m);
        var sum = 0.0;
        for (var i = 0u; i < KT / LANES; i++) {
            let w = exp(sc[i] - new_m) * P_SCALE;
            if (PARTS == 1u) {
                let rounded = f16(w);
                p_parts[sr * PS + sl + LANES * i] = rounded;
                sum += f32(rounded);
                continue;
            }
            let hi = hi_part(w);
            let lo = f16(w - hi);
            p_parts[sr * PS + sl + LANES * i] = f16(hi);
            p_parts[QR * PS + sr * PS + sl + LANES * i] = lo;
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
                coopStore(o, &s_tile[sg * 256u], 16u);
                workgroupBarrier();
                for (var i = 0u; i < 8u; i++) {
                    let e = lane + 32u * i;
                    s_tile[sg * 256u + e] *= corr[16u * acc_rows(j, sg) + e / 16u];
                }
                workgroupBarrier();
                o = coopLoad<coop_mat16x16<f32, C>>(&s_tile[sg * 256u], 16u);
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
        // keys' latents (column-major A blocks of the cache rows) times its weights
        // (column-major B blocks of the [row][key] tile).
        // Row blocks a and b of the weights (both the subgroup's where CB is 1).
        let rows_a = acc_rows(0u, sg);
        let rows_b = acc_rows(1u, sg);
        let col0 = acc_col(0u, sg);
        for (var kk = 0u; kk < KT; kk += 16u) {
            // The subgroup's latent blocks of these 16 keys, each loaded once for both row
            // blocks (a block past the subgroup's last repeats it, and is not multiplied).
            let v = (t0 + kk) * ROW + col0;
            let last = col_blocks() - 1u;
            let a0 = coopLoad<coop_mat16x16<f16, A>>(&cache[v], ROW);
            let a1 = coopLoad<coop_mat16x16<f16, A>>(&cache[v + 16u * min(1u, last)], ROW);
            let a2 = coopLoad<coop_mat16x16<f16, A>>(&cache[v + 16u * min(2u, last)], ROW);
            let a3 = coopLoad<coop_mat16x16<f16, A>>(&cache[v + 16u * min(3u, last)], ROW);
            // Times each part of the weights of row blocks a and b: hi, then lo.
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
        workgroupBarrier(); // the next tile overwrites the scores and weights
    }

    if (sl == 0u) {
        row_l[sr] = l;
        if (q0 + sr < rows) {
            emit_row(q0 + sr, m, l);
        }
    }
    workgroupBarrier();
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
        coopStore(o, &s_tile[sg * 256u], 16u);
        workgroupBarrier();
        for (var i = 0u; i < 8u; i++) {
            let e = lane + 32u * i;
            let r = 16u * acc_rows(j, sg) + e / 16u;
            if (q0 + r < rows) {
                emit(q0 + r, acc_col(j, sg) + e % 16u, s_tile[sg * 256u + e], row_l[r]);
            }
        }
        workgroupBarrier();
    }
}
