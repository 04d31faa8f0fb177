//! The `glm-flash` command line: parses flags into the library's option structs and
//! prints. All model logic lives in the library.

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use clap::{Args, Parser, Subcommand, ValueEnum};

use glm_flash::backend::Backend;
use glm_flash::bench::{self, BenchOptions};
use glm_flash::chat::{self, ChatMessage, Part, ThinkingSplitter};
use glm_flash::config::Config;
use glm_flash::cpu::CpuBackend;
use glm_flash::error::{Error, Result};
use glm_flash::generate::{generate, GenerateOptions, Generation, StopReason};
use glm_flash::gguf::GgufFile;
use glm_flash::gpu::{self, GpuBackend, GpuOptions};
use glm_flash::ops_common::CacheType;
use glm_flash::sampler::SamplerOptions;
use glm_flash::synth::{self, Preset, SynthModel, SynthOptions};
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
    /// Interactive multi-turn chat on stdin (one line per turn; /reset, /exit).
    Chat(ChatArgs),
    /// Describe a model file: hyper-parameters, tensors and tokenizer.
    Info(InfoArgs),
    /// Teacher-forced logits of every position, as raw little-endian f32 [positions][vocab].
    Logits(LogitsArgs),
    /// Print the token ids of a text (special-token text becomes the special token).
    Tokenize(TokenizeArgs),
    /// Write a GGUF of the GLM-4.7-Flash layout with random Q8_0 weights.
    Synth(SynthArgs),
    /// Time decode (at a cache depth) and prefill on a backend.
    Bench(BenchArgs),
    /// List the GPU adapters the GPU backend can use (for --adapter).
    Devices,
}

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
    /// WGSL kernels through wgpu.
    Gpu,
    /// The GPU when one can be used, else the CPU.
    Auto,
}

#[derive(Args)]
struct BackendArgs {
    /// Which backend computes the model.
    #[arg(long, value_enum, default_value_t = BackendKind::Auto)]
    backend: BackendKind,
    /// GPU adapter index, as listed by `glm-flash devices` (default: the best one).
    #[arg(long, value_name = "N")]
    adapter: Option<usize>,
    /// CPU threads (0 = every core).
    #[arg(long, value_name = "N", default_value_t = 0)]
    threads: usize,
    /// Context length in tokens: prompt plus reply (capped at the model's own context).
    #[arg(long, value_name = "N", default_value_t = 4096)]
    ctx: usize,
    /// How the latent cache stores values (default: f16 on the GPU, f32 on the CPU).
    #[arg(long, value_enum, value_name = "TYPE")]
    cache_type: Option<CacheTypeArg>,
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

#[derive(Args)]
struct SamplingArgs {
    /// Most tokens to generate.
    #[arg(
        short = 'n',
        long = "max-tokens",
        value_name = "N",
        default_value_t = 512
    )]
    max_tokens: usize,
    /// Sampling temperature; 0 = greedy (always the most likely token).
    #[arg(long = "temp", value_name = "T", default_value_t = SamplerOptions::default().temperature)]
    temperature: f32,
    /// Keep only the K most likely tokens (0 = off).
    #[arg(long, value_name = "K", default_value_t = SamplerOptions::default().top_k)]
    top_k: usize,
    /// Keep the most likely tokens up to this cumulative probability (1 = off).
    #[arg(long, value_name = "P", default_value_t = SamplerOptions::default().top_p)]
    top_p: f32,
    /// Drop tokens less likely than this fraction of the most likely one (0 = off).
    #[arg(long, value_name = "P", default_value_t = SamplerOptions::default().min_p)]
    min_p: f32,
    /// Random seed for sampling (default: from the clock; printed with --verbose).
    #[arg(long, value_name = "S")]
    seed: Option<u64>,
}

impl SamplingArgs {
    fn options(&self) -> SamplerOptions {
        let seed = self.seed.unwrap_or_else(|| {
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
        }
    }
}

#[derive(Args)]
struct ChatStyleArgs {
    /// System message placed before the user's.
    #[arg(long, value_name = "TEXT")]
    system: Option<String>,
    /// Ask for an answer without a thinking part.
    #[arg(long)]
    no_think: bool,
    /// Do not print the thinking part (by default it is shown dimmed).
    #[arg(long)]
    hide_thinking: bool,
}

#[derive(Args)]
struct PromptArgs {
    /// The prompt text.
    #[arg(short = 'p', long, value_name = "TEXT", conflicts_with = "file")]
    prompt: Option<String>,
    /// Read the prompt from a UTF-8 file.
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    file: Option<PathBuf>,
}

impl PromptArgs {
    fn text(&self) -> Result<String> {
        match (&self.prompt, &self.file) {
            (Some(p), _) => Ok(p.clone()),
            (None, Some(path)) => read_utf8(path),
            (None, None) => Err(Error::Input(
                "no prompt: give one with -p TEXT or -f FILE".into(),
            )),
        }
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
    /// Print the backend, the prompt and generated token ids, and the stop reason on stderr.
    #[arg(short, long)]
    verbose: bool,
}

#[derive(Args)]
struct ChatArgs {
    #[command(flatten)]
    model: ModelArg,
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
struct InfoArgs {
    #[command(flatten)]
    model: ModelArg,
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
    #[arg(long, value_name = "N")]
    layers: Option<usize>,
    /// Override the vocabulary size (at least 292: bytes and special tokens).
    #[arg(long, value_name = "N")]
    vocab: Option<usize>,
    /// Seed of the random weights (same seed, same file).
    #[arg(long, value_name = "S", default_value_t = 0)]
    seed: u64,
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
    #[arg(long, value_name = "N,...", value_delimiter = ',', default_value = "0")]
    depth: Vec<usize>,
    /// Decode steps timed.
    #[arg(long, value_name = "N", default_value_t = 32)]
    decode: usize,
    /// Tokens of the timed prefill (0 = skip).
    #[arg(long, value_name = "N", default_value_t = 0)]
    prefill: usize,
    /// Untimed decode steps first.
    #[arg(long, value_name = "N", default_value_t = 2)]
    warmup: usize,
    /// Also write the report as JSON to this file.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// After each decode run, time every dispatch of one token and print the time per kernel
    /// (GPU with timestamp queries only).
    #[arg(long)]
    profile: bool,
    #[command(flatten)]
    backend: BackendArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    match dispatch(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn dispatch(command: Command) -> Result<()> {
    match command {
        Command::Run(a) => cmd_run(a),
        Command::Chat(a) => cmd_chat(a),
        Command::Info(a) => cmd_info(a),
        Command::Logits(a) => cmd_logits(a),
        Command::Tokenize(a) => cmd_tokenize(a),
        Command::Synth(a) => cmd_synth(a),
        Command::Bench(a) => cmd_bench(a),
        Command::Devices => cmd_devices(),
    }
}

// ---------------------------------------------------------------------------------------
// Loading

fn open_model(path: &Path) -> Result<GgufFile> {
    GgufFile::open(path)
}

/// The model a command runs, loaded in dependency order: file -> config -> weights.
fn with_model<T>(file: &GgufFile, f: impl FnOnce(&Config, &Weights) -> Result<T>) -> Result<T> {
    let cfg = Config::from_gguf(file)?;
    let weights = Weights::from_gguf(file, &cfg)?;
    f(&cfg, &weights)
}

/// Builds the backend the flags ask for, with room for `min_ctx` positions at least.
fn make_backend<'a>(
    args: &BackendArgs,
    cfg: &Config,
    weights: &'a Weights<'a>,
    min_ctx: usize,
) -> Result<Box<dyn Backend + 'a>> {
    let ctx = args.ctx.max(min_ctx).min(cfg.context_length);
    let cpu = || -> Result<Box<dyn Backend + 'a>> {
        let cache = args.cache_type.map_or(CacheType::F32, CacheType::from);
        let cpu = CpuBackend::new(cfg, weights, ctx, args.threads)?.with_cache_type(cache);
        Ok(Box::new(cpu))
    };
    let gpu = || -> Result<Box<dyn Backend + 'a>> {
        let opts = GpuOptions {
            adapter: args.adapter,
            cache_type: args.cache_type.map_or(CacheType::F16, CacheType::from),
            ..Default::default()
        };
        let bar = progress_bar(0);
        let mut progress = |done: u64, total: u64| {
            bar.set_length(total);
            bar.set_position(done);
        };
        let backend = GpuBackend::with_progress(cfg, weights, ctx, &opts, Some(&mut progress))?;
        bar.finish_and_clear();
        let stats = backend.stats();
        log::info!(
            "uploaded {:.2} GB of weights at {:.2} GB/s",
            stats.upload_bytes as f64 / 1e9,
            stats.upload_bytes_per_second / 1e9
        );
        Ok(Box::new(backend))
    };
    match args.backend {
        BackendKind::Cpu => cpu(),
        BackendKind::Gpu => gpu(),
        BackendKind::Auto => gpu().or_else(|e| {
            eprintln!("no usable GPU ({e}); running on the CPU");
            cpu()
        }),
    }
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

// ---------------------------------------------------------------------------------------
// Generation: Ctrl-C and printing

/// Ctrl-C while a reply is being generated stops it (the text so far and the speeds are
/// still printed); Ctrl-C at any other time, or a second one, exits.
#[derive(Clone)]
struct Interrupt {
    stop: Arc<AtomicBool>,
    generating: Arc<AtomicBool>,
}

impl Interrupt {
    fn install() -> Result<Interrupt> {
        let it = Interrupt {
            stop: Arc::new(AtomicBool::new(false)),
            generating: Arc::new(AtomicBool::new(false)),
        };
        let handler = it.clone();
        ctrlc::set_handler(move || {
            if handler.generating.load(Ordering::SeqCst)
                && !handler.stop.swap(true, Ordering::SeqCst)
            {
                return;
            }
            if std::io::stdout().is_terminal() {
                print!("{ANSI_RESET}");
            }
            let _ = std::io::stdout().flush();
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

/// Prints a reply as it streams: raw, or split into thinking (dimmed or hidden) and answer.
struct ReplyPrinter {
    splitter: Option<ThinkingSplitter>,
    hide_thinking: bool,
    color: bool,
    /// Everything generated, for the chat history.
    text: String,
    error: Option<std::io::Error>,
}

impl ReplyPrinter {
    /// `thinking_open`: the prompt ended inside a thinking block (`<think>`); `None` for
    /// plain text, printed as is.
    fn new(thinking_open: Option<bool>, hide_thinking: bool) -> Self {
        ReplyPrinter {
            splitter: thinking_open.map(ThinkingSplitter::new),
            hide_thinking,
            color: std::io::stdout().is_terminal(),
            text: String::new(),
            error: None,
        }
    }

    fn push(&mut self, text: &str) {
        self.text.push_str(text);
        let pieces = match &mut self.splitter {
            Some(s) => s.push(text),
            None => vec![(Part::Answer, text.to_string())],
        };
        self.print(pieces);
    }

    fn finish(&mut self) -> Result<()> {
        if let Some(s) = &mut self.splitter {
            let rest = s.flush();
            self.print(rest);
        }
        self.print(vec![(Part::Answer, "\n".into())]);
        match self.error.take() {
            Some(e) => Err(stdout_err(e)),
            None => Ok(()),
        }
    }

    fn print(&mut self, pieces: Vec<(Part, String)>) {
        let mut out = std::io::stdout().lock();
        for (part, text) in pieces {
            let res = match part {
                Part::Thinking if self.hide_thinking => Ok(()),
                Part::Thinking if self.color => write!(out, "{ANSI_DIM}{text}{ANSI_RESET}"),
                Part::Thinking => write!(out, "{text}"),
                Part::Answer => write!(out, "{text}"),
            };
            if let Err(e) = res.and_then(|_| out.flush()) {
                self.error.get_or_insert(e);
            }
        }
    }
}

/// One reply: generation with Ctrl-C armed, streamed through `printer`.
#[allow(clippy::too_many_arguments)]
fn reply(
    backend: &mut dyn Backend,
    tokenizer: &Tokenizer,
    prompt: &[u32],
    cached: usize,
    opts: &GenerateOptions,
    interrupt: &Interrupt,
    printer: &mut ReplyPrinter,
) -> Result<Generation> {
    let g = interrupt.run(|stop| {
        generate(
            backend,
            tokenizer,
            prompt,
            cached,
            opts,
            Some(stop),
            &mut |t| {
                printer.push(t);
                if printer.error.is_some() {
                    // stdout is gone (a closed pipe): stop generating for nobody.
                    stop.store(true, Ordering::SeqCst);
                }
            },
        )
    })?;
    printer.finish()?;
    match g.stop {
        StopReason::ContextFull => eprintln!(
            "[stopped: the context of {} tokens is full; raise --ctx]",
            backend.max_context()
        ),
        StopReason::Interrupted => eprintln!("[interrupted]"),
        _ => {}
    }
    Ok(g)
}

fn generate_options(s: &SamplingArgs, tokenizer: &Tokenizer) -> GenerateOptions {
    GenerateOptions {
        max_new_tokens: s.max_tokens,
        sampler: s.options(),
        stop_tokens: tokenizer.stop_tokens(),
    }
}

fn join_ids(ids: &[u32]) -> String {
    ids.iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

// ---------------------------------------------------------------------------------------
// Commands

fn cmd_run(a: RunArgs) -> Result<()> {
    let text = a.prompt.text()?;
    let file = match &a.model {
        Some(path) => open_model(path)?,
        None => {
            eprintln!(
                "no model given (-m): using a small built-in model with random weights, so the text is gibberish"
            );
            synth::builtin_model()
        }
    };
    let tokenizer = Tokenizer::from_gguf(&file)?;
    let prompt_text = if a.chat {
        let mut messages = Vec::new();
        if let Some(s) = &a.style.system {
            messages.push(ChatMessage::new("system", s.clone()));
        }
        messages.push(ChatMessage::new("user", text));
        chat::render_chat(
            tokenizer.chat_template(),
            &messages,
            true,
            !a.style.no_think,
        )?
    } else {
        text
    };
    let prompt = tokenizer.encode(&prompt_text)?;
    let opts = generate_options(&a.sampling, &tokenizer);
    let interrupt = Interrupt::install()?;
    with_model(&file, |cfg, weights| {
        let mut backend = make_backend(&a.backend, cfg, weights, 0)?;
        if a.verbose {
            eprintln!("backend: {}", backend.describe());
            eprintln!("seed: {}", opts.sampler.seed);
            eprintln!("prompt ids: {}", join_ids(&prompt));
        }
        let thinking_open = a.chat.then(|| prompt_text.trim_end().ends_with("<think>"));
        let mut printer = ReplyPrinter::new(thinking_open, a.style.hide_thinking);
        let g = reply(
            backend.as_mut(),
            &tokenizer,
            &prompt,
            0,
            &opts,
            &interrupt,
            &mut printer,
        )?;
        if a.verbose {
            eprintln!("generated ids: {}", join_ids(&g.ids));
            eprintln!("stop: {:?}", g.stop);
            if let Some(t) = backend.last_token_stats() {
                eprintln!(
                    "per token: {} dispatches, {} compute passes, {} submits, {} bytes read back",
                    t.dispatches, t.compute_passes, t.submits, t.bytes_read_back
                );
            }
        }
        eprintln!("{}", g.timings.summary());
        Ok(())
    })
}

fn cmd_chat(a: ChatArgs) -> Result<()> {
    let file = open_model(&a.model.path)?;
    let tokenizer = Tokenizer::from_gguf(&file)?;
    let opts = generate_options(&a.sampling, &tokenizer);
    let interrupt = Interrupt::install()?;
    with_model(&file, |cfg, weights| {
        let mut backend = make_backend(&a.backend, cfg, weights, 0)?;
        eprintln!(
            "chatting with {} on {} (one line per turn; /reset clears the history, /exit or Ctrl-D ends)",
            file.name,
            backend.describe()
        );
        let system: Vec<ChatMessage> = a
            .style
            .system
            .iter()
            .map(|s| ChatMessage::new("system", s.clone()))
            .collect();
        let mut history = system.clone();
        // Tokens in the backend's cache, so a turn only feeds what is new.
        let mut cached: Vec<u32> = Vec::new();
        let stdin = std::io::stdin();
        let mut line = String::new();
        loop {
            print!("> ");
            std::io::stdout().flush().map_err(stdout_err)?;
            line.clear();
            if stdin
                .lock()
                .read_line(&mut line)
                .map_err(|e| Error::io("<stdin>", e))?
                == 0
            {
                println!();
                return Ok(());
            }
            let input = line.trim();
            match input {
                "" => continue,
                "/exit" | "/quit" => return Ok(()),
                "/reset" => {
                    history = system.clone();
                    eprintln!("[history cleared]");
                    continue;
                }
                _ => {}
            }
            history.push(ChatMessage::new("user", input));
            let turn = chat_turn(
                backend.as_mut(),
                &tokenizer,
                &history,
                &mut cached,
                &a,
                &opts,
                &interrupt,
            );
            match turn {
                Ok(answer) => history.push(answer),
                Err(e) if is_broken_pipe(&e) => return Err(e),
                Err(e) => {
                    // The turn is dropped; the cache may hold part of it, so start afresh.
                    eprintln!("error: {e} (/reset clears the history)");
                    history.pop();
                    cached.clear();
                }
            }
        }
    })
}

/// Renders the history, generates the assistant's reply and returns it as a message.
fn chat_turn(
    backend: &mut dyn Backend,
    tokenizer: &Tokenizer,
    history: &[ChatMessage],
    cached: &mut Vec<u32>,
    a: &ChatArgs,
    opts: &GenerateOptions,
    interrupt: &Interrupt,
) -> Result<ChatMessage> {
    let thinking = !a.style.no_think;
    let text = chat::render_chat(tokenizer.chat_template(), history, true, thinking)?;
    let prompt = tokenizer.encode(&text)?;
    let reuse = cached
        .iter()
        .zip(&prompt)
        .take_while(|(a, b)| a == b)
        .count();
    let thinking_open = text.trim_end().ends_with("<think>");
    let mut printer = ReplyPrinter::new(Some(thinking_open), a.style.hide_thinking);
    let g = reply(
        backend,
        tokenizer,
        &prompt,
        reuse,
        opts,
        interrupt,
        &mut printer,
    )?;
    *cached = prompt
        .iter()
        .chain(&g.ids)
        .copied()
        .take(g.cache_len)
        .collect();
    if a.verbose {
        eprintln!(
            "[{} prompt tokens, {} reused from the cache]",
            prompt.len(),
            reuse
        );
    }
    eprintln!("{}", g.timings.summary());
    let (reasoning, answer) = chat::split_thinking(&printer.text, thinking_open);
    Ok(ChatMessage {
        role: "assistant".into(),
        content: answer.trim().to_string(),
        reasoning_content: Some(reasoning.trim().to_string()).filter(|r| !r.is_empty()),
    })
}

fn cmd_info(a: InfoArgs) -> Result<()> {
    let file = open_model(&a.model.path)?;
    let cfg = Config::from_gguf(&file)?;
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
    line("hyper-parameters:".into());
    for (k, v) in cfg.describe() {
        line(format!("  {k:<28} {v}"));
    }
    match Weights::from_gguf(&file, &cfg) {
        Ok(w) => line(format!(
            "weights: load; {:.1} MB read per decoded token",
            w.bytes_per_token(&cfg) as f64 / 1e6
        )),
        Err(e) => line(format!("weights: DO NOT LOAD: {e}")),
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
    line(format!("tensors ({}):", file.tensors.len()));
    line(format!(
        "  {:<34} {:<6} {:<22} {:>12}",
        "name", "type", "dims (GGUF order)", "bytes"
    ));
    for t in &file.tensors {
        line(format!(
            "  {:<34} {:<6} {:<22} {:>12}",
            t.name,
            t.ggml_type.name(),
            format!("{:?}", t.dims),
            t.n_bytes
        ));
    }
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
    }
    std::io::stdout()
        .write_all(s.as_bytes())
        .map_err(stdout_err)
}

fn cmd_logits(a: LogitsArgs) -> Result<()> {
    let file = open_model(&a.model.path)?;
    with_model(&file, |cfg, weights| {
        let mut backend = make_backend(&a.backend, cfg, weights, a.tokens.len())?;
        if a.tokens.len() > backend.max_context() {
            return Err(Error::Input(format!(
                "{} tokens exceed the model's context of {}",
                a.tokens.len(),
                backend.max_context()
            )));
        }
        let logits = backend.forward(&a.tokens, 0, true)?;
        let bytes: Vec<u8> = logits.iter().flat_map(|v| v.to_le_bytes()).collect();
        std::fs::write(&a.out, bytes).map_err(|e| Error::io(&a.out, e))?;
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
    let file = open_model(&a.model.path)?;
    let ids = Tokenizer::from_gguf(&file)?.encode(&text)?;
    writeln!(std::io::stdout(), "{}", join_ids(&ids)).map_err(stdout_err)
}

fn cmd_synth(a: SynthArgs) -> Result<()> {
    let opts = SynthOptions {
        preset: match a.preset {
            PresetArg::Full => Preset::Full,
            PresetArg::Tiny => Preset::Tiny,
        },
        layers: a.layers,
        vocab: a.vocab,
        seed: a.seed,
    };
    let model = SynthModel::new(&opts)?;
    let total = model.tensor_bytes();
    let bar = progress_bar(total);
    let start = Instant::now();
    // Written under a temporary name and renamed at the end, so an interrupted run never
    // leaves a truncated file under the requested name.
    let partial = PathBuf::from(format!("{}.partial", a.out.display()));
    let io = |e| Error::io(&partial, e);
    let file = std::fs::File::create(&partial).map_err(io)?;
    let mut out = std::io::BufWriter::with_capacity(8 << 20, file);
    model
        .write(&mut out, &mut |done| bar.set_position(done))
        .map_err(io)?;
    out.into_inner()
        .map_err(|e| io(e.into_error()))?
        .sync_all()
        .map_err(io)?;
    std::fs::rename(&partial, &a.out).map_err(|e| Error::io(&a.out, e))?;
    bar.finish_and_clear();
    let c = &model.config;
    eprintln!(
        "wrote {}: {} layers, hidden {}, {} experts, vocab {}; {} tensors, {:.2} GB in {:.1} s",
        a.out.display(),
        c.n_layers,
        c.hidden,
        c.n_experts,
        c.vocab,
        model.tensor_count(),
        total as f64 / 1e9,
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

fn cmd_bench(a: BenchArgs) -> Result<()> {
    let file = open_model(&a.model.path)?;
    let opts = BenchOptions {
        depths: a.depth.clone(),
        decode_tokens: a.decode,
        prefill_tokens: a.prefill,
        warmup: a.warmup,
        profile: a.profile,
    };
    let deepest = a.depth.iter().copied().max().unwrap_or(0);
    let need = (deepest + a.warmup + a.decode + a.profile as usize).max(a.prefill);
    with_model(&file, |cfg, weights| {
        let mut backend = make_backend(&a.backend, cfg, weights, need)?;
        let report = bench::run(backend.as_mut(), cfg, weights, &opts)?;
        if let Some(path) = &a.json {
            let json = serde_json::to_string_pretty(&report).expect("report serialises") + "\n";
            std::fs::write(path, json).map_err(|e| Error::io(path, e))?;
        }
        std::io::stdout()
            .write_all(report.table().as_bytes())
            .map_err(stdout_err)
    })
}
