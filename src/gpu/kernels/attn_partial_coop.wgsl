// The first pass of attn_partial.wgsl (same inputs, same partial output, merged by
// attn_combine.wgsl) on cooperative matrices, for an f16 cache (lib/attn_tiles.wgsl): the
// workgroup of split c and row block b attends the token's heads 32 b.. (all 20 of
// GLM-4.7-Flash: heads are the query rows) over the tok.attn_split positions of its split
// (whole tiles of KD), among the tok.pos positions already cached, and writes
//   partial[h][c] = [ctx[kv] | m, l, 0, 0],  ctx = Σ exp(s - m) latent, l = Σ exp(s - m)
// for a reference max m (the running max as attend keeps it, so ctx / l and m + ln l are
// those of the exact max). An empty split (tok.pos = 0) writes ctx = 0, m = -3e38, l = 0.
// With two parts per query value, two pipelines of this module run per token: PREPARE
// writes the token's queries as f16 parts to q_parts once (grid: a workgroup per 8 query
// rows), then the attention reads them from every split (grid: splits x row blocks). With
// one, each workgroup of the attention writes its rows' queries to workgroup memory itself
// (`share_queries`), and no preparation runs.
// Launcher: src/gpu/kernels/attn_partial_coop.rs. Appended: lanes_subgroup.wgsl,
// lib/rope.wgsl, lib/attn_common.wgsl and lib/attn_tiles.wgsl. Prepended from Rust: the
// f16 and cooperative-matrix enables, AWG, QR, KD, KS, RS, LANES, STAGED, HELD, PARTS and
// struct Token.

/// Heads of the model, kv and kv + rope (a cache row).
override HEADS: u32 = 20u;
override KV: u32 = 512u;
override ROW: u32 = 576u;
/// Latent column blocks of 16 per subgroup in the context phase: KV / 64.
override CB: u32 = 8u;
/// This pipeline prepares the queries (else it attends).
override PREPARE: bool = false;
/// With one part per query value, each workgroup writes its queries to workgroup memory.
const QUERIES_IN_WORKGROUP: bool = PARTS == 1u;

struct Params {
    /// Stride of q between heads (nope + rope) and offset of q_pe within a head.
    head_dim: u32,
    nope: u32,
    scale: f32,
    /// Splits per head in `partial` (the stride between heads).
    max_splits: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<uniform> tok: Token;
/// [heads][kv]
@group(0) @binding(2) var<storage, read> q_abs: array<vec4<f32>>;
/// [heads][nope + rope], q_pe not yet roped
@group(0) @binding(3) var<storage, read> q: array<vec4<f32>>;
/// [rope / 2] (cos, sin) of the token's angles, two pairs per vec4
@group(0) @binding(4) var<storage, read> rope_cs: array<vec4<f32>>;
/// [positions][kv + rope] f16, as words of eight values (a cache row is whole words)
@group(0) @binding(5) var<storage, read> cache: array<vec4<u32>>;
/// Per row block its queries' f16 parts and scales (`query_region()` values).
@group(0) @binding(6) var<storage, read_write> q_parts: array<f16>;
/// [heads][max_splits][kv + 4]: ctx, then (m, l, 0, 0)
@group(0) @binding(7) var<storage, read_write> partial: array<f32>;

/// The workgroup's split, and the end of its keys.
var<private> split: u32;
var<private> keys_end: u32;

// The sums carry the weights times P_SCALE; the merge adds the token's own weight unscaled.
fn emit_row(qr: u32, m: f32, l: f32) {
    let at = (qr * p.max_splits + split) * (KV + 4u) + KV;
    partial[at] = m;
    partial[at + 1u] = l / P_SCALE;
    partial[at + 2u] = 0.0;
    partial[at + 3u] = 0.0;
}

fn key_end(qr: u32) -> u32 {
    return keys_end;
}

fn emit(qr: u32, col: u32, o: f32, l: f32) {
    partial[(qr * p.max_splits + split) * (KV + 4u) + col] = o / P_SCALE;
}

@compute @workgroup_size(AWG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    if (PREPARE) {
        // Query row r (of all row blocks; rows past the last head repeat it) by subgroup
        // lid / 32 of workgroup r / 8, its scale from the subgroup's max: more invocations
        // per row than attend's LANES, and no barrier, since one workgroup would take long.
        let r = wid.x * (AWG / 32u) + lid / 32u;
        let lane = lid % 32u;
        let qr = min(r, HEADS - 1u);
        let e = query_exponent(subgroupMax(query_top(qr, lane, 32u)));
        put_query_row((r / QR) * query_region(), r % QR, qr, e, lane, 32u);
        return;
    }
    split = wid.x;
    let k0 = wid.x * tok.attn_split;
    keys_end = min(k0 + tok.attn_split, tok.pos);
    // With one part the workgroup writes its own queries to workgroup memory (no dispatch
    // before, no q_parts); with two, the lo parts are loaded per tile from q_parts.
    if (QUERIES_IN_WORKGROUP) {
        share_queries(lid, wid.y * QR, HEADS);
    }
    attend(lid, wid.y * QR, HEADS, wid.y * query_region(), k0, keys_end);
}
