//! The GPU backend: owns the device, the resident model, the decode schedule and the batched
//! one; submits one token (a decode step) or one chunk of a prompt per command encoder, reads
//! back logits, hidden states or the argmax, and keeps the next greedy token computing while
//! the current one is handed over.

use crate::backend::{
    check_feed, check_truncate, Backend, Instrumented, Output, Rows, TokenProfile, TokenStats, Want,
};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::gpu::batch::{self, BatchSchedule, ChunkBuffers, Head};
use crate::gpu::cache::{self, LatentCaches};
use crate::gpu::context::{self, GpuContext, GpuOptions};
use crate::gpu::kernels::{
    attn_batch_coop, attn_combine, attn_partial, attn_partial_coop, ffn_gate_up,
};
use crate::gpu::pipelines::{PipelineInfo, Pipelines};
use crate::gpu::resident::GpuModel;
use crate::gpu::schedule::{Activations, Feed, Readback, Recorder, Schedule};
use crate::gpu::shader::TileMath;
use crate::gpu::upload::{self, Uploader};
use crate::ops_common::CacheType;
use crate::weights::Weights;

#[derive(Clone, Debug, Default)]
pub struct GpuStats {
    /// The most recent token.
    pub last_token: TokenStats,
    /// Every token since the backend was made.
    pub total: TokenStats,
    pub tokens: u64,
    /// Weight bytes uploaded and the rate, for the load summary.
    pub upload_bytes: u64,
    pub upload_bytes_per_second: f64,
    /// Dispatches one token records per layer (without the head), in layer order.
    pub dispatches_per_layer: Vec<usize>,
    /// The most recent chunk of a batched feed (all its head passes).
    pub last_chunk: TokenStats,
    /// Chunks of batched feeds since the backend was made (their work is in `total` too).
    pub chunks: u64,
    /// Dispatches one chunk records per layer, in layer order.
    pub chunk_dispatches_per_layer: Vec<usize>,
    /// Tokens per chunk of a batched feed.
    pub chunk_tokens: usize,
}

/// Timestamps of one profiled token: at most this many dispatches are timed (wgpu's cap).
const MAX_TIMESTAMPS: u32 = wgpu::QUERY_SET_MAX_QUERIES;

pub struct GpuBackend {
    ctx: GpuContext,
    cfg: Config,
    pipelines: Pipelines,
    max_context: usize,
    /// Kept alive for the dispatches that bind it.
    _model: GpuModel,
    caches: LatentCaches,
    schedule: Schedule,
    batch: BatchSchedule,
    logits_staging: wgpu::Buffer,
    /// Rows of logits or hidden states of a chunk: made at the first feed that wants them.
    rows_staging: Option<wgpu::Buffer>,
    /// Two, so a token's id can be read while the next token computes.
    argmax_staging: [wgpu::Buffer; 2],
    stats: GpuStats,
    /// Positions of the cache that hold fed tokens (rows past it may hold work that was
    /// computed ahead and not kept).
    cache_len: usize,
}

impl GpuBackend {
    pub fn new(
        cfg: &Config,
        w: &Weights,
        max_context: usize,
        opts: &GpuOptions,
    ) -> Result<GpuBackend> {
        Self::with_progress(cfg, w, max_context, opts, None)
    }

    /// As [`GpuBackend::new`], calling `progress(bytes uploaded, bytes expected)` as weights go up.
    pub fn with_progress(
        cfg: &Config,
        w: &Weights,
        max_context: usize,
        opts: &GpuOptions,
        progress: Option<&mut dyn FnMut(u64, u64)>,
    ) -> Result<GpuBackend> {
        upload::check_formats(w)?;
        let ctx = GpuContext::new(opts)?;
        let max_context = max_context.min(cfg.context_length).max(1);
        if cfg.n_dense_layers < cfg.n_layers && cfg.n_experts > ffn_gate_up::MAX_EXPERTS {
            return Err(Error::Gpu(format!(
                "{} experts: the GPU router handles up to {}",
                cfg.n_experts,
                ffn_gate_up::MAX_EXPERTS
            )));
        }
        if let Some(why) = attn_partial::unsupported(cfg).or(attn_combine::unsupported(cfg)) {
            return Err(Error::Gpu(format!(
                "the GPU attention cannot run this model: {why}"
            )));
        }
        // The caches and the prompt chunk's activations first: a context or chunk that does
        // not fit is refused before the long upload.
        let caches = LatentCaches::allocate(&ctx, cfg, max_context, opts.cache_type)?;
        let total = GpuModel::file_bytes(cfg, w);
        let mut up = Uploader::new(total, progress);
        let pipelines = Pipelines::new();
        // The cooperative attention for long contexts where it runs, pays with this tile
        // math, and agrees with the f32 kernel here.
        let tiles = attn_partial_coop::runs(&ctx, cfg, opts.cache_type)
            && attn_partial_coop::from_positions(ctx.tiles).is_some()
            && attn_batch_coop::passes(&ctx, "the attention at long contexts", || {
                attn_partial_coop::check_against_fma(&ctx, &pipelines, cfg)
            });
        let act = Activations::new(&ctx, cfg, max_context, tiles)?;
        let chunk = batch::chunk_tokens(&ctx, cfg, max_context, opts.prefill_chunk)?;
        let chunk_bytes = cache::human_bytes(batch::activation_bytes(cfg, chunk));
        let chunk_buffers = ChunkBuffers::allocate(&ctx, &pipelines, cfg, chunk, opts.cache_type)
            .map_err(|e| {
            upload::with_memory_hint(e, || {
                format!(
                    "the activations of prompt chunks of {chunk} tokens take {chunk_bytes}; \
                         a smaller --batch needs less"
                )
            })
        })?;
        let model = GpuModel::upload(&ctx, cfg, w, &mut up).map_err(|e| {
            upload::with_memory_hint(e, || {
                format!(
                    "the {} and {chunk_bytes} of activations for prompt chunks of {chunk} tokens \
                     take room a smaller --ctx or --batch would leave",
                    caches.describe()
                )
            })
        })?;
        let schedule = Schedule::new(&ctx, &pipelines, cfg, max_context, act, &model, &caches)?;
        let batch = BatchSchedule::new(&ctx, &pipelines, cfg, chunk_buffers, &model, &caches)?;
        let staging = |label, size| {
            ctx.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            })
        };
        let logits_staging = staging("logits readback", 4 * cfg.vocab as u64);
        let argmax_staging = [staging("argmax readback", 4), staging("argmax readback", 4)];
        let stats = GpuStats {
            upload_bytes: up.bytes,
            upload_bytes_per_second: up.bytes_per_second(),
            dispatches_per_layer: schedule.dispatches_per_layer(),
            chunk_dispatches_per_layer: batch.dispatches_per_layer(),
            chunk_tokens: chunk,
            ..Default::default()
        };
        Ok(GpuBackend {
            ctx,
            cfg: cfg.clone(),
            pipelines,
            max_context,
            _model: model,
            caches,
            schedule,
            batch,
            logits_staging,
            rows_staging: None,
            argmax_staging,
            stats,
            cache_len: 0,
        })
    }

    pub fn stats(&self) -> &GpuStats {
        &self.stats
    }

    pub fn context(&self) -> &GpuContext {
        &self.ctx
    }

    /// Every pipeline this backend created (for the binding-discipline check).
    pub fn pipelines(&self) -> Vec<PipelineInfo> {
        self.pipelines.registry()
    }

    /// One token through every layer, recorded into one encoder and submitted once, and
    /// what it reads back.
    fn token(&mut self, token: u32, pos: usize, read: Readback) -> Result<Vec<u8>> {
        let submitted = self.submit(Feed::Id(token), pos, read, 0, None)?;
        self.read_back(read, 0, submitted)
    }

    /// Runs one decode step (greedy) with a timestamp after every dispatch and returns the
    /// GPU time of each. Needs TIMESTAMP_QUERY_INSIDE_PASSES.
    pub fn profile_token(&mut self, token: u32, pos: usize) -> Result<TokenProfile> {
        let queries = self.timestamp_queries()?;
        self.check_feed(&[token], pos)?;
        let mut names = Vec::new();
        let profile = Some((&queries, &mut names));
        let submitted = self.submit(Feed::Id(token), pos, Readback::Argmax, 0, profile)?;
        self.read_back(Readback::Argmax, 0, submitted)?;
        self.cache_len += 1;
        self.dispatch_times(&queries, &names, (pos, 1))
    }

    /// Feeds `tokens` at `pos` in chunks, the last one with a timestamp after every
    /// dispatch, and returns the GPU time of each of its dispatches.
    pub fn profile_prompt(&mut self, tokens: &[u32], pos: usize) -> Result<TokenProfile> {
        let queries = self.timestamp_queries()?;
        self.check_feed(tokens, pos)?;
        let last = (tokens.len() - 1) / self.batch.chunk * self.batch.chunk;
        if last > 0 {
            self.feed_batch(&tokens[..last], Want::Nothing)?;
        }
        let mut names = Vec::new();
        self.chunk(&tokens[last..], Want::Argmax, Some((&queries, &mut names)))?;
        self.cache_len += tokens.len() - last;
        self.dispatch_times(&queries, &names, (pos + last, tokens.len() - last))
    }

    /// The checks every feed makes (`backend::check_feed`) against this backend's cache.
    fn check_feed(&self, tokens: &[u32], pos: usize) -> Result<()> {
        check_feed(
            tokens,
            pos,
            self.cache_len,
            self.max_context,
            self.cfg.vocab,
        )
    }

    /// A query set for one timestamp per dispatch; needs TIMESTAMP_QUERY_INSIDE_PASSES.
    fn timestamp_queries(&self) -> Result<wgpu::QuerySet> {
        let needed =
            wgpu::Features::TIMESTAMP_QUERY | wgpu::Features::TIMESTAMP_QUERY_INSIDE_PASSES;
        if !self.ctx.features.contains(needed) {
            return Err(Error::Gpu(format!(
                "{} cannot time dispatches (needs timestamp queries inside passes)",
                self.ctx.describe()
            )));
        }
        Ok(self.ctx.device.create_query_set(&wgpu::QuerySetDescriptor {
            label: Some("dispatch timestamps"),
            ty: wgpu::QueryType::Timestamp,
            count: MAX_TIMESTAMPS,
        }))
    }

    /// The time of each dispatch `names` lists, from the timestamps a recording wrote
    /// (one before the first dispatch, one after each).
    fn dispatch_times(
        &self,
        queries: &wgpu::QuerySet,
        names: &[&'static str],
        positions: (usize, usize),
    ) -> Result<TokenProfile> {
        let size = 8 * (names.len() as u64 + 1);
        let resolved = self.ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("timestamps"),
            size,
            usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        let mut enc = self.ctx.device.create_command_encoder(&Default::default());
        enc.resolve_query_set(queries, 0..names.len() as u32 + 1, &resolved, 0);
        self.ctx.queue.submit([enc.finish()]);
        let ticks: Vec<u64> = bytemuck::pod_collect_to_vec(&self.ctx.read_bytes(&resolved, size)?);
        let period = self.ctx.queue.get_timestamp_period() as f64 * 1e-9;
        let dispatches = names
            .iter()
            .zip(ticks.windows(2))
            .map(|(&n, w)| (n, w[1].saturating_sub(w[0]) as f64 * period))
            .collect();
        Ok(TokenProfile {
            dispatches,
            positions,
        })
    }

    /// Records and submits one token; an argmax readback goes to `argmax_staging[slot]`.
    fn submit(
        &mut self,
        feed: Feed,
        pos: usize,
        read: Readback,
        slot: usize,
        profile: Option<(&wgpu::QuerySet, &mut Vec<&'static str>)>,
    ) -> Result<wgpu::SubmissionIndex> {
        self.ctx.check()?;
        let (ctx, cfg) = (&self.ctx, &self.cfg);
        let attn = self.schedule.plan(cfg, pos);
        self.schedule.write_inputs(ctx, cfg, feed, pos, &attn);
        let mut enc = ctx
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("token"),
            });
        let mut rec = Recorder::begin(&mut enc, profile.as_ref().map(|(q, _)| *q));
        self.schedule.record(&mut rec, &attn, read);
        let (dispatches, names) = rec.finish();
        if let (Some(names), Some((_, out))) = (names, profile) {
            *out = names;
        }
        let size = self.readback_size(read);
        match read {
            Readback::Nothing => {}
            Readback::Logits => {
                enc.copy_buffer_to_buffer(self.schedule.logits(), 0, &self.logits_staging, 0, size)
            }
            Readback::Argmax => enc.copy_buffer_to_buffer(
                self.schedule.token_id(),
                0,
                &self.argmax_staging[slot],
                0,
                size,
            ),
        }
        let submitted = ctx.queue.submit([enc.finish()]);
        let t = TokenStats {
            dispatches,
            compute_passes: 1,
            submits: 1,
            bytes_read_back: size,
        };
        self.stats.last_token = t;
        self.stats.total += t;
        self.stats.tokens += 1;
        Ok(submitted)
    }

    fn readback_size(&self, read: Readback) -> u64 {
        match read {
            Readback::Nothing => 0,
            Readback::Logits => 4 * self.cfg.vocab as u64,
            Readback::Argmax => 4,
        }
    }

    /// Waits for `submitted` and returns what it read back.
    fn read_back(
        &self,
        read: Readback,
        slot: usize,
        submitted: wgpu::SubmissionIndex,
    ) -> Result<Vec<u8>> {
        let staging = match read {
            Readback::Nothing => return Ok(Vec::new()),
            Readback::Logits => &self.logits_staging,
            Readback::Argmax => &self.argmax_staging[slot],
        };
        context::map_read(&self.ctx, staging, self.readback_size(read), submitted)
    }

    /// `tokens` appended to the cache in chunks of the batched schedule; earlier chunks only
    /// fill the cache unless every row is wanted.
    fn feed_batch(&mut self, tokens: &[u32], want: Want) -> Result<Output> {
        let all_rows = matches!(want, Want::Logits(Rows::All) | Want::Hidden(Rows::All));
        let count = tokens.len().div_ceil(self.batch.chunk);
        let mut rows = Vec::new();
        let mut last = Output::Nothing;
        for (c, part) in tokens.chunks(self.batch.chunk).enumerate() {
            let part_want = if all_rows || c + 1 == count {
                want
            } else {
                Want::Nothing
            };
            let out = self.chunk(part, part_want, None)?;
            self.cache_len += part.len();
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

    /// One chunk at the cache length: its layers and the first pass of the head in one
    /// command encoder and submit. Logits of more rows than one head pass writes take a
    /// submit per further pass. With `profile`, the first pass writes a timestamp after each
    /// dispatch and names them.
    fn chunk(
        &mut self,
        tokens: &[u32],
        want: Want,
        mut profile: Option<(&wgpu::QuerySet, &mut Vec<&'static str>)>,
    ) -> Result<Output> {
        let (n, vocab, hidden) = (tokens.len(), self.cfg.vocab, self.cfg.hidden);
        let per_pass = self.batch.logit_rows;
        let heads: Vec<Head> = match want {
            Want::Nothing => vec![Head::Nothing],
            Want::Argmax => vec![Head::Argmax],
            Want::Logits(Rows::Last) => vec![Head::Last],
            Want::Hidden(Rows::Last) => vec![Head::Hidden { first: n - 1, n: 1 }],
            Want::Hidden(Rows::All) => vec![Head::Hidden { first: 0, n }],
            Want::Logits(Rows::All) => (0..n)
                .step_by(per_pass)
                .map(|first| Head::Rows {
                    first,
                    n: per_pass.min(n - first),
                })
                .collect(),
        };
        if matches!(heads[0], Head::Rows { .. } | Head::Hidden { .. })
            && self.rows_staging.is_none()
        {
            let size = 4 * (per_pass * vocab).max(self.batch.chunk * hidden) as u64;
            self.rows_staging = Some(self.ctx.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("rows readback"),
                size,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            }));
        }
        self.ctx.check()?;
        self.batch
            .write_inputs(&self.ctx, &self.cfg, tokens, self.cache_len);
        let mut stats = TokenStats::default();
        let mut rows = Vec::new();
        let mut id = 0;
        for (i, &head) in heads.iter().enumerate() {
            let (first, count) = match head {
                Head::Nothing => (0, 0),
                Head::Last | Head::Argmax => (n - 1, 1),
                Head::Rows { first, n } | Head::Hidden { first, n } => (first, n),
            };
            self.batch.write_head(&self.ctx, first, count);
            let mut enc = self
                .ctx
                .device
                .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                    label: Some("chunk"),
                });
            let queries = profile.as_ref().filter(|_| i == 0).map(|(q, _)| *q);
            let mut rec = Recorder::begin(&mut enc, queries);
            if i == 0 {
                self.batch.record_layers(&mut rec, &self.cfg, n);
            }
            self.batch.record_head(&mut rec, head);
            let (dispatches, names) = rec.finish();
            if let (Some(names), Some((_, out))) = (names, profile.as_mut()) {
                **out = names;
            }
            let read = match head {
                Head::Nothing => None,
                Head::Argmax => Some((self.batch.argmax_id(), &self.argmax_staging[0], 1)),
                Head::Last => Some((self.batch.logits(), &self.logits_staging, vocab)),
                Head::Rows { n, .. } => Some((
                    self.batch.logits(),
                    self.rows_staging.as_ref().unwrap(),
                    n * vocab,
                )),
                Head::Hidden { n, .. } => Some((
                    self.batch.hidden(),
                    self.rows_staging.as_ref().unwrap(),
                    n * hidden,
                )),
            };
            let size = read.map_or(0, |r| 4 * r.2 as u64);
            if let Some((src, staging, _)) = read {
                enc.copy_buffer_to_buffer(src, 0, staging, 0, size);
            }
            let submitted = self.ctx.queue.submit([enc.finish()]);
            stats += TokenStats {
                dispatches,
                compute_passes: 1,
                submits: 1,
                bytes_read_back: size,
            };
            if let Some((_, staging, _)) = read {
                let bytes = context::map_read(&self.ctx, staging, size, submitted)?;
                match head {
                    Head::Argmax => id = u32::from_le_bytes(bytes[..4].try_into().unwrap()),
                    _ => rows.extend(bytemuck::pod_collect_to_vec::<u8, f32>(&bytes)),
                }
            }
        }
        self.stats.last_chunk = stats;
        self.stats.total += stats;
        self.stats.chunks += 1;
        self.stats.tokens += n as u64;
        Ok(match want {
            Want::Nothing => Output::Nothing,
            Want::Argmax => Output::Argmax(id),
            Want::Logits(_) => Output::Logits(rows),
            Want::Hidden(_) => Output::Hidden(rows),
        })
    }

    /// Blocks until every submitted token has run (for timing).
    pub fn finish(&self) -> Result<()> {
        self.ctx.wait()
    }
}

impl Backend for GpuBackend {
    fn describe(&self) -> String {
        format!(
            "gpu: {}{}{}{}{}, {}",
            self.ctx.describe(),
            if self.ctx.subgroups {
                ", subgroups"
            } else {
                ""
            },
            match self.ctx.tiles {
                TileMath::Fma => "",
                TileMath::Split => ", cooperative-matrix prefill",
                TileMath::F16 => ", cooperative-matrix prefill in f16",
            },
            if self.schedule.cooperative_attention() {
                " and long-context attention"
            } else {
                ""
            },
            if self.ctx.coherent_spirv {
                " (SPIR-V written by the engine, workgroup memory coherent)"
            } else {
                ""
            },
            self.caches.describe()
        )
    }

    fn max_context(&self) -> usize {
        self.max_context
    }

    /// A whole chunk of the batched schedule.
    fn prompt_piece(&self) -> usize {
        self.batch.chunk
    }

    fn cache_len(&self) -> usize {
        self.cache_len
    }

    fn truncate(&mut self, len: usize) -> Result<()> {
        check_truncate(len, self.cache_len)?;
        // Attention reads positions up to the token's own; later rows are overwritten.
        self.cache_len = len;
        Ok(())
    }

    /// One token through the decode schedule; more (or hidden states) through the batched
    /// one, a chunk per command encoder and submit.
    fn feed(&mut self, tokens: &[u32], pos: usize, want: Want) -> Result<Output> {
        self.check_feed(tokens, pos)?;
        if tokens.len() > 1 || matches!(want, Want::Hidden(_)) {
            return self.feed_batch(tokens, want);
        }
        let read = match want {
            Want::Logits(_) => Readback::Logits,
            Want::Argmax => Readback::Argmax,
            _ => Readback::Nothing,
        };
        let bytes = self.token(tokens[0], pos, read)?;
        self.cache_len += 1;
        Ok(match read {
            Readback::Logits => Output::Logits(bytemuck::pod_collect_to_vec(&bytes)),
            Readback::Argmax => Output::Argmax(u32::from_le_bytes(bytes[..4].try_into().unwrap())),
            Readback::Nothing => Output::Nothing,
        })
    }

    fn decode_greedy(
        &mut self,
        token: u32,
        pos: usize,
        n: usize,
        on_token: &mut dyn FnMut(u32) -> bool,
    ) -> Result<()> {
        if n == 0 {
            return Ok(());
        }
        self.check_feed(&[token], pos)?;
        let mut slot = 0;
        let mut submitted = self.submit(Feed::Id(token), pos, Readback::Argmax, slot, None)?;
        for i in 0..n {
            // Queue the token after this one (fed from this argmax on the GPU) before
            // waiting, so the GPU never waits for the CPU between tokens.
            let next = pos + i + 1;
            let queued = match i + 1 < n && next < self.max_context {
                true => Some(self.submit(
                    Feed::PreviousArgmax,
                    next,
                    Readback::Argmax,
                    1 - slot,
                    None,
                )?),
                false => None,
            };
            let bytes = self.read_back(Readback::Argmax, slot, submitted)?;
            let id = u32::from_le_bytes(bytes[..4].try_into().unwrap());
            // The token that chose `id` is in the cache; `id` itself counts once it is kept.
            self.cache_len = next;
            if !on_token(id) {
                break;
            }
            match queued {
                Some(q) => (submitted, slot) = (q, 1 - slot),
                None => break,
            }
        }
        Ok(())
    }

    fn cache_type(&self) -> CacheType {
        self.caches.cache_type
    }

    fn fill_cache_for_bench(&mut self, block: &[f32], positions: usize) -> Result<()> {
        let row = self.cfg.cache_row();
        crate::backend::check_bench_block(block, row, positions, self.max_context)?;
        self.caches.fill(&self.ctx, &self.cfg, block, positions);
        self.cache_len = positions;
        self.ctx.wait()
    }

    fn instrumented(&mut self) -> Option<&mut dyn Instrumented> {
        Some(self)
    }
}

impl Instrumented for GpuBackend {
    fn last_token_stats(&self) -> TokenStats {
        self.stats.last_token
    }

    fn last_chunk_stats(&self) -> Option<TokenStats> {
        (self.stats.chunks > 0).then_some(self.stats.last_chunk)
    }

    fn profile_token(&mut self, token: u32, pos: usize) -> Result<TokenProfile> {
        GpuBackend::profile_token(self, token, pos)
    }

    fn profile_prompt(&mut self, tokens: &[u32], pos: usize) -> Result<TokenProfile> {
        GpuBackend::profile_prompt(self, tokens, pos)
    }
}
