// Mat-mul over one chunk of a weight matrix and a block of activation rows (tokens):
//   y[j][col(r)] (+)= Σ_c W[r][c] · x[xrow(j)][in + g * group_stride + c]
// for the global rows r of this chunk and the tokens j of the batch, g = r / group_rows.
// Launcher: src/gpu/kernels/matmul.rs. Appended: the chunk's weight layout library
// (lib/weights_<layout>.wgsl: `unit_values`, `unit_run`, and `Raw`, `unit_raw`,
// `raw_values` where the layout has a raw form of its units, else lib/raw_units.wgsl), so
// one source serves every layout. `raw_values(r, u, scale)` decodes unit u's values times
// `scale`, a power of two (the tile library's W_SCALE), so scaling costs no work per value;
// `raw_bound(r, u)` bounds their magnitude from the unit's scales, so the tiles' range is
// checked once per unit (`tile_note_bound`), not per value.
// Prepended from Rust: TN, MWG, the tile library's TM and BK (`TileMath`), and struct Batch.
//
// Tiles: a workgroup of MWG invocations computes TM rows x TN tokens. Per step of BK
// columns it decodes the tile's weights once into workgroup memory (each invocation a unit
// of a row; neighbouring invocations take neighbouring rows, or neighbouring units of one
// row where the tile library sets W_ALONG_K) and loads the tokens' inputs of the same
// columns (`load_step`, through `tile_put_w` / `tile_put_x`); the tile library
// multiplies them (`multiply_tiles`) and hands each pair of results to `write_pair`.
// Appended after the weights library, one of two (a choice of source: naga validates a
// whole module against the device's capabilities):
// - lib/tiles_fma.wgsl: f32 FMAs, each invocation a 4-row x 4-token block in registers;
// - lib/tiles_coop.wgsl: cooperative matrices (tensor cores), f16 parts of f32 values.
// A step's columns are whole units of the layout (UNIT_RUNS runs of 16 at `unit_run`), in
// the order the units list them: the sum over columns is order-free, so the input is
// loaded in the same order.
//
// Rows: the workgroup (x, y, z) takes rows of group first_group + y, tile x of the part of
// that group inside this chunk, and tokens z * TN... (EXPERTS: the group and tokens of
// entry z of the tile list, y being 0). A group's rows read the input at
// in + g * group_stride: per-head mat-muls (k_b, v_b: one group per head) and experts (one
// group per expert); a plain mat-mul is one group of all rows.
// Output column: (r - g * group_rows) (/ 2 with SWIGLU) + g * out_group_stride.
//
// EXPERTS (mul_mat_id): group g is expert g; its tokens are entries offsets[g] ..
// offsets[g] + counts[g] of the expert-sorted pair list (moe_group.wgsl), written to those
// rows of y; the input row is the pair's token (GATHER) or the pair itself. The workgroups
// take the tiles moe_group lists (`tiles_at`), so only tiles with pairs are launched, not
// every expert times the batch's tiles; those past the list, or of experts outside this
// chunk of rows, exit at once. Else the tokens are 0..batch.n, rows of x and y alike.
// SWIGLU: rows 2i and 2i + 1 are a gate and up pair (as ffn_gate_up stacks them); the
// output is silu(gate) * up at column i. ACCUMULATE: y += result (the residual add).

override ACCUMULATE: bool = false;
override SWIGLU: bool = false;
override EXPERTS: bool = false;
override GATHER: bool = false;

struct Params {
    cols: u32,
    /// Global index of this chunk's first row, and its rows.
    row_start: u32,
    rows: u32,
    group_rows: u32,
    /// Input offset between groups, in floats (a multiple of 4).
    group_stride: u32,
    out_group_stride: u32,
    /// First input element of group 0, in floats (a multiple of 4).
    in_offset: u32,
    /// Floats between rows of x (a multiple of 4) and of y.
    x_stride: u32,
    y_stride: u32,
    first_group: u32,
    /// EXPERTS: groups in the pair list (counts at 0, offsets at `experts`, the pairs'
    /// tokens at 2 * `experts`), and where its tile list starts.
    experts: u32,
    tiles_at: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<uniform> batch: Batch;
@group(0) @binding(2) var<storage, read> quants: array<vec4<u32>>;
@group(0) @binding(3) var<storage, read> scales: array<u32>;
@group(0) @binding(4) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read_write> y: array<f32>;
/// EXPERTS only: [experts] counts, [experts] offsets, [pairs] token of each pair, and at
/// `tiles_at` the tile list (moe_group.wgsl).
@group(0) @binding(6) var<storage, read> pairs: array<u32>;

/// The workgroup's tile, set once by `main` for `load_step` and `write_pair`.
struct Tile {
    /// Its group, first row and end (global rows), first token and end.
    g: u32,
    r0: u32,
    r_end: u32,
    j0: u32,
    j_end: u32,
    /// EXPERTS: the group's first pair (the rows of y its tokens go to).
    base: u32,
    /// Units per row, and steps.
    units: u32,
    steps: u32,
    /// Where the input of each of this invocation's input loads starts (NO_TOKEN past the
    /// batch's tokens).
    x_at: array<u32, X_LOADS>,
}

/// Input loads per invocation and step: TN tokens x BK / 4 vec4.
const X_LOADS: u32 = TN * BK / 4u / MWG;
/// Units of a row per step, and weight loads (units) per invocation and step.
const W_UNITS: u32 = BK / (16u * UNIT_RUNS);
const W_LOADS: u32 = (TM * W_UNITS + MWG - 1u) / MWG;
const NO_TOKEN: u32 = 0xffffffffu;
/// A tile list's entries past its last tile.
const NO_TILE: u32 = 0xffffffffu;
var<private> t: Tile;
/// The next step's weights (as the words they decode from: `unit_raw`), between
/// `fetch_step` and `load_step`. The inputs are loaded in `load_step` itself: every row
/// tile reads them, so they come from the L2, and their loads overlap the weights' decode;
/// held across the products as well, the expert mat-muls ran slower.
var<private> staged_w: array<Raw, W_LOADS>;

fn silu(v: f32) -> f32 {
    return v / (1.0 + exp(-v));
}

@compute @workgroup_size(MWG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    var g = p.first_group + wid.y;
    var j0 = wid.z * TN;
    var count = batch.n;
    var base = 0u;
    // Uniform across the workgroup (workgroup ids, uniforms, read-only storage).
    if (EXPERTS) {
        let tile = pairs[p.tiles_at + wid.z];
        g = tile & 0xffffu;
        j0 = (tile >> 16u) * TN;
        if (tile == NO_TILE || g < p.first_group || g * p.group_rows >= p.row_start + p.rows) {
            return;
        }
        count = pairs[g];
        base = pairs[p.experts + g];
    }
    let group_end = min((g + 1u) * p.group_rows, p.row_start + p.rows);
    let r0 = max(g * p.group_rows, p.row_start) + wid.x * TM;
    if (r0 >= group_end || j0 >= count) {
        return;
    }
    t.g = g;
    t.r0 = r0;
    t.r_end = min(r0 + TM, group_end);
    t.j0 = j0;
    t.j_end = min(j0 + TN, count);
    t.base = base;
    t.units = p.cols / (16u * UNIT_RUNS);
    t.steps = (t.units + W_UNITS - 1u) / W_UNITS;
    for (var m = 0u; m < X_LOADS; m++) {
        let jl = x_load(lid + m * MWG).x;
        t.x_at[m] = NO_TOKEN;
        if (j0 + jl < t.j_end) {
            t.x_at[m] = x_at(jl);
        }
    }
    multiply_tiles(lid, t.steps);
}

/// (tile row, unit of the step) of weight load i. W_ALONG_K (the tile library's choice):
/// neighbouring invocations read neighbouring units of a row, one stretch of memory;
/// else the same unit of neighbouring rows, whose stores into tiles with padded rows fall
/// in different banks.
fn w_load(i: u32) -> vec2<u32> {
    if (W_ALONG_K) {
        return vec2<u32>(i / W_UNITS, i % W_UNITS);
    }
    return vec2<u32>(i % TM, i / TM);
}

/// (tile token, vec4 of the step) of input load i, in the same two orders (X_ALONG_K).
fn x_load(i: u32) -> vec2<u32> {
    if (X_ALONG_K) {
        return vec2<u32>(i / (BK / 4u), i % (BK / 4u));
    }
    return vec2<u32>(i % TN, i / TN);
}

/// Where the input of tile token jl (one of the batch's) starts in x.
fn x_at(jl: u32) -> u32 {
    var xrow = t.j0 + jl;
    if (EXPERTS) {
        xrow = t.base + t.j0 + jl;
        if (GATHER) {
            xrow = pairs[2u * p.experts + t.base + t.j0 + jl];
        }
    }
    return xrow * p.x_stride + p.in_offset + t.g * p.group_stride;
}

/// Tile row rl times tile token jl straight from the buffers, unit by unit (0 past the
/// tile's ends): the cooperative tiles' way around values outside f16's range.
fn dot_direct(rl: u32, jl: u32) -> f32 {
    let r = t.r0 + rl;
    if (r >= t.r_end || t.j0 + jl >= t.j_end) {
        return 0.0;
    }
    let at = x_at(jl);
    var sum = 0.0;
    for (var u = 0u; u < t.units; u++) {
        let v = unit_values(r - p.row_start, t.units, u);
        for (var q = 0u; q < 4u * UNIT_RUNS; q++) {
            let c = unit_run(u, q / 4u) + 4u * (q % 4u);
            sum += dot(v[q], x[(at + c) / 4u]);
        }
    }
    return sum;
}

/// Step s's weights and inputs into the tiles (rows and tokens past the ends as zeros):
/// the inputs' loads issued first, so they are in flight while the weights decode from
/// registers the previous call filled; then step s + 1's weights into those registers, so
/// their loads are in flight while the tile library multiplies step s.
fn load_step(lid: u32, s: u32) {
    if (s == 0u) {
        fetch_step(lid, 0u);
    }
    var xs: array<vec4<f32>, X_LOADS>;
    for (var m = 0u; m < X_LOADS; m++) {
        xs[m] = step_input(lid, m, s);
    }
    let unit_len = 16u * UNIT_RUNS;
    for (var m = 0u; m < W_LOADS; m++) {
        let i = lid + m * MWG;
        if (i < TM * W_UNITS) {
            let ru = w_load(i);
            let u = s * W_UNITS + ru.y;
            tile_note_bound(raw_bound(staged_w[m], u) * W_SCALE);
            let v = raw_values(staged_w[m], u, W_SCALE);
            for (var q = 0u; q < 2u * UNIT_RUNS; q++) {
                tile_put_w(ru.y * unit_len + 8u * q, ru.x, v[2u * q], v[2u * q + 1u]);
            }
        }
    }
    // Inputs of tokens past the tile's end are not stored: only their own results read
    // them, and those are never written.
    for (var m = 0u; m < X_LOADS; m++) {
        if (t.x_at[m] != NO_TOKEN) {
            let jv = x_load(lid + m * MWG);
            tile_put_x(4u * jv.y, jv.x, xs[m]);
        }
    }
    if (s + 1u < t.steps) {
        fetch_step(lid, s + 1u);
    }
}

/// Step s's weights (the words they decode from) into registers.
fn fetch_step(lid: u32, s: u32) {
    for (var m = 0u; m < W_LOADS; m++) {
        let i = lid + m * MWG;
        let ru = w_load(i);
        let u = s * W_UNITS + ru.y;
        var v: Raw;
        if (i < TM * W_UNITS && t.r0 + ru.x < t.r_end && u < t.units) {
            v = unit_raw(t.r0 + ru.x - p.row_start, t.units, u);
        }
        staged_w[m] = v;
    }
}

/// Input load m of step s (zeros past the batch's tokens and the row's units).
fn step_input(lid: u32, m: u32, s: u32) -> vec4<f32> {
    let unit_len = 16u * UNIT_RUNS;
    let k = 4u * x_load(lid + m * MWG).y;
    let u = s * W_UNITS + k / unit_len;
    if (t.x_at[m] == NO_TOKEN || u >= t.units) {
        return vec4<f32>(0.0);
    }
    let c = unit_run(u, (k % unit_len) / 16u) + k % 16u;
    return x[(t.x_at[m] + c) / 4u];
}

/// The results of tile rows rl and rl + 1 (rl even) for tile token jl: written to y, as a
/// SwiGLU pair or as two outputs.
fn write_pair(rl: u32, jl: u32, a: f32, b: f32) {
    let j = t.j0 + jl;
    let r = t.r0 + rl;
    if (j >= t.j_end || r >= t.r_end) {
        return;
    }
    var yrow = j;
    if (EXPERTS) {
        yrow = t.base + j;
    }
    let g = t.g;
    if (SWIGLU) {
        let col = (r - g * p.group_rows) / 2u + g * p.out_group_stride;
        y[yrow * p.y_stride + col] = silu(a) * b;
        return;
    }
    let o = yrow * p.y_stride + r - g * p.group_rows + g * p.out_group_stride;
    if (ACCUMULATE) {
        y[o] += a;
    } else {
        y[o] = a;
    }
    if (r + 1u < t.r_end) {
        if (ACCUMULATE) {
            y[o + 1u] += b;
        } else {
            y[o + 1u] = b;
        }
    }
}
