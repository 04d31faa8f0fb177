// The cache rows of a batch: for token t at position batch.pos + t, from its
// kv_a = [q_a | kv_cmpr | k_pe]:
//   cache[pos + t] = [rmsnorm(kv_cmpr) * kv_norm | rope(k_pe)]
// stored as the cache stores it (f16 or f32). Launcher: src/gpu/kernels/kv_rows.rs.
// Prepended from Rust: struct Batch. Appended: a reduce_*.wgsl, lib/rope.wgsl and
// lib/cache_store.wgsl. Grid: one workgroup per token.

/// kv / 4 and (kv + rope) / 4 of the model.
override KV4: u32 = 128u;
override ROW4: u32 = 144u;
/// The cache holds f16 values, two per u32 (else f32 bits, two u32 per vec2).
override CACHE_F16: bool = true;

struct Params {
    /// Floats between tokens' kv_a rows, and the offset of kv_cmpr in them (multiples of 4).
    in_stride: u32,
    kv_offset: u32,
    eps: f32,
    _pad0: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<uniform> batch: Batch;
@group(0) @binding(2) var<storage, read> kv_a: array<vec4<f32>>;
/// [kv] RMSNorm weight of the latent
@group(0) @binding(3) var<storage, read> kv_norm: array<vec4<f32>>;
/// [tokens][rope / 2] (cos, sin) of each token's angles, two pairs per vec4
@group(0) @binding(4) var<storage, read> rope_cs: array<vec4<f32>>;
/// [positions][kv + rope], f16 pairs or f32 bits
@group(0) @binding(5) var<storage, read_write> cache: array<vec2<u32>>;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let t = wid.x;
    if (t >= batch.n) {
        return;
    }
    let src = (t * p.in_stride + p.kv_offset) / 4u;
    var ss = 0.0;
    for (var j = lid; j < KV4; j += WG) {
        let v = kv_a[src + j];
        ss += dot(v, v);
    }
    let inv = inverseSqrt(reduce_sum4(vec4<f32>(ss, 0.0, 0.0, 0.0), lid).x / f32(4u * KV4) + p.eps);
    let rope4 = ROW4 - KV4;
    for (var j = lid; j < ROW4; j += WG) {
        var v: vec4<f32>;
        if (j < KV4) {
            v = kv_a[src + j] * inv * kv_norm[j];
        } else {
            v = rotate2(kv_a[src + j], rope_cs[t * rope4 + j - KV4]);
        }
        store4((batch.pos + t) * ROW4 + j, v);
    }
}
