//! Decode and prefill measurements on any backend, for `glm-flash bench` and `cargo bench`.
//!
//! Decode is timed token by token at a chosen cache depth, so the numbers show how speed
//! falls with context. The cache is filled to that depth with synthetic rows written
//! straight into it ([`Backend::fill_cache_for_bench`]), not by prefilling: 131072
//! positions would otherwise take minutes of prefill before the first timed token, and
//! attention costs the same whatever the rows hold. Prefill is one timed feed of N tokens
//! that asks for the argmax of the last row (as generation does), from an empty cache or
//! one already holding some positions. Bandwidth is the bytes of weights a token reads
//! (attention, the dense FFN or the chosen experts, the shared expert, the LM head) over
//! its time.

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::backend::{Backend, TokenProfile, TokenStats, Want};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::ops_common::CacheType;
use crate::weights::Weights;

#[derive(Clone, Debug)]
pub struct BenchOptions {
    /// Positions already in the cache when decode timing starts; one decode run each.
    pub depths: Vec<usize>,
    /// Tokens decoded (timed one by one).
    pub decode_tokens: usize,
    /// Sizes of the timed prefills (none: no prefill).
    pub prefill_tokens: Vec<usize>,
    /// Positions in the cache before each prefill (0: an empty cache); every size runs
    /// from every depth.
    pub prefill_depths: Vec<usize>,
    /// Untimed decode steps before timing; when above 0, untimed prefills of the smallest
    /// size also run first, for at least WARM_UP (the first touch of the weights and a GPU's
    /// idle clocks are not what is measured), and untimed decoding for at least WARM_UP
    /// before the first depth.
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
    /// Multiply-adds these dispatches compute, where known (a prompt's products).
    pub multiply_adds: Option<u64>,
    /// Twice the multiply-adds per second, in 10^12: what tensor-core rates are quoted in.
    pub tflop_per_s: Option<f64>,
}

/// Multiply-adds of a batched role over the positions `first..first + n`, summed over the
/// layers: the products of the role's matrices for every token (each expert slot's for
/// the MoE ones, the shared expert among them), or for the attention (`kqv`) each token's
/// scores and latent context over its keys (itself and those before it). None for roles
/// that are not such products.
pub fn role_multiply_adds(cfg: &Config, role: &str, first: usize, n: usize) -> Option<u64> {
    let (n, layers) = (n as u64, cfg.n_layers as u64);
    let moe_layers = (cfg.n_layers - cfg.n_dense_layers.min(cfg.n_layers)) as u64;
    let dense_layers = layers - moe_layers;
    let heads = cfg.n_heads as u64;
    let (hidden, kv, rope) = (
        cfg.hidden as u64,
        cfg.kv_lora_rank as u64,
        cfg.qk_rope as u64,
    );
    let slots = (cfg.n_experts_used + cfg.n_shared_experts) as u64;
    let per_token = match role {
        "q_a+kv_cmpr_pe" => layers * hidden * (cfg.q_lora_rank as u64 + kv + rope),
        "q" => layers * cfg.q_lora_rank as u64 * heads * (cfg.qk_nope as u64 + rope),
        "q_nope_absorbed" => layers * heads * cfg.qk_nope as u64 * kv,
        "kqv_out" => layers * heads * kv * cfg.v_head as u64,
        "attn_out" => layers * heads * cfg.v_head as u64 * hidden,
        "ffn_gate_up" => dense_layers * 2 * cfg.dense_ffn as u64 * hidden,
        "ffn_down" => dense_layers * cfg.dense_ffn as u64 * hidden,
        "ffn_moe_logits" => moe_layers * cfg.n_experts as u64 * hidden,
        "ffn_moe_gate_up" => moe_layers * slots * 2 * cfg.expert_ffn as u64 * hidden,
        "ffn_moe_down" => moe_layers * slots * cfg.expert_ffn as u64 * hidden,
        "kqv" => {
            // Keys of positions first..first + n: first + 1 up to first + n.
            let keys = n * (2 * first as u64 + n + 1) / 2;
            return Some(layers * heads * (2 * kv + rope) * keys);
        }
        _ => return None,
    };
    Some(per_token * n)
}

/// Bytes one token's dispatches of a profiled role read: the weights of its mat-vecs
/// ([`Weights::bytes_per_token_by_op`]), or the latent cache (`cache` values, each row
/// counted once) for the attention scores.
pub fn role_bytes(
    cfg: &Config,
    w: &Weights,
    role: &str,
    n_ctx: usize,
    cache: CacheType,
) -> Option<u64> {
    if role == "kq_partial" {
        return Some(cache.cache_bytes(cfg.n_layers, n_ctx, cfg.cache_row()));
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

impl BenchOptions {
    /// Cache positions the decode runs need (the prefills are skipped where they do not fit).
    pub fn decode_positions(&self) -> usize {
        let deepest = self.depths.iter().copied().max().unwrap_or(0);
        deepest + self.warmup + self.decode_tokens + self.profile as usize
    }

    /// Cache positions every run needs.
    pub fn positions(&self) -> usize {
        let prefill = self.prefill_tokens.iter().max().unwrap_or(&0)
            + self.prefill_depths.iter().max().unwrap_or(&0);
        self.decode_positions().max(prefill)
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct PrefillReport {
    /// Positions in the cache before the prefill.
    pub depth: usize,
    pub tokens: usize,
    pub seconds: f64,
    pub tokens_per_s: f64,
    /// Dispatches, passes, submits and read-back bytes of the prefill's last chunk (GPU only).
    pub chunk_stats: Option<TokenStats>,
    /// Per-kernel GPU time of the prefill's last chunk, slowest first (with `profile`).
    pub kernels: Option<Vec<KernelTime>>,
}

#[derive(Clone, Debug, Serialize)]
pub struct BenchReport {
    pub backend: String,
    pub decode: Vec<DecodeReport>,
    pub prefill: Vec<PrefillReport>,
    /// Prefills left out because they do not fit the context: (depth, tokens).
    pub prefill_skipped: Vec<(usize, usize)>,
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
    let ctx = backend.max_context();
    if opts.decode_positions() > ctx {
        return Err(Error::Input(format!(
            "the benchmark needs {} positions but the context holds {ctx}",
            opts.decode_positions()
        )));
    }
    if opts.decode_tokens == 0 {
        return Err(Error::Input(
            "the benchmark times no decode step: --decode must be at least 1".into(),
        ));
    }

    // Prefills feed one deterministic stream, so a run from depth D reuses the first D
    // positions of the previous run (a truncate) instead of feeding them again.
    let mut depths = opts.prefill_depths.clone();
    depths.sort_unstable();
    let mut prefill = Vec::new();
    let mut prefill_skipped = Vec::new();
    let mut stream_in_cache = 0;
    let smallest = opts.prefill_tokens.iter().copied().filter(|&n| n > 0).min();
    if let (true, Some(n)) = (opts.warmup > 0, smallest) {
        if n <= ctx {
            // The smallest prompt, untimed, at least once and until WARM_UP has passed.
            let start = Instant::now();
            loop {
                backend.truncate(0)?;
                backend.feed(&token_stream(n, vocab), 0, Want::Argmax)?;
                if start.elapsed() >= WARM_UP {
                    break;
                }
            }
            stream_in_cache = n;
        }
    }
    for &depth in &depths {
        for &tokens in &opts.prefill_tokens {
            if tokens == 0 {
                continue;
            }
            if depth + tokens > ctx {
                prefill_skipped.push((depth, tokens));
                continue;
            }
            let stream = token_stream(depth + tokens, vocab);
            if stream_in_cache >= depth {
                backend.truncate(depth)?;
            } else {
                backend.truncate(0)?;
                backend.feed(&stream[..depth], 0, Want::Nothing)?;
            }
            let start = Instant::now();
            backend.feed(&stream[depth..], depth, Want::Argmax)?;
            let seconds = start.elapsed().as_secs_f64();
            stream_in_cache = depth + tokens;
            let chunk_stats = backend.instrumented().and_then(|i| i.last_chunk_stats());
            // The same prompt again from the same depth, its last chunk timed per dispatch
            // (where the backend can time dispatches; it leaves the cache as it was).
            let kernels = if opts.profile && backend.instrumented().is_some() {
                backend.truncate(depth)?;
                let inst = backend.instrumented().expect("instrumented, checked above");
                let profile = inst.profile_prompt(&stream[depth..], depth)?;
                let (first, n) = profile.positions;
                Some(kernel_times(
                    profile,
                    |_| None,
                    |kernel| role_multiply_adds(cfg, kernel, first, n),
                ))
            } else {
                None
            };
            prefill.push(PrefillReport {
                depth,
                tokens,
                seconds,
                tokens_per_s: tokens as f64 / seconds,
                chunk_stats,
                kernels,
            });
        }
    }
    if opts.warmup > 0 && !opts.depths.is_empty() {
        warm_up_decode(backend, cfg, opts)?;
    }
    let decode = opts
        .depths
        .iter()
        .map(|&depth| decode_at(backend, cfg, w, bytes_per_token, depth, opts))
        .collect::<Result<Vec<_>>>()?;
    Ok(BenchReport {
        backend: backend.describe(),
        decode,
        prefill,
        prefill_skipped,
    })
}

/// A profile summed per kernel, slowest first, with the bytes each kernel moves and the
/// multiply-adds it computes where `bytes` and `multiply_adds` know them.
fn kernel_times(
    profile: TokenProfile,
    bytes: impl Fn(&'static str) -> Option<u64>,
    multiply_adds: impl Fn(&'static str) -> Option<u64>,
) -> Vec<KernelTime> {
    profile
        .by_kernel()
        .into_iter()
        .map(|(kernel, dispatches, t)| {
            let bytes = bytes(kernel);
            let multiply_adds = multiply_adds(kernel);
            KernelTime {
                kernel,
                dispatches,
                microseconds: t * 1e6,
                bytes,
                gb_per_s: bytes.map(|b| b as f64 / t / 1e9),
                multiply_adds,
                tflop_per_s: multiply_adds.map(|m| 2.0 * m as f64 / t / 1e12),
            }
        })
        .collect()
}

/// Rows of a synthetic cache: deterministic values in [-1, 1), the scale of a normed latent.
fn synthetic_rows(rows: usize, row: usize) -> Vec<f32> {
    let mut s: u32 = 0x2545_f491;
    (0..rows * row)
        .map(|_| {
            s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (s >> 8) as f32 / (1 << 23) as f32 - 1.0
        })
        .collect()
}

/// The least time untimed work runs before the first timed prompt and before the first
/// timed depth. A GPU that has been idle (loading the model) raises its clocks only under
/// sustained work: with a few warm-up steps alone, the first depth of a run timed slow while
/// its profile, taken after its timed tokens, did not; and a 512-token prompt (0.1 s) timed
/// after one untimed prompt moved by 14% from run to run of one build.
const WARM_UP: Duration = Duration::from_secs(1);

/// Decodes from an empty cache, untimed, runs of `warmup + decode` steps (the positions every
/// timed run takes from depth 0), until WARM_UP has passed.
fn warm_up_decode(backend: &mut dyn Backend, cfg: &Config, opts: &BenchOptions) -> Result<()> {
    let start = Instant::now();
    let token = token_stream(1, cfg.vocab)[0];
    while start.elapsed() < WARM_UP {
        backend.truncate(0)?;
        backend.decode_greedy(token, 0, opts.warmup + opts.decode_tokens, &mut |_| true)?;
    }
    Ok(())
}

/// Fills the cache to `depth` with synthetic rows (untimed), then times decode steps one by one.
fn decode_at(
    backend: &mut dyn Backend,
    cfg: &Config,
    w: &Weights,
    bytes_per_token: u64,
    depth: usize,
    opts: &BenchOptions,
) -> Result<DecodeReport> {
    let mut token = token_stream(1, cfg.vocab)[0];
    backend.truncate(0)?;
    if depth > 0 {
        let block = synthetic_rows(depth.min(1024), cfg.cache_row());
        backend.fill_cache_for_bench(&block, depth)?;
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
    let cache_type = backend.cache_type();
    let kernels = match (opts.profile, backend.instrumented()) {
        (true, Some(inst)) => Some(kernel_times(
            inst.profile_token(token, pos)?,
            |kernel| role_bytes(cfg, w, kernel, pos + 1, cache_type),
            |_| None,
        )),
        _ => None,
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
        token_stats: backend.instrumented().map(|i| i.last_token_stats()),
    })
}

/// One line per profiled kernel: dispatches, time, and bytes moved where known.
fn kernel_lines<'a>(kernels: impl Iterator<Item = &'a KernelTime>) -> String {
    let mut s = String::new();
    for k in kernels {
        s += &format!(
            "    {:<16} {:>5} dispatches {:>10.1} us",
            k.kernel, k.dispatches, k.microseconds
        );
        if let (Some(b), Some(g)) = (k.bytes, k.gb_per_s) {
            s += &format!("  {:>9.1} MB  {:>8.1} GB/s", b as f64 / 1e6, g);
        }
        if let (Some(m), Some(f)) = (k.multiply_adds, k.tflop_per_s) {
            s += &format!(
                "  {:>10.2} G multiply-adds  {:>7.2} TFLOP/s",
                m as f64 / 1e9,
                f
            );
        }
        s += "\n";
    }
    s
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
            s += &kernel_lines(d.kernels.iter().flatten());
        }
        for p in &self.prefill {
            s += &format!(
                "prefill {:>6} tokens @ depth {:>6}: {:>8.2} tok/s  ({:.3} s)",
                p.tokens, p.depth, p.tokens_per_s, p.seconds
            );
            if let Some(t) = p.chunk_stats {
                s += &format!("  {} dispatches in its last chunk", t.dispatches);
            }
            s += "\n";
            s += &kernel_lines(p.kernels.iter().flatten());
        }
        for (depth, tokens) in &self.prefill_skipped {
            s += &format!(
                "prefill {tokens:>6} tokens @ depth {depth:>6}: skipped (past the context)\n"
            );
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synth::Preset;

    /// The multiply-adds of the batched roles at GLM-4.7-Flash's own shape (47 layers, the
    /// first dense; 20 heads; latent 512, rope 64, nope 192, v 256; 4 of 64 experts and one
    /// shared, each 1536 wide; hidden 2048), written out from the model's products.
    #[test]
    fn role_multiply_adds_follow_the_model_products() {
        let cfg = Preset::Full.config();
        let n = 4096u64;
        let of = |role, first, n| role_multiply_adds(&cfg, role, first, n as usize);
        assert_eq!(of("attn_out", 0, n), Some(47 * 20 * 256 * 2048 * n));
        assert_eq!(of("q_nope_absorbed", 0, n), Some(47 * 20 * 192 * 512 * n));
        assert_eq!(of("kqv_out", 0, n), Some(47 * 20 * 512 * 256 * n));
        assert_eq!(
            of("q_a+kv_cmpr_pe", 0, n),
            Some(47 * 2048 * (768 + 512 + 64) * n)
        );
        assert_eq!(of("q", 0, n), Some(47 * 768 * 20 * 256 * n));
        assert_eq!(of("ffn_gate_up", 0, n), Some(2 * 10240 * 2048 * n));
        assert_eq!(of("ffn_down", 0, n), Some(10240 * 2048 * n));
        assert_eq!(of("ffn_moe_logits", 0, n), Some(46 * 64 * 2048 * n));
        assert_eq!(
            of("ffn_moe_gate_up", 0, n),
            Some(46 * 5 * 2 * 1536 * 2048 * n)
        );
        assert_eq!(of("ffn_moe_down", 0, n), Some(46 * 5 * 1536 * 2048 * n));
        // Token t of a prompt from an empty cache attends to t + 1 keys; each key costs
        // the scores over [latent | rope] and the context over the latent, for 20 heads.
        assert_eq!(
            of("kqv", 0, n),
            Some(47 * 20 * (512 + 64 + 512) * (n * (n + 1) / 2))
        );
        // A decoded token at position 100 attends to 101 keys.
        assert_eq!(of("kqv", 100, 1), Some(47 * 20 * 1088 * 101));
        assert_eq!(of("kv_cache", 0, n), None);
    }
}
