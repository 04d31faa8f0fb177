// RoPE on q_pe of every head and on k_pe, and the latent-cache append (DESIGN steps 3-5):
//   q[h][nope..] = rope(q_pe[h]);  cache[pos] = [rmsnorm(kv_cmpr) * kv_norm | rope(k_pe)]
// RoPE rotates consecutive pairs (x0, x1), (x2, x3), ... by the angles of `pos`, whose
// (cos, sin) the host computes in f64 (f32 angles lose ~1e-3 rad by position 8192).
// Launcher: src/gpu/kernels/rope_append.rs. Appended: a reduce_*.wgsl.
// Grid: heads + 1 workgroups; the last one writes the cache row.

struct Params {
    heads: u32,
    head_dim: u32,
    nope: u32,
    rope: u32,
    kv: u32,
    /// Offset of [kv_cmpr | k_pe] in `kv_a` (which holds [q_a | kv_cmpr | k_pe]).
    kv_offset: u32,
    eps: f32,
    _pad: u32,
}

struct Token {
    pos: u32,
    n_ctx: u32,
    attn_split: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<uniform> tok: Token;
/// [rope / 2] (cos, sin) of this position's angles.
@group(0) @binding(2) var<storage, read> rope_cs: array<vec2<f32>>;
@group(0) @binding(3) var<storage, read> kv_a: array<f32>;
@group(0) @binding(4) var<storage, read> kv_norm: array<f32>;
/// [heads][nope + rope]
@group(0) @binding(5) var<storage, read_write> q: array<f32>;
/// [positions][kv + rope]
@group(0) @binding(6) var<storage, read_write> cache: array<f32>;

fn rotate(v: vec2<f32>, cs: vec2<f32>) -> vec2<f32> {
    return vec2<f32>(v.x * cs.x - v.y * cs.y, v.x * cs.y + v.y * cs.x);
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let h = wid.x;
    if (h < p.heads) {
        let base = h * p.head_dim + p.nope;
        for (var i = lid; i < p.rope / 2u; i += WG) {
            let r = rotate(vec2<f32>(q[base + 2u * i], q[base + 2u * i + 1u]), rope_cs[i]);
            q[base + 2u * i] = r.x;
            q[base + 2u * i + 1u] = r.y;
        }
        return;
    }
    var ss = 0.0;
    for (var j = lid; j < p.kv; j += WG) {
        let v = kv_a[p.kv_offset + j];
        ss += v * v;
    }
    let s = reduce_sum4(vec4<f32>(ss, 0.0, 0.0, 0.0), lid).x;
    let inv = inverseSqrt(s / f32(p.kv) + p.eps);
    let row = tok.pos * (p.kv + p.rope);
    for (var j = lid; j < p.kv; j += WG) {
        cache[row + j] = kv_a[p.kv_offset + j] * inv * kv_norm[j];
    }
    let pe = p.kv_offset + p.kv;
    for (var i = lid; i < p.rope / 2u; i += WG) {
        let r = rotate(vec2<f32>(kv_a[pe + 2u * i], kv_a[pe + 2u * i + 1u]), rope_cs[i]);
        cache[row + p.kv + 2u * i] = r.x;
        cache[row + p.kv + 2u * i + 1u] = r.y;
    }
}
