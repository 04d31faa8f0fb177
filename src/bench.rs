//! Decode and prefill measurements on any backend, for `glm-flash bench` and `cargo bench`.
//!
//! Decode is timed token by token at a chosen cache depth (the cache is filled first, not
//! timed), so the numbers show how speed falls with context. Prefill is one timed
//! `forward` over N tokens. Bandwidth is the bytes of weights a token reads (attention,
//! the dense FFN or the chosen experts, the shared expert, the LM head) over its time.

use std::time::Instant;

use serde::Serialize;

use crate::backend::{Backend, TokenStats};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::weights::Weights;

#[derive(Clone, Debug)]
pub struct BenchOptions {
    /// Positions already in the cache when decode timing starts; one decode run each.
    pub depths: Vec<usize>,
    /// Tokens decoded (timed one by one).
    pub decode_tokens: usize,
    /// Tokens of the timed prefill (0 skips it).
    pub prefill_tokens: usize,
    /// Untimed decode steps before timing.
    pub warmup: usize,
    /// After each decode run, time every dispatch of one more token (GPU only).
    pub profile: bool,
}

/// GPU time of one kernel's dispatches within a token.
#[derive(Clone, Debug, Serialize)]
pub struct KernelTime {
    pub kernel: &'static str,
    pub dispatches: usize,
    pub microseconds: f64,
    /// Bytes of weights (or cache) these dispatches read, where known.
    pub bytes: Option<u64>,
    pub gb_per_s: Option<f64>,
}

/// Bytes one token's dispatches of a profiled role read: the weights of its mat-vecs
/// ([`Weights::bytes_per_token_by_op`]), or the latent cache for the attention scores.
pub fn role_bytes(cfg: &Config, w: &Weights, role: &str, n_ctx: usize) -> Option<u64> {
    if role == "kq_partial" {
        return Some((cfg.n_layers * n_ctx * cfg.cache_row() * 4) as u64);
    }
    w.bytes_per_token_by_op(cfg)
        .into_iter()
        .find(|(op, _)| *op == role)
        .map(|(_, b)| b)
}

#[derive(Clone, Debug, Serialize)]
pub struct DecodeReport {
    pub depth: usize,
    pub tokens: usize,
    pub tokens_per_s: f64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub bytes_per_token: u64,
    /// Weight bytes per token over the median token time.
    pub gb_per_s: f64,
    /// Dispatches, passes, submits and read-back bytes of one decoded token (GPU only).
    pub token_stats: Option<TokenStats>,
    /// Per-kernel GPU time of one token, slowest first (with `profile`).
    pub kernels: Option<Vec<KernelTime>>,
}

#[derive(Clone, Debug, Serialize)]
pub struct PrefillReport {
    pub tokens: usize,
    pub seconds: f64,
    pub tokens_per_s: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct BenchReport {
    pub backend: String,
    pub decode: Vec<DecodeReport>,
    pub prefill: Option<PrefillReport>,
}

/// Deterministic token ids spread over the vocabulary (never the special tokens at its end).
fn token_stream(n: usize, vocab: usize) -> Vec<u32> {
    let span = (vocab * 9 / 10).max(1) as u64;
    (0..n as u64)
        .map(|i| ((i * 2654435761 + 17) % span) as u32)
        .collect()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

pub fn run(
    backend: &mut dyn Backend,
    cfg: &Config,
    w: &Weights,
    opts: &BenchOptions,
) -> Result<BenchReport> {
    let (vocab, bytes_per_token) = (cfg.vocab, w.bytes_per_token(cfg));
    let deepest = opts.depths.iter().copied().max().unwrap_or(0);
    let need = (deepest + opts.warmup + opts.decode_tokens + opts.profile as usize)
        .max(opts.prefill_tokens);
    if need > backend.max_context() {
        return Err(Error::Input(format!(
            "the benchmark needs {need} positions but the context holds {}",
            backend.max_context()
        )));
    }
    if opts.decode_tokens == 0 {
        return Err(Error::Input(
            "the benchmark times no decode step: --decode must be at least 1".into(),
        ));
    }

    let prefill = if opts.prefill_tokens > 0 {
        let tokens = token_stream(opts.prefill_tokens, vocab);
        let start = Instant::now();
        backend.forward_argmax(&tokens, 0)?;
        let seconds = start.elapsed().as_secs_f64();
        Some(PrefillReport {
            tokens: tokens.len(),
            seconds,
            tokens_per_s: tokens.len() as f64 / seconds,
        })
    } else {
        None
    };
    let decode = opts
        .depths
        .iter()
        .map(|&depth| decode_at(backend, cfg, w, bytes_per_token, depth, opts))
        .collect::<Result<Vec<_>>>()?;
    Ok(BenchReport {
        backend: backend.describe(),
        decode,
        prefill,
    })
}

/// Fills the cache to `depth` (untimed), then times decode steps one by one.
fn decode_at(
    backend: &mut dyn Backend,
    cfg: &Config,
    w: &Weights,
    bytes_per_token: u64,
    depth: usize,
    opts: &BenchOptions,
) -> Result<DecodeReport> {
    let vocab = cfg.vocab;
    let mut token = token_stream(1, vocab)[0];
    if depth > 0 {
        token = backend.forward_argmax(&token_stream(depth, vocab), 0)?;
    }
    // Per-token latency as a user sees it: the time between consecutive ids of greedy
    // decoding (the GPU backend computes the next token while one is handed over).
    let steps = opts.warmup + opts.decode_tokens;
    let mut times = Vec::with_capacity(opts.decode_tokens);
    let mut last = Instant::now();
    let mut step = 0;
    backend.decode_greedy(token, depth, steps, &mut |id| {
        let now = Instant::now();
        if step >= opts.warmup {
            times.push((now - last).as_secs_f64());
        }
        (last, token, step) = (now, id, step + 1);
        true
    })?;
    let pos = depth + steps;
    let kernels = match opts.profile {
        true => backend.profile_token(token, pos)?.map(|p| {
            p.by_kernel()
                .into_iter()
                .map(|(kernel, dispatches, t)| {
                    let bytes = role_bytes(cfg, w, kernel, pos + 1);
                    KernelTime {
                        kernel,
                        dispatches,
                        microseconds: t * 1e6,
                        bytes,
                        gb_per_s: bytes.map(|b| b as f64 / t / 1e9),
                    }
                })
                .collect()
        }),
        false => None,
    };
    let total: f64 = times.iter().sum();
    times.sort_by(f64::total_cmp);
    let p50 = percentile(&times, 0.5);
    Ok(DecodeReport {
        kernels,
        depth,
        tokens: times.len(),
        tokens_per_s: times.len() as f64 / total,
        p50_ms: p50 * 1e3,
        p95_ms: percentile(&times, 0.95) * 1e3,
        bytes_per_token,
        gb_per_s: bytes_per_token as f64 / p50 / 1e9,
        token_stats: backend.last_token_stats(),
    })
}

impl BenchReport {
    /// A few aligned lines for the terminal.
    pub fn table(&self) -> String {
        let mut s = format!("backend: {}\n", self.backend);
        for d in &self.decode {
            s += &format!(
                "decode @ depth {:>6}: {:>8.2} tok/s  p50 {:>8.3} ms  p95 {:>8.3} ms  {:>7.1} MB/token  {:>7.2} GB/s",
                d.depth,
                d.tokens_per_s,
                d.p50_ms,
                d.p95_ms,
                d.bytes_per_token as f64 / 1e6,
                d.gb_per_s
            );
            if let Some(t) = d.token_stats {
                s += &format!("  {} dispatches/token", t.dispatches);
            }
            s += "\n";
            for k in d.kernels.iter().flatten() {
                s += &format!(
                    "    {:<16} {:>5} dispatches {:>10.1} us",
                    k.kernel, k.dispatches, k.microseconds
                );
                if let (Some(b), Some(g)) = (k.bytes, k.gb_per_s) {
                    s += &format!("  {:>9.1} MB  {:>8.1} GB/s", b as f64 / 1e6, g);
                }
                s += "\n";
            }
        }
        if let Some(p) = &self.prefill {
            s += &format!(
                "prefill {:>6} tokens: {:>8.2} tok/s  ({:.3} s)\n",
                p.tokens, p.tokens_per_s, p.seconds
            );
        }
        s
    }
}
