//! The `glm-flash` command line: parses flags into the library's option structs and
//! prints. All model logic lives in the library.

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use clap::{Args, Parser, Subcommand, ValueEnum};

use glm_flash::backend::{Backend, Rows};
use glm_flash::bench::{self, BenchOptions};
use glm_flash::chat::{ChatMessage, ChatPrompt, ReplyEvent, ReplyParser};
use glm_flash::config::Config;
use glm_flash::engine::{self, BackendOptions, Model};
use glm_flash::error::{Error, Result};
use glm_flash::formats;
use glm_flash::ftype::FileType;
use glm_flash::generate::{GenerateOptions, StopReason};
use glm_flash::gguf::GgufFile;
use glm_flash::gpu;
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
    /// Interactive multi-turn chat on stdin (one line per turn; /reset, /exit).
    Chat(ChatArgs),
    /// Serve the model over HTTP with the OpenAI API (chat completions, completions, models).
    Serve(ServeArgs),
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

impl BackendArgs {
    fn options(&self) -> BackendOptions {
        BackendOptions {
            kind: match self.backend {
                BackendKind::Cpu => engine::BackendKind::Cpu,
                BackendKind::Gpu => engine::BackendKind::Gpu,
                BackendKind::Auto => engine::BackendKind::Auto,
            },
            adapter: self.adapter,
            threads: self.threads,
            ctx: self.ctx,
            cache_type: self.cache_type.map(CacheType::from),
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
    /// File type: the per-tensor type mix llama-quantize writes for this model
    /// (q8_0, q4_0, q2_k, q4_k_m, q5_k_m, q6_k).
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
    #[arg(long, value_name = "N,...", value_delimiter = ',', default_value = "0")]
    depth: Vec<usize>,
    /// Decode steps timed.
    #[arg(long, value_name = "N", default_value_t = 32)]
    decode: usize,
    /// Sizes of the timed prefills, a comma list (0 = none); those past the model's
    /// context are skipped.
    #[arg(long, value_name = "N,...", value_delimiter = ',', default_value = "512,4096")]
    prefill: Vec<usize>,
    /// Positions in the cache before each prefill (0 = empty); every size runs from each.
    #[arg(long, value_name = "N,...", value_delimiter = ',', default_value = "0,512")]
    prefill_depth: Vec<usize>,
    /// Untimed decode steps first (and, when above 0, one untimed prefill).
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
        Command::Serve(a) => cmd_serve(a),
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

/// Builds the backend the flags ask for, with room for `min_ctx` positions at least: a
/// progress bar while weights go to a GPU, one line when `auto` falls back to the CPU.
fn make_backend<'a>(
    args: &BackendArgs,
    cfg: &Config,
    weights: &'a Weights<'a>,
    min_ctx: usize,
) -> Result<Box<dyn Backend + 'a>> {
    let mut bar: Option<indicatif::ProgressBar> = None;
    let mut progress = |done: u64, total: u64| {
        let bar = bar.get_or_insert_with(|| progress_bar(total));
        bar.set_length(total);
        bar.set_position(done);
    };
    let opened = engine::open_backend(&args.options(), cfg, weights, min_ctx, Some(&mut progress));
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let opened = opened?;
    if let Some(why) = &opened.fallback {
        eprintln!("{why}");
    }
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

/// Prints a reply as it streams: the thinking dimmed (or hidden), the answer as is.
struct ReplyPrinter {
    hide_thinking: bool,
    color: bool,
    error: Option<std::io::Error>,
}

impl ReplyPrinter {
    fn new(hide_thinking: bool) -> Self {
        ReplyPrinter {
            hide_thinking,
            color: std::io::stdout().is_terminal(),
            error: None,
        }
    }

    fn print(&mut self, event: &ReplyEvent) {
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
fn reply(
    session: &mut Session,
    interrupt: &Interrupt,
    printer: &mut ReplyPrinter,
    send: impl FnOnce(&mut Session, &AtomicBool, &mut dyn FnMut(&ReplyEvent)) -> Result<Reply>,
) -> Result<Reply> {
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
    match r.completion.generation.stop {
        StopReason::ContextFull => eprintln!(
            "[stopped: the context of {} tokens is full; raise --ctx]",
            session.max_context()
        ),
        StopReason::Interrupted => eprintln!("[interrupted]"),
        _ => {}
    }
    Ok(r)
}

fn generate_options(s: &SamplingArgs, tokenizer: &Tokenizer) -> GenerateOptions {
    GenerateOptions {
        max_new_tokens: s.max_tokens,
        sampler: s.options(),
        stop_tokens: tokenizer.stop_tokens(),
        stop_strings: Vec::new(),
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
    let model = match &a.model {
        Some(path) => Model::open(path)?,
        None => {
            eprintln!(
                "no model given (-m): using a small built-in model with random weights, so the text is gibberish"
            );
            Model::builtin()
        }
    };
    let tokenizer = model.tokenizer.as_ref();
    let (prompt, parser) = if a.chat {
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
        };
        let prompt = RenderedPrompt::chat(tokenizer, &chat)?;
        let parser = prompt.parser(&[]);
        (prompt.ids, parser)
    } else {
        (tokenizer.encode(&text)?, ReplyParser::plain())
    };
    let opts = generate_options(&a.sampling, tokenizer);
    let interrupt = Interrupt::install()?;
    let weights = model.weights()?;
    let backend = make_backend(&a.backend, &model.config, &weights, 0)?;
    let mut session = Session::new(backend, tokenizer);
    if a.verbose {
        eprintln!("backend: {}", session.backend().describe());
        eprintln!("seed: {}", opts.sampler.seed);
        eprintln!("prompt ids: {}", join_ids(&prompt));
    }
    let mut printer = ReplyPrinter::new(a.style.hide_thinking);
    let r = reply(
        &mut session,
        &interrupt,
        &mut printer,
        |session, stop, on_event| session.reply(&prompt, parser, &opts, Some(stop), on_event),
    )?;
    let g = &r.completion.generation;
    if a.verbose {
        eprintln!("generated ids: {}", join_ids(&g.ids));
        eprintln!("stop: {:?}", g.stop);
        if let Some(t) = session.backend_mut().instrumented().map(|i| i.last_token_stats()) {
            eprintln!(
                "per token: {} dispatches, {} compute passes, {} submits, {} bytes read back",
                t.dispatches, t.compute_passes, t.submits, t.bytes_read_back
            );
        }
    }
    eprintln!("{}", g.timings.summary());
    Ok(())
}

fn cmd_chat(a: ChatArgs) -> Result<()> {
    let model = Model::open(&a.model.path)?;
    let tokenizer = model.tokenizer.as_ref();
    let opts = generate_options(&a.sampling, tokenizer);
    let interrupt = Interrupt::install()?;
    let weights = model.weights()?;
    let backend = make_backend(&a.backend, &model.config, &weights, 0)?;
    let mut session = Session::new(backend, tokenizer);
    eprintln!(
        "chatting with {} on {} (one line per turn; /reset clears the history, /exit or Ctrl-D ends)",
        model.file.name,
        session.backend().describe()
    );
    let mut chat = Chat::new(a.style.system.clone(), !a.style.no_think);
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
                chat.reset();
                eprintln!("[history cleared]");
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
        );
        match turn {
            Ok(r) => {
                if a.verbose {
                    eprintln!(
                        "[{} prompt tokens, {} reused from the cache]",
                        r.completion.prompt_tokens, r.completion.reused
                    );
                }
                eprintln!("{}", r.completion.generation.timings.summary());
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
        parallel: a.parallel,
        defaults: Defaults {
            max_tokens: a.sampling.max_tokens,
            sampler,
            fixed_seed: a.sampling.seed.is_some(),
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
    line(if no_gpu.is_empty() {
        format!(
            "gpu: {:.2} GB of weights ({gpu_total} bytes)",
            gpu_total as f64 / 1e9
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
        let logits = backend.feed_logits(&a.tokens, 0, Rows::All)?;
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

fn parse_ftype(s: &str) -> std::result::Result<FileType, String> {
    FileType::from_name(s).ok_or_else(|| {
        let names: Vec<String> = FileType::ALL
            .iter()
            .map(|f| f.name().to_lowercase())
            .collect();
        format!("unknown file type {s:?} (known: {})", names.join(", "))
    })
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
        ftype: a.ftype,
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
    Ok(())
}

fn cmd_bench(a: BenchArgs) -> Result<()> {
    let file = open_model(&a.model.path)?;
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
        if let Some(path) = &a.json {
            let json = serde_json::to_string_pretty(&report).expect("report serialises") + "\n";
            std::fs::write(path, json).map_err(|e| Error::io(path, e))?;
        }
        std::io::stdout()
            .write_all(report.table().as_bytes())
            .map_err(stdout_err)
    })
}
