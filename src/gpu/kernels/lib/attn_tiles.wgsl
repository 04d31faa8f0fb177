// Attention tiles on cooperative matrices of 16x16x16 f16 inputs and f32 accumulators, in
// subgroups of 32, over an f16 latent cache: the loop of attn_batch_coop.wgsl (a batch's
// queries), which appends it. A kernel that attends other rows over other keys (one token's
// heads over a split of the cache) says which through the three functions below. The kernel
// declares the overrides HEADS, KV, ROW (kv + rope) and CB (KV / 64),
// `p` (with head_dim, nope and scale), the bindings q_abs, q, rope_cs, cache (array<f16>)
// and q_parts (array<f16>, read_write), and three functions the loop calls:
//   key_end(qr) -> u32         the end (exclusive) of query row qr's keys
//   emit_row(qr, m, l)         row qr's running max and sum (l in units of P_SCALE)
//   emit(qr, col, o, l)        column col of row qr's context, Σ 2^15 exp(s - m) latent
// Query row qr = t * HEADS + h is head h of token t; q_abs is [rows][kv], q
// [rows][nope + rope] (q_pe not yet roped), rope_cs [tokens][rope / 2] (cos, sin).
//
// A workgroup takes QR = 32 query rows (two blocks of 16) and walks its keys in tiles of
// KT = 64 with an online softmax, each key read once for all its rows (MLA is multi-query
// over the latent). The cache values are f16 already, so they enter the products exactly;
// the f32 operands enter as two f16 parts each (hi, and the rest lo), which keeps about 21
// bits of them, against f32's 24:
//   queries: scaled per row by a power of two that puts the row's largest value in
//            [2^13, 2^14), so no part leaves f16's range whatever the values; hi is the
//            scaled value with its mantissa cut to f16's 10 bits (a bit mask), lo the rest
//            times 2^11. Written once per workgroup to its region of `q_parts`, which the
//            score products read as row-major A matrices;
//   scores:  subgroup sg multiplies row block sg % 2 by key block sg / 2 over the row,
//            hi and lo into two accumulators, then through workgroup memory to s_hi, s_lo;
//   softmax: LANES = 8 invocations per row update its running max m and sum l. The weights
//            exp(s - m) <= 1 enter as parts of 2^15 exp(s - m) (hi cut, lo the rest,
//            unscaled: both multiply the same latents into one accumulator), and l sums the
//            weights as the parts carry them, so the normalisation matches the products;
//   context: subgroup sg owns CB blocks of 16 latent columns (from 16 * CB * (sg / 2))
//            of row block sg % 2, transposed (columns x rows: the cache rows are then
//            column-major A blocks, the weights column-major B blocks), in accumulators;
//            when a row's max grows, they go through workgroup memory to be rescaled (rare
//            after the first tiles).
// Keys at or past a row's key_end weigh 0; the cache buffer holds whole tiles of positions
// (src/gpu/cache.rs), so a tile never reads past it.

/// Strides: QS of the scores (f32, between keys), PS of the weights (f16, between rows).
const QS: u32 = QR + 4u;
const PS: u32 = KT + 8u;
const LO_SCALE: f32 = 2048.0;
/// The weights' scale in the context products (see above).
const P_SCALE: f32 = 32768.0;

/// [key][row] scores of the tile, the hi and lo products; s_hi is also each subgroup's
/// 16 x 16 block on its way to being rescaled or written (256 floats from sg * 256).
var<workgroup> s_hi: array<f32, KT * QS>;
var<workgroup> s_lo: array<f32, KT * QS>;
/// [row][key] the parts of the tile's weights.
var<workgroup> p_hi: array<f16, QR * PS>;
var<workgroup> p_lo: array<f16, QR * PS>;
/// Per row: the scores' factor (attention scale over the query's), exp(m_before - m_after)
/// of this tile, and at the end l.
var<workgroup> unscale: array<f32, QR>;
var<workgroup> corr: array<f32, QR>;
var<workgroup> row_l: array<f32, QR>;
/// Set when a row's max grew in this tile (all writers write 1).
var<workgroup> rescale: u32;

/// hi of a value (f16's 10 mantissa bits, 0 below f16's normal range).
fn hi_part(v: f32) -> f32 {
    let cut = bitcast<f32>(bitcast<u32>(v) & 0xffffe000u);
    return select(cut, 0.0, abs(v) < 1.0 / 16384.0);
}

/// Values 4d..4d+3 of query row qr (the batch's last row for rows past it).
fn query4(qr: u32, d: u32) -> vec4<f32> {
    let kv4 = KV / 4u;
    if (d < kv4) {
        return q_abs[qr * kv4 + d];
    }
    let pe = q[(qr * p.head_dim + p.nope) / 4u + d - kv4];
    return rotate2(pe, rope_cs[(qr / HEADS) * ((ROW - KV) / 4u) + d - kv4]);
}

/// Writes query row r of the workgroup (lanes of 8 per row) to its parts, and its factor.
fn prepare_queries(lid: u32, q0: u32, rows: u32, base: u32) {
    let r = lid / LANES;
    let lane = lid % LANES;
    let qr = min(q0 + r, rows - 1u);
    var top = vec4<f32>(0.0);
    for (var d = lane; d < ROW / 4u; d += LANES) {
        top = max(top, abs(query4(qr, d)));
    }
    let most = lane_max(top, lid);
    // most * s in [2^13, 2^14): hi and lo * 2^11 stay below f16's largest value.
    let e = frexp(max(max(most.x, most.y), max(most.z, most.w))).exp;
    let s = ldexp(1.0, clamp(14 - e, -100, 100));
    let row = base + r * ROW;
    for (var d = lane; d < ROW / 4u; d += LANES) {
        let v = query4(qr, d) * s;
        for (var i = 0u; i < 4u; i++) {
            let hi = hi_part(v[i]);
            q_parts[row + 4u * d + i] = f16(hi);
            q_parts[row + QR * ROW + 4u * d + i] = f16((v[i] - hi) * LO_SCALE);
        }
    }
    if (lane == 0u) {
        unscale[r] = p.scale / s;
    }
}

/// Attends query rows q0.. (of `rows`) over keys k0..k1 (k0 a whole tile), with the
/// workgroup's region of q_parts from `base`, and emits each row's context and softmax
/// state. Call from uniform control flow.
fn attend(lid: u32, q0: u32, rows: u32, base: u32, k0: u32, k1: u32) {
    prepare_queries(lid, q0, rows, base);
    storageBarrier();
    let sg = lid / 32u;
    let lane = lid % 32u;
    let rb = sg % 2u;
    let kb = sg / 2u;
    let col0 = 16u * CB * (sg / 2u);
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
        // Scores of rows 16 rb.., keys t0 + 16 kb..
        var sh = coop_mat16x16<f32, C>();
        var sl_acc = coop_mat16x16<f32, C>();
        let kr = (t0 + 16u * kb) * ROW;
        for (var d = 0u; d < ROW; d += 16u) {
            let k = coopLoad<coop_mat16x16<f16, B>>(&cache[kr + d], ROW);
            let a_hi = coopLoadT<coop_mat16x16<f16, A>>(&q_parts[qa + d], ROW);
            let a_lo = coopLoadT<coop_mat16x16<f16, A>>(&q_parts[qa + QR * ROW + d], ROW);
            sh = coopMultiplyAdd(a_hi, k, sh);
            sl_acc = coopMultiplyAdd(a_lo, k, sl_acc);
        }
        if (lid == 0u) {
            rescale = 0u;
        }
        let at = 16u * kb * QS + 16u * rb;
        coopStore(sh, &s_hi[at], QS);
        coopStore(sl_acc, &s_lo[at], QS);
        workgroupBarrier();

        // Online softmax of row sr over the tile.
        var sc: array<f32, KT / LANES>;
        var tile_max = -3.0e38;
        for (var i = 0u; i < KT / LANES; i++) {
            let k = sl + LANES * i;
            let v = (s_hi[k * QS + sr] + s_lo[k * QS + sr] / LO_SCALE) * unscale[sr];
            sc[i] = select(-3.0e38, v, t0 + k < end);
            tile_max = max(tile_max, sc[i]);
        }
        let new_m = max(m, lane_max(vec4<f32>(tile_max), lid).x);
        let c = exp(m - new_m);
        var sum = 0.0;
        for (var i = 0u; i < KT / LANES; i++) {
            let w = exp(sc[i] - new_m) * P_SCALE;
            let hi = hi_part(w);
            let lo = f16(w - hi);
            p_hi[sr * PS + sl + LANES * i] = f16(hi);
            p_lo[sr * PS + sl + LANES * i] = lo;
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
                coopStore(o, &s_hi[sg * 256u], 16u);
                workgroupBarrier();
                for (var i = 0u; i < 8u; i++) {
                    let e = lane + 32u * i;
                    s_hi[sg * 256u + e] *= corr[16u * rb + e / 16u];
                }
                workgroupBarrier();
                o = coopLoad<coop_mat16x16<f32, C>>(&s_hi[sg * 256u], 16u);
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
        for (var kk = 0u; kk < KT; kk += 16u) {
            let p_h = coopLoad<coop_mat16x16<f16, B>>(&p_hi[16u * rb * PS + kk], PS);
            let p_l = coopLoad<coop_mat16x16<f16, B>>(&p_lo[16u * rb * PS + kk], PS);
            let v = (t0 + kk) * ROW + col0;
            if (CB > 0u) {
                let a = coopLoad<coop_mat16x16<f16, A>>(&cache[v], ROW);
                o0 = coopMultiplyAdd(a, p_l, coopMultiplyAdd(a, p_h, o0));
            }
            if (CB > 1u) {
                let a = coopLoad<coop_mat16x16<f16, A>>(&cache[v + 16u], ROW);
                o1 = coopMultiplyAdd(a, p_l, coopMultiplyAdd(a, p_h, o1));
            }
            if (CB > 2u) {
                let a = coopLoad<coop_mat16x16<f16, A>>(&cache[v + 32u], ROW);
                o2 = coopMultiplyAdd(a, p_l, coopMultiplyAdd(a, p_h, o2));
            }
            if (CB > 3u) {
                let a = coopLoad<coop_mat16x16<f16, A>>(&cache[v + 48u], ROW);
                o3 = coopMultiplyAdd(a, p_l, coopMultiplyAdd(a, p_h, o3));
            }
            if (CB > 4u) {
                let a = coopLoad<coop_mat16x16<f16, A>>(&cache[v + 64u], ROW);
                o4 = coopMultiplyAdd(a, p_l, coopMultiplyAdd(a, p_h, o4));
            }
            if (CB > 5u) {
                let a = coopLoad<coop_mat16x16<f16, A>>(&cache[v + 80u], ROW);
                o5 = coopMultiplyAdd(a, p_l, coopMultiplyAdd(a, p_h, o5));
            }
            if (CB > 6u) {
                let a = coopLoad<coop_mat16x16<f16, A>>(&cache[v + 96u], ROW);
                o6 = coopMultiplyAdd(a, p_l, coopMultiplyAdd(a, p_h, o6));
            }
            if (CB > 7u) {
                let a = coopLoad<coop_mat16x16<f16, A>>(&cache[v + 112u], ROW);
                o7 = coopMultiplyAdd(a, p_l, coopMultiplyAdd(a, p_h, o7));
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
        coopStore(o, &s_hi[sg * 256u], 16u);
        workgroupBarrier();
        for (var i = 0u; i < 8u; i++) {
            let e = lane + 32u * i;
            let r = 16u * rb + e / 16u;
            if (q0 + r < rows) {
                emit(q0 + r, col0 + 16u * j + e % 16u, s_hi[sg * 256u + e], row_l[r]);
            }
        }
        workgroupBarrier();
    }
}
