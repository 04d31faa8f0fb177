// What the cooperative attentions (attn_batch_coop.wgsl through lib/attn_tiles.wgsl,
// attn_partial_coop.wgsl) share: their queries as f16 parts in a region of q_parts, the
// softmax weights' scale, and which context accumulators a subgroup owns. The kernel
// declares the overrides HEADS, KV, ROW (kv + rope) and CB (KV / 64), the constants QR
// (query rows per region) and LANES, PARTS (1 or 2, from Rust's tile math), `p` (with
// head_dim and nope), and the bindings q_abs, q, rope_cs and q_parts (array<f16>,
// read_write). Query row qr = t * HEADS + h is head h of token t; q_abs is [rows][kv], q
// [rows][nope + rope] (q_pe not yet roped), rope_cs [tokens][rope / 2] (cos, sin).
//
// The f32 queries enter the products as PARTS f16 parts each. With two (hi, and the rest
// lo) they keep about 21 bits, against f32's 24; with one, each is rounded to f16 (11 bits,
// llama.cpp's precision). A row is scaled by a power of two 2^e that puts its largest value
// in [2^13, 2^14), so no part leaves f16's range whatever the values; hi is the scaled
// value with its mantissa cut to f16's 10 bits (a bit mask), lo the rest (below 2^3, and
// subnormal only where it is under 2^-27 of the row's largest: it needs no scale of its
// own); one part: the scaled value rounded. The region holds [part][QR][ROW] row-major A
// matrices for the score products, then each row's e (an integer, exact in f16).

/// The softmax weights' scale in the context products (2^7 exp(s - m), as f16 parts), and
/// how far a score may pass a row's reference max m before m moves: the weights then stay
/// below 256 P_SCALE, within f16's range, and the context is rarely rescaled.
const P_SCALE: f32 = 128.0;
const GROWTH: f32 = 5.545177; // 8 ln 2

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

/// f16 values of a workgroup's region of q_parts: [part][QR][ROW], then [QR] scales.
fn query_region() -> u32 {
    return 2u * QR * ROW + QR;
}

/// The largest magnitude of each lane of query row qr's values 4d.. for d = lane,
/// lane + lanes, ...
fn query_top(qr: u32, lane: u32, lanes: u32) -> vec4<f32> {
    var top = vec4<f32>(0.0);
    for (var d = lane; d < ROW / 4u; d += lanes) {
        top = max(top, abs(query4(qr, d)));
    }
    return top;
}

/// The e of a row whose values reach `top` (per lane): its largest magnitude times 2^e in
/// [2^13, 2^14), so hi (or the rounded value) stays within f16's range, and lo below 2^3.
fn query_exponent(top: vec4<f32>) -> i32 {
    return clamp(14 - frexp(max(max(top.x, top.y), max(top.z, top.w))).exp, -100, 100);
}

/// Writes query row qr, scaled by 2^e, as row r of the region of q_parts from `base`: the
/// parts of its values 4d.. for d = lane, lane + lanes, ..., and (lane 0) e.
fn put_query_row(base: u32, r: u32, qr: u32, e: i32, lane: u32, lanes: u32) {
    let s = ldexp(1.0, e);
    let row = base + r * ROW;
    for (var d = lane; d < ROW / 4u; d += lanes) {
        let v = query4(qr, d) * s;
        for (var i = 0u; i < 4u; i++) {
            if (PARTS == 1u) {
                q_parts[row + 4u * d + i] = f16(v[i]);
                continue;
            }
            let hi = hi_part(v[i]);
            q_parts[row + 4u * d + i] = f16(hi);
            q_parts[row + QR * ROW + 4u * d + i] = f16(v[i] - hi);
        }
    }
    if (lane == 0u) {
        q_parts[base + 2u * QR * ROW + r] = f16(f32(e));
    }
}

/// Writes query rows q0.. (of `rows`; past the last, it repeats) to the region of q_parts
/// from `base`, LANES invocations per row.
fn prepare_queries(lid: u32, q0: u32, rows: u32, base: u32) {
    let r = lid / LANES;
    let lane = lid % LANES;
    let qr = min(q0 + r, rows - 1u);
    let e = query_exponent(lane_max(query_top(qr, lane, LANES), lid));
    put_query_row(base, r, qr, e, lane, LANES);
}

/// Latent column blocks of 16 per subgroup in the context phase: CB / 2 for both row blocks,
/// or one block of one row block where CB is 1.
fn col_blocks() -> u32 {
    return max(CB / 2u, 1u);
}

/// The row block of the subgroup's context accumulator j: accumulators alternate between
/// the two row blocks (where CB is 1, the subgroup's one accumulator takes sg % 2).
fn acc_rows(j: u32, sg: u32) -> u32 {
    return select(j % 2u, sg % 2u, CB == 1u);
}

/// The first latent column of the subgroup's context accumulator j.
fn acc_col(j: u32, sg: u32) -> u32 {
    return 16u * (col_blocks() * select(sg, sg / 2u, CB == 1u) + j / 2u);
}
