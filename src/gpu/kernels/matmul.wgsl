// Mat-mul over one chunk of a weight matrix and a block of activation rows (tokens):
//   y[j][col(r)] (+)= Σ_c W[r][c] · x[xrow(j)][in + g * group_stride + c]
// for the global rows r of this chunk and the tokens j of the batch, g = r / group_rows.
// Launcher: src/gpu/kernels/matmul.rs. Appended: the chunk's weight layout library
// (lib/weights_<layout>.wgsl: `unit_values`, `unit_run`), so one source serves every layout.
// Prepended from Rust: TM, TN, BK, MWG and struct Batch.
//
// Tiles: a workgroup of MWG invocations computes TM rows x TN tokens. Per step of BK
// columns it decodes the tile's weights once into workgroup memory (each invocation a unit
// of a row, neighbouring invocations neighbouring rows) and loads the tokens' inputs of the
// same columns; then each invocation accumulates a 4-row x 4-token block in registers,
// reading one vec4 of rows and one of tokens per column. A step's columns are whole units
// of the layout (UNIT_RUNS runs of 16 at `unit_run`), in the order the units list them:
// the sum over columns is order-free, so the input is loaded in the same order.
//
// Rows: the workgroup (x, y, z) takes rows of group first_group + y, tile x of the part of
// that group inside this chunk, and tokens z * TN... A group's rows read the input at
// in + g * group_stride: per-head mat-muls (k_b, v_b: one group per head) and experts (one
// group per expert); a plain mat-mul is one group of all rows.
// Output column: (r - g * group_rows) (/ 2 with SWIGLU) + g * out_group_stride.
//
// EXPERTS (mul_mat_id): group g is expert g; its tokens are entries offsets[g] ..
// offsets[g] + counts[g] of the expert-sorted pair list (moe_group.wgsl), written to those
// rows of y; the input row is the pair's token (GATHER) or the pair itself. Tiles past an
// expert's count exit at once. Else the tokens are 0..batch.n, rows of x and y alike.
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
    /// tokens at 2 * `experts`).
    experts: u32,
    _pad0: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<uniform> batch: Batch;
@group(0) @binding(2) var<storage, read> quants: array<vec4<u32>>;
@group(0) @binding(3) var<storage, read> scales: array<u32>;
@group(0) @binding(4) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read_write> y: array<f32>;
/// EXPERTS only: [experts] counts, [experts] offsets, [pairs] token of each pair.
@group(0) @binding(6) var<storage, read> pairs: array<u32>;

/// [k][row quad]: the weights of step column k for rows 4q..4q+3.
var<workgroup> w_tile: array<vec4<f32>, BK * TM / 4u>;
/// [k][token quad]: the inputs of step column k for tokens 4q..4q+3.
var<workgroup> x_tile: array<vec4<f32>, BK * TN / 4u>;

fn silu(v: f32) -> f32 {
    return v / (1.0 + exp(-v));
}

@compute @workgroup_size(MWG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let g = p.first_group + wid.y;
    let group_end = min((g + 1u) * p.group_rows, p.row_start + p.rows);
    let r0 = max(g * p.group_rows, p.row_start) + wid.x * TM;
    var count = batch.n;
    var base = 0u;
    if (EXPERTS) {
        count = pairs[g];
        base = pairs[p.experts + g];
    }
    let j0 = wid.z * TN;
    // Uniform across the workgroup (workgroup ids, uniforms, read-only storage).
    if (r0 >= group_end || j0 >= count) {
        return;
    }
    let r_end = min(r0 + TM, group_end);
    let j_end = min(j0 + TN, count);
    let in_base = p.in_offset + g * p.group_stride;

    let unit_len = 16u * UNIT_RUNS;
    let units = p.cols / unit_len;
    let per_step = BK / unit_len;
    let steps = (units + per_step - 1u) / per_step;
    // Input loads: token lj (neighbouring invocations neighbouring tokens), vec4 v of the step.
    let lj = lid % TN;
    var xrow = 0u;
    let has_token = j0 + lj < j_end;
    if (has_token) {
        xrow = j0 + lj;
        if (EXPERTS) {
            xrow = base + j0 + lj;
            if (GATHER) {
                xrow = pairs[2u * p.experts + base + j0 + lj];
            }
        }
    }
    let x_at = xrow * p.x_stride + in_base;
    // Compute: rows 4rq..4rq+3 and tokens 4tq..4tq+3 of the tile. Each group of 32
    // invocations takes 8 row quads x 4 token quads, so its loads of a column touch 8 and 4
    // distinct vec4 of the tiles (a broadcast each, where a subgroup is those 32).
    let rq = lid % 8u + 8u * ((lid / 32u) % (TM / 32u));
    let tq = (lid % 32u) / 8u + 4u * (lid / TM);
    var acc: array<vec4<f32>, 4>;
    for (var s = 0u; s < steps; s++) {
        for (var i = lid; i < TM * per_step; i += MWG) {
            let r = i % TM;
            let uu = i / TM;
            let u = s * per_step + uu;
            var v: Unit;
            if (r0 + r < r_end && u < units) {
                v = unit_values(r0 + r - p.row_start, units, u);
            }
            for (var q = 0u; q < 4u * UNIT_RUNS; q++) {
                let k = uu * unit_len + 4u * q;
                w_tile[k * (TM / 4u) + r / 4u][r % 4u] = v[q].x;
                w_tile[(k + 1u) * (TM / 4u) + r / 4u][r % 4u] = v[q].y;
                w_tile[(k + 2u) * (TM / 4u) + r / 4u][r % 4u] = v[q].z;
                w_tile[(k + 3u) * (TM / 4u) + r / 4u][r % 4u] = v[q].w;
            }
        }
        for (var v4 = lid / TN; v4 < BK / 4u; v4 += MWG / TN) {
            let k = 4u * v4;
            let uu = k / unit_len;
            let u = s * per_step + uu;
            var xv = vec4<f32>(0.0);
            if (has_token && u < units) {
                let c = unit_run(u, (k % unit_len) / 16u) + k % 16u;
                xv = x[(x_at + c) / 4u];
            }
            x_tile[k * (TN / 4u) + lj / 4u][lj % 4u] = xv.x;
            x_tile[(k + 1u) * (TN / 4u) + lj / 4u][lj % 4u] = xv.y;
            x_tile[(k + 2u) * (TN / 4u) + lj / 4u][lj % 4u] = xv.z;
            x_tile[(k + 3u) * (TN / 4u) + lj / 4u][lj % 4u] = xv.w;
        }
        workgroupBarrier();
        for (var k = 0u; k < BK; k++) {
            let w = w_tile[k * (TM / 4u) + rq];
            let t = x_tile[k * (TN / 4u) + tq];
            acc[0] += w * t.x;
            acc[1] += w * t.y;
            acc[2] += w * t.z;
            acc[3] += w * t.w;
        }
        workgroupBarrier();
    }

    // Constant trip counts (no early exit): the accumulators stay in registers.
    for (var m = 0u; m < 4u; m++) {
        let j = j0 + 4u * tq + m;
        var yrow = j;
        if (EXPERTS) {
            yrow = base + j;
        }
        let a = acc[m];
        let first = r0 + 4u * rq;
        if (SWIGLU) {
            for (var e = 0u; e < 4u; e += 2u) {
                let r = first + e;
                if (j < j_end && r < r_end) {
                    let col = (r - g * p.group_rows) / 2u + g * p.out_group_stride;
                    y[yrow * p.y_stride + col] = silu(a[e]) * a[e + 1u];
                }
            }
        } else {
            for (var e = 0u; e < 4u; e++) {
                let r = first + e;
                if (j < j_end && r < r_end) {
                    let o = yrow * p.y_stride + r - g * p.group_rows + g * p.out_group_stride;
                    if (ACCUMULATE) {
                        y[o] += a[e];
                    } else {
                        y[o] = a[e];
                    }
                }
            }
        }
    }
}
