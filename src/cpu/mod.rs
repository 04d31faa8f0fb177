//! The CPU reference backend: the specification of every op, multi-threaded with rayon.
//!
//! Tokens go through [`forward`] as a block of rows (`[tokens][hidden]`), one micro-batch at
//! a time; it reads top to bottom like the model's step list, and decoding one token is the
//! block of one row. Intermediates carry llama.cpp's names so a parity failure can name the
//! first tensor that differs.

pub mod matmul;
pub mod ops;

use rayon::prelude::*;

use crate::backend::{check_bench_block, check_feed, check_truncate, Backend, Output, Rows, Want};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::ops_common::CacheType;
use crate::weights::{DenseFfn, Ffn, Layer, Matrix, MoeFfn, Weights};
pub use matmul::CpuMath;
use matmul::{gemm_nn, matmul, transpose_block, RowsOf};
use ops::{rmsnorm, rmsnorm_inplace, rope};

/// Tokens one pass of [`forward`] takes at most. Activations are sized by it, not by the
/// prompt; a larger batch runs each expert over more tokens per reading of its weights.
pub const MICRO_BATCH: usize = 256;

pub struct CpuBackend<'a> {
    cfg: Config,
    w: &'a Weights<'a>,
    /// Per layer: `[positions][kv_lora + rope]`, the compressed latent and the roped k_pe.
    kv_cache: Vec<Vec<f32>>,
    cache_len: usize,
    max_context: usize,
    /// How cache rows are stored (f32 unless [`CpuBackend::with_cache_type`] says otherwise).
    cache_type: CacheType,
    /// How weights multiply activations ([`CpuMath::Exact`] unless [`CpuBackend::with_math`]).
    math: CpuMath,
    /// Prompt tokens callers feed per call ([`Backend::prompt_piece`]).
    prompt_piece: usize,
    pool: rayon::ThreadPool,
}

/// Prompt tokens per call unless [`CpuBackend::with_prompt_piece`] says otherwise: the
/// forward takes any block at once, so this only spaces the chances to interrupt.
const PROMPT_PIECE: usize = 256;

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
            kv_cache: vec![Vec::new(); cfg.n_layers],
            cache_len: 0,
            max_context: max_context.min(cfg.context_length),
            cache_type: CacheType::F32,
            math: CpuMath::Exact,
            prompt_piece: PROMPT_PIECE,
            pool,
        })
    }

    /// Stores cache rows as `t` does (f16: each value rounded to f16, as the GPU stores it).
    pub fn with_cache_type(mut self, t: CacheType) -> Self {
        self.cache_type = t;
        self
    }

    /// Multiplies as `math` says ([`CpuMath::Q8`]: activations in 8 bits, faster).
    pub fn with_math(mut self, math: CpuMath) -> Self {
        self.math = math;
        self
    }

    /// Has callers feed long prompts `tokens` at a time (at least 1).
    pub fn with_prompt_piece(mut self, tokens: usize) -> Self {
        self.prompt_piece = tokens.max(1);
        self
    }
}

/// The backend's numeric choices: how cache rows are stored and how weights multiply.
#[derive(Clone, Copy)]
struct Precision {
    cache_type: CacheType,
    math: CpuMath,
}

/// `tokens` at positions `pos..` (the cache length) through every layer, appending their
/// cache rows; returns what `want` asks for.
fn forward(
    cfg: &Config,
    w: &Weights,
    kv_cache: &mut [Vec<f32>],
    precision: Precision,
    tokens: &[u32],
    pos: usize,
    want: Want,
) -> Output {
    let Precision { cache_type, math } = precision;
    let (n, hidden, eps) = (tokens.len(), cfg.hidden, cfg.rms_eps);
    let mut x = vec![0f32; n * hidden]; // inp_embd, then the residual stream
    for (row, &t) in x.chunks_exact_mut(hidden).zip(tokens) {
        w.token_embd.dequantize_row(t as usize, row);
    }
    for (layer, cache) in w.layers.iter().zip(kv_cache) {
        let attn_out = attention(cfg, layer, &x, pos, cache, cache_type, math);
        ops::add(&mut x, &attn_out);
        let ffn_inp = rmsnorm_rows(&x, &layer.ffn_norm, eps);
        let ffn_out = match &layer.ffn {
            Ffn::Dense(d) => dense_ffn(d, &ffn_inp, math),
            Ffn::Moe(m) => moe_ffn(cfg, m, &ffn_inp, math),
        };
        ops::add(&mut x, &ffn_out);
    }
    // Only the rows asked for go through the output norm and the LM head.
    let rows = match want {
        Want::Nothing => return Output::Nothing,
        Want::Logits(Rows::All) | Want::Hidden(Rows::All) => &x[..],
        Want::Logits(Rows::Last) | Want::Hidden(Rows::Last) | Want::Argmax => {
            &x[(n - 1) * hidden..]
        }
    };
    let result_norm = rmsnorm_rows(rows, &w.output_norm, eps);
    if let Want::Hidden(_) = want {
        return Output::Hidden(result_norm);
    }
    let result_output = mul(&w.output, &result_norm, math);
    match want {
        Want::Argmax => Output::Argmax(crate::ops_common::argmax(&result_output)),
        _ => Output::Logits(result_output),
    }
}

/// MLA attention of a block of tokens, absorbed form: the cache holds only
/// `[latent | k_pe]`, and every head attends to it as keys and (the latent) as values.
fn attention(
    cfg: &Config,
    layer: &Layer,
    x: &[f32],
    pos: usize,
    cache: &mut Vec<f32>,
    cache_type: CacheType,
    math: CpuMath,
) -> Vec<f32> {
    let (heads, nope, rope_dims, kv) = (cfg.n_heads, cfg.qk_nope, cfg.qk_rope, cfg.kv_lora_rank);
    let (head_dim, row, eps) = (nope + rope_dims, cfg.cache_row(), cfg.rms_eps);
    let n = x.len() / cfg.hidden;
    let attn_norm = rmsnorm_rows(x, &layer.attn_norm, eps);

    // q = q_b · norm(q_a · h), per head [q_nope | q_pe]
    let mut q_a = mul(&layer.attn_q_a, &attn_norm, math);
    for r in q_a.chunks_exact_mut(cfg.q_lora_rank) {
        rmsnorm_inplace(r, &layer.attn_q_a_norm, eps);
    }
    let mut q = mul(&layer.attn_q_b, &q_a, math);

    // [kv_cmpr | k_pe] = kv_a · h; only the latent is normed. Each token ropes at its own
    // position and its cache row is appended before attending, so it sees itself.
    let mut kv_cmpr_pe = mul(&layer.attn_kv_a_mqa, &attn_norm, math);
    for (i, (q_row, kv_row)) in q
        .chunks_exact_mut(heads * head_dim)
        .zip(kv_cmpr_pe.chunks_exact_mut(row))
        .enumerate()
    {
        let (kv_cmpr, k_pe) = kv_row.split_at_mut(kv);
        rmsnorm_inplace(kv_cmpr, &layer.attn_kv_a_norm, eps);
        rope(k_pe, pos + i, cfg.rope_base);
        for q_head in q_row.chunks_exact_mut(head_dim) {
            rope(&mut q_head[nope..], pos + i, cfg.rope_base);
        }
    }
    // Attention reads the block's rows as the cache stores them.
    cache_type.round(&mut kv_cmpr_pe);
    cache.extend_from_slice(&kv_cmpr_pe);
    let n_ctx = pos + n;
    debug_assert_eq!(cache.len(), n_ctx * row);

    // Per head: absorb k_b into q, the query in latent space, [q_nope_absorbed | q_pe].
    let absorbed: Vec<Vec<f32>> = (0..heads)
        .into_par_iter()
        .map(|h| {
            let q_nope = head_slices(&q, heads, h, head_dim, nope);
            mul(&layer.attn_k_b.rows(h * kv, kv), &q_nope, math)
        })
        .collect();
    let mut query = vec![0f32; n * heads * row];
    for (r, qr) in query.chunks_exact_mut(row).enumerate() {
        let (i, h) = (r / heads, r % heads);
        qr[..kv].copy_from_slice(&absorbed[h][i * kv..][..kv]);
        qr[kv..].copy_from_slice(&q[r * head_dim + nope..][..rope_dims]);
    }
    // Every head against the same latent rows (MLA is multi-query): the cache is read once
    // for all of them.
    let kqv = attend(cfg, cache, &query, pos, heads);
    // kqv_out[h] = v_b[h] · kqv[h]
    let per_head: Vec<Vec<f32>> = (0..heads)
        .into_par_iter()
        .map(|h| {
            let kqv_h = head_slices(&kqv, heads, h, kv, kv);
            mul(
                &layer.attn_v_b.rows(h * cfg.v_head, cfg.v_head),
                &kqv_h,
                math,
            )
        })
        .collect();
    let mut kqv_out = vec![0f32; n * heads * cfg.v_head];
    for (h, o) in per_head.iter().enumerate() {
        for (i, o_row) in o.chunks_exact(cfg.v_head).enumerate() {
            kqv_out[(i * heads + h) * cfg.v_head..][..cfg.v_head].copy_from_slice(o_row);
        }
    }
    mul(&layer.attn_output, &kqv_out, math)
}

/// Head `h`'s first `take` values of each token's row of `x` (`[tokens][heads][width]`),
/// one after another.
fn head_slices(x: &[f32], heads: usize, h: usize, width: usize, take: usize) -> Vec<f32> {
    x.chunks_exact(heads * width)
        .flat_map(|token| &token[h * width..][..take])
        .copied()
        .collect()
}

/// Cache positions one step of [`scan`] scores: its scores (`[rows][KEY_BLOCK]`) and the
/// latents they weigh stay in cache, and memory does not grow with the context.
const KEY_BLOCK: usize = 256;

/// The attention of a block of query rows (`[tokens][heads][kv_lora + rope]`, token `i` at
/// position `pos + i`) over the cache, causal: softmax(scale · query · cache row) weighting
/// the latents, `[tokens][heads][kv_lora]`. The work is split into tasks of a few tokens'
/// rows by a range of the cache's blocks, enough of them to keep every thread busy (one
/// token: the cache split between the threads); each task keeps a running maximum and sum
/// per row ([`scan`]), and the tasks of a token group are merged as the GPU merges its
/// splits: weights `exp(m_s - M)`, the contexts summed and divided by the summed sums.
fn attend(cfg: &Config, cache: &[f32], query: &[f32], pos: usize, heads: usize) -> Vec<f32> {
    let (row, kv) = (cfg.cache_row(), cfg.kv_lora_rank);
    let n = query.len() / (row * heads);
    let blocks = (pos + n).div_ceil(KEY_BLOCK);
    let threads = rayon::current_num_threads();
    // Several token groups per thread (later tokens see more keys: the groups even out),
    // and the keys split when there are too few groups.
    let group = n.div_ceil(4 * threads).max(1);
    let groups = n.div_ceil(group);
    let splits = threads.div_ceil(groups).clamp(1, blocks);
    let per_split = blocks.div_ceil(splits);
    let tasks: Vec<(usize, usize)> = (0..groups)
        .flat_map(|g| (0..splits).map(move |s| (g, s)))
        .collect();
    let partials: Vec<Partial> = tasks
        .into_par_iter()
        .map(|(g, s)| {
            let tokens = g * group..(n.min((g + 1) * group));
            let keys = (s * per_split * KEY_BLOCK)..((s + 1) * per_split * KEY_BLOCK);
            let rows = &query[tokens.start * heads * row..tokens.end * heads * row];
            scan(cfg, cache, rows, pos + tokens.start, heads, keys)
        })
        .collect();
    let mut kqv = vec![0f32; n * heads * kv];
    for (g, parts) in partials.chunks(splits).enumerate() {
        let out = &mut kqv[g * group * heads * kv..];
        for (r, out) in out
            .chunks_exact_mut(kv)
            .take(parts[0].max.len())
            .enumerate()
        {
            let m = parts.iter().fold(f32::NEG_INFINITY, |m, p| m.max(p.max[r]));
            let mut sum = 0f32;
            for p in parts {
                let w = (p.max[r] - m).exp();
                if w == 0.0 {
                    continue;
                }
                sum += w * p.sum[r];
                for (o, &c) in out.iter_mut().zip(&p.kqv[r * kv..][..kv]) {
                    *o += w * c;
                }
            }
            let inv = 1.0 / sum;
            out.iter_mut().for_each(|v| *v *= inv);
        }
    }
    kqv
}

/// One task's share of [`attend`]: per query row the running maximum of its scaled scores,
/// the sum of `exp(score - max)`, and the latents weighted by those, not yet divided.
struct Partial {
    max: Vec<f32>,
    sum: Vec<f32>,
    kqv: Vec<f32>,
}

/// Query rows (`[tokens][heads][row]`, the first token at position `pos`) against the cache
/// positions `keys` (cut at the last one any row sees), a block of [`KEY_BLOCK`] at a time:
/// one block of scores exists at a time, the softmax rescaled as a larger score arrives.
/// Both products broadcast one operand against vectors of the other (`gemm_nn`), the scores
/// against the block's keys transposed: on these shapes (tens of query rows, a few hundred
/// keys) that runs at about twice the rate of dot products along the row.
fn scan(
    cfg: &Config,
    cache: &[f32],
    query: &[f32],
    pos: usize,
    heads: usize,
    keys: std::ops::Range<usize>,
) -> Partial {
    let (row, kv, scale) = (cfg.cache_row(), cfg.kv_lora_rank, cfg.attn_scale());
    let m = query.len() / row;
    let last_seen = pos + m / heads;
    let mut p = Partial {
        max: vec![f32::NEG_INFINITY; m],
        sum: vec![0f32; m],
        kqv: vec![0f32; m * kv],
    };
    let end = keys.end.min(last_seen);
    // Buffers for the largest block this task scores (a short context needs less).
    let most = KEY_BLOCK.min(end.saturating_sub(keys.start));
    let mut kq = vec![0f32; m * most];
    let mut keys_t = vec![0f32; row * most];
    for t0 in (keys.start..end).step_by(KEY_BLOCK) {
        let block = KEY_BLOCK.min(end - t0);
        let cache_rows = RowsOf {
            data: &cache[t0 * row..],
            rows: block,
            stride: row,
        };
        // kq[r][t] = query[r] · cache[t0 + t], through the keys transposed
        let keys_t = &mut keys_t[..row * block];
        transpose_block(&cache[t0 * row..], row, block, keys_t);
        let kq = &mut kq[..m * block];
        kq.fill(0.0);
        gemm_nn(
            RowsOf::packed(query, row),
            RowsOf::packed(keys_t, block),
            row,
            block,
            kq,
            block,
        );
        for (r, scores) in kq.chunks_exact_mut(block).enumerate() {
            // Row r's token sees positions up to its own.
            let seen = (pos + r / heads + 1).saturating_sub(t0).min(block);
            let (seen, future) = scores.split_at_mut(seen);
            future.fill(0.0);
            if seen.is_empty() {
                continue;
            }
            seen.iter_mut().for_each(|s| *s *= scale);
            let new_max = seen.iter().fold(p.max[r], |m, &s| m.max(s));
            let rescale = (p.max[r] - new_max).exp();
            let mut block_sum = 0f32;
            for s in seen.iter_mut() {
                *s = (*s - new_max).exp();
                block_sum += *s;
            }
            p.sum[r] = p.sum[r] * rescale + block_sum;
            p.kqv[r * kv..][..kv].iter_mut().for_each(|c| *c *= rescale);
            p.max[r] = new_max;
        }
        // kqv[r] += Σ_t kq[r][t] · latent[t0 + t]
        gemm_nn(
            RowsOf::packed(kq, block),
            cache_rows,
            block,
            kv,
            &mut p.kqv,
            kv,
        );
    }
    p
}

/// SwiGLU FFN of a block of rows: `down · (silu(gate · h) * (up · h))`.
fn dense_ffn(d: &DenseFfn, h: &[f32], math: CpuMath) -> Vec<f32> {
    let mut gate = mul(&d.gate, h, math);
    let up = mul(&d.up, h, math);
    ops::swiglu(&mut gate, &up);
    mul(&d.down, &gate, math)
}

/// MoE FFN of a block of rows: every token is routed, the tokens are grouped by expert, and
/// each chosen expert runs once over its tokens (its weights read once); the shared expert
/// runs over all of them.
fn moe_ffn(cfg: &Config, m: &MoeFfn, h: &[f32], math: CpuMath) -> Vec<f32> {
    let hidden = cfg.hidden;
    let ffn_moe_logits = mul(&m.gate_inp, h, math);
    let mut tokens_of: Vec<Vec<(usize, f32)>> = vec![Vec::new(); cfg.n_experts];
    for (t, logits) in ffn_moe_logits.chunks_exact(cfg.n_experts).enumerate() {
        let chosen = ops::route(
            logits,
            &m.exp_probs_b,
            cfg.n_experts_used,
            cfg.expert_weights_norm,
            cfg.expert_weights_scale,
        );
        for (e, weight) in chosen {
            tokens_of[e].push((t, weight));
        }
    }
    let mut out = match &m.shexp {
        Some(shexp) => dense_ffn(shexp, h, math),
        None => vec![0f32; h.len()],
    };
    for (e, tokens) in tokens_of.iter().enumerate() {
        if tokens.is_empty() {
            continue;
        }
        let expert = DenseFfn {
            gate: m.gate_exps.expert(e),
            up: m.up_exps.expert(e),
            down: m.down_exps.expert(e),
        };
        let rows: Vec<f32> = tokens
            .iter()
            .flat_map(|&(t, _)| &h[t * hidden..][..hidden])
            .copied()
            .collect();
        let y = dense_ffn(&expert, &rows, math);
        for (&(t, weight), y_row) in tokens.iter().zip(y.chunks_exact(hidden)) {
            let o = &mut out[t * hidden..][..hidden];
            o.iter_mut().zip(y_row).for_each(|(o, v)| *o += weight * v);
        }
    }
    out
}

/// `m` times every row of `x`: `[rows of x][m.rows]`.
fn mul(m: &Matrix, x: &[f32], math: CpuMath) -> Vec<f32> {
    let mut out = vec![0f32; x.len() / m.cols * m.rows];
    matmul(m, x, &mut out, math);
    out
}

/// RMSNorm of every row of `x` (rows as long as `weight`).
fn rmsnorm_rows(x: &[f32], weight: &[f32], eps: f32) -> Vec<f32> {
    let mut out = vec![0f32; x.len()];
    for (o, r) in out
        .chunks_exact_mut(weight.len())
        .zip(x.chunks_exact(weight.len()))
    {
        rmsnorm(r, weight, eps, o);
    }
    out
}

impl Backend for CpuBackend<'_> {
    fn describe(&self) -> String {
        let math = match (self.math, crate::formats::int8::vectorised()) {
            (CpuMath::Exact, _) => String::new(),
            (CpuMath::Q8, Some(isa)) => format!(", 8-bit activations (--matmul q8, {isa})"),
            (CpuMath::Q8, None) => {
                ", 8-bit activations (--matmul q8; no vectorised integer dots for this CPU: \
                 slower than the exact mode)"
                    .to_string()
            }
        };
        format!("cpu, {} threads{math}", self.pool.current_num_threads())
    }

    fn max_context(&self) -> usize {
        self.max_context
    }

    fn prompt_piece(&self) -> usize {
        self.prompt_piece
    }

    fn cache_type(&self) -> CacheType {
        self.cache_type
    }

    fn fill_cache_for_bench(&mut self, block: &[f32], positions: usize) -> Result<()> {
        let row = self.cfg.cache_row();
        let rows = check_bench_block(block, row, positions, self.max_context)?;
        let mut rounded = block.to_vec();
        self.cache_type.round(&mut rounded);
        for cache in &mut self.kv_cache {
            cache.clear();
            for i in 0..positions {
                let r = i % rows;
                cache.extend_from_slice(&rounded[r * row..(r + 1) * row]);
            }
        }
        self.cache_len = positions;
        Ok(())
    }

    fn cache_len(&self) -> usize {
        self.cache_len
    }

    fn truncate(&mut self, len: usize) -> Result<()> {
        check_truncate(len, self.cache_len)?;
        let row = self.cfg.cache_row();
        for cache in &mut self.kv_cache {
            cache.truncate(len * row);
        }
        self.cache_len = len;
        Ok(())
    }

    fn feed(&mut self, tokens: &[u32], pos: usize, want: Want) -> Result<Output> {
        check_feed(
            tokens,
            pos,
            self.cache_len,
            self.max_context,
            self.cfg.vocab,
        )?;
        let all_rows = matches!(want, Want::Logits(Rows::All) | Want::Hidden(Rows::All));
        let chunks = tokens.len().div_ceil(MICRO_BATCH);
        let mut rows = Vec::new();
        let mut last = Output::Nothing;
        for (c, chunk) in tokens.chunks(MICRO_BATCH).enumerate() {
            // Earlier chunks only fill the cache unless every row is wanted.
            let chunk_want = if all_rows || c + 1 == chunks {
                want
            } else {
                Want::Nothing
            };
            let (cfg, w, cache, at) = (&self.cfg, self.w, &mut self.kv_cache, self.cache_len);
            let precision = Precision {
                cache_type: self.cache_type,
                math: self.math,
            };
            let out = self
                .pool
                .install(|| forward(cfg, w, cache, precision, chunk, at, chunk_want));
            self.cache_len += chunk.len();
            match out {
                Output::Logits(r) | Output::Hidden(r) if all_rows => rows.extend(r),
                other => last = other,
            }
        }
        Ok(match want {
            Want::Logits(Rows::All) => Output::Logits(rows),
            Want::Hidden(Rows::All) => Output::Hidden(rows),
            _ => last,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sampler::SplitMix64;

    /// [`attend`] against the softmax and weighted sum in f64, row by row, with the cache
    /// cut into several key blocks: one token (the keys split between threads), a block of
    /// tokens after a cached prefix (token groups, some keys past a token's position), on
    /// one thread and on three (other splits and groups); within 1e-5 of the largest value,
    /// no NaN.
    #[test]
    fn attend_matches_f64_softmax_over_split_keys() {
        let cfg = crate::synth::Preset::Tiny.config();
        let (row, kv, heads) = (cfg.cache_row(), cfg.kv_lora_rank, cfg.n_heads);
        let mut rng = SplitMix64(5);
        let mut uniform = || (rng.next_u64() >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
        for threads in [1, 3] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            for (pos, n) in [(1000, 1), (700, 37), (0, 5), (300, 200)] {
                let cache: Vec<f32> = (0..(pos + n) * row).map(|_| 2.0 * uniform()).collect();
                let query: Vec<f32> = (0..n * heads * row).map(|_| 2.0 * uniform()).collect();
                let got = pool.install(|| attend(&cfg, &cache, &query, pos, heads));
                assert_eq!(got.len(), n * heads * kv);
                for (r, q) in query.chunks_exact(row).enumerate() {
                    let seen = pos + r / heads + 1;
                    let scores: Vec<f64> = cache
                        .chunks_exact(row)
                        .take(seen)
                        .map(|k| {
                            let s: f64 = q.iter().zip(k).map(|(&a, &b)| a as f64 * b as f64).sum();
                            s * cfg.attn_scale() as f64
                        })
                        .collect();
                    let m = scores.iter().fold(f64::NEG_INFINITY, |m, &s| m.max(s));
                    let w: Vec<f64> = scores.iter().map(|s| (s - m).exp()).collect();
                    let sum: f64 = w.iter().sum();
                    for c in 0..kv {
                        let want: f64 = w
                            .iter()
                            .zip(cache.chunks_exact(row))
                            .map(|(w, k)| w * k[c] as f64)
                            .sum::<f64>()
                            / sum;
                        let g = got[r * kv + c];
                        assert!(
                            (g as f64 - want).abs() <= 1e-5 * 2.0,
                            "{threads} threads, pos {pos}, {n} tokens, row {r} col {c}: {g} vs {want}"
                        );
                    }
                }
            }
        }
    }
}
