// RMSNorm of a batch's rows: out[r] = x[first + r] / rms(x[first + r]) * w, for the rows
// r < batch.n (input norms of the batched forward, the q latent's norm, the output norm of
// the rows the LM head reads). Launcher: src/gpu/kernels/rms_norm.rs. Prepended from Rust:
// struct Batch. Appended: a reduce_*.wgsl. Grid: one workgroup per row.

struct Params {
    /// Values per row (a multiple of 4).
    cols: u32,
    /// Floats between input rows and the first value of a row (multiples of 4).
    in_stride: u32,
    in_offset: u32,
    out_stride: u32,
    eps: f32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<uniform> batch: Batch;
@group(0) @binding(2) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> w: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read_write> out: array<vec4<f32>>;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let r = wid.x;
    if (r >= batch.n) {
        return;
    }
    let cols4 = p.cols / 4u;
    let src = ((batch.first + r) * p.in_stride + p.in_offset) / 4u;
    var ss = 0.0;
    for (var j = lid; j < cols4; j += WG) {
        let v = x[src + j];
        ss += dot(v, v);
    }
    let s = reduce_sum4(vec4<f32>(ss, 0.0, 0.0, 0.0), lid).x;
    let inv = inverseSqrt(s / f32(p.cols) + p.eps);
    let dst = r * p.out_stride / 4u;
    for (var j = lid; j < cols4; j += WG) {
        out[dst + j] = x[src + j] * inv * w[j];
    }
}
