// Mat-vec over one chunk of a weight matrix: out[row_offset + r] (+)= W[r] · input, for the
// `rows` rows of this chunk. Launcher: src/gpu/kernels/matvec.rs. Appended: a reduce_*.wgsl
// and dot_rows4.wgsl.
//
// Weight layout (written by src/gpu/upload.rs), row-major within the chunk:
//   Q8_0 (WEIGHTS_F32 = false): `quants` holds the int8 quants, 4 per u32 (element 4i in the
//     low byte), so 16 per vec4<u32>: row r starts at vec4 r * cols / 16. `scales` holds the
//     f16 block scales, two per u32 (even index in the low half): block b of row r is scale
//     r * cols / 32 + b. Value = scale * quant, as in GGUF.
//   F32 (WEIGHTS_F32 = true): `quants` holds the f32 bits, 4 per vec4<u32>; `scales` unused.
//
// input = x[in + g * group_stride .. + cols] for rows of group g = global row / group_rows
// (per-head batched mat-vecs: k_b, v_b; a plain mat-vec has one group).
// Prologue NORM: input = rmsnorm(x) * norm_w, with 1/rms applied to the finished dot product.
// Epilogue ACCUMULATE: out += result (the residual add); else out = result.
// Each workgroup computes ROWS consecutive rows, 4 at a time (one per vec4 lane); large
// matrices use more rows per workgroup so the NORM prologue and the workgroup start are
// paid once per ROWS rows, not per 4.

override WEIGHTS_F32: bool = false;
override ROWS: u32 = 4u;
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

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let first_group = (wid.x + wid.y * p.groups_x) * ROWS;
    var scale = 1.0;
    if (NORM) {
        let base = p.in_offset / 4u;
        var ss = 0.0;
        for (var j = lid; j < p.cols / 4u; j += WG) {
            let v = x[base + j];
            ss += dot(v, v);
        }
        let s = reduce_sum4(vec4<f32>(ss, 0.0, 0.0, 0.0), lid).x;
        scale = inverseSqrt(s / f32(p.cols) + p.eps);
    }
    for (var g = 0u; g < ROWS; g += 4u) {
        let first = first_group + g;
        // Rows past the end repeat the last row; their results are not written.
        let rows = min(vec4<u32>(first) + vec4<u32>(0u, 1u, 2u, 3u), vec4<u32>(p.rows - 1u));
        // The four rows share a group (the launcher checks groups are whole fours).
        let group = (p.row_offset + rows.x) / p.group_rows;
        let base = (p.in_offset + group * p.group_stride) / 4u;
        let total = reduce_sum4(dot_rows4(rows, p.cols, base, lid), lid) * scale;
        if (lid < 4u && first + lid < p.rows) {
            let o = p.row_offset + first + lid;
            if (ACCUMULATE) {
                out[o] += total[lid];
            } else {
                out[o] = total[lid];
            }
        }
    }
}
