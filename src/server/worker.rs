//! The engine thread: the model, its backends and their caches live here, built inside the
//! thread (backends are not `Send`). Requests arrive through a FIFO channel and are served
//! one at a time, each on the sequence slot whose cache it continues (else the least
//! recently used one), so a request that continues an earlier conversation only feeds what
//! is new. What is generated streams back to the request's
//! handler; a handler that goes away (its client disconnected) sets the job's cancel flag
//! and the generation stops at the next token.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};

use tokio::sync::mpsc as tokio_mpsc;

use super::ServeOptions;
use crate::chat::{ReplyEvent, ReplyParser};
use crate::engine::{open_backend, BackendKind, BackendOptions, Model};
use crate::error::{Error, Result};
use crate::generate::{GenerateOptions, StopReason};
use crate::session::Session;
use crate::tokenizer::Tokenizer;
use crate::weights::Weights;

/// What the server knows about the loaded model.
#[derive(Clone)]
pub struct EngineInfo {
    pub model_name: String,
    pub tokenizer: Arc<Tokenizer>,
    pub backend: String,
    /// Positions each slot's cache holds: the longest prompt plus reply.
    pub context: usize,
    pub slots: usize,
    /// Why `auto` runs on the CPU, when it does.
    pub fallback: Option<String>,
}

/// One request for the engine.
pub struct Job {
    pub prompt: Vec<u32>,
    pub parser: ReplyParser,
    pub opts: GenerateOptions,
    pub cancel: Arc<AtomicBool>,
    pub events: tokio_mpsc::UnboundedSender<Event>,
}

/// What the engine sends back for a job, in order: pieces, then `Done` or `Failed`.
pub enum Event {
    Piece(ReplyEvent),
    Done(Summary),
    Failed(String),
}

pub struct Summary {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    /// Prompt tokens that came from a slot's cache.
    pub cached_tokens: usize,
    pub stop: StopReason,
}

#[derive(Default)]
struct Counters {
    queued: AtomicU64,
    served: AtomicU64,
    cancelled: AtomicU64,
    failed: AtomicU64,
}

/// Requests by state, for `/health`.
pub struct Stats {
    pub queued: u64,
    pub served: u64,
    pub cancelled: u64,
    pub failed: u64,
}

/// The handle the HTTP side holds.
pub struct Engine {
    jobs: mpsc::Sender<Job>,
    info: EngineInfo,
    counters: Arc<Counters>,
}

impl Engine {
    /// Starts the engine thread and waits until the model is loaded (or failed to load).
    pub fn start(opts: &ServeOptions) -> Result<Engine> {
        let (ready_tx, ready_rx) = mpsc::channel();
        let (jobs, job_rx) = mpsc::channel();
        let counters = Arc::new(Counters::default());
        let thread_opts = opts.clone();
        let thread_counters = counters.clone();
        std::thread::Builder::new()
            .name("glm-flash engine".into())
            .spawn(move || run(&thread_opts, ready_tx, job_rx, &thread_counters))
            .map_err(|e| Error::Input(format!("cannot start the engine thread: {e}")))?;
        let info = ready_rx
            .recv()
            .map_err(|_| Error::Input("the engine thread stopped while loading".into()))??;
        Ok(Engine {
            jobs,
            info,
            counters,
        })
    }

    pub fn info(&self) -> &EngineInfo {
        &self.info
    }

    pub fn stats(&self) -> Stats {
        let c = &self.counters;
        Stats {
            queued: c.queued.load(Ordering::Relaxed),
            served: c.served.load(Ordering::Relaxed),
            cancelled: c.cancelled.load(Ordering::Relaxed),
            failed: c.failed.load(Ordering::Relaxed),
        }
    }

    /// Queues a job; false when the engine is gone.
    pub fn submit(&self, job: Job) -> bool {
        self.counters.queued.fetch_add(1, Ordering::Relaxed);
        let sent = self.jobs.send(job).is_ok();
        if !sent {
            self.counters.queued.fetch_sub(1, Ordering::Relaxed);
        }
        sent
    }
}

/// The engine thread's body: load, report, then serve jobs until every sender is gone.
fn run(
    opts: &ServeOptions,
    ready: mpsc::Sender<Result<EngineInfo>>,
    jobs: mpsc::Receiver<Job>,
    counters: &Counters,
) {
    let model = match &opts.model {
        Some(path) => Model::open(path),
        None => Ok(Model::builtin()),
    };
    let model = match model {
        Ok(m) => m,
        Err(e) => return drop(ready.send(Err(e))),
    };
    let weights = match model.weights() {
        Ok(w) => w,
        Err(e) => return drop(ready.send(Err(e))),
    };
    let (mut slots, fallback) = match open_slots(opts, &model, &weights) {
        Ok(s) => s,
        Err(e) => return drop(ready.send(Err(e))),
    };
    let info = EngineInfo {
        model_name: model.display_name(),
        tokenizer: model.tokenizer.clone(),
        backend: slots[0].backend().describe(),
        context: slots[0].max_context(),
        slots: slots.len(),
        fallback,
    };
    if ready.send(Ok(info)).is_err() {
        return;
    }
    // When each slot last served, to pick the least recently used one.
    let mut last_used = vec![0u64; slots.len()];
    let mut clock = 0;
    while let Ok(job) = jobs.recv() {
        counters.queued.fetch_sub(1, Ordering::Relaxed);
        if job.cancel.load(Ordering::Relaxed) {
            counters.cancelled.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let slot = pick_slot(&slots, &last_used, &job.prompt);
        clock += 1;
        last_used[slot] = clock;
        let session = &mut slots[slot];
        let Job {
            prompt,
            parser,
            opts,
            cancel,
            events,
        } = job;
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
            session.reply(&prompt, parser, &opts, Some(&cancel), &mut |e| {
                if events.send(Event::Piece(e.clone())).is_err() {
                    cancel.store(true, Ordering::Relaxed);
                }
            })
        }));
        let outcome = match result {
            Ok(Ok(reply)) => {
                let c = &reply.completion;
                let stop = c.generation.stop;
                let counter = match stop {
                    StopReason::Interrupted => &counters.cancelled,
                    _ => &counters.served,
                };
                counter.fetch_add(1, Ordering::Relaxed);
                Event::Done(Summary {
                    prompt_tokens: c.prompt_tokens,
                    completion_tokens: c.generation.ids.len(),
                    // The last prompt token is always fed (its logits pick the first token).
                    cached_tokens: c.reused.min(c.prompt_tokens.saturating_sub(1)),
                    stop,
                })
            }
            Ok(Err(e)) => {
                counters.failed.fetch_add(1, Ordering::Relaxed);
                Event::Failed(e.to_string())
            }
            Err(panic) => {
                // A bug, not the request's fault: forget this slot's cache and go on.
                session.forget();
                counters.failed.fetch_add(1, Ordering::Relaxed);
                let what = panic
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| panic.downcast_ref::<&str>().copied())
                    .unwrap_or("a panic");
                log::error!("the engine failed on a request: {what}");
                Event::Failed(format!("internal error: {what}"))
            }
        };
        let _ = events.send(outcome);
    }
}

/// The slot for a prompt: the one whose cache it continues (it shares at least half of
/// what the slot holds; the longest such start wins), else the least recently used one, so
/// a new conversation does not evict one that is still going on.
fn pick_slot(slots: &[Session], last_used: &[u64], prompt: &[u32]) -> usize {
    let continued = (0..slots.len())
        .map(|i| (slots[i].reusable_prefix(prompt), i))
        .filter(|&(shared, i)| shared > 0 && 2 * shared >= slots[i].cached_tokens().len())
        .max();
    match continued {
        Some((_, i)) => i,
        None => (0..slots.len())
            .min_by_key(|&i| last_used[i])
            .expect("at least one slot"),
    }
}

/// The backend the options ask for, then on the CPU one more cache per extra slot (CPU
/// backends share the mapped weights, so a slot costs only its cache). A GPU backend would
/// upload its own copy of the weights, so on the GPU there is one slot for now.
fn open_slots<'a>(
    opts: &ServeOptions,
    model: &'a Model,
    weights: &'a Weights<'a>,
) -> Result<(Vec<Session<'a>>, Option<String>)> {
    let bar = opts.show_progress.then(|| {
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .expect("valid progress template"),
        );
        bar
    });
    let mut progress = |done: u64, total: u64| {
        if let Some(bar) = &bar {
            bar.set_length(total);
            bar.set_position(done);
        }
    };
    let first = open_backend(
        &opts.backend,
        &model.config,
        weights,
        0,
        Some(&mut progress),
    );
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    let first = first?;
    let tokenizer = model.tokenizer.as_ref();
    let kind = first.kind;
    let fallback = first.fallback;
    let mut slots = vec![Session::new(first.backend, tokenizer)];
    if kind == BackendKind::Cpu {
        let cpu = BackendOptions {
            kind: BackendKind::Cpu,
            ..opts.backend.clone()
        };
        for _ in 1..opts.parallel {
            let more = open_backend(&cpu, &model.config, weights, 0, None)?;
            slots.push(Session::new(more.backend, tokenizer));
        }
    } else if opts.parallel > 1 {
        log::warn!(
            "--parallel {}: the GPU backend keeps one sequence cache for now; requests share it",
            opts.parallel
        );
    }
    Ok((slots, fallback))
}
