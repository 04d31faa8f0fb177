// Absorbed MLA attention, second pass: merge the chunks of attn_partial.wgsl into the
// softmax-weighted latent context of each head:
//   M = max_c m_c,  L = Σ_c exp(m_c - M) l_c,  kqv[h] = Σ_c exp(m_c - M) ctx_c / L
// Launcher: src/gpu/kernels/attn_combine.rs. Grid: (heads, kv / WG); one invocation per
// latent element, each recomputing its head's M and L (a few hundred cached reads).

const WG: u32 = 64u;
/// Positions per chunk: attn_partial.wgsl's CHUNK.
const CHUNK: u32 = 64u;

struct Params {
    kv: u32,
    max_chunks: u32,
    _pad0: u32,
    _pad1: u32,
}

struct Token {
    pos: u32,
    n_ctx: u32,
    embd_row: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<uniform> tok: Token;
/// [heads][max_chunks][2 + kv]
@group(0) @binding(2) var<storage, read> partial: array<f32>;
/// [heads][kv]
@group(0) @binding(3) var<storage, read_write> kqv: array<f32>;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let h = wid.x;
    let d = wid.y * WG + lid;
    let chunks = (tok.n_ctx + CHUNK - 1u) / CHUNK;
    let stride = 2u + p.kv;
    let head = h * p.max_chunks * stride;
    var m = -3.0e38;
    for (var c = 0u; c < chunks; c++) {
        m = max(m, partial[head + c * stride]);
    }
    var l = 0.0;
    for (var c = 0u; c < chunks; c++) {
        l += exp(partial[head + c * stride] - m) * partial[head + c * stride + 1u];
    }
    let inv = 1.0 / l;
    if (d < p.kv) {
        var acc = 0.0;
        for (var c = 0u; c < chunks; c++) {
            acc += exp(partial[head + c * stride] - m) * partial[head + c * stride + 2u + d];
        }
        kqv[h * p.kv + d] = acc * inv;
    }
}
