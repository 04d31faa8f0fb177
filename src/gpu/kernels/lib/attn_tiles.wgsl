// Attention tiles on cooperative matrices of 16x16x16 f16 inputs and f32 accumulators, in
// subgroups of 32, over an f16 latent cache: the loop of attn_batch_coop.wgsl (a batch's
// queries) and attn_partial_coop.wgsl (one token's heads over a split of the cache), which
// append it after lib/attn_common.wgsl. The kernel declares the overrides HEADS, KV, ROW
// (kv + rope) and CB (KV / 64: 1 or even), the constant QUERIES_IN_WORKGROUP (whether it
// calls `share_queries` before `attend`), `p` (with head_dim, nope and scale), the
// bindings q_abs, q, rope_cs, cache (array<vec4<u32>>: words of eight f16 values) and
// q_parts (array<f16>, read_write), and three functions the loop calls:
//   key_end(qr) -> u32         the end (exclusive) of query row qr's keys
//   emit_row(qr, m, l)         row qr's running max and sum (l in units of P_SCALE)
//   emit(qr, col, o, l)        column col of row qr's context, Σ P_SCALE exp(s - m) latent
// Prepended from Rust: AWG, QR, KD, KS, RS, LANES, STAGED, HELD and PARTS.
//
// `attend` walks QR = 32 query rows (two blocks of 16, prepared by lib/attn_common.wgsl)
// over their keys in tiles of KD = 32 with an online softmax, each key read once for all
// the rows (MLA is multi-query over the latent). The speed of a token's attention is the
// speed the cache is read at, so each tile is staged in workgroup memory with wide loads
// issued a tile ahead: every invocation holds its share of the next tile's latents in
// registers while the current one is multiplied, and a workgroup waits for memory about
// once rather than at every product. The cache values are f16 already, so they enter the
// products exactly; the queries enter as their PARTS parts, the lo products skipped with
// one. Per tile:
//   stage:    the tile's cache rows: their latents (the first KV values) into k_tile, their
//             rope values into rope_or_parts, which holds the weights' parts once the
//             scores are taken (the softmax writes them after the barrier that ends the
//             score products, and the next tile is stored after the one that ends the
//             context products);
//   scores:   subgroup sg takes row block sg % 2, key block (sg / 2) % 2 and side sg / 4 of
//             the row (half its latent blocks and half its rope blocks), its query parts
//             into one accumulator, stored to its side's scores in s_half. The hi parts of
//             its query blocks are the same for every tile: loaded once before the loop and
//             held;
//   softmax:  LANES = 8 invocations per row add the halves and update the row's reference
//             max m and sum l. m moves only when a tile's scores pass it by more than GROWTH
//             (8 ln 2), so the weights exp(s - m) stay below 256 and the context is rarely
//             rescaled. The weights enter as parts of P_SCALE exp(s - m) (hi cut, lo the
//             rest: both multiply the same latents into one accumulator; or rounded, with
//             one part), and l sums the weights as the parts carry them, so the
//             normalisation matches the products;
//   context:  subgroup sg's CB accumulators (acc_rows, acc_col) add the tile's latents
//             (column-major A blocks of k_tile) times the weights (column-major B blocks of
//             the [row][key] weights), transposed (latent columns x query rows); where a
//             row's m moved they go through workgroup memory to be rescaled first.
// Keys at or past a row's key_end weigh 0; the cache buffer holds whole tiles of positions
// (src/gpu/cache.rs), so a tile never reads past it.

/// Strides: QS of the scores (f32, between keys), PS of the weights (f16, between rows).
/// KS and RS, of the staged latents and rope values (f16 values between keys; the arrays
/// hold them four to an element, as the mat-mul's tiles do, and their loads count in
/// elements), are the widest latent and rope plus 8: 16 bytes past a multiple of 128, so a
/// block's 16 rows fall on different banks.
const QS: u32 = QR + 4u;
const PS: u32 = KD + 8u;

/// [key][column / 4] the first KV values of the tile's keys.
var<workgroup> k_tile: array<vec4<f16>, KD * KS / 4u>;
/// [side][key][row] the scores over each half of the row; also each subgroup's 16 x 16
/// block of the context on its way to being rescaled or written (256 floats from sg * 256).
var<workgroup> s_half: array<f32, 2u * KD * QS>;
/// [key][column / 4] the tile's rope values while its scores are taken, then [part][row]
/// [key] the parts of its weights (f16 values at `value_at`).
var<workgroup> rope_or_parts: array<vec4<f16>, max(KD * RS, PARTS * QR * PS) / 4u>;
/// Per row: the scores' factor (attention scale over the query's), exp(m_before - m_after)
/// of this tile, and at the end l.
var<workgroup> unscale: array<f32, QR>;
var<workgroup> corr: array<f32, QR>;
var<workgroup> row_l: array<f32, QR>;
/// Set when a row's reference max moved in this tile (all writers write 1); element 0 of
/// four, so that every workgroup variable here is a multiple of 16 bytes: the driver lays
/// them out in an order of its own, and cooperative loads from k_tile need it 16-byte aligned.
var<workgroup> rescale: array<u32, 4>;

/// Words of eight cache values in a tile, and this invocation's unit u of them.
fn tile_words() -> u32 {
    return KD * ROW / 8u;
}

fn word_of(lid: u32, u: u32) -> u32 {
    return lid + AWG * u;
}

/// Loads this invocation's share of the cache rows of keys t0.. into `words` (the rows
/// are contiguous: a tile is one run of words).
fn stage_load(words: ptr<function, array<vec4<u32>, STAGED>>, lid: u32, t0: u32) {
    for (var u = 0u; u < STAGED; u++) {
        let w = word_of(lid, u);
        if (w < tile_words()) {
            (*words)[u] = cache[(t0 * ROW) / 8u + w];
        }
    }
}

/// Stores the share `stage_load` put in `words`, four values at a time: latents to k_tile,
/// rope values to rope_or_parts.
fn stage_store(words: ptr<function, array<vec4<u32>, STAGED>>, lid: u32) {
    for (var u = 0u; u < STAGED; u++) {
        let w = word_of(lid, u);
        if (w < tile_words()) {
            let key = w / (ROW / 8u);
            let column = 8u * (w % (ROW / 8u));
            let word = (*words)[u];
            let lo = vec4<f16>(vec4<f32>(unpack2x16float(word.x), unpack2x16float(word.y)));
            let hi = vec4<f16>(vec4<f32>(unpack2x16float(word.z), unpack2x16float(word.w)));
            if (column < KV) {
                let at = (key * KS + column) / 4u;
                k_tile[at] = lo;
                k_tile[at + 1u] = hi;
            } else {
                let at = (key * RS + column - KV) / 4u;
                rope_or_parts[at] = lo;
                rope_or_parts[at + 1u] = hi;
            }
        }
    }
}

/// Where f16 value `i` of an array of vec4<f16> is: the element, and the value within it.
fn value_at(i: u32) -> vec2<u32> {
    return vec2<u32>(i / 4u, i % 4u);
}

/// Writes query rows q0.. (of `rows`; past the last, it repeats) to workgroup memory as
/// one f16 part each (PARTS = 1), transposed ([column][row]): the latent columns to k_tile,
/// the rope columns to rope_or_parts, and each row's factor to unscale. Invocation r of
/// each group of 32 takes row r, group g its vec4s g, g + AWG / 32, ...; the row's largest
/// magnitude is combined across the groups through s_half. `attend` (with QUERIES_IN_WORKGROUP)
/// then loads the queries from there, before its first tile is staged over them. Call from
/// uniform control flow.
fn share_queries(lid: u32, q0: u32, rows: u32) {
    let groups = AWG / 32u;
    let g = lid / 32u;
    let r = lid % 32u;
    let qr = min(q0 + r, rows - 1u);
    let top = query_top(qr, g, groups);
    s_half[g * QR + r] = max(max(top.x, top.y), max(top.z, top.w));
    workgroupBarrier();
    var row_top = 0.0;
    for (var i = 0u; i < groups; i++) {
        row_top = max(row_top, s_half[i * QR + r]);
    }
    let e = query_exponent(vec4<f32>(row_top));
    if (g == 0u) {
        unscale[r] = ldexp(p.scale, -e);
    }
    let scale = ldexp(1.0, e);
    for (var d = g; d < ROW / 4u; d += groups) {
        let v = query4(qr, d) * scale;
        for (var i = 0u; i < 4u; i++) {
            let c = 4u * d + i;
            if (c < KV) {
                let at = value_at(c * QR + r);
                k_tile[at.x][at.y] = f16(v[i]);
            } else {
                let at = value_at((c - KV) * QR + r);
                rope_or_parts[at.x][at.y] = f16(v[i]);
            }
        }
    }
    workgroupBarrier();
}

/// Attends query rows q0.. (of `rows`) over keys k0..k1 (k0 a whole tile), their queries
/// written by `share_queries` where QUERIES_IN_WORKGROUP, else prepared in the region of
/// q_parts from `base`, and emits each row's context and softmax state. Call from uniform
/// control flow.
fn attend(lid: u32, q0: u32, rows: u32, base: u32, k0: u32, k1: u32) {
    if (!QUERIES_IN_WORKGROUP && lid < QR) {
        unscale[lid] = ldexp(p.scale, -i32(q_parts[base + 2u * QR * ROW + lid]));
    }
    let sg = lid / 32u;
    let lane = lid % 32u;
    let rb = sg % 2u;
    let kb = (sg / 2u) % 2u;
    let side = sg / 4u;
    // Softmax: row sr, `sl` within its LANES, keys sl + LANES i; the end of its keys.
    let sr = lid / LANES;
    let sl = lid % LANES;
    let end = key_end(min(q0 + sr, rows - 1u));
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
    // The first tile's latents in flight before the loop; each tile's stored, then the
    // next one's loaded (this tile's again after the last: never past the buffer), so
    // they fly while this one is multiplied.
    var words: array<vec4<u32>, STAGED>;
    stage_load(&words, lid, k0);
    // The hi parts of the subgroup's query blocks (its side's latent blocks, then its rope
    // blocks), the same for every tile: held rather than loaded again per tile.
    var held: array<coop_mat16x16<f16, A>, HELD>;
    if (QUERIES_IN_WORKGROUP) {
        // Column-major blocks of the transposed queries, in elements of four values.
        for (var i = 0u; i < latent_blocks; i++) {
            let at = (16u * (side * latent_blocks + i) * QR + 16u * rb) / 4u;
            held[i] = coopLoad<coop_mat16x16<f16, A>>(&k_tile[at], QR / 4u);
        }
        for (var i = 0u; i < rope_blocks; i++) {
            let at = (16u * (side * rope_blocks + i) * QR + 16u * rb) / 4u;
            held[latent_blocks + i] = coopLoad<coop_mat16x16<f16, A>>(&rope_or_parts[at], QR / 4u);
        }
        workgroupBarrier(); // the first tile is staged over them
    } else {
        for (var i = 0u; i < latent_blocks; i++) {
            let at = qa + 16u * (side * latent_blocks + i);
            held[i] = coopLoadT<coop_mat16x16<f16, A>>(&q_parts[at], ROW);
        }
        for (var i = 0u; i < rope_blocks; i++) {
            let at = qa + KV + 16u * (side * rope_blocks + i);
            held[latent_blocks + i] = coopLoadT<coop_mat16x16<f16, A>>(&q_parts[at], ROW);
        }
    }
    for (var t0 = k0; t0 < k1; t0 += KD) {
        stage_store(&words, lid);
        stage_load(&words, lid, select(t0, t0 + KD, t0 + KD < k1));
        if (lid == 0u) {
            rescale[0] = 0u;
        }
        workgroupBarrier();

        // Scores of rows 16 rb.. and keys 16 kb.. over the subgroup's side of the row.
        var s = coop_mat16x16<f32, C>();
        for (var i = 0u; i < latent_blocks; i++) {
            let d = 16u * (side * latent_blocks + i);
            let at = (16u * kb * KS + d) / 4u;
            let k = coopLoad<coop_mat16x16<f16, B>>(&k_tile[at], KS / 4u);
            if (PARTS == 2u) {
                let lo = coopLoadT<coop_mat16x16<f16, A>>(&q_parts[qa + QR * ROW + d], ROW);
                s = coopMultiplyAdd(lo, k, s);
            }
            s = coopMultiplyAdd(held[i], k, s);
        }
        for (var i = 0u; i < min(rope_blocks, 2u); i++) {
            let r = 16u * (side * rope_blocks + i);
            let at = (16u * kb * RS + r) / 4u;
            let k = coopLoad<coop_mat16x16<f16, B>>(&rope_or_parts[at], RS / 4u);
            if (PARTS == 2u) {
                let d = KV + r;
                let lo = coopLoadT<coop_mat16x16<f16, A>>(&q_parts[qa + QR * ROW + d], ROW);
                s = coopMultiplyAdd(lo, k, s);
            }
            s = coopMultiplyAdd(held[latent_blocks + i], k, s);
        }
        coopStore(s, &s_half[side * KD * QS + 16u * kb * QS + 16u * rb], QS);
        workgroupBarrier();

        // Online softmax of row sr over the tile.
        var sc: array<f32, KD / LANES>;
        var tile_max = -3.0e38;
        for (var i = 0u; i < KD / LANES; i++) {
            let k = sl + LANES * i;
            let v = (s_half[k * QS + sr] + s_half[KD * QS + k * QS + sr]) * unscale[sr];
            sc[i] = select(-3.0e38, v, t0 + k < end);
            tile_max = max(tile_max, sc[i]);
        }
        let top = lane_max(vec4<f32>(tile_max), lid).x;
        let new_m = select(m, top, top > m + GROWTH);
        let c = exp(m - new_m);
        var sum = 0.0;
        for (var i = 0u; i < KD / LANES; i++) {
            let w = exp(sc[i] - new_m) * P_SCALE;
            let at = value_at(sr * PS + sl + LANES * i);
            if (PARTS == 1u) {
                let rounded = f16(w);
                rope_or_parts[at.x][at.y] = rounded;
                sum += f32(rounded);
                continue;
            }
            let hi = hi_part(w);
            let lo = f16(w - hi);
            let lo_at = value_at(QR * PS + sr * PS + sl + LANES * i);
            rope_or_parts[at.x][at.y] = f16(hi);
            rope_or_parts[lo_at.x][lo_at.y] = lo;
            sum += hi + f32(lo);
        }
        l = l * c + lane_sum(vec4<f32>(sum, 0.0, 0.0, 0.0), lid).x;
        m = new_m;
        if (sl == 0u) {
            corr[sr] = c;
            if (c != 1.0 && t0 > k0) {
                rescale[0] = 1u;
            }
        }
        workgroupBarrier();

        // Rescale the context where a max grew (after the first tile: it is still 0).
        if (workgroupUniformLoad(&rescale[0]) != 0u) {
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
        // blocks of the [row][key] weights).
        let rows_a = acc_rows(0u, sg);
        let rows_b = acc_rows(1u, sg);
        let col0 = acc_col(0u, sg);
        for (var kk = 0u; kk < KD; kk += 16u) {
            // In k_tile's elements of four values: a block of 16 columns is 4 of them.
            let v = (kk * KS + col0) / 4u;
            let last = col_blocks() - 1u;
            let a0 = coopLoad<coop_mat16x16<f16, A>>(&k_tile[v], KS / 4u);
            let a1 = coopLoad<coop_mat16x16<f16, A>>(&k_tile[v + 4u * min(1u, last)], KS / 4u);
            let a2 = coopLoad<coop_mat16x16<f16, A>>(&k_tile[v + 4u * min(2u, last)], KS / 4u);
            let a3 = coopLoad<coop_mat16x16<f16, A>>(&k_tile[v + 4u * min(3u, last)], KS / 4u);
            for (var part = 0u; part < PARTS; part++) {
                // In elements of four values, as k_tile's.
                let at = (part * QR * PS + kk) / 4u;
                let pa = coopLoad<coop_mat16x16<f16, B>>(
                    &rope_or_parts[at + 4u * rows_a * PS],
                    PS / 4u,
                );
                let pb = coopLoad<coop_mat16x16<f16, B>>(
                    &rope_or_parts[at + 4u * rows_b * PS],
                    PS / 4u,
                );
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
        coopStore(o, &s_half[sg * 256u], 16u);
        workgroupBarrier();
        for (var i = 0u; i < 8u; i++) {
            let e = lane + 32u * i;
            let r = 16u * acc_rows(j, sg) + e / 16u;
            if (q0 + r < rows) {
                emit(q0 + r, acc_col(j, sg) + e % 16u, s_half[sg * 256u + e], row_l[r]);
            }
        }
        workgroupBarrier();
    }
}
