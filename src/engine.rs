//! Opening a model and a backend to run it on, as every command and the server do: the
//! file, its tokenizer and blueprint ([`Model`]), then the backend the options ask for
//! ([`open_backend`]), with `auto` falling back to the CPU and saying why.

use std::path::Path;
use std::sync::Arc;

use crate::backend::Backend;
use crate::config::Config;
use crate::cpu::CpuBackend;
use crate::ops_common::CacheType;
use crate::error::{Error, Result};
use crate::gguf::GgufFile;
use crate::gpu::{GpuBackend, GpuOptions};
use crate::tokenizer::Tokenizer;
use crate::weights::Weights;

/// A model file opened for running: the mapped file, its tokenizer and its blueprint. The
/// weights borrow the file ([`Model::weights`]) and a backend borrows the weights, so a
/// caller keeps the three in one scope.
pub struct Model {
    pub file: GgufFile,
    /// Shared, so a server's request handlers can render and encode prompts while the
    /// engine runs.
    pub tokenizer: Arc<Tokenizer>,
    pub config: Config,
}

impl Model {
    pub fn open(path: &Path) -> Result<Model> {
        Model::from_file(GgufFile::open(path)?)
    }

    /// The small built-in model with random weights (`run` without `-m`).
    pub fn builtin() -> Model {
        Model::from_file(crate::synth::builtin_model()).expect("the built-in model loads")
    }

    pub fn from_file(file: GgufFile) -> Result<Model> {
        let tokenizer = Arc::new(Tokenizer::from_gguf(&file)?);
        let config = Config::from_gguf(&file)?;
        Ok(Model {
            file,
            tokenizer,
            config,
        })
    }

    /// Typed, shape-checked views of the tensors (nothing is copied).
    pub fn weights(&self) -> Result<Weights<'_>> {
        Weights::from_gguf(&self.file, &self.config)
    }

    /// The file's name without its directories, as clients see the model named.
    pub fn display_name(&self) -> String {
        Path::new(&self.file.name)
            .file_name()
            .map_or(self.file.name.clone(), |n| n.to_string_lossy().into_owned())
    }
}

/// Which backend computes the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendKind {
    Cpu,
    Gpu,
    /// The GPU when one can be used, else the CPU.
    Auto,
}

#[derive(Clone, Debug)]
pub struct BackendOptions {
    pub kind: BackendKind,
    /// GPU adapter index as `glm-flash devices` lists them (`None`: the best one).
    pub adapter: Option<usize>,
    /// CPU threads (0 = every core).
    pub threads: usize,
    /// Context length in tokens (capped at the model's own).
    pub ctx: usize,
    /// How the latent cache stores rows (`None`: f16 on the GPU, f32 on the CPU).
    pub cache_type: Option<CacheType>,
}

impl Default for BackendOptions {
    fn default() -> Self {
        BackendOptions {
            kind: BackendKind::Auto,
            adapter: None,
            threads: 0,
            ctx: 4096,
            cache_type: None,
        }
    }
}

pub struct OpenedBackend<'a> {
    pub backend: Box<dyn Backend + 'a>,
    /// Which one it is (never `Auto`).
    pub kind: BackendKind,
    /// Under `auto`, the one line saying why the GPU was not used.
    pub fallback: Option<String>,
}

/// Builds the backend `opts` asks for, with room for `min_ctx` positions at least.
/// `progress(bytes uploaded, bytes expected)` is called as weights go to a GPU.
pub fn open_backend<'a>(
    opts: &BackendOptions,
    cfg: &Config,
    weights: &'a Weights<'a>,
    min_ctx: usize,
    progress: Option<&mut dyn FnMut(u64, u64)>,
) -> Result<OpenedBackend<'a>> {
    let ctx = opts.ctx.max(min_ctx).min(cfg.context_length);
    let opened = |backend, kind, fallback| OpenedBackend {
        backend,
        kind,
        fallback,
    };
    match opts.kind {
        BackendKind::Cpu => Ok(opened(
            cpu(opts, cfg, weights, ctx)?,
            BackendKind::Cpu,
            None,
        )),
        BackendKind::Gpu => Ok(opened(
            gpu(opts, cfg, weights, ctx, progress)?,
            BackendKind::Gpu,
            None,
        )),
        BackendKind::Auto => match gpu(opts, cfg, weights, ctx, progress) {
            Ok(b) => Ok(opened(b, BackendKind::Gpu, None)),
            Err(e) => {
                let why = format!("no usable GPU ({e}); running on the CPU");
                let b = cpu(opts, cfg, weights, ctx)
                    .map_err(|cpu_err| Error::Input(format!("{why}: {cpu_err}")))?;
                Ok(opened(b, BackendKind::Cpu, Some(why)))
            }
        },
    }
}

fn cpu<'a>(
    opts: &BackendOptions,
    cfg: &Config,
    weights: &'a Weights<'a>,
    ctx: usize,
) -> Result<Box<dyn Backend + 'a>> {
    let cache = opts.cache_type.unwrap_or(CacheType::F32);
    Ok(Box::new(
        CpuBackend::new(cfg, weights, ctx, opts.threads)?.with_cache_type(cache),
    ))
}

fn gpu<'a>(
    opts: &BackendOptions,
    cfg: &Config,
    weights: &'a Weights<'a>,
    ctx: usize,
    progress: Option<&mut dyn FnMut(u64, u64)>,
) -> Result<Box<dyn Backend + 'a>> {
    let gpu_opts = GpuOptions {
        adapter: opts.adapter,
        cache_type: opts.cache_type.unwrap_or(CacheType::F16),
        ..Default::default()
    };
    let backend = GpuBackend::with_progress(cfg, weights, ctx, &gpu_opts, progress)?;
    let stats = backend.stats();
    log::info!(
        "uploaded {:.2} GB of weights at {:.2} GB/s",
        stats.upload_bytes as f64 / 1e9,
        stats.upload_bytes_per_second / 1e9
    );
    Ok(Box::new(backend))
}
