// Mat-vec over one chunk of a weight matrix: out[row_offset + r] (+)= W[r] · input, for the
// `rows` rows of this chunk. Launcher: src/gpu/kernels/matvec.rs. Appended: a lanes_*.wgsl,
// lib/group_sums.wgsl, the chunk's weight layout library (lib/weights_<layout>.wgsl, which
// says how `quants` and `scales` hold the rows; written by src/gpu/upload.rs),
// lib/dot_rows4.wgsl.
//
// input = x[in + g * group_stride .. + cols] for rows of group g = global row / group_rows
// (per-head batched mat-vecs: k_b, v_b; a plain mat-vec has one group).
// Prologue NORM: input = rmsnorm(x) * norm_w, with 1/rms applied to the finished dot product.
// Epilogue ACCUMULATE: out += result (the residual add); else out = result.
// The workgroup's AWG invocations (prepended from the launcher) form lane groups of
// GROUP_LANES, about one per dot unit of a row (lib/dot_rows4.wgsl); each lane group computes
// ROWS consecutive rows, 4 at a time (one per vec4 lane), its lanes sharing the dot units of
// the rows, so a row's loads are all in flight at once. A lane group's sums meet through
// subgroup shuffles (lane_sum over LANES) and, where the group is wider than that, in
// workgroup memory (group_sums: lib/group_sums.wgsl, appended); the NORM prologue's sum of
// squares is taken after the first products (their weight loads go first) and meets the
// same way. Large matrices use more rows per lane group (the LM head).

override ROWS: u32 = 4u;
/// Invocations per lane group: a power of two, at most AWG.
override GROUP_LANES: u32 = AWG;
/// Invocations one lane_sum adds: GROUP_LANES, or the device's smallest subgroup if fewer.
override LANES: u32 = 8u;
override NORM: bool = false;
override ACCUMULATE: bool = false;

struct Params {
    rows: u32,
    cols: u32,
    /// Global index of this chunk's first row (the output index of local row 0).
    row_offset: u32,
    /// First input element, in f32 units (a multiple of 4).
    in_offset: u32,
    group_rows: u32,
    group_stride: u32,
    eps: f32,
    /// Workgroups along x of a 2-d dispatch (grids beyond 65535 wrap into y).
    groups_x: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> quants: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read> scales: array<u32>;
@group(0) @binding(3) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read> norm_w: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read_write> out: array<f32>;

/// Input elements 4j..4j+3 of a slice starting at vec4 `base`.
fn input4(base: u32, j: u32) -> vec4<f32> {
    if (NORM) {
        return x[base + j] * norm_w[j];
    }
    return x[base + j];
}

@compute @workgroup_size(AWG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let lane = lid % GROUP_LANES;
    let lane_group = (wid.x + wid.y * p.groups_x) * (AWG / GROUP_LANES) + lid / GROUP_LANES;
    let first_rows = lane_group * ROWS;
    var scale = 1.0;
    for (var g = 0u; g < ROWS; g += 4u) {
        let first = first_rows + g;
        // Rows past the end repeat the last row; their results are not written.
        let rows = min(vec4<u32>(first) + vec4<u32>(0u, 1u, 2u, 3u), vec4<u32>(p.rows - 1u));
        // The four rows share a group (the launcher checks groups are whole fours).
        let group = (p.row_offset + rows.x) / p.group_rows;
        let base = (p.in_offset + group * p.group_stride) / 4u;
        let part = dot_rows4(rows, p.cols, base, lane, GROUP_LANES);
        var total: vec4<f32>;
        if (GROUP_LANES == LANES && !NORM) {
            total = lane_sum(part, lid);
        } else {
            // The norm's squares once, with the first rows.
            let norm = NORM && g == 0u;
            var squares = 0.0;
            if (norm) {
                let x_base = p.in_offset / 4u;
                for (var j = lid; j < p.cols / 4u; j += AWG) {
                    let v = x[x_base + j];
                    squares += dot(v, v);
                }
            }
            let sums = group_sums(part, squares, norm, GROUP_LANES, lid);
            total = sums.rows;
            if (norm) {
                scale = inverseSqrt(sums.squares / f32(p.cols) + p.eps);
            }
        }
        total *= scale;
        if (lane < 4u && first + lane < p.rows) {
            let o = p.row_offset + first + lane;
            if (ACCUMULATE) {
                out[o] += total[lane];
            } else {
                out[o] = total[lane];
            }
        }
    }
}
