//! Long runs on the fixture architecture (`tiny-q8_0.gguf`: 4 layers, hidden 256, vocab
//! 4096, context_length 202752, so both backends can hold 8192+ positions): thousands of
//! greedy tokens, a cache filled to 8192 positions, and process memory per token, on the CPU
//! and on the GPU (lavapipe here; a missing adapter fails the GPU parts).
//!
//! Each backend decodes its greedy tokens once (4096 on the CPU; 2560 on the GPU, enough
//! for the memory test's two readings 2048 tokens apart: lavapipe's decode at thousands of
//! positions is most of the suite's time, BENCHMARKS.md has it): the token test and the
//! memory test read the same run (the memory is sampled at two steps of it), so the suite pays for one
//! long decode per backend. Most of the time goes to lavapipe running attention over
//! thousands of positions (BENCHMARKS.md has the durations on the 2-core development
//! machine).
//!
//! The tests take a lock so they run one at a time: the machine has 2 cores, and the memory
//! test reads the RSS of the whole process.
mod common;

use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::Instant;

use common::*;
use glm_flash::backend::{Backend, Rows};
use glm_flash::config::Config;
use glm_flash::cpu::CpuBackend;
use glm_flash::gguf::GgufFile;
use glm_flash::gpu::{GpuBackend, GpuOptions};
use glm_flash::ops_common::CacheType;
use glm_flash::weights::Weights;

/// The GPU with the CPU reference's f32 cache, so the two follow each other as far as
/// f32 arithmetic lets them.
fn f32_cache() -> GpuOptions {
    GpuOptions {
        cache_type: CacheType::F32,
        ..Default::default()
    }
}

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// The tiny fixture, leaked so the weights can borrow it for the whole test.
fn tiny() -> (Config, Weights<'static>) {
    let file: &'static GgufFile =
        Box::leak(Box::new(GgufFile::open(fixture("tiny-q8_0.gguf")).unwrap()));
    let cfg = Config::from_gguf(file).unwrap();
    assert!(cfg.context_length >= 8192, "{}", cfg.context_length);
    let weights = Weights::from_gguf(file, &cfg).unwrap();
    (cfg, weights)
}

/// The first tokens of the fixture's short case.
fn prompt() -> Vec<u32> {
    load_case("tiny-q8_0.short").tokens[..8].to_vec()
}

fn assert_finite(logits: &[f32], label: &str, pos: usize) {
    if let Some(i) = logits.iter().position(|v| !v.is_finite()) {
        panic!("{label}: logit {i} is {} at position {pos}", logits[i]);
    }
}

/// Top-1 minus top-2 logit.
fn top_gap(logits: &[f32]) -> f32 {
    let (mut a, mut b) = (f32::NEG_INFINITY, f32::NEG_INFINITY);
    for &v in logits {
        if v > a {
            b = a;
            a = v;
        } else if v > b {
            b = v;
        }
    }
    a - b
}

/// A greedy run: the tokens, each step's top gap, and the process's RSS after
/// [`RSS_FIRST`] and [`RSS_SECOND`] generated tokens.
struct GreedyRun {
    ids: Vec<u32>,
    gaps: Vec<f32>,
    rss: [u64; 2],
}

/// Greedy decoding of `n` tokens after `prompt`, feeding back the argmax of full logits
/// (every step's logits checked for NaN/Inf).
fn greedy(b: &mut dyn Backend, prompt: &[u32], n: usize, label: &str) -> GreedyRun {
    let t = Instant::now();
    let mut logits = b.feed_logits(prompt, 0, Rows::Last).unwrap();
    let mut pos = prompt.len();
    let (mut ids, mut gaps) = (Vec::with_capacity(n), Vec::with_capacity(n));
    let mut rss = [0; 2];
    loop {
        assert_finite(&logits, label, pos - 1);
        let next = argmax(&logits) as u32;
        ids.push(next);
        gaps.push(top_gap(&logits));
        match ids.len() {
            RSS_FIRST => rss[0] = rss_bytes(),
            RSS_SECOND => rss[1] = rss_bytes(),
            _ => {}
        }
        if ids.len() == n {
            break;
        }
        logits = b.feed_logits(&[next], pos, Rows::Last).unwrap();
        pos += 1;
    }
    println!(
        "{label}: {n} greedy tokens in {:.2?} ({})",
        t.elapsed(),
        b.describe()
    );
    GreedyRun { ids, gaps, rss }
}

/// Tokens of the test must agree between GPU and CPU for this many steps (later a near-tie
/// may flip, after which the sequences legitimately differ).
const AGREE_PREFIX: usize = 256;

/// The greedy runs, one per backend, shared by the token and memory tests (computed once
/// per process).
static CPU_GREEDY: OnceLock<GreedyRun> = OnceLock::new();
static GPU_GREEDY: OnceLock<GreedyRun> = OnceLock::new();

const GREEDY_TOKENS: usize = 4096;
const GPU_GREEDY_TOKENS: usize = 2560;
const _: () = assert!(RSS_SECOND < GPU_GREEDY_TOKENS && GPU_GREEDY_TOKENS <= GREEDY_TOKENS);

fn cpu_greedy() -> &'static GreedyRun {
    CPU_GREEDY.get_or_init(|| {
        let (cfg, w) = tiny();
        let prompt = prompt();
        let mut cpu = CpuBackend::new(&cfg, &w, prompt.len() + GREEDY_TOKENS, 0).unwrap();
        greedy(&mut cpu, &prompt, GREEDY_TOKENS, "cpu")
    })
}

/// Greedy-decodes on the GPU, reading back and checking every step's logits (`feed_logits`,
/// not just `feed_argmax`).
fn gpu_greedy() -> &'static GreedyRun {
    GPU_GREEDY.get_or_init(|| {
        let (cfg, w) = tiny();
        let prompt = prompt();
        let ctx = prompt.len() + GPU_GREEDY_TOKENS;
        let mut gpu = GpuBackend::new(&cfg, &w, ctx, &f32_cache()).unwrap();
        greedy(&mut gpu, &prompt, GPU_GREEDY_TOKENS, "gpu")
    })
}

#[test]
fn cpu_greedy_4096_tokens_stay_finite() {
    let _lock = serial();
    let ids = &cpu_greedy().ids;
    // Not stuck on one token: the run writes cache rows of many distinct contents.
    let distinct = ids.iter().collect::<std::collections::HashSet<_>>().len();
    println!("cpu greedy: {distinct} distinct tokens of {}", ids.len());
    assert!(distinct > 1);
}

/// The GPU's 2560 greedy tokens against the CPU's first 2560.
#[test]
fn gpu_greedy_2560_tokens_stay_finite_and_follow_the_cpu() {
    let _lock = serial();
    let (cpu, gpu) = (cpu_greedy(), gpu_greedy());
    let (cpu_ids, gaps, gpu_ids, n) = (&cpu.ids, &cpu.gaps, &gpu.ids, GPU_GREEDY_TOKENS);
    match cpu_ids.iter().zip(gpu_ids).position(|(c, g)| c != g) {
        None => println!("gpu and cpu agree on all {n} greedy tokens"),
        Some(i) => {
            println!(
                "gpu and cpu first diverge at generated token {i}: cpu {} gpu {} (cpu top gap {:.3e})",
                cpu_ids[i], gpu_ids[i], gaps[i]
            );
            assert!(
                i >= AGREE_PREFIX,
                "gpu and cpu greedy tokens diverge at {i} (< {AGREE_PREFIX}): cpu {:?} gpu {:?}, cpu top gap there {:.3e}",
                &cpu_ids[..=i],
                &gpu_ids[..=i],
                gaps[i]
            );
        }
    }
}

/// Teacher-forces `tokens` in chunks; checks the last logits of each chunk. Returns the
/// last position's logits.
fn fill(b: &mut dyn Backend, tokens: &[u32], chunk: usize, label: &str) -> Vec<f32> {
    let t = Instant::now();
    let mut logits = Vec::new();
    for (i, c) in tokens.chunks(chunk).enumerate() {
        let pos = i * chunk;
        logits = b.feed_logits(c, pos, Rows::Last).unwrap();
        assert_finite(&logits, label, pos + c.len() - 1);
    }
    println!(
        "{label}: {} positions filled in {:.2?} ({})",
        tokens.len(),
        t.elapsed(),
        b.describe()
    );
    logits
}

const FILL: usize = 8192;
const FILL_CHUNK: usize = 1024;

/// The CPU's logits at the last of 8192 teacher-forced positions (computed once).
static CPU_FILL: OnceLock<Vec<f32>> = OnceLock::new();

fn cpu_fill() -> &'static Vec<f32> {
    CPU_FILL.get_or_init(|| {
        let (cfg, w) = tiny();
        let mut cpu = CpuBackend::new(&cfg, &w, FILL, 0).unwrap();
        assert_eq!(cpu.max_context(), FILL);
        let logits = fill(&mut cpu, &token_ids(FILL, cfg.vocab), FILL_CHUNK, "cpu");
        // The cache is full: one more position is an error, not a write past the end.
        assert!(cpu.feed_logits(&[1], FILL, Rows::Last).is_err());
        logits
    })
}

#[test]
fn cpu_full_8192_position_cache_gives_finite_logits() {
    let _lock = serial();
    assert_eq!(cpu_fill().len(), tiny().0.vocab);
}

/// Fills all 8192 positions on the GPU; compares the last logits with the CPU's.
#[test]
fn gpu_full_8192_position_cache_gives_finite_logits_like_the_cpu() {
    let _lock = serial();
    let (cfg, w) = tiny();
    let n = FILL;
    let tokens = token_ids(n, cfg.vocab);
    let want = cpu_fill();
    let mut gpu = GpuBackend::new(&cfg, &w, n, &f32_cache()).unwrap();
    assert_eq!(gpu.max_context(), n);
    let got = fill(&mut gpu, &tokens, FILL_CHUNK, "gpu");
    assert!(gpu.feed_logits(&[1], n, Rows::Last).is_err());
    let rel = rel_l2_rows(want, &got, cfg.vocab)[0];
    println!("position {}: gpu vs cpu rel L2 {rel:.3e}", n - 1);
    assert!(
        rel <= 1e-3,
        "position {}: gpu vs cpu rel L2 {rel:.3e}",
        n - 1
    );
}

/// Resident set size of this process, from /proc/self/statm.
fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * page_size()
}

fn page_size() -> u64 {
    // statm counts pages; the kernel page size is in smaps (4 KiB where it cannot be read).
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap_or_default();
    smaps
        .lines()
        .find_map(|l| l.strip_prefix("KernelPageSize:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(4096, |kb| kb * 1024)
}

/// RSS is read after this many generated tokens (past start-up allocations) and again
/// 2048 tokens later, within the greedy runs above.
const RSS_FIRST: usize = 256;
const RSS_SECOND: usize = RSS_FIRST + 2048;

/// Between the two RSS readings of `run`, the growth must stay below what the cache rows
/// of those 2048 positions can take plus `MARGIN`.
fn rss_growth(run: &GreedyRun, cfg: &Config, label: &str) {
    /// Allocator and driver slack: nothing per token should come near it.
    const MARGIN: u64 = 8 << 20;
    let [before, after] = run.rss;
    let more = RSS_SECOND - RSS_FIRST;
    let growth = after.saturating_sub(before);
    let cache = (more * cfg.n_layers * cfg.cache_row() * 4) as u64;
    println!(
        "{label}: RSS {before} -> {after} bytes (+{growth}) over {more} tokens after {RSS_FIRST}; \
         their cache rows are {cache} bytes"
    );
    assert!(
        growth <= cache + MARGIN,
        "{label}: RSS grew by {growth} bytes ({before} -> {after}) over {more} tokens; \
         the cache rows of those tokens are {cache} bytes, margin {MARGIN}"
    );
}

#[test]
fn cpu_memory_does_not_grow_per_token_beyond_the_cache() {
    let _lock = serial();
    rss_growth(cpu_greedy(), &tiny().0, "cpu");
}

/// Found by this test: on lavapipe (Mesa 22.3) RSS grew by gigabytes over 2048 tokens
/// (BENCHMARKS.md has the numbers). The cause was Mesa's uniform inlining: when a
/// compute pipeline whose loop bounds or branches read a uniform buffer is bound, lavapipe
/// clones the shader's NIR with those values as constants and compiles it with LLVM, again at
/// every bind for as long as it judges that worthwhile, and each clone lives until the
/// pipeline is destroyed. With this model's 16 experts it does so for moe_route at every
/// bind (not with 33 or more), so every route dispatch recompiled and kept a copy;
/// no other kernel of ours stays inlined here. The fix moved moe_route's params to a storage
/// buffer, which Mesa does not inline (repro in examples/lavapipe_uniform_inlining.rs); the
/// routing now runs inside src/gpu/kernels/ffn_gate_up.wgsl with its numbers as pipeline
/// constants. Now nothing grows, and tokens are faster without the compiles.
#[test]
fn gpu_memory_does_not_grow_per_token_beyond_the_cache() {
    let _lock = serial();
    rss_growth(gpu_greedy(), &tiny().0, "gpu");
}
