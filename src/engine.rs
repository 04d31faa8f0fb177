//! Opening a model and a backend to run it on, as every command and the server do: the
//! file, its tokenizer and blueprint ([`Model`]), then the backend the options ask for
//! ([`open_backend`]), with `auto` falling back to the CPU and saying why.
//!
//! `auto` takes a GPU only when it is hardware: a software renderer (Mesa's lavapipe) runs
//! the kernels on the CPU far slower than the CPU backend, so it is used only when asked for
//! (`BackendKind::Gpu`, or an adapter index). One context rule holds for every backend
//! ([`context_size`]); a context the GPU cannot hold is an error naming the largest that
//! fits, not a reason to fall back.

use std::path::Path;
use std::sync::Arc;

use crate::backend::Backend;
use crate::config::Config;
use crate::cpu::{CpuBackend, CpuMath};
use crate::error::{Error, Result};
use crate::gguf::GgufFile;
use crate::gpu::{GpuBackend, GpuOptions, TileMath};
use crate::ops_common::CacheType;
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
    /// Context length in tokens: at least 1, at most the model's own ([`context_size`]).
    pub ctx: usize,
    /// How the latent cache stores rows (`None`: f16 on the GPU, f32 on the CPU).
    pub cache_type: Option<CacheType>,
    /// GPU: how the batched mat-mul multiplies its tiles where the device has cooperative
    /// matrices (f32 FMAs elsewhere). The default is the exact split, what the parity tests
    /// hold to the f32 bar; the command line runs f16, as llama.cpp does.
    pub tile_math: TileMath,
    /// CPU: how weights multiply activations (the GPU refuses [`CpuMath::Q8`]).
    pub cpu_math: CpuMath,
    /// Prompt tokens per batched pass (`None`: `gpu::batch::DEFAULT_CHUNK` on the GPU, 256 on
    /// the CPU).
    pub batch: Option<usize>,
}

impl Default for BackendOptions {
    fn default() -> Self {
        BackendOptions {
            kind: BackendKind::Auto,
            adapter: None,
            threads: 0,
            ctx: 4096,
            cache_type: None,
            tile_math: TileMath::default(),
            cpu_math: CpuMath::Exact,
            batch: None,
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

/// The context a backend is opened with: `opts.ctx`, raised to `min_ctx` (the positions a
/// caller feeds at once, such as the tokens of `glm-flash logits`). The one rule for every
/// backend: at least 1 token and at most the model's `context_length`.
pub fn context_size(opts: &BackendOptions, cfg: &Config, min_ctx: usize) -> Result<usize> {
    if opts.ctx == 0 {
        return Err(Error::Input(
            "--ctx 0: the context must hold at least 1 token".into(),
        ));
    }
    let ctx = opts.ctx.max(min_ctx);
    if ctx > cfg.context_length {
        let asked = if min_ctx > opts.ctx {
            format!("{min_ctx} positions are needed,")
        } else {
            format!("--ctx {ctx} is")
        };
        return Err(Error::Input(format!(
            "{asked} over the model's context length: the largest context is {} tokens",
            cfg.context_length
        )));
    }
    Ok(ctx)
}

/// Under `auto`, why the GPU wgpu would pick is not worth using: a software renderer
/// (`DeviceType::Cpu`). wgpu ranks those last, so no hardware GPU is there either. None
/// when the caller named an adapter (then it is used, whatever it is).
fn software_only(opts: &BackendOptions) -> Option<String> {
    if opts.adapter.is_some() {
        return None;
    }
    let info = crate::gpu::context::default_adapter()?;
    (info.device_type == wgpu::DeviceType::Cpu).then(|| {
        format!(
            "running on the CPU: the only GPU adapter, {} ({:?}), is a software renderer, slower than the CPU backend (--backend gpu uses it)",
            info.name, info.backend
        )
    })
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
    let ctx = context_size(opts, cfg, min_ctx)?;
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
        BackendKind::Auto => {
            let why = match software_only(opts) {
                Some(why) => why,
                None => match gpu(opts, cfg, weights, ctx, progress) {
                    Ok(b) => return Ok(opened(b, BackendKind::Gpu, None)),
                    // A request the GPU cannot serve (a context too large): say so.
                    Err(e @ Error::Input(_)) => return Err(e),
                    Err(e) => format!("no usable GPU ({e}); running on the CPU"),
                },
            };
            let b = cpu(opts, cfg, weights, ctx)
                .map_err(|cpu_err| Error::Input(format!("{why}: {cpu_err}")))?;
            Ok(opened(b, BackendKind::Cpu, Some(why)))
        }
    }
}

fn cpu<'a>(
    opts: &BackendOptions,
    cfg: &Config,
    weights: &'a Weights<'a>,
    ctx: usize,
) -> Result<Box<dyn Backend + 'a>> {
    let cache = opts.cache_type.unwrap_or(CacheType::F32);
    let mut backend = CpuBackend::new(cfg, weights, ctx, opts.threads)?
        .with_cache_type(cache)
        .with_math(opts.cpu_math);
    if let Some(tokens) = opts.batch {
        backend = backend.with_prompt_piece(tokens);
    }
    Ok(Box::new(backend))
}

fn gpu<'a>(
    opts: &BackendOptions,
    cfg: &Config,
    weights: &'a Weights<'a>,
    ctx: usize,
    progress: Option<&mut dyn FnMut(u64, u64)>,
) -> Result<Box<dyn Backend + 'a>> {
    if opts.cpu_math == CpuMath::Q8 {
        return Err(Error::Input(
            "--matmul q8 (activations in 8 bits) is the CPU backend's: use --backend cpu, or \
             split, f16 or fma on the GPU"
                .into(),
        ));
    }
    let gpu_opts = GpuOptions {
        adapter: opts.adapter,
        cache_type: opts.cache_type.unwrap_or(CacheType::F16),
        tile_math: opts.tile_math,
        prefill_chunk: opts.batch,
        ..Default::default()
    };
    let mut backend = GpuBackend::with_progress(cfg, weights, ctx, &gpu_opts, progress)?;
    // Two tokens through the batched schedule and one through the decode schedule now:
    // drivers finish compiling a pipeline at its first dispatch, which would otherwise land
    // in the first prompt's time. The cache is emptied again after them.
    if backend.max_context() >= 3 {
        backend.feed_argmax(&[0, 0], 0)?;
        backend.feed_argmax(&[0], 2)?;
    } else {
        backend.feed_argmax(&[0], 0)?;
    }
    backend.truncate(0)?;
    let stats = backend.stats();
    log::info!(
        "uploaded {:.2} GB of weights at {:.2} GB/s",
        stats.upload_bytes as f64 / 1e9,
        stats.upload_bytes_per_second / 1e9
    );
    Ok(Box::new(backend))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_context_rule_for_every_backend() {
        let model = Model::builtin();
        let cfg = &model.config;
        let opts = |ctx| BackendOptions {
            ctx,
            ..Default::default()
        };
        assert_eq!(context_size(&opts(256), cfg, 0).unwrap(), 256);
        // Raised to what the caller feeds at once.
        assert_eq!(context_size(&opts(256), cfg, 300).unwrap(), 300);
        let max = cfg.context_length;
        assert_eq!(context_size(&opts(max), cfg, 0).unwrap(), max);
        assert_eq!(
            context_size(&opts(0), cfg, 0).unwrap_err().to_string(),
            "--ctx 0: the context must hold at least 1 token"
        );
        assert_eq!(
            context_size(&opts(max + 1), cfg, 0)
                .unwrap_err()
                .to_string(),
            format!(
                "--ctx {} is over the model's context length: the largest context is {max} tokens",
                max + 1
            )
        );
        assert_eq!(
            context_size(&opts(16), cfg, max + 5).unwrap_err().to_string(),
            format!(
                "{} positions are needed, over the model's context length: the largest context is {max} tokens",
                max + 5
            )
        );
        // The CPU backend holds what the rule gives it.
        let weights = model.weights().unwrap();
        let cpu_opts = BackendOptions {
            kind: BackendKind::Cpu,
            threads: 1,
            ctx: 33,
            ..Default::default()
        };
        let opened = open_backend(&cpu_opts, cfg, &weights, 0, None).unwrap();
        assert_eq!(opened.backend.max_context(), 33);
        assert!(open_backend(
            &BackendOptions { ctx: 0, ..cpu_opts },
            cfg,
            &weights,
            0,
            None
        )
        .is_err());
    }
}
