// Absorbed MLA attention, second pass fused with v_b, for contexts of few splits: the
// token's own position and the merge of the splits of attn_partial.wgsl (lib/attn_merge.wgsl)
// into head h's latent context, kept in workgroup memory, times the head's rows of v_b:
//   kqv_out[h] = v_b[h] · (exp(s - M) latent + Σ_c exp(m_c - M) ctx_c) / L
// One dispatch where attn_combine.wgsl and a per-head matvec.wgsl take two. Every workgroup
// of a head merges the whole context (the splits' 2 KB each, from cache), so the decode
// schedule runs it only up to MAX_MERGED_SPLITS splits.
// Launcher: src/gpu/kernels/attn_merge_v_b.rs. Prepended from Rust: MAX_SPLITS, MAX_ROW4 and
// struct Token. Appended: a reduce_*.wgsl, a lanes_*.wgsl, v_b's weight layout library and
// lib/dot_rows4.wgsl, lib/rope.wgsl, lib/cache_store.wgsl, lib/attn_merge.wgsl.
// Grid: (workgroups per head, heads). A workgroup's lane groups of LANES invocations each
// take ROWS consecutive rows of the head, four at a time, as in matvec.wgsl.

/// kv / 4 and (kv + rope) / 4 of the model.
override KV4: u32 = 128u;
override ROW4: u32 = 144u;
/// The cache holds f16 values, two per u32 (else f32 bits, two u32 per vec2).
override CACHE_F16: bool = true;
override ROWS: u32 = 4u;
/// WG, or a power of two the launcher keeps within the device's lane limit.
override LANES: u32 = WG;
/// The lane library's name for the workgroup size.
const AWG: u32 = WG;

struct Params {
    max_splits: u32,
    /// Stride of q between heads (nope + rope) and offset of q_pe within a head.
    head_dim: u32,
    nope: u32,
    scale: f32,
    /// Offset of [kv_cmpr | k_pe] in kv_a, in vec4.
    kv_offset4: u32,
    eps: f32,
    /// Rows of v_b per head (v_head).
    head_rows: u32,
    _pad0: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<uniform> tok: Token;
/// [heads][max_splits][kv / 4 + 1]: ctx, then (m, l, 0, 0)
@group(0) @binding(2) var<storage, read> partial: array<vec4<f32>>;
/// [heads][kv]
@group(0) @binding(3) var<storage, read> q_abs: array<vec4<f32>>;
/// [heads][nope + rope], q_pe not yet roped
@group(0) @binding(4) var<storage, read> q: array<vec4<f32>>;
/// [q_a | kv_cmpr | k_pe] of this token
@group(0) @binding(5) var<storage, read> kv_a: array<vec4<f32>>;
/// [kv] RMSNorm weight of the latent
@group(0) @binding(6) var<storage, read> kv_norm: array<vec4<f32>>;
/// [rope / 2] (cos, sin) of pos's angles, two pairs per vec4
@group(0) @binding(7) var<storage, read> rope_cs: array<vec4<f32>>;
/// [positions][kv + rope], f16 pairs or f32 bits; row pos is written here
@group(0) @binding(8) var<storage, read_write> cache: array<vec2<u32>>;
/// v_b: [heads * v_head][kv] in its layout
@group(0) @binding(9) var<storage, read> quants: array<vec4<u32>>;
@group(0) @binding(10) var<storage, read> scales: array<u32>;
/// [heads][v_head]
@group(0) @binding(11) var<storage, read_write> kqv_out: array<f32>;

/// Head h's merged latent context: the input of its v_b rows.
var<workgroup> head_context: array<vec4<f32>, MAX_ROW4>;

fn input4(base: u32, j: u32) -> vec4<f32> {
    return head_context[j];
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let h = wid.y;
    // The token's row (workgroup (0, 0) writes it to the cache) and the splits' weights.
    let w = merge_weights(h, lid, wid.x == 0u && wid.y == 0u);
    let splits = split_count();
    let stride = KV4 + 1u;
    let head = split_at(h, 0u);
    for (var j = lid; j < KV4; j += WG) {
        // Two sums: two loads in flight.
        var a0 = w.x * row[j];
        var a1 = vec4<f32>(0.0);
        var c = 0u;
        for (; c + 1u < splits; c += 2u) {
            a0 += split_weight[c] * partial[head + c * stride + j];
            a1 += split_weight[c + 1u] * partial[head + (c + 1u) * stride + j];
        }
        if (c < splits) {
            a0 += split_weight[c] * partial[head + c * stride + j];
        }
        head_context[j] = (a0 + a1) * w.y;
    }
    workgroupBarrier();

    let lane = lid % LANES;
    let first_rows = (wid.x * (WG / LANES) + lid / LANES) * ROWS;
    for (var g = 0u; g < ROWS; g += 4u) {
        let first = first_rows + g;
        // Rows past the head's end repeat its last row; their results are not written.
        let local = min(vec4<u32>(first) + vec4<u32>(0u, 1u, 2u, 3u), vec4<u32>(p.head_rows - 1u));
        let part = dot_rows4(h * p.head_rows + local, 4u * KV4, 0u, lane, LANES);
        var total: vec4<f32>;
        if (LANES == WG) {
            total = reduce_sum4(part, lid);
        } else {
            total = lane_sum(part, lid);
        }
        if (lane < 4u && first + lane < p.head_rows) {
            kqv_out[h * p.head_rows + first + lane] = total[lane];
        }
    }
}
