// Tile library of matmul.wgsl for devices with cooperative matrices of 16x16x16 f16 inputs
// and f32 accumulators (tensor cores), in subgroups of 32 (src/gpu/context.rs checks both).
// Prepended from Rust with matmul.wgsl's TM and BK: PARTS, the f16 parts per value (all
// three from `TileMath` in src/gpu/shader.rs).
//
// PARTS = 2: each f32 value v enters as two f16 parts, v·s = hi + lo·2^-11: hi is v·s with
// its mantissa cut to f16's 10 bits (a bit mask, so no compiler can fold the split away and
// the device's f16 rounding mode does not matter), or 0 below f16's normal range (2^-14);
// lo is the exact rest, scaled up. Each product is hi·hi + 2^-11 (lo·hi + hi·lo), the
// dropped lo·lo term below 2^-20 of it. So values from 2^-14 to 32752 after the scale s
// (inputs 2^-18..2047, weights 2^-13..65503) keep about 21 bits, against f32's 24 and f16's
// 11; smaller ones keep 11 bits of their own size (lo alone).
// PARTS = 1: each value enters rounded to f16 (hi only, one product): f16's 11 bits.
// A tile holding a value a part cannot carry (lo, or the rounded value, would overflow) is
// computed again unit by unit from the buffers (`dot_direct`), so no result depends on
// f16's range.
//
// The tile is TM x 64 (TM = 64 with two parts, 128 with one, in the same workgroup memory).
// The subgroups (invocations 32i..32i+31) each take up to 2 x 2 blocks of 16 x 16, each an
// accumulator of hi·hi (and one of the lo terms): 32 rows x 32 tokens at TM = 128, 16 rows
// x 32 tokens at TM = 64; a tile of at most 32 tokens (an expert's, often) halves the
// tokens, so no subgroup multiplies the zeros past the tile's end.

/// matmul.wgsl's loaders. Weights: neighbouring invocations take the same unit of
/// neighbouring rows and store its values along k into the [row][k] tile, 4 f16 a store.
/// Inputs: neighbouring invocations read neighbouring columns of one token, whole stretches
/// of memory, into the [token][k] tile, 4 f16 a store.
const W_ALONG_K: bool = false;
const X_ALONG_K: bool = true;

/// Powers of two the inputs and weights are scaled by in the tiles (matmul.wgsl scales the
/// weights as it decodes them).
const X_SCALE: f32 = 16.0;
const W_SCALE: f32 = 0.5;
/// At or above this (after the scale), lo may overflow f16 (two parts), or the value
/// rounds to infinity (one).
const SPLIT_LIMIT: f32 = 32752.0;
const F16_LIMIT: f32 = 65520.0;
const LO_SCALE: f32 = 2048.0;
/// Strides of the tiles' rows in vec4<f16>, padded by 8 f16 (rows stay 16-byte aligned for
/// the cooperative loads, which count strides in the elements of the array they read, as
/// SPIR-V defines them; naga's Metal translation takes scalar arrays only, moot while Metal
/// offers 8x8 matrices and these tiles need 16x16): SW between rows of the weights, SA
/// between tokens of the inputs.
const SW: u32 = BK / 4u + 2u;
const SA: u32 = BK / 4u + 2u;
/// Where the lo parts start in the tiles.
const W_LO: u32 = TM * SW;
const X_LO: u32 = TN * SA;

/// [part][row][k]: the parts of the weights of the step (row-major As).
var<workgroup> w_tile: array<vec4<f16>, PARTS * TM * SW>;
/// [part][token][k]: the parts of the inputs of the step (column-major Bs).
var<workgroup> x_tile: array<vec4<f16>, PARTS * TN * SA>;
/// Set when a value of the tile's steps is at or above its limit (all writers write 1).
/// This flag and the next are element 0 of four, so that every workgroup variable here is
/// a multiple of 16 bytes: the driver lays them out in an order of its own, and the
/// cooperative loads and stores need the tiles 16-byte aligned.
var<workgroup> out_of_range: array<u32, 4>;
/// The tile's tokens, for a uniform choice of blocks.
var<workgroup> tile_tokens: array<u32, 4>;
/// One 16x16 f32 block per subgroup, column-major: accumulators on their way to `write_pair`.
var<workgroup> c_out: array<f32, 8u * 256u>;

/// Notes a tile value whose magnitude may reach `bound`: at or above the parts' range, the
/// tile's results are computed from the buffers instead.
fn tile_note_bound(bound: f32) {
    if (bound >= select(SPLIT_LIMIT, F16_LIMIT, PARTS == 1u)) {
        out_of_range[0] = 1u;
    }
}

/// The parts of s (hi, lo; or s rounded, and zeros), for s within their range
/// (`tile_note_bound`).
fn split(s: vec4<f32>) -> array<vec4<f16>, 2> {
    if (PARTS == 1u) {
        return array<vec4<f16>, 2>(vec4<f16>(s), vec4<f16>(0.0));
    }
    let cut = bitcast<vec4<f32>>(bitcast<vec4<u32>>(s) & vec4<u32>(0xffffe000u));
    let hi = select(cut, vec4<f32>(0.0), abs(s) < vec4<f32>(1.0 / 16384.0));
    return array<vec4<f16>, 2>(vec4<f16>(hi), vec4<f16>((s - hi) * LO_SCALE));
}

/// Columns k..k+7 (k a multiple of 8) of tile row r, already scaled by W_SCALE and their
/// bound noted: a, then b.
fn tile_put_w(k: u32, r: u32, a: vec4<f32>, b: vec4<f32>) {
    let pa = split(a);
    let pb = split(b);
    let at = r * SW + k / 4u;
    w_tile[at] = pa[0];
    w_tile[at + 1u] = pb[0];
    if (PARTS == 2u) {
        w_tile[W_LO + at] = pa[1];
        w_tile[W_LO + at + 1u] = pb[1];
    }
}

/// Columns k..k+3 (k a multiple of 4) of tile token j.
fn tile_put_x(k: u32, j: u32, v: vec4<f32>) {
    let s = v * X_SCALE;
    let m = abs(s);
    tile_note_bound(max(max(m.x, m.y), max(m.z, m.w)));
    let parts = split(s);
    let at = j * SA + k / 4u;
    x_tile[at] = parts[0];
    if (PARTS == 2u) {
        x_tile[X_LO + at] = parts[1];
    }
}

fn multiply_tiles(lid: u32, steps: u32) {
    let sg = lid / 32u;
    let lane = lid % 32u;
    if (lid == 0u) {
        out_of_range[0] = 0u;
        tile_tokens[0] = t.j_end - t.j0;
    }
    // The subgroup's blocks of 16 x 16, the same shape for all (cooperative operations need
    // uniform control flow): rb row blocks from row m0 times cb token blocks from token n0.
    // The eight subgroups cover TM x 64, or TM x 32 for a tile of at most 32 tokens (an
    // expert's, often), so no subgroup multiplies the zeros past the tile's end.
    let small = workgroupUniformLoad(&tile_tokens[0]) <= TN / 2u;
    let per_subgroup = (TM / 16u) * select(TN / 16u, TN / 32u, small) / 8u;
    let cb = min(per_subgroup, 2u);
    let rb = per_subgroup / cb;
    let row_groups = TM / (16u * rb);
    let m0 = 16u * rb * (sg % row_groups);
    let n0 = 16u * cb * (sg / row_groups);
    var h00 = coop_mat16x16<f32, C>();
    var h01 = coop_mat16x16<f32, C>();
    var h10 = coop_mat16x16<f32, C>();
    var h11 = coop_mat16x16<f32, C>();
    var l00 = coop_mat16x16<f32, C>();
    var l01 = coop_mat16x16<f32, C>();
    for (var s = 0u; s < steps; s++) {
        load_step(lid, s);
        workgroupBarrier();
        for (var kk = 0u; kk < BK; kk += 16u) {
            let ia = m0 * SW + kk / 4u;
            let ib0 = n0 * SA + kk / 4u;
            let ib1 = ib0 + 16u * SA;
            let a0 = coopLoadT<coop_mat16x16<f16, A>>(&w_tile[ia], SW);
            let b0 = coopLoad<coop_mat16x16<f16, B>>(&x_tile[ib0], SA);
            h00 = coopMultiplyAdd(a0, b0, h00);
            if (PARTS == 2u) {
                // Two parts (one row block, TM = 64): hi·hi, and lo·hi + hi·lo apart.
                let a_lo = coopLoadT<coop_mat16x16<f16, A>>(&w_tile[W_LO + ia], SW);
                let b_lo0 = coopLoad<coop_mat16x16<f16, B>>(&x_tile[X_LO + ib0], SA);
                l00 = coopMultiplyAdd(a_lo, b0, l00);
                l00 = coopMultiplyAdd(a0, b_lo0, l00);
                if (cb == 2u) {
                    let b1 = coopLoad<coop_mat16x16<f16, B>>(&x_tile[ib1], SA);
                    let b_lo1 = coopLoad<coop_mat16x16<f16, B>>(&x_tile[X_LO + ib1], SA);
                    h01 = coopMultiplyAdd(a0, b1, h01);
                    l01 = coopMultiplyAdd(a_lo, b1, l01);
                    l01 = coopMultiplyAdd(a0, b_lo1, l01);
                }
                continue;
            }
            if (cb == 2u) {
                let b1 = coopLoad<coop_mat16x16<f16, B>>(&x_tile[ib1], SA);
                h01 = coopMultiplyAdd(a0, b1, h01);
                if (rb == 2u) {
                    let a1 = coopLoadT<coop_mat16x16<f16, A>>(&w_tile[ia + 16u * SW], SW);
                    h10 = coopMultiplyAdd(a1, b0, h10);
                    h11 = coopMultiplyAdd(a1, b1, h11);
                }
            }
        }
        workgroupBarrier();
    }
    // Each block through c_out (the lo terms first, when split, then hi): a lane takes rows
    // 2i, 2i + 1 of 4 of its 16 tokens.
    let out = sg * 256u;
    let stride_c = 16u;
    let unscale = 1.0 / (X_SCALE * W_SCALE);
    let direct = workgroupUniformLoad(&out_of_range[0]) != 0u;
    for (var r = 0u; r < rb; r++) {
        for (var c = 0u; c < cb; c++) {
            let mb = m0 + 16u * r;
            let nb = n0 + 16u * c;
            if (direct) {
                for (var i = 0u; i < 4u; i++) {
                    let e = lane + 32u * i;
                    let rl = mb + 2u * (e % 8u);
                    let jl = nb + e / 8u;
                    write_pair(rl, jl, dot_direct(rl, jl), dot_direct(rl + 1u, jl));
                }
                continue;
            }
            var hi = h00;
            var lo = l00;
            if (r == 0u && c == 1u) {
                hi = h01;
                lo = l01;
            }
            if (r == 1u && c == 0u) {
                hi = h10;
            }
            if (r == 1u && c == 1u) {
                hi = h11;
            }
            var v: array<vec2<f32>, 4>;
            if (PARTS == 2u) {
                coopStore(lo, &c_out[out], stride_c);
                workgroupBarrier();
                for (var i = 0u; i < 4u; i++) {
                    let e = lane + 32u * i;
                    let at = out + (e / 8u) * 16u + 2u * (e % 8u);
                    v[i] = vec2<f32>(c_out[at], c_out[at + 1u]) / LO_SCALE;
                }
                workgroupBarrier();
            }
            coopStore(hi, &c_out[out], stride_c);
            workgroupBarrier();
            for (var i = 0u; i < 4u; i++) {
                let e = lane + 32u * i;
                let at = out + (e / 8u) * 16u + 2u * (e % 8u);
                let sum = (v[i] + vec2<f32>(c_out[at], c_out[at + 1u])) * unscale;
                write_pair(mb + 2u * (e % 8u), nb + e / 8u, sum.x, sum.y);
            }
            workgroupBarrier();
        }
    }
}
