// Embedding lookup: x[t] = row `token_id[t]` of token_embd for the workgroup t (one for a
// decoded token, one per token of a batch), dequantized by the chunk's weight layout library
// (lib/weights_<layout>.wgsl, appended: `unit_values`, `unit_run`). The id is read on the GPU (the CPU wrote it, or the previous token's argmax did when greedy
// decoding feeds its own choice), so each chunk of a split table has a dispatch and only the
// chunk holding the row writes x.
// Launcher: src/gpu/kernels/embed.rs; WG, the workgroup size, is prepended from Rust (as
// to every kernel). Grid: one workgroup per token.

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

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let id = token_id[wid.x];
    if (id < p.row_start || id >= p.row_start + p.rows) {
        return;
    }
    let row = id - p.row_start;
    let units = p.cols / (16u * UNIT_RUNS);
    let out = wid.x * (p.cols / 4u);
    for (var u = lid; u < units; u += WG) {
        let v = unit_values(row, units, u);
        for (var k = 0u; k < UNIT_RUNS; k++) {
            let c = out + unit_run(u, k) / 4u;
            x[c] = v[4u * k];
            x[c + 1u] = v[4u * k + 1u];
            x[c + 2u] = v[4u * k + 2u];
            x[c + 3u] = v[4u * k + 3u];
        }
    }
}
