//! The CPU reference backend: the specification of every op, multi-threaded with rayon.
//!
//! One token goes through `forward_token`, which reads top to bottom: embedding, then per
//! layer the MLA attention and the dense or MoE feed-forward, then the head. Intermediates carry llama.cpp's names so a parity failure can name the
//! first tensor that differs.

pub mod ops;

use rayon::prelude::*;

use crate::backend::Backend;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::ops_common::check_positions;
use crate::weights::{DenseFfn, Ffn, Layer, MoeFfn, Weights};
use ops::{matvec, rmsnorm, rmsnorm_inplace, rope};

/// Activations and the latent cache: the CPU backend's own state.
pub struct CpuState {
    /// Per layer: `[positions][kv_lora + rope]`, the compressed latent and the roped k_pe.
    pub kv_cache: Vec<Vec<f32>>,
    /// [hidden] the residual stream.
    x: Vec<f32>,
}

pub struct CpuBackend<'a> {
    cfg: Config,
    w: &'a Weights<'a>,
    state: CpuState,
    max_context: usize,
    pool: rayon::ThreadPool,
}

impl<'a> CpuBackend<'a> {
    /// `threads` = 0 uses every core.
    pub fn new(
        cfg: &Config,
        w: &'a Weights<'a>,
        max_context: usize,
        threads: usize,
    ) -> Result<Self> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .map_err(|e| Error::Input(format!("cannot start {threads} CPU threads: {e}")))?;
        Ok(CpuBackend {
            cfg: cfg.clone(),
            w,
            state: CpuState {
                kv_cache: vec![Vec::new(); cfg.n_layers],
                x: vec![0.0; cfg.hidden],
            },
            max_context: max_context.min(cfg.context_length),
            pool,
        })
    }
}

/// One token at `pos` through every layer; returns the logits.
fn forward_token(
    cfg: &Config,
    w: &Weights,
    state: &mut CpuState,
    token: u32,
    pos: usize,
) -> Vec<f32> {
    // Rewinding (a new prompt over an old cache) drops the positions after `pos`.
    let row = cfg.cache_row();
    for cache in &mut state.kv_cache {
        cache.truncate(pos * row);
    }
    let x = &mut state.x;
    w.token_embd.dequantize_row(token as usize, x);
    for (l, layer) in w.layers.iter().enumerate() {
        let attn_out = attention(cfg, layer, x, pos, &mut state.kv_cache[l]);
        ops::add(x, &attn_out);
        let mut ffn_inp = vec![0f32; cfg.hidden];
        rmsnorm(x, &layer.ffn_norm, cfg.rms_eps, &mut ffn_inp);
        let ffn_out = match &layer.ffn {
            Ffn::Dense(d) => dense_ffn(d, &ffn_inp),
            Ffn::Moe(m) => moe_ffn(cfg, m, &ffn_inp),
        };
        ops::add(x, &ffn_out);
    }
    let mut result_norm = vec![0f32; cfg.hidden];
    rmsnorm(x, &w.output_norm, cfg.rms_eps, &mut result_norm);
    let mut result_output = vec![0f32; cfg.vocab];
    matvec(&w.output, &result_norm, &mut result_output);
    result_output
}

/// MLA attention of one token, absorbed form: the cache holds only `[latent | k_pe]`.
fn attention(cfg: &Config, layer: &Layer, x: &[f32], pos: usize, cache: &mut Vec<f32>) -> Vec<f32> {
    let (heads, nope, rope_dims, kv) = (cfg.n_heads, cfg.qk_nope, cfg.qk_rope, cfg.kv_lora_rank);
    let head_dim = nope + rope_dims;
    let mut attn_norm = vec![0f32; cfg.hidden];
    rmsnorm(x, &layer.attn_norm, cfg.rms_eps, &mut attn_norm);

    // q = q_b · norm(q_a · h), per head [q_nope | q_pe]
    let mut q_a = vec![0f32; cfg.q_lora_rank];
    matvec(&layer.attn_q_a, &attn_norm, &mut q_a);
    rmsnorm_inplace(&mut q_a, &layer.attn_q_a_norm, cfg.rms_eps);
    let mut q = vec![0f32; heads * head_dim];
    matvec(&layer.attn_q_b, &q_a, &mut q);

    // [kv_cmpr | k_pe] = kv_a · h; only the latent is normed.
    let mut kv_cmpr_pe = vec![0f32; kv + rope_dims];
    matvec(&layer.attn_kv_a_mqa, &attn_norm, &mut kv_cmpr_pe);
    let (kv_cmpr, k_pe) = kv_cmpr_pe.split_at_mut(kv);
    rmsnorm_inplace(kv_cmpr, &layer.attn_kv_a_norm, cfg.rms_eps);
    rope(k_pe, pos, cfg.rope_base);
    for q_head in q.chunks_exact_mut(head_dim) {
        rope(&mut q_head[nope..], pos, cfg.rope_base);
    }
    cache.extend_from_slice(&kv_cmpr_pe);
    let row = kv + rope_dims;
    let n_ctx = pos + 1;
    debug_assert_eq!(cache.len(), n_ctx * row);

    // Per head: absorb k_b into q, attend over the latent cache, expand with v_b.
    let scale = cfg.attn_scale();
    let mut o = vec![0f32; heads * cfg.v_head];
    o.par_chunks_mut(cfg.v_head)
        .enumerate()
        .for_each(|(h, o_head)| {
            let q_nope = &q[h * head_dim..h * head_dim + nope];
            let q_pe = &q[h * head_dim + nope..(h + 1) * head_dim];
            let k_b = layer.attn_k_b.rows(h * kv, kv);
            let q_nope_absorbed: Vec<f32> = (0..kv).map(|r| k_b.dot_row(r, q_nope)).collect();
            let mut kq: Vec<f32> = cache
                .chunks_exact(row)
                .map(|t| (ops::dot(&q_nope_absorbed, &t[..kv]) + ops::dot(q_pe, &t[kv..])) * scale)
                .collect();
            ops::softmax(&mut kq);
            let mut kqv = vec![0f32; kv];
            for (p, t) in kq.iter().zip(cache.chunks_exact(row)) {
                kqv.iter_mut().zip(&t[..kv]).for_each(|(c, &l)| *c += p * l);
            }
            let v_b = layer.attn_v_b.rows(h * cfg.v_head, cfg.v_head);
            for (r, out) in o_head.iter_mut().enumerate() {
                *out = v_b.dot_row(r, &kqv);
            }
        });
    let mut attn_out = vec![0f32; cfg.hidden];
    matvec(&layer.attn_output, &o, &mut attn_out);
    attn_out
}

fn dense_ffn(d: &DenseFfn, h: &[f32]) -> Vec<f32> {
    let mut gate = vec![0f32; d.gate.rows];
    let mut up = vec![0f32; d.up.rows];
    matvec(&d.gate, h, &mut gate);
    matvec(&d.up, h, &mut up);
    ops::swiglu(&mut gate, &up);
    let mut out = vec![0f32; d.down.rows];
    matvec(&d.down, &gate, &mut out);
    out
}

fn moe_ffn(cfg: &Config, m: &MoeFfn, h: &[f32]) -> Vec<f32> {
    let mut ffn_moe_logits = vec![0f32; cfg.n_experts];
    matvec(&m.gate_inp, h, &mut ffn_moe_logits);
    let chosen = ops::route(
        &ffn_moe_logits,
        &m.exp_probs_b,
        cfg.n_experts_used,
        cfg.expert_weights_norm,
        cfg.expert_weights_scale,
    );
    let mut out = match &m.shexp {
        Some(shexp) => dense_ffn(shexp, h),
        None => vec![0f32; cfg.hidden],
    };
    for (e, weight) in chosen {
        let expert = DenseFfn {
            gate: m.gate_exps.expert(e),
            up: m.up_exps.expert(e),
            down: m.down_exps.expert(e),
        };
        let y = dense_ffn(&expert, h);
        out.iter_mut().zip(&y).for_each(|(o, v)| *o += weight * v);
    }
    out
}

impl Backend for CpuBackend<'_> {
    fn describe(&self) -> String {
        format!("cpu, {} threads", self.pool.current_num_threads())
    }

    fn forward(&mut self, tokens: &[u32], start_pos: usize, all_logits: bool) -> Result<Vec<f32>> {
        check_positions(tokens, start_pos, self.max_context, self.cfg.vocab)?;
        // A loop for now; the signature already fits a matrix-matrix prefill.
        let mut out = Vec::new();
        for (i, &t) in tokens.iter().enumerate() {
            let (cfg, w, state) = (&self.cfg, self.w, &mut self.state);
            let logits = self
                .pool
                .install(|| forward_token(cfg, w, state, t, start_pos + i));
            if all_logits || i + 1 == tokens.len() {
                out.extend_from_slice(&logits);
            }
        }
        Ok(out)
    }

    fn max_context(&self) -> usize {
        self.max_context
    }
}
