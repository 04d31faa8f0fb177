// The batched attention of attn_batch.wgsl (same inputs, same result) on cooperative
// matrices, for an f16 cache (lib/attn_tiles.wgsl). For token t (position batch.pos + t)
// and head h, query row qr = t * HEADS + h:
//   query  = [q_abs[qr] | rope(q_pe[t][h])]           (kv + rope values, as a cache row)
//   s[k]   = (query · cache[k]) * scale                for k <= batch.pos + t (causal)
//   kqv[qr] = Σ_k softmax(s)[k] · latent[k]            (the first kv values of cache[k])
// A workgroup takes 32 query rows (all heads of neighbouring tokens) over the keys up to
// its last row's position.
// Launcher: src/gpu/kernels/attn_batch_coop.rs. Appended: lanes_subgroup.wgsl,
// lib/rope.wgsl, lib/attn_common.wgsl and lib/attn_tiles.wgsl. Prepended from Rust: the f16
// and cooperative-matrix enables, AWG, QR, KD, KS, RS, LANES, STAGED, HELD, PARTS and
// struct Batch.

/// Heads of the model, kv and kv + rope (a cache row), rope / 4.
override HEADS: u32 = 20u;
override KV: u32 = 512u;
override ROW: u32 = 576u;
/// Latent column blocks of 16 per subgroup in the context phase: KV / 64.
override CB: u32 = 8u;
/// A row block's queries are prepared in q_parts (by the workgroup itself, before `attend`).
const QUERIES_IN_WORKGROUP: bool = false;

struct Params {
    /// Stride of q between (token, head) rows (nope + rope) and offset of q_pe in a row.
    head_dim: u32,
    nope: u32,
    scale: f32,
    _pad0: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<uniform> batch: Batch;
/// [tokens][heads][kv]
@group(0) @binding(2) var<storage, read> q_abs: array<vec4<f32>>;
/// [tokens][heads][nope + rope], q_pe not yet roped
@group(0) @binding(3) var<storage, read> q: array<vec4<f32>>;
/// [tokens][rope / 2] (cos, sin) of each token's angles, two pairs per vec4
@group(0) @binding(4) var<storage, read> rope_cs: array<vec4<f32>>;
/// [positions][kv + rope] f16, as words of eight values (a cache row is whole words)
@group(0) @binding(5) var<storage, read> cache: array<vec4<u32>>;
/// Per workgroup its queries' f16 parts and scales (`query_region()` values).
@group(0) @binding(6) var<storage, read_write> q_parts: array<f16>;
/// [tokens][heads][kv] out
@group(0) @binding(7) var<storage, read_write> kqv: array<f32>;

fn key_end(qr: u32) -> u32 {
    return batch.pos + qr / HEADS + 1u;
}

fn emit_row(qr: u32, m: f32, l: f32) {}

fn emit(qr: u32, col: u32, o: f32, l: f32) {
    kqv[qr * KV + col] = o / l;
}

@compute @workgroup_size(AWG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let rows = batch.n * HEADS;
    let q0 = wid.x * QR;
    // Keys up to the last row's own position.
    let n_keys = batch.pos + (min(q0 + QR, rows) - 1u) / HEADS + 1u;
    let base = wid.x * query_region();
    prepare_queries(lid, q0, rows, base);
    storageBarrier();
    attend(lid, q0, rows, base, 0u, n_keys);
}
