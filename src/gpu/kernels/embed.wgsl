// Embedding lookup: x = row `token_id[0]` of token_embd, dequantized. Weight layout as in
// matvec.wgsl (Q8_0 or F32). The id is read on the GPU (the CPU wrote it, or the previous
// token's argmax did when greedy decoding feeds its own choice), so each chunk of a split
// table has a dispatch and only the chunk holding the row writes x.
// Launcher: src/gpu/kernels/embed.rs; WG, the workgroup size, is prepended from Rust (as
// to every kernel). Grid: 1 workgroup.

override WEIGHTS_F32: bool = false;

struct Params {
    cols: u32,
    /// The chunk's first row and its row count.
    row_start: u32,
    rows: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> token_id: array<u32>;
@group(0) @binding(2) var<storage, read> quants: array<vec4<u32>>;
@group(0) @binding(3) var<storage, read> scales: array<u32>;
@group(0) @binding(4) var<storage, read_write> x: array<vec4<f32>>;

fn q8(w: u32) -> vec4<f32> {
    return vec4<f32>(bitcast<vec4<i32>>(vec4<u32>(w << 24u, w << 16u, w << 8u, w)) >> vec4<u32>(24u));
}

@compute @workgroup_size(WG)
fn main(@builtin(local_invocation_index) lid: u32) {
    let id = token_id[0];
    if (id < p.row_start || id >= p.row_start + p.rows) {
        return;
    }
    let row = id - p.row_start;
    if (WEIGHTS_F32) {
        let units = p.cols / 4u;
        for (var u = lid; u < units; u += WG) {
            x[u] = bitcast<vec4<f32>>(quants[row * units + u]);
        }
    } else {
        let units = p.cols / 16u;
        for (var u = lid; u < units; u += WG) {
            let q = quants[row * units + u];
            let si = row * (p.cols / 32u) + u / 2u;
            let d = unpack2x16float(scales[si / 2u])[si % 2u];
            x[4u * u] = d * q8(q.x);
            x[4u * u + 1u] = d * q8(q.y);
            x[4u * u + 2u] = d * q8(q.z);
            x[4u * u + 3u] = d * q8(q.w);
        }
    }
}
