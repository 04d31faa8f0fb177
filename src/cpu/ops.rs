//! The reference ops. Each GPU kernel is checked against the function of the same name here.

use crate::cpu::matmul::row_dots;
use crate::ops_common::rope_angle;
use crate::weights::Matrix;

/// 1 / sqrt(mean(x²) + eps), the mean of squares taken in f64 for stability.
fn inv_rms(x: &[f32], eps: f32) -> f32 {
    let mean_sq = x.iter().map(|&v| v as f64 * v as f64).sum::<f64>() / x.len() as f64;
    (1.0 / (mean_sq + eps as f64).sqrt()) as f32
}

/// `out = x / rms(x) * weight`
pub fn rmsnorm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let inv = inv_rms(x, eps);
    for ((o, &v), &w) in out.iter_mut().zip(x).zip(weight) {
        *o = v * inv * w;
    }
}

/// In-place variant for the q and kv latents.
pub fn rmsnorm_inplace(x: &mut [f32], weight: &[f32], eps: f32) {
    let inv = inv_rms(x, eps);
    for (v, &w) in x.iter_mut().zip(weight) {
        *v = *v * inv * w;
    }
}

/// `out[r] = m[r] · x` for every row, over the machine's cores.
pub fn matvec(m: &Matrix, x: &[f32], out: &mut [f32]) {
    debug_assert_eq!(x.len(), m.cols);
    let format = m.format();
    row_dots(m, out, |row| format.dot(row, x));
}

/// RoPE on consecutive pairs (x0,x1), (x2,x3), ... by [`rope_angle`] (llama.cpp's rope
/// type 0, not NeoX's half split), in f64.
pub fn rope(v: &mut [f32], pos: usize, base: f32) {
    let n = v.len();
    for i in 0..n / 2 {
        let (sin, cos) = rope_angle(pos, i, n, base).sin_cos();
        let (a, b) = (v[2 * i] as f64, v[2 * i + 1] as f64);
        v[2 * i] = (a * cos - b * sin) as f32;
        v[2 * i + 1] = (a * sin + b * cos) as f32;
    }
}

pub fn softmax(v: &mut [f32]) {
    let max = v.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
    let mut sum = 0f32;
    for x in v.iter_mut() {
        *x = (*x - max).exp();
        sum += *x;
    }
    let inv = 1.0 / sum;
    v.iter_mut().for_each(|x| *x *= inv);
}

pub fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// `gate[i] = silu(gate[i]) * up[i]`
pub fn swiglu(gate: &mut [f32], up: &[f32]) {
    for (g, &u) in gate.iter_mut().zip(up) {
        *g = silu(*g) * u;
    }
}

/// MoE routing: choose the `k` experts with the largest `sigmoid(logit) + bias`; their weights
/// are the unbiased sigmoids, divided by their sum (clamped below at 6.1e-5) when `norm`,
/// times `scale`. Returns (expert, weight) in order of selection score; ties go to the lower id.
pub fn route(
    router_logits: &[f32],
    bias: &[f32],
    k: usize,
    norm: bool,
    scale: f32,
) -> Vec<(usize, f32)> {
    let probs: Vec<f32> = router_logits.iter().map(|&l| sigmoid(l)).collect();
    let mut order: Vec<usize> = (0..probs.len()).collect();
    order.sort_by(|&a, &b| {
        (probs[b] + bias[b])
            .total_cmp(&(probs[a] + bias[a]))
            .then(a.cmp(&b))
    });
    order.truncate(k);
    let sum: f32 = order.iter().map(|&e| probs[e]).sum();
    let div = if norm { sum.max(6.1e-5) } else { 1.0 };
    order
        .into_iter()
        .map(|e| (e, probs[e] / div * scale))
        .collect()
}

pub fn add(x: &mut [f32], y: &[f32]) {
    x.iter_mut().zip(y).for_each(|(a, b)| *a += b);
}

pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}
