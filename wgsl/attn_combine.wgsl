// Absorbed MLA attention, second pass: merge the chunks of attn_partial.wgsl into the
// softmax-weighted latent context of each head:
//   M = max_c m_c,  L = Σ_c exp(m_c - M) l_c,  kqv[h] = Σ_c exp(m_c - M) ctx_c / L
// Launcher: src/gpu/kernels/attn_combine.rs. Appended: a reduce_*.wgsl. Grid: (heads, kv / WG); one invocation per
// latent element, each recomputing its head's M and L (a few hundred cached reads).

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

/// Most chunks per head: 4096 * 64 positions cover GLM-4.7-Flash's 202752-token context.
const MAX_CHUNKS: u32 = 4096u;
/// exp(m_c - M) / L of every chunk.
var<workgroup> chunk_weight: array<f32, MAX_CHUNKS>;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let h = wid.x;
    let d = wid.y * WG + lid;
    let chunks = (tok.n_ctx + CHUNK - 1u) / CHUNK;
    let stride = 2u + p.kv;
    let head = h * p.max_chunks * stride;
    var m = -3.0e38;
    for (var c = lid; c < chunks; c += WG) {
        m = max(m, partial[head + c * stride]);
    }
    let big_m = reduce_max4(vec4<f32>(m), lid).x;
    var l = 0.0;
    for (var c = lid; c < chunks; c += WG) {
        let w = exp(partial[head + c * stride] - big_m);
        chunk_weight[c] = w;
        l += w * partial[head + c * stride + 1u];
    }
    let inv = 1.0 / reduce_sum4(vec4<f32>(l, 0.0, 0.0, 0.0), lid).x;
    workgroupBarrier();
    if (d < p.kv) {
        // Four chunks per step with independent sums: four loads in flight.
        var a = vec4<f32>(0.0);
        var c = 0u;
        for (; c + 4u <= chunks; c += 4u) {
            let at = head + c * stride + 2u + d;
            a += vec4<f32>(chunk_weight[c], chunk_weight[c + 1u], chunk_weight[c + 2u], chunk_weight[c + 3u])
                * vec4<f32>(partial[at], partial[at + stride], partial[at + 2u * stride], partial[at + 3u * stride]);
        }
        var acc = (a.x + a.y) + (a.z + a.w);
        for (; c < chunks; c++) {
            acc += chunk_weight[c] * partial[head + c * stride + 2u + d];
        }
        kqv[h * p.kv + d] = acc * inv;
    }
}
