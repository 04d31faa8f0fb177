// Absorbed MLA attention over the latent cache, first pass (split over positions):
// for head h and chunk c of CHUNK positions,
//   score[t] = (q_abs[h] · latent[t] + q_pe[h] · k_pe[t]) * scale
//   m = max score, l = Σ exp(score - m), ctx = Σ exp(score[t] - m) * latent[t]
// written to partial[h][c] = [m, l, ctx[kv]]; attn_combine.wgsl merges the chunks.
// Launcher: src/gpu/kernels/attn_partial.rs. Appended: a reduce_*.wgsl.
// Grid: (chunks, heads). A workgroup takes CHUNK = WG positions: LANES invocations share
// each position's score dot product (consecutive lanes read consecutive 16 bytes of the
// cache row, so loads coalesce), then each invocation owns one position for the softmax.

const CHUNK: u32 = WG;
const LANES: u32 = 8u;
/// Largest kv + rope (576 in GLM-4.7-Flash), in vec4.
const MAX_ROW4: u32 = 256u;

struct Params {
    kv: u32,
    rope: u32,
    /// Stride of q between heads (nope + rope) and offset of q_pe within a head.
    head_dim: u32,
    nope: u32,
    scale: f32,
    /// Chunks per head in `partial` (the stride between heads).
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
/// [heads][kv]
@group(0) @binding(2) var<storage, read> q_abs: array<f32>;
/// [heads][nope + rope], q_pe already roped
@group(0) @binding(3) var<storage, read> q: array<f32>;
/// [positions][kv + rope]
@group(0) @binding(4) var<storage, read> cache: array<vec4<f32>>;
/// [heads][max_chunks][2 + kv]
@group(0) @binding(5) var<storage, read_write> partial: array<f32>;

/// This head's [q_abs | q_pe].
var<workgroup> qk: array<vec4<f32>, MAX_ROW4>;
/// Per position, the LANES partial dot products; then probs[i] = part[i * LANES].
var<workgroup> part: array<f32, CHUNK * LANES>;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let c = wid.x;
    let h = wid.y;
    let row4 = (p.kv + p.rope) / 4u;
    for (var j = lid; j < row4; j += WG) {
        let i = 4u * j;
        if (i < p.kv) {
            let b = h * p.kv + i;
            qk[j] = vec4<f32>(q_abs[b], q_abs[b + 1u], q_abs[b + 2u], q_abs[b + 3u]);
        } else {
            let b = h * p.head_dim + p.nope + i - p.kv;
            qk[j] = vec4<f32>(q[b], q[b + 1u], q[b + 2u], q[b + 3u]);
        }
    }
    workgroupBarrier();
    let t0 = c * CHUNK;
    let n = min(CHUNK, tok.n_ctx - t0);
    let lane = lid % LANES;
    for (var i = lid / LANES; i < n; i += WG / LANES) {
        let row = (t0 + i) * row4;
        var acc = 0.0;
        for (var j = lane; j < row4; j += LANES) {
            acc += dot(qk[j], cache[row + j]);
        }
        part[i * LANES + lane] = acc;
    }
    workgroupBarrier();
    var score = -3.0e38;
    if (lid < n) {
        var acc = 0.0;
        for (var l = 0u; l < LANES; l++) {
            acc += part[lid * LANES + l];
        }
        score = acc * p.scale;
    }
    let m = reduce_max4(vec4<f32>(score), lid).x;
    var e = 0.0;
    if (lid < n) {
        e = exp(score - m);
    }
    let l = reduce_sum4(vec4<f32>(e, 0.0, 0.0, 0.0), lid).x;
    workgroupBarrier(); // every sum of `part` above is done before it is overwritten
    part[lid * LANES] = e;
    workgroupBarrier();
    let out = (h * p.max_chunks + c) * (2u + p.kv);
    // Four positions per step with independent sums, so four cache loads are in flight.
    // Steps may run past n (up to the chunk's end): those positions have probability 0 and
    // read a valid row (the last one).
    let last = tok.n_ctx - 1u;
    for (var j = lid; j < p.kv / 4u; j += WG) {
        var a0 = vec4<f32>(0.0);
        var a1 = vec4<f32>(0.0);
        var a2 = vec4<f32>(0.0);
        var a3 = vec4<f32>(0.0);
        for (var i = 0u; i < n; i += 4u) {
            a0 += part[i * LANES] * cache[min(t0 + i, last) * row4 + j];
            a1 += part[(i + 1u) * LANES] * cache[min(t0 + i + 1u, last) * row4 + j];
            a2 += part[(i + 2u) * LANES] * cache[min(t0 + i + 2u, last) * row4 + j];
            a3 += part[(i + 3u) * LANES] * cache[min(t0 + i + 3u, last) * row4 + j];
        }
        let acc = (a0 + a1) + (a2 + a3);
        partial[out + 2u + 4u * j] = acc.x;
        partial[out + 3u + 4u * j] = acc.y;
        partial[out + 4u + 4u * j] = acc.z;
        partial[out + 5u + 4u * j] = acc.w;
    }
    if (lid == 0u) {
        partial[out] = m;
        partial[out + 1u] = l;
    }
}
