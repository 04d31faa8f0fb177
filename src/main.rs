//! The `glm-flash` command line: parses flags into the library's option structs, checks
//! every flag that can be checked before a model loads, and prints. All model logic lives
//! in the library.
//!
//! Exit codes: 0 done, 1 an error (`error: ...` on stderr), 2 a malformed command line
//! (clap's usage errors), 130 interrupted by Ctrl-C.

/// mimalloc reuses the CPU forward's freed activation buffers where the system allocator
/// gave them back to the OS and took page faults to touch them again (Cargo.toml says more).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::io::{BufRead, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};

use glm_flash::backend::{Backend, Rows};
use glm_flash::bench::{self, BenchOptions};
use glm_flash::chat::{ChatMessage, ChatPrompt, ReplyEvent, ReplyParser};
use glm_flash::config::Config;
use glm_flash::cpu::CpuMath;
use glm_flash::engine::{self, BackendOptions, Model};
use glm_flash::error::{Error, Result};
use glm_flash::formats;
use glm_flash::ftype::FileType;
use glm_flash::generate::{AnswerRules, GenerateOptions, StopReason};
use glm_flash::gguf::GgufFile;
use glm_flash::gpu::{self, TileMath};
use glm_flash::json_output::JsonValue;
use glm_flash::ops_common::CacheType;
use glm_flash::sampler::SamplerOptions;
use glm_flash::server::{Defaults, ServeOptions, Server};
use glm_flash::session::{Chat, RenderedPrompt, Reply, Session};
use glm_flash::synth::{Preset, SynthModel, SynthOptions};
use glm_flash::tokenizer::Tokenizer;
use glm_flash::weights::Weights;

#[derive(Parser)]
#[command(
    name = "glm-flash",
    version,
    about = "GLM-4.7-Flash inference from GGUF files (general.architecture = deepseek2)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate a continuation of a prompt (or a chat reply with --chat) and print speeds.
    Run(RunArgs),
    /// Interactive multi-turn chat on stdin (one line per turn; /help lists the commands).
    Chat(ChatArgs),
    /// Serve the model over HTTP with the OpenAI API (chat completions, completions, models).
    Serve(ServeArgs),
    /// Describe a model file: hyper-parameters, tensors and tokenizer (exit 1 if it cannot run).
    Info(InfoArgs),
    /// Teacher-forced logits of every position, as raw little-endian f32 [positions][vocab].
    Logits(LogitsArgs),
    /// Print the token ids of a text (special-token text becomes the special token).
    Tokenize(TokenizeArgs),
    /// Write a GGUF of the GLM-4.7-Flash layout with random weights, in the type mix of a file type.
    Synth(SynthArgs),
    /// Time decode (at a cache depth) and prefill on a backend.
    Bench(BenchArgs),
    /// List the GPU adapters the GPU backend can use (for --adapter).
    Devices,
    /// Print a shell completion script: `glm-flash completions bash > ~/.local/share/bash-completion/completions/glm-flash`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

// ---------------------------------------------------------------------------------------
// Flag values. Numbers may be negative where llama.cpp gives a negative a meaning (`-n -1`,
// `--seed -1`, `--repeat-last-n -1`, `--threads -1`); every other out-of-range value is a
// usage error naming what is expected.

/// A count: 0 or more.
fn count(s: &str) -> std::result::Result<usize, String> {
    match s.parse::<i64>() {
        Ok(n) if n >= 0 => Ok(n as usize),
        Ok(_) => Err("expected 0 or more".into()),
        Err(_) => Err("expected a whole number".into()),
    }
}

/// A count of at least 1.
fn positive(s: &str) -> std::result::Result<usize, String> {
    match s.parse::<i64>() {
        Ok(n) if n >= 1 => Ok(n as usize),
        Ok(_) => Err("expected 1 or more".into()),
        Err(_) => Err("expected a whole number".into()),
    }
}

/// A count, or -1 for "no limit".
fn count_or_unlimited(s: &str) -> std::result::Result<usize, String> {
    match s.parse::<i64>() {
        Ok(-1) => Ok(usize::MAX),
        Ok(n) if n >= 0 => Ok(n as usize),
        Ok(_) => Err("expected -1 (no limit) or 0 or more".into()),
        Err(_) => Err("expected a whole number".into()),
    }
}

/// CPU threads: 0 or -1 = every core.
fn threads(s: &str) -> std::result::Result<usize, String> {
    match s.parse::<i64>() {
        Ok(-1) => Ok(0),
        Ok(n) if n >= 0 => Ok(n as usize),
        Ok(_) => Err("expected 0 or -1 (every core) or a thread count".into()),
        Err(_) => Err("expected a whole number".into()),
    }
}

fn finite(s: &str) -> std::result::Result<f32, String> {
    match s.parse::<f32>() {
        Ok(v) if v.is_finite() => Ok(v),
        Ok(v) => Err(format!("{v} is not a usable number")),
        Err(_) => Err("expected a number".into()),
    }
}

fn temperature(s: &str) -> std::result::Result<f32, String> {
    match finite(s)? {
        t if t >= 0.0 => Ok(t),
        _ => Err("expected 0 (greedy) or more".into()),
    }
}

fn top_p(s: &str) -> std::result::Result<f32, String> {
    match finite(s)? {
        p if p > 0.0 && p <= 1.0 => Ok(p),
        _ => Err("expected a value in (0, 1] (1 = off)".into()),
    }
}

fn min_p(s: &str) -> std::result::Result<f32, String> {
    match finite(s)? {
        p if (0.0..=1.0).contains(&p) => Ok(p),
        _ => Err("expected a value in [0, 1] (0 = off)".into()),
    }
}

fn repeat_penalty(s: &str) -> std::result::Result<f32, String> {
    match finite(s)? {
        p if p > 0.0 => Ok(p),
        _ => Err("expected a value above 0 (1 = off)".into()),
    }
}

/// A seed: -1 = from the clock, as when none is given.
#[derive(Clone, Copy, Debug)]
struct Seed(Option<u64>);

fn seed(s: &str) -> std::result::Result<Seed, String> {
    if s == "-1" {
        return Ok(Seed(None));
    }
    s.parse::<u64>()
        .map(|v| Seed(Some(v)))
        .map_err(|_| "expected -1 (random) or a number from 0 to 18446744073709551615".into())
}

// ---------------------------------------------------------------------------------------
// Flag groups

#[derive(Args)]
struct ModelArg {
    /// GGUF model file.
    #[arg(short = 'm', long = "model", value_name = "FILE")]
    path: PathBuf,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum BackendKind {
    /// The CPU reference backend.
    Cpu,
    /// WGSL kernels through wgpu, on any adapter (software ones included).
    Gpu,
    /// A hardware GPU when one can be used, else the CPU.
    Auto,
}

/// The context when `--ctx` is not given (or the model's own, if shorter: [`default_ctx`]).
const DEFAULT_CTX: usize = 4096;

/// The context a command takes for `cfg` without `--ctx`.
fn default_ctx(cfg: &Config) -> usize {
    DEFAULT_CTX.min(cfg.context_length).max(1)
}

#[derive(Args)]
struct BackendArgs {
    /// Which backend computes the model.
    #[arg(long, value_enum, default_value_t = BackendKind::Auto)]
    backend: BackendKind,
    /// GPU adapter index, as listed by `glm-flash devices` (default: the best hardware one).
    #[arg(long, value_name = "N")]
    adapter: Option<usize>,
    /// CPU threads (0 or -1 = every core).
    #[arg(long, value_name = "N", default_value = "0", value_parser = threads, allow_negative_numbers = true)]
    threads: usize,
    /// Context length in tokens: prompt plus reply, at most the model's context length
    /// [default: 4096, or the model's context length if shorter].
    #[arg(short = 'c', long, value_name = "N", value_parser = positive, allow_negative_numbers = true)]
    ctx: Option<usize>,
    /// How the latent cache stores values (default: f16 on the GPU, f32 on the CPU).
    #[arg(long, value_enum, value_name = "TYPE")]
    cache_type: Option<CacheTypeArg>,
    /// How weights multiply activations. GPU: f16, split or fma, for prompt chunks (and a
    /// long context's attention) where the adapter has cooperative matrices (tensor cores;
    /// `glm-flash devices` says which adapters do; elsewhere f32 FMAs). CPU: exact f32
    /// products, or q8 [default: f16 on the GPU, as llama.cpp; exact on the CPU].
    #[arg(long, value_enum, value_name = "MATH")]
    matmul: Option<MatmulArg>,
    /// Prompt tokens in one batched pass, as llama.cpp's `--ubatch-size` [default: 4096 on
    /// the GPU, 256 on the CPU]. A larger pass multiplies each expert's weights by more
    /// tokens at once, for more activation memory (on the GPU about 280 KB per token).
    #[arg(long, value_name = "N", value_parser = positive, allow_negative_numbers = true)]
    batch: Option<usize>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum MatmulArg {
    /// Tensor cores on values rounded to f16: one product, f16's precision (as llama.cpp);
    /// the error it adds is measured in BENCHMARKS.md.
    F16,
    /// Tensor cores on two f16 parts of each f32 value: about 21 bits, three products, the
    /// logits within 4e-5 of the f32 path's; slower.
    Split,
    /// f32 FMAs, no tensor cores.
    Fma,
    /// CPU only: activations rounded to 8 bits per 32 values and multiplied as integers by
    /// the weights' codes (every quantized type but Q4_1 and Q5_1), as llama.cpp's CPU
    /// backend does: faster; the error it adds is measured in BENCHMARKS.md.
    Q8,
}

impl From<MatmulArg> for TileMath {
    fn from(m: MatmulArg) -> TileMath {
        match m {
            MatmulArg::Split => TileMath::Split,
            MatmulArg::F16 => TileMath::F16,
            MatmulArg::Fma => TileMath::Fma,
            // Refused by the GPU backend (`cpu_math` says q8).
            MatmulArg::Q8 => TileMath::default(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum CacheTypeArg {
    F16,
    F32,
}

impl From<CacheTypeArg> for CacheType {
    fn from(t: CacheTypeArg) -> CacheType {
        match t {
            CacheTypeArg::F16 => CacheType::F16,
            CacheTypeArg::F32 => CacheType::F32,
        }
    }
}

impl BackendArgs {
    /// The options; without `--ctx`, [`DEFAULT_CTX`] (which [`make_backend`] lowers to a
    /// model's shorter context length).
    fn options(&self) -> BackendOptions {
        BackendOptions {
            kind: match self.backend {
                BackendKind::Cpu => engine::BackendKind::Cpu,
                BackendKind::Gpu => engine::BackendKind::Gpu,
                BackendKind::Auto => engine::BackendKind::Auto,
            },
            adapter: self.adapter,
            threads: self.threads,
            ctx: self.ctx.unwrap_or(DEFAULT_CTX),
            cache_type: self.cache_type.map(CacheType::from),
            tile_math: self.matmul.unwrap_or(MatmulArg::F16).into(),
            cpu_math: match self.matmul {
                Some(MatmulArg::Q8) => CpuMath::Q8,
                _ => CpuMath::Exact,
            },
            batch: self.batch,
        }
    }

    /// What can be said before the model loads: more threads than cores.
    fn warn_early(&self) {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        if self.threads > cores {
            eprintln!(
                "warning: --threads {} is more than the {cores} cores here: the CPU backend slows down when threads wait for a core",
                self.threads
            );
        }
    }
}

#[derive(Args)]
struct SamplingArgs {
    /// Most tokens to generate (-1 = until an end token or the end of the context).
    #[arg(short = 'n', long = "max-tokens", value_name = "N", default_value = "512",
          value_parser = count_or_unlimited, allow_negative_numbers = true)]
    max_tokens: usize,
    /// Sampling temperature; 0 = greedy (always the most likely token).
    #[arg(long = "temp", value_name = "T", default_value_t = SamplerOptions::default().temperature,
          value_parser = temperature, allow_negative_numbers = true)]
    temperature: f32,
    /// Keep only the K most likely tokens (0 = off).
    #[arg(long, value_name = "K", default_value_t = SamplerOptions::default().top_k,
          value_parser = count, allow_negative_numbers = true)]
    top_k: usize,
    /// Keep the most likely tokens up to this cumulative probability, in (0, 1] (1 = off).
    #[arg(long, value_name = "P", default_value_t = SamplerOptions::default().top_p,
          value_parser = top_p, allow_negative_numbers = true)]
    top_p: f32,
    /// Drop tokens less likely than this fraction of the most likely one, in [0, 1] (0 = off).
    #[arg(long, value_name = "P", default_value_t = SamplerOptions::default().min_p,
          value_parser = min_p, allow_negative_numbers = true)]
    min_p: f32,
    /// Divide the logits of recent tokens by this (multiply when negative), as llama.cpp's
    /// --repeat-penalty (1 = off).
    #[arg(long, value_name = "P", default_value_t = SamplerOptions::default().repeat_penalty,
          value_parser = repeat_penalty, allow_negative_numbers = true)]
    repeat_penalty: f32,
    /// Subtract this from the logit of every recent token (0 = off).
    #[arg(long, value_name = "P", default_value_t = SamplerOptions::default().presence_penalty,
          value_parser = finite, allow_negative_numbers = true)]
    presence_penalty: f32,
    /// Subtract this from a token's logit per recent occurrence (0 = off).
    #[arg(long, value_name = "P", default_value_t = SamplerOptions::default().frequency_penalty,
          value_parser = finite, allow_negative_numbers = true)]
    frequency_penalty: f32,
    /// Recent tokens (the prompt's included) the penalties look at (0 = none, -1 = the whole context).
    #[arg(long, value_name = "N", default_value_t = SamplerOptions::default().penalty_last_n,
          value_parser = count_or_unlimited, allow_negative_numbers = true)]
    repeat_last_n: usize,
    /// Random seed for sampling (-1 or none: from the clock; printed with --verbose).
    #[arg(long, value_name = "S", value_parser = seed, allow_negative_numbers = true)]
    seed: Option<Seed>,
    /// Stop when the text reaches STRING (not printed); repeat for several.
    #[arg(long, value_name = "STRING", allow_hyphen_values = true)]
    stop: Vec<String>,
}

impl SamplingArgs {
    fn options(&self) -> SamplerOptions {
        let seed = self.seed.and_then(|s| s.0).unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64)
        });
        SamplerOptions {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            seed,
            repeat_penalty: self.repeat_penalty,
            presence_penalty: self.presence_penalty,
            frequency_penalty: self.frequency_penalty,
            penalty_last_n: self.repeat_last_n,
        }
    }
}

#[derive(Args)]
struct ChatStyleArgs {
    /// System message placed before the user's.
    #[arg(long, value_name = "TEXT", allow_hyphen_values = true)]
    system: Option<String>,
    /// Ask for an answer without a thinking part.
    #[arg(long)]
    no_think: bool,
    /// Do not print the thinking part (by default it is shown dimmed).
    #[arg(long)]
    hide_thinking: bool,
}

impl ChatStyleArgs {
    /// The flags given, by name (for the warning when they do not apply).
    fn given(&self) -> Vec<&'static str> {
        [
            (self.system.is_some(), "--system"),
            (self.no_think, "--no-think"),
            (self.hide_thinking, "--hide-thinking"),
        ]
        .iter()
        .filter(|(on, _)| *on)
        .map(|(_, name)| *name)
        .collect()
    }
}

#[derive(Args)]
struct PromptArgs {
    /// The prompt text.
    #[arg(
        short = 'p',
        long,
        value_name = "TEXT",
        conflicts_with = "file",
        allow_hyphen_values = true
    )]
    prompt: Option<String>,
    /// Read the prompt from a UTF-8 file (`-` = standard input).
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    file: Option<PathBuf>,
}

impl PromptArgs {
    /// The prompt's text; an empty one is an error (before anything loads).
    fn text(&self) -> Result<String> {
        let text = match (&self.prompt, &self.file) {
            (Some(p), _) => p.clone(),
            (None, Some(path)) if path.as_os_str() == "-" => {
                let mut bytes = Vec::new();
                std::io::stdin()
                    .read_to_end(&mut bytes)
                    .map_err(|e| Error::io("<stdin>", e))?;
                utf8(bytes, Path::new("<stdin>"))?
            }
            (None, Some(path)) => read_utf8(path)?,
            (None, None) => {
                return Err(Error::Input(
                    "no prompt: give one with -p TEXT, -f FILE or -f - (standard input)".into(),
                ))
            }
        };
        if text.is_empty() {
            return Err(Error::Input("the prompt is empty".into()));
        }
        Ok(text)
    }
}

#[derive(Args)]
struct RunArgs {
    /// GGUF model file (default: a small built-in model with random weights).
    #[arg(short = 'm', long = "model", value_name = "FILE")]
    model: Option<PathBuf>,
    #[command(flatten)]
    prompt: PromptArgs,
    /// Render the prompt as one user message through the model's chat template.
    #[arg(long)]
    chat: bool,
    #[command(flatten)]
    style: ChatStyleArgs,
    #[command(flatten)]
    sampling: SamplingArgs,
    #[command(flatten)]
    backend: BackendArgs,
    /// Print one JSON object on stdout instead of the text: the text (with --chat also its
    /// thinking, answer and tool calls), prompt and generated token ids, stop reason, timings.
    #[arg(long)]
    json: bool,
    /// Hold the answer (with --chat, what follows the thinking) to one JSON value (`json`)
    /// or object (`json-object`): each token is chosen among those that keep it JSON, and
    /// the reply ends once the value is whole.
    #[arg(long, value_name = "FORMAT")]
    format: Option<AnswerFormat>,
    /// Print the backend, the prompt and generated token ids, and the stop reason on stderr.
    #[arg(short, long)]
    verbose: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum AnswerFormat {
    Json,
    JsonObject,
}

impl AnswerFormat {
    fn value(self) -> JsonValue {
        match self {
            AnswerFormat::Json => JsonValue::Any,
            AnswerFormat::JsonObject => JsonValue::Object,
        }
    }
}

#[derive(Args)]
struct ChatArgs {
    /// GGUF model file (default: a small built-in model with random weights).
    #[arg(short = 'm', long = "model", value_name = "FILE")]
    model: Option<PathBuf>,
    #[command(flatten)]
    style: ChatStyleArgs,
    #[command(flatten)]
    sampling: SamplingArgs,
    #[command(flatten)]
    backend: BackendArgs,
    /// Print the backend and per-turn token counts on stderr.
    #[arg(short, long)]
    verbose: bool,
}

#[derive(Args)]
struct ServeArgs {
    /// GGUF model file (default: a small built-in model with random weights).
    #[arg(short = 'm', long = "model", value_name = "FILE")]
    model: Option<PathBuf>,
    /// Address to listen on (this machine only unless told otherwise).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1")]
    host: String,
    /// Port to listen on (0 = any free one; the address is printed).
    #[arg(long, value_name = "N", default_value_t = 8080)]
    port: u16,
    /// Require `Authorization: Bearer KEY` on every /v1 request.
    #[arg(long, value_name = "KEY")]
    api_key: Option<String>,
    /// Let web pages from ORIGIN (such as http://localhost:3000) call the server from a
    /// browser; repeat for several, `*` for any.
    #[arg(long = "cors-origin", value_name = "ORIGIN")]
    cors_origins: Vec<String>,
    /// Sequence slots: conversations whose cached prefix is kept between requests.
    #[arg(long, value_name = "N", default_value_t = 1)]
    parallel: usize,
    /// Answer without a thinking part unless a request asks for one.
    #[arg(long)]
    no_think: bool,
    /// Defaults for requests that do not say (`-n`: their max_tokens).
    #[command(flatten)]
    sampling: SamplingArgs,
    #[command(flatten)]
    backend: BackendArgs,
}

#[derive(Args)]
struct InfoArgs {
    #[command(flatten)]
    model: ModelArg,
    /// Context length to size the GPU memory for [default: 4096, or the model's context
    /// length if shorter].
    #[arg(short = 'c', long, value_name = "N", value_parser = positive, allow_negative_numbers = true)]
    ctx: Option<usize>,
    /// Prompt tokens per GPU pass to size the activations for [default: 4096, or the
    /// context if shorter].
    #[arg(long, value_name = "N", value_parser = positive, allow_negative_numbers = true)]
    batch: Option<usize>,
}

#[derive(Args)]
struct LogitsArgs {
    #[command(flatten)]
    model: ModelArg,
    /// Comma-separated token ids, fed at positions 0, 1, ...
    #[arg(long, value_name = "IDS", value_delimiter = ',', required = true)]
    tokens: Vec<u32>,
    /// Output file: raw little-endian f32, row-major [positions][vocab].
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    #[command(flatten)]
    backend: BackendArgs,
}

#[derive(Args)]
struct TokenizeArgs {
    #[command(flatten)]
    model: ModelArg,
    #[command(flatten)]
    prompt: PromptArgs,
}

#[derive(Clone, Copy, ValueEnum)]
enum PresetArg {
    /// GLM-4.7-Flash's dimensions: 47 layers, 64 experts, vocab 154880 (about 32 GB).
    Full,
    /// The fixtures' tiny model: hidden 256, 4 layers, 16 experts, vocab 4096 (about 9 MB).
    Tiny,
}

#[derive(Args)]
struct SynthArgs {
    /// Which dimensions to use.
    #[arg(long, value_enum)]
    preset: PresetArg,
    /// Override the number of (trunk) layers.
    #[arg(long, value_name = "N", value_parser = positive, allow_negative_numbers = true)]
    layers: Option<usize>,
    /// Override the vocabulary size (at least 292: bytes and special tokens).
    #[arg(long, value_name = "N", value_parser = positive, allow_negative_numbers = true)]
    vocab: Option<usize>,
    /// Seed of the random weights (same seed, same file).
    #[arg(long, value_name = "S", default_value_t = 0)]
    seed: u64,
    /// File type: the per-tensor type mix llama-quantize writes for this model
    /// (q8_0, q4_0, q2_k, q4_k_m, q5_k_m, q6_k, iq4_nl, iq4_xs, mxfp4_moe, f16, bf16).
    #[arg(long, value_name = "TYPE", default_value = "q8_0", value_parser = parse_ftype)]
    ftype: FileType,
    /// Output GGUF file.
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
}

#[derive(Args)]
struct BenchArgs {
    #[command(flatten)]
    model: ModelArg,
    /// Positions in the cache before decode is timed (filled with synthetic rows, not
    /// prefilled); a comma list runs one decode per depth.
    #[arg(long, value_name = "N,...", value_delimiter = ',', default_value = "0",
          value_parser = count, allow_negative_numbers = true)]
    depth: Vec<usize>,
    /// Decode steps timed (at least 1).
    #[arg(long, value_name = "N", default_value = "32", value_parser = positive, allow_negative_numbers = true)]
    decode: usize,
    /// Sizes of the timed prefills, a comma list (0 = none); those past the model's
    /// context are skipped.
    #[arg(long, value_name = "N,...", value_delimiter = ',', default_value = "512,4096",
          value_parser = count, allow_negative_numbers = true)]
    prefill: Vec<usize>,
    /// Positions in the cache before each prefill (0 = empty); every size runs from each.
    #[arg(long, value_name = "N,...", value_delimiter = ',', default_value = "0,512",
          value_parser = count, allow_negative_numbers = true)]
    prefill_depth: Vec<usize>,
    /// Untimed decode steps first (and, when above 0, at least a second of untimed prefills
    /// before the first prefill and of untimed decoding before the first depth, so a GPU
    /// has raised its clocks).
    #[arg(long, value_name = "N", default_value = "2", value_parser = count, allow_negative_numbers = true)]
    warmup: usize,
    /// Also write the report as JSON to this file.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// After each decode run, time every dispatch of one token, and after each prefill every
    /// dispatch of its last chunk; print the time per kernel, with GB/s for a token's
    /// mat-vecs and TFLOP/s for a chunk's products (GPU with timestamp queries only).
    #[arg(long)]
    profile: bool,
    #[command(flatten)]
    backend: BackendArgs,
}

/// How a command ended, when it did not fail.
enum Done {
    Ok,
    /// Stopped by Ctrl-C (exit code 130, as shells report SIGINT).
    Interrupted,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    match dispatch(cli.command) {
        Ok(Done::Ok) => ExitCode::SUCCESS,
        Ok(Done::Interrupted) => ExitCode::from(130),
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn dispatch(command: Command) -> Result<Done> {
    let ok = |r: Result<()>| r.map(|()| Done::Ok);
    match command {
        Command::Run(a) => cmd_run(a),
        Command::Chat(a) => cmd_chat(a),
        Command::Serve(a) => ok(cmd_serve(a)),
        Command::Info(a) => ok(cmd_info(a)),
        Command::Logits(a) => ok(cmd_logits(a)),
        Command::Tokenize(a) => ok(cmd_tokenize(a)),
        Command::Synth(a) => cmd_synth(a),
        Command::Bench(a) => ok(cmd_bench(a)),
        Command::Devices => ok(cmd_devices()),
        Command::Completions { shell } => {
            // Into memory first: clap_complete panics on a failed write (a closed pipe).
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "glm-flash", &mut script);
            ok(std::io::stdout().write_all(&script).map_err(stdout_err))
        }
    }
}

// ---------------------------------------------------------------------------------------
// Loading

/// The model `-m` names, or the built-in one (saying so) when none is given.
fn open_or_builtin(path: Option<&Path>) -> Result<Model> {
    match path {
        Some(path) => Model::open(path),
        None => {
            eprintln!(
                "no model given (-m): using a small built-in model with random weights, so the text is gibberish"
            );
            Ok(Model::builtin())
        }
    }
}

/// The model a command runs, loaded in dependency order: file -> config -> weights.
fn with_model<T>(file: &GgufFile, f: impl FnOnce(&Config, &Weights) -> Result<T>) -> Result<T> {
    let cfg = Config::from_gguf(file)?;
    let weights = Weights::from_gguf(file, &cfg)?;
    f(&cfg, &weights)
}

/// Builds the backend the flags ask for, with room for `min_ctx` positions at least: a
/// progress bar while weights go to a GPU and a line while its kernels compile, one line
/// when `auto` falls back to the CPU, and one with the backend and the load time.
fn make_backend<'a>(
    args: &BackendArgs,
    cfg: &Config,
    weights: &'a Weights<'a>,
    min_ctx: usize,
) -> Result<Box<dyn Backend + 'a>> {
    let start = Instant::now();
    let mut bar: Option<indicatif::ProgressBar> = None;
    let mut progress = |done: u64, total: u64| {
        let bar = bar.get_or_insert_with(|| progress_bar(total));
        if bar.is_finished() {
            return;
        }
        bar.set_length(total);
        bar.set_position(done);
        if done >= total {
            bar.finish_and_clear();
            eprintln!(
                "uploaded {:.2} GB of weights; compiling the GPU kernels and running a first token",
                total as f64 / 1e9
            );
        }
    };
    let mut opts = args.options();
    if args.ctx.is_none() {
        opts.ctx = default_ctx(cfg);
    }
    let opened = engine::open_backend(&opts, cfg, weights, min_ctx, Some(&mut progress));
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let opened = opened?;
    if let Some(why) = &opened.fallback {
        eprintln!("{why}");
    }
    eprintln!(
        "loaded in {:.1} s: {}",
        start.elapsed().as_secs_f64(),
        opened.backend.describe()
    );
    Ok(opened.backend)
}

/// A byte progress bar on stderr (hidden when stderr is not a terminal).
fn progress_bar(total: u64) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .expect("valid progress template"),
    );
    bar
}

fn cmd_devices() -> Result<()> {
    for line in gpu::context::list_adapters() {
        println!("{line}");
    }
    Ok(())
}

/// A file's text, with the byte offset of the first invalid UTF-8 sequence if any.
fn read_utf8(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    utf8(bytes, path)
}

fn utf8(bytes: Vec<u8>, path: &Path) -> Result<String> {
    String::from_utf8(bytes).map_err(|e| {
        Error::Input(format!(
            "{}: not valid UTF-8 at byte offset {}",
            path.display(),
            e.utf8_error().valid_up_to()
        ))
    })
}

fn is_broken_pipe(e: &Error) -> bool {
    matches!(e, Error::Io { source, .. } if source.kind() == std::io::ErrorKind::BrokenPipe)
}

fn stdout_err(e: std::io::Error) -> Error {
    Error::io("<stdout>", e)
}

/// An output file opened before any work, so an unwritable path fails before a model
/// loads. A file it creates is removed again unless written; an existing one keeps its
/// contents until then.
struct OutputFile {
    path: PathBuf,
    file: Option<std::fs::File>,
    created: bool,
}

impl OutputFile {
    fn open(path: &Path) -> Result<OutputFile> {
        if path.is_dir() {
            return Err(Error::Input(format!(
                "{}: is a directory, not a file to write",
                path.display()
            )));
        }
        let existed = path.exists();
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|e| Error::io(path, e))?;
        Ok(OutputFile {
            path: path.to_path_buf(),
            file: Some(file),
            created: !existed,
        })
    }

    fn write(mut self, bytes: &[u8]) -> Result<()> {
        let mut file = self.file.take().expect("written once");
        let io = |e| Error::io(&self.path, e);
        file.set_len(0).map_err(io)?;
        file.write_all(bytes).map_err(io)?;
        file.flush().map_err(io)
    }
}

impl Drop for OutputFile {
    fn drop(&mut self) {
        if self.file.take().is_some() && self.created {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Generation: Ctrl-C and printing

/// Ctrl-C while a reply is being generated stops it (the text so far and the speeds are
/// still printed); Ctrl-C at any other time, or a second one, exits with code 130, ending
/// the line the chat prompt is on so the shell's prompt starts a line of its own.
#[derive(Clone)]
struct Interrupt {
    stop: Arc<AtomicBool>,
    generating: Arc<AtomicBool>,
    /// The chat's `> ` is on stdout and the user has not finished the line.
    at_prompt: Arc<AtomicBool>,
}

impl Interrupt {
    fn install() -> Result<Interrupt> {
        let it = Interrupt {
            stop: Arc::new(AtomicBool::new(false)),
            generating: Arc::new(AtomicBool::new(false)),
            at_prompt: Arc::new(AtomicBool::new(false)),
        };
        let handler = it.clone();
        ctrlc::set_handler(move || {
            if handler.generating.load(Ordering::SeqCst)
                && !handler.stop.swap(true, Ordering::SeqCst)
            {
                return;
            }
            let mut out = std::io::stdout();
            if out.is_terminal() {
                // Whatever was printing dimmed thinking stops here.
                let _ = write!(out, "{ANSI_RESET}");
            }
            if handler.at_prompt.load(Ordering::SeqCst) {
                let _ = writeln!(out);
            }
            let _ = out.flush();
            std::process::exit(130);
        })
        .map_err(|e| Error::Input(format!("cannot install the Ctrl-C handler: {e}")))?;
        Ok(it)
    }

    /// Runs one generation with Ctrl-C armed to stop it.
    fn run<T>(&self, f: impl FnOnce(&AtomicBool) -> T) -> T {
        self.stop.store(false, Ordering::SeqCst);
        self.generating.store(true, Ordering::SeqCst);
        let out = f(&self.stop);
        self.generating.store(false, Ordering::SeqCst);
        out
    }
}

const ANSI_DIM: &str = "\x1b[2m";
const ANSI_RESET: &str = "\x1b[0m";

/// Prints a reply as it streams: the thinking dimmed (or hidden), the answer as is. Quiet
/// (for `--json`) prints nothing.
struct ReplyPrinter {
    hide_thinking: bool,
    quiet: bool,
    color: bool,
    error: Option<std::io::Error>,
}

impl ReplyPrinter {
    fn new(hide_thinking: bool) -> Self {
        ReplyPrinter {
            hide_thinking,
            quiet: false,
            color: std::io::stdout().is_terminal(),
            error: None,
        }
    }

    fn quiet() -> Self {
        ReplyPrinter {
            quiet: true,
            ..Self::new(true)
        }
    }

    fn print(&mut self, event: &ReplyEvent) {
        if self.quiet {
            return;
        }
        let mut out = std::io::stdout().lock();
        let res = match event {
            ReplyEvent::Thinking(_) if self.hide_thinking => Ok(()),
            ReplyEvent::Thinking(t) if self.color => write!(out, "{ANSI_DIM}{t}{ANSI_RESET}"),
            ReplyEvent::Thinking(t) | ReplyEvent::Answer(t) => write!(out, "{t}"),
            ReplyEvent::ToolCall(c) => write!(
                out,
                "[tool call {} {}]",
                c.name,
                serde_json::Value::Object(c.arguments.clone())
            ),
            ReplyEvent::Logprob(_) => Ok(()),
        };
        if let Err(e) = res.and_then(|_| out.flush()) {
            self.error.get_or_insert(e);
        }
    }

    fn finish(&mut self) -> Result<()> {
        self.print(&ReplyEvent::Answer("\n".into()));
        match self.error.take() {
            Some(e) => Err(stdout_err(e)),
            None => Ok(()),
        }
    }
}

/// One reply with Ctrl-C armed, streamed through `printer`; `send` runs the generation
/// given the stop flag and the event sink.
fn reply<T>(
    session: &mut Session,
    interrupt: &Interrupt,
    printer: &mut ReplyPrinter,
    send: impl FnOnce(&mut Session, &AtomicBool, &mut dyn FnMut(&ReplyEvent)) -> Result<T>,
    reply_of: impl Fn(&T) -> &Reply,
) -> Result<T> {
    let r = interrupt.run(|stop| {
        send(session, stop, &mut |e| {
            printer.print(e);
            if printer.error.is_some() {
                // stdout is gone (a closed pipe): stop generating for nobody.
                stop.store(true, Ordering::SeqCst);
            }
        })
    })?;
    printer.finish()?;
    match reply_of(&r).completion.generation.stop {
        StopReason::ContextFull => eprintln!(
            "[stopped: the context of {} tokens is full; raise --ctx]",
            session.max_context()
        ),
        StopReason::Interrupted => eprintln!("[interrupted]"),
        _ => {}
    }
    Ok(r)
}

/// What ends and shapes generation. `chat`: the reply goes through a chat parser, which
/// reads the control tokens (`<think>`...); plain text leaves them out.
fn generate_options(s: &SamplingArgs, tokenizer: &Tokenizer, chat: bool) -> GenerateOptions {
    GenerateOptions {
        max_new_tokens: s.max_tokens,
        sampler: s.options(),
        stop_tokens: tokenizer.stop_tokens(),
        stop_strings: s.stop.clone(),
        special_text: chat,
        logprobs: None,
        answer: Default::default(),
    }
}

fn join_ids(ids: &[u32]) -> String {
    ids.iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// How the stop reason is written in `--json`.
fn stop_json(stop: StopReason, opts: &GenerateOptions) -> serde_json::Value {
    use serde_json::json;
    match stop {
        StopReason::StopToken(id) => json!({"reason": "stop_token", "token": id}),
        StopReason::StopString(i) => {
            json!({"reason": "stop_string", "string": opts.stop_strings[i]})
        }
        StopReason::MaxTokens => json!({"reason": "max_tokens"}),
        StopReason::AnswerComplete => json!({"reason": "answer_complete"}),
        StopReason::ContextFull => json!({"reason": "context_full"}),
        StopReason::Interrupted => json!({"reason": "interrupted"}),
    }
}

// ---------------------------------------------------------------------------------------
// Commands

fn cmd_run(a: RunArgs) -> Result<Done> {
    let text = a.prompt.text()?;
    a.sampling.options().validate().map_err(Error::Input)?;
    a.backend.warn_early();
    if !a.chat && !a.style.given().is_empty() {
        eprintln!(
            "warning: {} only apply with --chat; ignored",
            a.style.given().join(", ")
        );
    }
    let model = open_or_builtin(a.model.as_deref())?;
    let tokenizer = model.tokenizer.as_ref();
    let json = a.format.map(AnswerFormat::value);
    let (prompt, parser, answer) = if a.chat {
        let mut messages = Vec::new();
        if let Some(s) = &a.style.system {
            messages.push(ChatMessage::new("system", s.clone()));
        }
        messages.push(ChatMessage::new("user", text));
        let chat = ChatPrompt {
            messages: &messages,
            tools: &[],
            add_generation_prompt: true,
            enable_thinking: !a.style.no_think,
            template_kwargs: None,
        };
        let prompt = RenderedPrompt::chat(tokenizer, &chat)?;
        let parser = prompt.parser(&[]);
        let answer = prompt.answer_rules(tokenizer, None, json)?;
        (prompt.ids, parser, answer)
    } else {
        let answer = AnswerRules {
            json,
            ..AnswerRules::default()
        };
        (tokenizer.encode(&text)?, ReplyParser::plain(), answer)
    };
    let opts = GenerateOptions {
        answer,
        ..generate_options(&a.sampling, tokenizer, a.chat)
    };
    let interrupt = Interrupt::install()?;
    let weights = model.weights()?;
    let backend = make_backend(&a.backend, &model.config, &weights, 0)?;
    let mut session = Session::new(backend, tokenizer);
    if a.verbose {
        eprintln!("backend: {}", session.backend().describe());
        eprintln!("seed: {}", opts.sampler.seed);
        eprintln!("prompt ids: {}", join_ids(&prompt));
    }
    let mut printer = if a.json {
        ReplyPrinter::quiet()
    } else {
        ReplyPrinter::new(a.style.hide_thinking)
    };
    let r = reply(
        &mut session,
        &interrupt,
        &mut printer,
        |session, stop, on_event| session.reply(&prompt, parser, &opts, Some(stop), on_event),
        |r| r,
    )?;
    let g = &r.completion.generation;
    if a.verbose {
        eprintln!("generated ids: {}", join_ids(&g.ids));
        eprintln!("stop: {:?}", g.stop);
        if let Some(t) = session
            .backend_mut()
            .instrumented()
            .map(|i| i.last_token_stats())
        {
            eprintln!(
                "per token: {} dispatches, {} compute passes, {} submits, {} bytes read back",
                t.dispatches, t.compute_passes, t.submits, t.bytes_read_back
            );
        }
    }
    eprintln!("{}", g.timings.summary());
    if a.json {
        let mut json = serde_json::json!({
            "text": r.text,
            "prompt_ids": prompt,
            "ids": g.ids,
            "stop": stop_json(g.stop, &opts),
            "timings": g.timings,
            "backend": session.backend().describe(),
        });
        if a.chat {
            json["reasoning"] = r.reasoning.clone().into();
            json["content"] = r.content.clone().into();
            json["tool_calls"] = serde_json::to_value(&r.tool_calls).unwrap_or_default();
        }
        writeln!(std::io::stdout(), "{json}").map_err(stdout_err)?;
    }
    Ok(match g.stop {
        StopReason::Interrupted => Done::Interrupted,
        _ => Done::Ok,
    })
}

const CHAT_HELP: &str = "commands: /reset clears the history, /exit (or /quit, Ctrl-D) ends the chat, /help lists these; any other line is sent to the model";

fn cmd_chat(a: ChatArgs) -> Result<Done> {
    a.sampling.options().validate().map_err(Error::Input)?;
    a.backend.warn_early();
    let model = open_or_builtin(a.model.as_deref())?;
    let tokenizer = model.tokenizer.as_ref();
    let opts = generate_options(&a.sampling, tokenizer, true);
    let interrupt = Interrupt::install()?;
    let weights = model.weights()?;
    let backend = make_backend(&a.backend, &model.config, &weights, 0)?;
    let mut session = Session::new(backend, tokenizer);
    eprintln!(
        "chatting with {} (one line per turn; /help lists the commands)",
        model.display_name()
    );
    let mut chat = Chat::new(a.style.system.clone(), !a.style.no_think);
    let stdin = std::io::stdin();
    let mut line = String::new();
    loop {
        print!("> ");
        std::io::stdout().flush().map_err(stdout_err)?;
        line.clear();
        interrupt.at_prompt.store(true, Ordering::SeqCst);
        let read = stdin.lock().read_line(&mut line);
        interrupt.at_prompt.store(false, Ordering::SeqCst);
        if read.map_err(|e| Error::io("<stdin>", e))? == 0 {
            println!();
            return Ok(Done::Ok);
        }
        let input = line.trim();
        match input {
            "" => continue,
            "/exit" | "/quit" => return Ok(Done::Ok),
            "/reset" => {
                chat.reset();
                eprintln!("[history cleared]");
                continue;
            }
            "/help" | "/?" => {
                eprintln!("{CHAT_HELP}");
                continue;
            }
            // A lone /word is a command we do not know, not a message.
            _ if input.starts_with('/') && !input.contains(char::is_whitespace) => {
                eprintln!("unknown command {input}; {CHAT_HELP}");
                continue;
            }
            _ => {}
        }
        let mut printer = ReplyPrinter::new(a.style.hide_thinking);
        let turn = reply(
            &mut session,
            &interrupt,
            &mut printer,
            |session, stop, on_event| chat.send(session, input, &opts, Some(stop), on_event),
            |t| &t.reply,
        );
        match turn {
            Ok(t) => {
                if t.dropped > 0 {
                    eprintln!(
                        "[the {} oldest exchanges were dropped to fit the context of {} tokens]",
                        t.dropped,
                        session.max_context()
                    );
                }
                let c = &t.reply.completion;
                if a.verbose {
                    eprintln!(
                        "[{} prompt tokens, {} reused from the cache]",
                        c.prompt_tokens, c.reused
                    );
                }
                eprintln!("{}", c.generation.timings.summary());
            }
            Err(e) if is_broken_pipe(&e) => return Err(e),
            // The turn is dropped (the library forgets it and the cache it may have touched).
            Err(e) => eprintln!("error: {e} (/reset clears the history)"),
        }
    }
}

fn cmd_serve(a: ServeArgs) -> Result<()> {
    let sampler = a.sampling.options();
    sampler.validate().map_err(Error::Input)?;
    a.backend.warn_early();
    if a.model.is_none() {
        eprintln!(
            "no model given (-m): serving a small built-in model with random weights, so the text is gibberish"
        );
    }
    let opts = ServeOptions {
        model: a.model.clone(),
        backend: a.backend.options(),
        host: a.host.clone(),
        port: a.port,
        api_key: a.api_key.clone(),
        cors_origins: a.cors_origins.clone(),
        parallel: a.parallel,
        defaults: Defaults {
            max_tokens: a.sampling.max_tokens,
            sampler,
            fixed_seed: a.sampling.seed.is_some_and(|s| s.0.is_some()),
            thinking: !a.no_think,
        },
        show_progress: true,
    };
    let server = Server::start(opts)?;
    if let Some(why) = server.fallback() {
        eprintln!("{why}");
    }
    if !server.addr().ip().is_loopback() && a.api_key.is_none() {
        eprintln!("warning: listening beyond this machine without --api-key: anyone who can reach it may use it");
    }
    if a.cors_origins.iter().any(|o| o == "*") && a.api_key.is_none() {
        eprintln!("warning: --cors-origin '*' without --api-key: any web page open in a browser here may use the server");
    }
    eprintln!(
        "serving {} at http://{}/v1 (Ctrl-C stops)",
        server.describe(),
        server.addr()
    );
    let (stop, stopped) = std::sync::mpsc::channel();
    ctrlc::set_handler(move || {
        let _ = stop.send(());
    })
    .map_err(|e| Error::Input(format!("cannot install the Ctrl-C handler: {e}")))?;
    let _ = stopped.recv();
    eprintln!("stopping");
    server.stop();
    Ok(())
}

fn cmd_info(a: InfoArgs) -> Result<()> {
    let file = GgufFile::open(&a.model.path)?;
    let cfg = Config::from_gguf(&file)?;
    // What keeps the file from running; reported after the description, as the exit code.
    let mut problems = Vec::new();
    let mut s = String::new();
    let mut line = |t: String| {
        s.push_str(&t);
        s.push('\n');
    };
    line(format!(
        "file: {} ({} bytes, GGUF v{}, {} metadata keys, {} tensors)",
        file.name,
        file.file_len(),
        file.version,
        file.metadata.len(),
        file.tensors.len()
    ));
    if let Some(name) = file.get_str("general.name")? {
        line(format!("name: {name}"));
    }
    line(format!(
        "architecture: {} (GLM-4.7-Flash layout)",
        glm_flash::config::ARCHITECTURE
    ));
    if let Some(id) = file.get_int::<u32>("general.file_type")? {
        let name = FileType::from_id(id).map_or("other", |f| f.name());
        line(format!("file type: {id} ({name})"));
    }
    line("hyper-parameters:".into());
    for (k, v) in cfg.describe() {
        line(format!("  {k:<28} {v}"));
    }
    match Weights::from_gguf(&file, &cfg) {
        Ok(w) => line(format!(
            "weights: load; {:.1} MB read per decoded token",
            w.bytes_per_token(&cfg) as f64 / 1e6
        )),
        Err(e) => {
            line(format!("weights: DO NOT LOAD: {e}"));
            problems.push(format!("weights: {e}"));
        }
    }
    let cache = |t: CacheType, positions| {
        gpu::cache::human_bytes(t.cache_bytes(cfg.n_layers, positions, cfg.cache_row()))
    };
    line(format!(
        "latent cache: {} per position in f16 ({} in f32); {} at the full context of {} ({} in f32)",
        cache(CacheType::F16, 1),
        cache(CacheType::F32, 1),
        cache(CacheType::F16, cfg.context_length),
        cfg.context_length,
        cache(CacheType::F32, cfg.context_length)
    ));
    line(format!(
        "tensors ({}; on the GPU: each tensor's layout (f32 where a gate/up pair mixes layouts), and its bytes):",
        file.tensors.len()
    ));
    line(format!(
        "  {:<34} {:<6} {:<6} {:<22} {:>12} {:>12}",
        "name", "type", "gpu", "dims (GGUF order)", "bytes", "gpu bytes"
    ));
    let (mut gpu_total, mut no_gpu) = (0u64, Vec::new());
    let planned = glm_flash::gpu::upload::planned_forms(&file.tensors);
    for (t, &gpu) in file.tensors.iter().zip(&planned) {
        match gpu {
            Some((_, bytes)) => gpu_total += bytes,
            None => no_gpu.push(t.ggml_type.name()),
        }
        line(format!(
            "  {:<34} {:<6} {:<6} {:<22} {:>12} {:>12}",
            t.name,
            t.ggml_type.name(),
            gpu.map_or("-", |(l, _)| l.name()),
            format!("{:?}", t.dims),
            t.n_bytes,
            gpu.map_or("-".to_string(), |(_, b)| b.to_string())
        ));
    }
    no_gpu.sort();
    no_gpu.dedup();
    // The context `run` would take (the same rule and refusal), to size the cache for.
    let ctx = a.ctx.unwrap_or_else(|| default_ctx(&cfg));
    let sized = BackendOptions {
        ctx,
        ..Default::default()
    };
    if let Err(e) = engine::context_size(&sized, &cfg, 0) {
        problems.push(e.to_string());
    }
    line(if no_gpu.is_empty() {
        let cache_bytes = |t: CacheType| gpu::cache::planned_bytes(&cfg, ctx, t);
        let chunk = gpu::batch::planned_chunk(a.batch, ctx);
        let act = gpu::batch::activation_bytes(&cfg, chunk);
        format!(
            "gpu: {:.2} GB of weights ({gpu_total} bytes); at --ctx {ctx} a latent cache of {} \
             in f16 (the default), and {} of activations for prompt chunks of {chunk} tokens \
             (--batch): {:.2} GB in all ({} in f32, {:.2} GB)",
            gpu_total as f64 / 1e9,
            gpu::cache::human_bytes(cache_bytes(CacheType::F16)),
            gpu::cache::human_bytes(act),
            (gpu_total + cache_bytes(CacheType::F16) + act) as f64 / 1e9,
            gpu::cache::human_bytes(cache_bytes(CacheType::F32)),
            (gpu_total + cache_bytes(CacheType::F32) + act) as f64 / 1e9,
        )
    } else {
        format!(
            "gpu: cannot run this file yet: the GPU computes with {}, not {} ({:.2} GB for the tensors it can take)",
            formats::gpu_supported_names(),
            no_gpu.join(", "),
            gpu_total as f64 / 1e9
        )
    });
    line("tokenizer:".into());
    let meta = |k: &str| file.get(&format!("tokenizer.ggml.{k}"));
    let count = |k: &str| meta(k).and_then(|v| v.as_array()).map_or(0, |a| a.len());
    line(format!(
        "  model {}, pre {}, {} tokens, {} merges",
        meta("model").map_or("-".into(), |v| v.summary()),
        meta("pre").map_or("-".into(), |v| v.summary()),
        count("tokens"),
        count("merges")
    ));
    let tokens = file
        .get_str_array("tokenizer.ggml.tokens")?
        .unwrap_or_default();
    let types = file
        .get_int_array("tokenizer.ggml.token_type")?
        .unwrap_or_default();
    let specials: Vec<String> = tokens
        .iter()
        .zip(&types)
        .enumerate()
        .filter(|(_, (_, &t))| t == 3)
        .map(|(id, (text, _))| format!("{text}={id}"))
        .collect();
    line(format!(
        "  special tokens ({}): {}",
        specials.len(),
        specials.join(" ")
    ));
    for k in ["bos", "eos", "eot", "eom", "padding", "unknown"] {
        if let Some(id) = file.get_int::<u32>(&format!("tokenizer.ggml.{k}_token_id"))? {
            let text = tokens.get(id as usize).copied().unwrap_or("?");
            line(format!("  {k:<8} {id} {text}"));
        }
    }
    line(match file.get_str("tokenizer.chat_template")? {
        Some(t) => format!("  chat template: present ({} bytes)", t.len()),
        None => "  chat template: none (the official GLM-4.7 template is used)".into(),
    });
    if let Err(e) = Tokenizer::from_gguf(&file) {
        line(format!("  DOES NOT LOAD: {e}"));
        problems.push(e.to_string());
    }
    std::io::stdout()
        .write_all(s.as_bytes())
        .map_err(stdout_err)?;
    match problems.is_empty() {
        true => Ok(()),
        false => Err(Error::Input(format!(
            "{} cannot run: {}",
            file.name,
            problems.join("; ")
        ))),
    }
}

fn cmd_logits(a: LogitsArgs) -> Result<()> {
    a.backend.warn_early();
    let out = OutputFile::open(&a.out)?;
    let file = GgufFile::open(&a.model.path)?;
    with_model(&file, |cfg, weights| {
        if let Some(&id) = a.tokens.iter().find(|&&id| id as usize >= cfg.vocab) {
            return Err(Error::Input(format!(
                "token id {id} is out of range (vocab {})",
                cfg.vocab
            )));
        }
        let mut backend = make_backend(&a.backend, cfg, weights, a.tokens.len())?;
        let logits = backend.feed_logits(&a.tokens, 0, Rows::All)?;
        let bytes: Vec<u8> = logits.iter().flat_map(|v| v.to_le_bytes()).collect();
        out.write(&bytes)?;
        eprintln!(
            "wrote {}: {} positions x {} logits (f32 LE) from {}",
            a.out.display(),
            a.tokens.len(),
            cfg.vocab,
            backend.describe()
        );
        Ok(())
    })
}

fn cmd_tokenize(a: TokenizeArgs) -> Result<()> {
    let text = a.prompt.text()?;
    let file = GgufFile::open(&a.model.path)?;
    let ids = Tokenizer::from_gguf(&file)?.encode(&text)?;
    writeln!(std::io::stdout(), "{}", join_ids(&ids)).map_err(stdout_err)
}

fn parse_ftype(s: &str) -> std::result::Result<FileType, String> {
    FileType::from_name(s).ok_or_else(|| {
        let names: Vec<String> = FileType::ALL
            .iter()
            .map(|f| f.name().to_lowercase())
            .collect();
        format!("unknown file type {s:?} (known: {})", names.join(", "))
    })
}

fn cmd_synth(a: SynthArgs) -> Result<Done> {
    let opts = SynthOptions {
        preset: match a.preset {
            PresetArg::Full => Preset::Full,
            PresetArg::Tiny => Preset::Tiny,
        },
        layers: a.layers,
        vocab: a.vocab,
        seed: a.seed,
        ftype: a.ftype,
    };
    let model = SynthModel::new(&opts)?;
    let stop = Arc::new(AtomicBool::new(false));
    let on_ctrl_c = stop.clone();
    ctrlc::set_handler(move || on_ctrl_c.store(true, Ordering::SeqCst))
        .map_err(|e| Error::Input(format!("cannot install the Ctrl-C handler: {e}")))?;
    let total = model.tensor_bytes();
    let bar = progress_bar(total);
    let start = Instant::now();
    let written = model.write_file(&a.out, &mut |done| bar.set_position(done), &stop);
    bar.finish_and_clear();
    if written.is_err() && stop.load(Ordering::SeqCst) {
        eprintln!("[interrupted: nothing written to {}]", a.out.display());
        return Ok(Done::Interrupted);
    }
    written?;
    let c = &model.config;
    eprintln!(
        "wrote {}: {}, {} layers, hidden {}, {} experts, vocab {}; {} tensors, {:.2} GB in {:.1} s",
        a.out.display(),
        a.ftype.name(),
        c.n_layers,
        c.hidden,
        c.n_experts,
        c.vocab,
        model.tensor_count(),
        total as f64 / 1e9,
        start.elapsed().as_secs_f64()
    );
    Ok(Done::Ok)
}

fn cmd_bench(a: BenchArgs) -> Result<()> {
    a.backend.warn_early();
    let json_out = a.json.as_deref().map(OutputFile::open).transpose()?;
    let file = GgufFile::open(&a.model.path)?;
    let opts = BenchOptions {
        depths: a.depth.clone(),
        decode_tokens: a.decode,
        prefill_tokens: a.prefill.clone(),
        prefill_depths: a.prefill_depth.clone(),
        warmup: a.warmup,
        profile: a.profile,
    };
    let need = opts.positions();
    with_model(&file, |cfg, weights| {
        let mut backend = make_backend(&a.backend, cfg, weights, need)?;
        let report = bench::run(backend.as_mut(), cfg, weights, &opts)?;
        if let Some(out) = json_out {
            let json = serde_json::to_string_pretty(&report).expect("report serialises") + "\n";
            out.write(json.as_bytes())?;
        }
        std::io::stdout()
            .write_all(report.table().as_bytes())
            .map_err(stdout_err)
    })
}
