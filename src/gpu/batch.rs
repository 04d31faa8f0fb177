//! The batched schedule: every dispatch of a chunk of up to [`BatchSchedule::chunk`] tokens
//! (a prompt, or a piece of a long one) built once at load over activations sized for that
//! many tokens, and the recording of a chunk into one compute pass. Per chunk only the
//! token ids, two small uniforms (the chunk's token count and position; the rows the LM
//! head reads) and the RoPE table of its positions are written; the grids follow the
//! chunk's token count. The weights are read once per tile of 64 tokens (`matmul.wgsl`),
//! not once per token as in the decode schedule.

use crate::config::Config;
use crate::error::{Error, Result};
use crate::gpu::cache::LatentCaches;
use crate::gpu::context::GpuContext;
use crate::gpu::kernels::matmul::MatmulDispatch;
use crate::gpu::kernels::moe_group::Routing;
use crate::gpu::kernels::{
    argmax, attn_batch, attn_batch_coop, attn_partial, embed, kv_rows, matmul, matvec, moe_combine,
    moe_group, moe_route, rms_norm, BatchParams,
};
use crate::gpu::pipelines::{Dispatch, Pipelines};
use crate::gpu::resident::{GpuFfn, GpuLayer, GpuModel};
use crate::gpu::schedule::Recorder;
use crate::gpu::upload::{self, storage_zeroed, GpuMatrix};
use crate::ops_common::CacheType;

/// Tokens per chunk unless the caller says otherwise: each expert's weights are decoded
/// once per tile of its tokens and every chunk's dispatches wait on the one before, so
/// the more tokens a chunk gives an expert, the less that costs per token (BENCHMARKS.md
/// compares chunk sizes); the activations take about 280 KB per token of the full model,
/// 1.15 GB at this size.
pub const DEFAULT_CHUNK: usize = 4096;

/// Bytes of all activations of a chunk at most (the chunk is cut to fit): room for
/// [`DEFAULT_CHUNK`] tokens of the full model.
const ACTIVATION_BUDGET: u64 = 2 << 30;

/// Bytes of the logits one pass of the LM head writes for [`Head::Rows`] at most: more rows
/// go through it in several passes.
const LOGITS_BUDGET: u64 = 32 << 20;

/// What the LM head computes after a chunk's layers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Head {
    Nothing,
    /// The logits of the last row (`[vocab]` in [`BatchSchedule::logits`]).
    Last,
    /// And their argmax ([`BatchSchedule::argmax_id`]).
    Argmax,
    /// The logits of rows `first..first + n` (as many as [`BatchSchedule::logit_rows`]).
    Rows {
        first: usize,
        n: usize,
    },
    /// The output-normed hidden states of rows `first..first + n` ([`BatchSchedule::hidden`]).
    Hidden {
        first: usize,
        n: usize,
    },
}

/// Every buffer the chunk's dispatches share.
struct Activations {
    /// [chunk][hidden] the residual stream
    x: wgpu::Buffer,
    /// [chunk][hidden] normed x (the layer's input norm, and the output norm for the head)
    xn: wgpu::Buffer,
    /// [chunk][q_lora + kv_lora + rope] `[q_a | kv_cmpr | k_pe]`
    qkv_a: wgpu::Buffer,
    /// [chunk][q_lora] normed q_a
    q_a: wgpu::Buffer,
    /// [chunk][heads][nope + rope]
    q: wgpu::Buffer,
    /// [chunk][heads][kv_lora]
    q_abs: wgpu::Buffer,
    /// [chunk][heads][kv_lora] softmax-weighted latent context
    kqv: wgpu::Buffer,
    /// [chunk][heads][v_head]
    kqv_out: wgpu::Buffer,
    /// [chunk][experts] router logits
    router: wgpu::Buffer,
    /// The experts and weights of every pair, and the pairs grouped by expert ([`Routing`]).
    route: wgpu::Buffer,
    pairs: wgpu::Buffer,
    /// [pairs or tokens][ffn] SwiGLU activations
    act: wgpu::Buffer,
    /// [pairs][hidden] expert outputs before the weighted sum
    down: wgpu::Buffer,
    /// [logit rows][vocab]
    logits: wgpu::Buffer,
    /// [1] argmax of the last row's logits
    argmax_id: wgpu::Buffer,
    /// [chunk] token ids
    token_ids: wgpu::Buffer,
    /// [chunk][rope / 2] (cos, sin) of each position
    rope_cs: wgpu::Buffer,
    /// The chunk ([`BatchParams`]: tokens, position) and the LM head's rows.
    batch: wgpu::Buffer,
    head: wgpu::Buffer,
    /// The cooperative attention's f16 parts of its queries, where it runs.
    q_parts: Option<wgpu::Buffer>,
}

/// A layer's feed-forward dispatches.
enum FfnDispatches {
    /// gate/up with SwiGLU over the tokens, down added to the residual.
    Dense {
        gate_up: Vec<MatmulDispatch>,
        down: Vec<MatmulDispatch>,
    },
    /// Router, route, grouping, the expert-indexed gate/up and down, the weighted sum.
    Moe {
        router: Vec<MatmulDispatch>,
        route: Dispatch,
        group: Dispatch,
        gate_up: Vec<MatmulDispatch>,
        down: Vec<MatmulDispatch>,
        combine: Dispatch,
    },
}

/// The dispatches of one layer, in the order they run.
struct LayerDispatches {
    attn_norm: Dispatch,
    attn_qkv_a: Vec<MatmulDispatch>,
    q_a_norm: Dispatch,
    attn_q_b: Vec<MatmulDispatch>,
    q_nope_absorbed: Vec<MatmulDispatch>,
    kv_rows: Dispatch,
    attn: Dispatch,
    /// The attention's grid for a chunk of n tokens (of the kernel `attn` runs).
    attn_grid: fn(&Config, usize) -> [u32; 3],
    attn_v_b: Vec<MatmulDispatch>,
    attn_output: Vec<MatmulDispatch>,
    ffn_norm: Dispatch,
    ffn: FfnDispatches,
}

/// Every dispatch of a chunk, in the order they run, and the activations they share.
pub struct BatchSchedule {
    /// Tokens of the largest chunk.
    pub chunk: usize,
    /// Rows of logits one head pass writes ([`Head::Rows`]).
    pub logit_rows: usize,
    act: Activations,
    embed: Vec<Dispatch>,
    layers: Vec<LayerDispatches>,
    out_norm: Dispatch,
    /// The last row's logits (a mat-vec) and their argmax.
    head_last: Vec<Dispatch>,
    head_argmax: Vec<Dispatch>,
    /// Logits of several rows (a mat-mul).
    head_rows: Vec<MatmulDispatch>,
}

/// The experts each MoE layer stacks on the GPU (routed, then shared: resident.rs) and the
/// slots per token, from the blueprint, if the model has MoE layers: what [`moe_shape`]
/// finds in the uploaded model.
fn moe_stack(cfg: &Config) -> Option<(usize, usize)> {
    (cfg.n_dense_layers < cfg.n_layers).then_some((
        cfg.n_experts + cfg.n_shared_experts,
        cfg.n_experts_used + cfg.n_shared_experts,
    ))
}

/// The routed and shared experts and the slots per token of the model's MoE layers, if any.
fn moe_shape(model: &GpuModel) -> Option<(usize, usize)> {
    model.layers.iter().find_map(|l| {
        let f = &l.ffn;
        f.router
            .as_ref()
            .map(|_| (f.gate_up.rows / (2 * f.width), f.slots))
    })
}

/// Values per token of the chunk-sized activations (f32, or u32 for the route).
struct Widths {
    hidden: usize,
    qkv_a: usize,
    q_a: usize,
    q: usize,
    /// q_nope_absorbed and kqv
    heads_kv: usize,
    kqv_out: usize,
    router: usize,
    /// Ids and weights of the pairs; the pairs buffer holds about as much.
    route: usize,
    act: usize,
    down: usize,
    rope: usize,
    /// The cooperative attention's query parts (two f16 per cache-row value and head), and
    /// their scales (at most one word per head).
    q_parts: usize,
}

impl Widths {
    /// From the blueprint alone (`info` sizes a chunk before any upload): the GPU model
    /// stacks each MoE layer's routed and shared experts as `slots` of `expert_ffn`, and a
    /// dense layer's FFN as one slot of `dense_ffn`.
    fn new(cfg: &Config) -> Widths {
        let heads = cfg.n_heads;
        let slots = moe_stack(cfg).map_or(1, |(_, slots)| slots);
        let dense_act = if cfg.n_dense_layers > 0 {
            cfg.dense_ffn
        } else {
            0
        };
        let moe_act = moe_stack(cfg).map_or(0, |(_, slots)| slots * cfg.expert_ffn);
        Widths {
            hidden: cfg.hidden,
            qkv_a: cfg.q_lora_rank + cfg.cache_row(),
            q_a: cfg.q_lora_rank,
            q: heads * (cfg.qk_nope + cfg.qk_rope),
            heads_kv: heads * cfg.kv_lora_rank,
            kqv_out: heads * cfg.v_head,
            router: cfg.n_experts.max(1),
            route: 2 * slots,
            act: dense_act.max(moe_act).max(1),
            down: slots * cfg.hidden,
            rope: cfg.qk_rope,
            q_parts: heads * (cfg.cache_row() + 1),
        }
    }

    /// Every activation's width, in the order [`Activations::new`] allocates them.
    fn all(&self) -> [usize; 16] {
        [
            self.hidden,
            self.hidden,
            self.qkv_a,
            self.q_a,
            self.q,
            self.heads_kv,
            self.heads_kv,
            self.kqv_out,
            self.router,
            self.route,
            self.route,
            self.act,
            self.down,
            self.rope,
            1,
            self.q_parts,
        ]
    }
}

/// Bytes of the activations of a chunk of `tokens` tokens.
pub fn activation_bytes(cfg: &Config, tokens: usize) -> u64 {
    4 * Widths::new(cfg).all().iter().sum::<usize>() as u64 * tokens as u64
}

/// Tokens per chunk: `requested` (or [`DEFAULT_CHUNK`]), cut to the context and so that
/// every activation fits one binding and one buffer of the device and all of them the
/// budget.
pub fn chunk_tokens(
    ctx: &GpuContext,
    cfg: &Config,
    max_context: usize,
    requested: Option<usize>,
) -> Result<usize> {
    if requested == Some(0) {
        return Err(Error::Input("a prefill chunk of 0 tokens".into()));
    }
    let want = planned_chunk(requested, max_context);
    let widths = Widths::new(cfg).all();
    let largest = 4 * *widths.iter().max().unwrap() as u64;
    let total = activation_bytes(cfg, 1);
    // Grids of one workgroup per token stay within the per-dimension limit.
    let grid = ctx.limits.max_compute_workgroups_per_dimension as usize;
    let per_buffer = ctx.max_binding.min(ctx.max_buffer);
    let fit = (per_buffer / largest).min(ACTIVATION_BUDGET / total) as usize;
    Ok(want.min(fit).min(grid).max(1))
}

/// Tokens per chunk before the device's limits ([`chunk_tokens`] cuts it to those):
/// `requested` or [`DEFAULT_CHUNK`], at most the context.
pub fn planned_chunk(requested: Option<usize>, max_context: usize) -> usize {
    requested.unwrap_or(DEFAULT_CHUNK).min(max_context).max(1)
}

/// A chunk's activations, allocated before the weights are uploaded (so a chunk that does
/// not fit is refused before the long upload, as the caches are), with the choices made
/// for them: the routing's shape, the LM head's rows per pass, and whether the attention
/// runs on cooperative matrices (its query parts then have a buffer).
pub struct ChunkBuffers {
    chunk: usize,
    logit_rows: usize,
    routing: Routing,
    act: Activations,
}

impl ChunkBuffers {
    /// The buffers of a chunk of up to `chunk` tokens ([`chunk_tokens`]) of `cfg`'s model.
    pub fn allocate(
        ctx: &GpuContext,
        p: &Pipelines,
        cfg: &Config,
        chunk: usize,
        cache_type: CacheType,
    ) -> Result<ChunkBuffers> {
        if let Some(why) = attn_batch::unsupported(cfg) {
            return Err(Error::Gpu(format!(
                "the GPU attention cannot run this model: {why}"
            )));
        }
        let vocab_bytes = 4 * cfg.vocab as u64;
        let per_buffer = ctx.max_binding.min(ctx.max_buffer);
        let logit_rows = (LOGITS_BUDGET.min(per_buffer) / vocab_bytes).max(1) as usize;
        let logit_rows = logit_rows.min(chunk);
        let (experts, slots) = moe_stack(cfg).unwrap_or((1, 1));
        let routing = Routing {
            experts,
            slots,
            max_tokens: chunk,
        };
        let wg = crate::gpu::context::WORKGROUP_SIZE as usize;
        if routing.experts > moe_group::MAX_GROUPS || routing.slots > wg {
            return Err(Error::Gpu(format!(
                "{} experts ({} per token): the GPU's batched MoE handles up to {} ({wg} per token)",
                routing.experts,
                routing.slots,
                moe_group::MAX_GROUPS
            )));
        }
        // The cooperative attention where it runs and agrees with the f32 kernel here.
        let coop_attention = attn_batch_coop::runs(ctx, cfg, cache_type)
            && attn_batch_coop::passes(ctx, "the batched attention", || {
                attn_batch_coop::check_against_fma(ctx, p, cfg)
            });
        let act = Activations::new(
            ctx,
            cfg,
            &Widths::new(cfg),
            chunk,
            logit_rows,
            &routing,
            coop_attention,
        )?;
        Ok(ChunkBuffers {
            chunk,
            logit_rows,
            routing,
            act,
        })
    }
}

impl BatchSchedule {
    /// The dispatches of a chunk over its buffers, the weights of `model` and the caches.
    pub fn new(
        ctx: &GpuContext,
        p: &Pipelines,
        cfg: &Config,
        buffers: ChunkBuffers,
        model: &GpuModel,
        caches: &LatentCaches,
    ) -> Result<BatchSchedule> {
        let ChunkBuffers {
            chunk,
            logit_rows,
            routing,
            act,
        } = buffers;
        if moe_shape(model) != moe_stack(cfg) {
            return Err(Error::Gpu(format!(
                "the uploaded model stacks (experts, per token) {:?} where its blueprint says \
                 {:?}",
                moe_shape(model),
                moe_stack(cfg)
            )));
        }
        let embed = embed::dispatches(ctx, p, &model.token_embd, &act.token_ids, &act.x);
        let layers = model
            .layers
            .iter()
            .zip(&caches.layers)
            .map(|(l, cache)| {
                let c = (cache, caches.cache_type);
                LayerDispatches::new(l, c, ctx, p, cfg, &routing, &act)
            })
            .collect();
        let out_norm = rms_norm::dispatch(
            ctx,
            p,
            &act.head,
            &act.x,
            (cfg.hidden, 0),
            cfg.hidden,
            (&model.output_norm, cfg.rms_eps),
            &act.xn,
            cfg.hidden,
        );
        let head_last = matvec::dispatches(
            ctx,
            p,
            &model.output,
            &matvec::Matvec {
                input: &act.xn,
                in_offset: 0,
                groups: None,
                norm: None,
                out: &act.logits,
                accumulate: false,
            },
        );
        let head_argmax = argmax::dispatches(ctx, p, cfg.vocab, &act.logits, &act.argmax_id)?;
        let head_rows = matmul::dispatches(
            ctx,
            p,
            &model.output,
            &matmul::Matmul {
                batch: &act.head,
                x: &act.xn,
                x_stride: cfg.hidden,
                in_offset: 0,
                groups: None,
                y: &act.logits,
                y_stride: cfg.vocab,
                accumulate: false,
                swiglu: false,
                experts: None,
            },
        );
        Ok(BatchSchedule {
            chunk,
            logit_rows,
            act,
            embed,
            layers,
            out_norm,
            head_last,
            head_argmax,
            head_rows,
        })
    }

    /// Dispatches one chunk records per layer (without the embedding and the head).
    pub fn dispatches_per_layer(&self) -> Vec<usize> {
        self.layers.iter().map(LayerDispatches::count).collect()
    }

    /// `[logit rows][vocab]`: what the head wrote (row 0 for [`Head::Last`]).
    pub fn logits(&self) -> &wgpu::Buffer {
        &self.act.logits
    }

    /// `[1]` the argmax of [`Head::Argmax`].
    pub fn argmax_id(&self) -> &wgpu::Buffer {
        &self.act.argmax_id
    }

    /// `[rows][hidden]`: the hidden states of [`Head::Hidden`].
    pub fn hidden(&self) -> &wgpu::Buffer {
        &self.act.xn
    }

    /// Queues the writes of a chunk's inputs: `tokens` at positions `pos..`.
    pub fn write_inputs(&self, ctx: &GpuContext, cfg: &Config, tokens: &[u32], pos: usize) {
        assert!(!tokens.is_empty() && tokens.len() <= self.chunk);
        let act = &self.act;
        ctx.queue
            .write_buffer(&act.token_ids, 0, bytemuck::cast_slice(tokens));
        let params = BatchParams {
            n: tokens.len() as u32,
            pos: pos as u32,
            ..Default::default()
        };
        ctx.queue
            .write_buffer(&act.batch, 0, bytemuck::bytes_of(&params));
        let rope: Vec<[f32; 2]> = (pos..pos + tokens.len())
            .flat_map(|p| attn_partial::rope_table(p, cfg.qk_rope, cfg.rope_base))
            .collect();
        ctx.queue
            .write_buffer(&act.rope_cs, 0, bytemuck::cast_slice(&rope));
    }

    /// Queues the write of the rows the LM head reads (of the chunk's residual).
    pub fn write_head(&self, ctx: &GpuContext, first: usize, n: usize) {
        let params = BatchParams {
            n: n as u32,
            first: first as u32,
            ..Default::default()
        };
        ctx.queue
            .write_buffer(&self.act.head, 0, bytemuck::bytes_of(&params));
    }

    /// Records a chunk of `n` tokens through every layer.
    pub fn record_layers(&self, rec: &mut Recorder, cfg: &Config, n: usize) {
        let rows = [n as u32, 1, 1];
        let mm = |rec: &mut Recorder, name, ds: &[MatmulDispatch]| {
            for d in ds {
                rec.run_sized(name, &d.dispatch, d.grid(n));
            }
        };
        for d in &self.embed {
            rec.run_sized("inp_embd", d, rows); // x[t] = token_embd[token t]
        }
        for l in &self.layers {
            // Attention: MLA over the latent cache, k_b absorbed into q.
            rec.run_sized("attn_norm", &l.attn_norm, rows); // xn = rmsnorm(x) * attn_norm
            mm(rec, "q_a+kv_cmpr_pe", &l.attn_qkv_a); // [q_a | kv_cmpr | k_pe] = [q_a; kv_a] · xn
            rec.run_sized("q_a_norm", &l.q_a_norm, rows); // rmsnorm(q_a) * q_a_norm
            mm(rec, "q", &l.attn_q_b); // q = q_b · q_a
            mm(rec, "q_nope_absorbed", &l.q_nope_absorbed); // k_b[h] · q_nope[h]
                                                            // cache[pos + t] = [rmsnorm(kv_cmpr) * kv_norm | rope(k_pe)]
            rec.run_sized("kv_cache", &l.kv_rows, rows);
            // kqv[t][h] = Σ_k softmax(q · cache[k])[k] latent[k], k <= pos + t
            rec.run_sized("kqv", &l.attn, (l.attn_grid)(cfg, n));
            mm(rec, "kqv_out", &l.attn_v_b); // v_b[h] · kqv[h]
            mm(rec, "attn_out", &l.attn_output); // x += attn_output · kqv_out
            rec.run_sized("ffn_norm", &l.ffn_norm, rows); // xn = rmsnorm(x) * ffn_norm
            match &l.ffn {
                FfnDispatches::Dense { gate_up, down } => {
                    mm(rec, "ffn_gate_up", gate_up); // act = silu(gate · xn) * (up · xn)
                    mm(rec, "ffn_down", down); // x += down · act
                }
                FfnDispatches::Moe {
                    router,
                    route,
                    group,
                    gate_up,
                    down,
                    combine,
                } => {
                    mm(rec, "ffn_moe_logits", router); // router · xn
                    rec.run_sized("ffn_moe_route", route, rows); // top-k ids and weights
                    rec.run_sized("ffn_moe_group", group, [1, 1, 1]); // pairs by expert
                    mm(rec, "ffn_moe_gate_up", gate_up); // per expert over its pairs' tokens
                    mm(rec, "ffn_moe_down", down);
                    rec.run_sized("ffn_moe_combine", combine, rows); // x += Σ_s w_s down_s
                }
            }
        }
    }

    /// Records the LM head's part (after [`BatchSchedule::write_head`] for its rows).
    pub fn record_head(&self, rec: &mut Recorder, head: Head) {
        let (rows, logits) = match head {
            Head::Nothing => return,
            Head::Last | Head::Argmax => (1, None),
            Head::Hidden { n, .. } => (n, None),
            Head::Rows { n, .. } => (n, Some(n)),
        };
        // xn = rmsnorm(x[first..]) * output_norm
        rec.run_sized("result_norm", &self.out_norm, [rows as u32, 1, 1]);
        match (head, logits) {
            (_, Some(n)) => {
                for d in &self.head_rows {
                    rec.run_sized("result_output", &d.dispatch, d.grid(n));
                }
            }
            (Head::Last | Head::Argmax, None) => rec.run("result_output", &self.head_last),
            _ => {}
        }
        if head == Head::Argmax {
            rec.run("result_argmax", &self.head_argmax);
        }
    }
}

impl Activations {
    fn new(
        ctx: &GpuContext,
        cfg: &Config,
        w: &Widths,
        chunk: usize,
        logit_rows: usize,
        routing: &Routing,
        coop_attention: bool,
    ) -> Result<Activations> {
        let buf = |label: &str, per_token: usize| storage_zeroed(ctx, label, chunk * per_token);
        Ok(Activations {
            x: buf("batch x", w.hidden)?,
            xn: buf("batch xn", w.hidden)?,
            qkv_a: buf("batch qkv_a", w.qkv_a)?,
            q_a: buf("batch q_a", w.q_a)?,
            q: buf("batch q", w.q)?,
            q_abs: buf("batch q_nope_absorbed", w.heads_kv)?,
            kqv: buf("batch kqv", w.heads_kv)?,
            kqv_out: buf("batch kqv_out", w.kqv_out)?,
            router: buf("batch ffn_moe_logits", w.router)?,
            route: storage_zeroed(ctx, "batch route", routing.route_len())?,
            pairs: storage_zeroed(ctx, "batch pairs", routing.pairs_len())?,
            act: buf("batch ffn_act", w.act)?,
            down: buf("batch ffn_moe_down", w.down)?,
            rope_cs: buf("batch rope_cs", w.rope)?,
            token_ids: buf("batch token ids", 1)?,
            logits: storage_zeroed(ctx, "batch result_output", logit_rows * cfg.vocab)?,
            argmax_id: storage_zeroed(ctx, "batch argmax", 1)?,
            batch: upload::uniform(ctx, "batch", &BatchParams::default()),
            head: upload::uniform(ctx, "batch head", &BatchParams::default()),
            q_parts: if coop_attention {
                let words = attn_batch_coop::q_parts_words(cfg, chunk);
                Some(storage_zeroed(ctx, "batch attention query parts", words)?)
            } else {
                None
            },
        })
    }
}

/// A mat-mul over the chunk's tokens, `[tokens][x_stride]` in, `[tokens][y_stride]` out.
fn plain<'a>(
    a: &'a Activations,
    x: &'a wgpu::Buffer,
    x_stride: usize,
    y: &'a wgpu::Buffer,
    y_stride: usize,
) -> matmul::Matmul<'a> {
    matmul::Matmul {
        batch: &a.batch,
        x,
        x_stride,
        in_offset: 0,
        groups: None,
        y,
        y_stride,
        accumulate: false,
        swiglu: false,
        experts: None,
    }
}

impl LayerDispatches {
    fn new(
        l: &GpuLayer,
        (cache, cache_type): (&wgpu::Buffer, CacheType),
        ctx: &GpuContext,
        p: &Pipelines,
        cfg: &Config,
        routing: &Routing,
        a: &Activations,
    ) -> LayerDispatches {
        let (eps, heads) = (cfg.rms_eps, cfg.n_heads);
        let head_dim = cfg.qk_nope + cfg.qk_rope;
        let qkv_width = cfg.q_lora_rank + cfg.cache_row();
        let attention = attn_batch::AttnBatch {
            batch: &a.batch,
            q_abs: &a.q_abs,
            q: &a.q,
            rope_cs: &a.rope_cs,
            cache,
            cache_type,
            kqv: &a.kqv,
        };
        let norm = |weight: &wgpu::Buffer, x: &wgpu::Buffer, (stride, cols), out: &wgpu::Buffer| {
            rms_norm::dispatch(
                ctx,
                p,
                &a.batch,
                x,
                (stride, 0),
                cols,
                (weight, eps),
                out,
                cols,
            )
        };
        let plain = |x, x_stride, y, y_stride| plain(a, x, x_stride, y, y_stride);
        let mm = |m: &GpuMatrix, spec: matmul::Matmul| matmul::dispatches(ctx, p, m, &spec);
        LayerDispatches {
            attn_norm: norm(&l.attn_norm, &a.x, (cfg.hidden, cfg.hidden), &a.xn),
            attn_qkv_a: mm(&l.attn_qkv_a, plain(&a.xn, cfg.hidden, &a.qkv_a, qkv_width)),
            q_a_norm: norm(
                &l.attn_q_a_norm,
                &a.qkv_a,
                (qkv_width, cfg.q_lora_rank),
                &a.q_a,
            ),
            attn_q_b: mm(
                &l.attn_q_b,
                plain(&a.q_a, cfg.q_lora_rank, &a.q, heads * head_dim),
            ),
            q_nope_absorbed: mm(
                &l.attn_k_b,
                matmul::Matmul {
                    groups: Some((cfg.kv_lora_rank, head_dim)),
                    ..plain(&a.q, heads * head_dim, &a.q_abs, heads * cfg.kv_lora_rank)
                },
            ),
            kv_rows: kv_rows::dispatch(
                ctx,
                p,
                cfg,
                &kv_rows::KvRows {
                    batch: &a.batch,
                    kv_a: &a.qkv_a,
                    in_stride: qkv_width,
                    kv_offset: cfg.q_lora_rank,
                    kv_norm: &l.attn_kv_a_norm,
                    rope_cs: &a.rope_cs,
                    cache,
                    cache_type,
                },
            ),
            attn: match &a.q_parts {
                Some(q_parts) => attn_batch_coop::dispatch(ctx, p, cfg, &attention, q_parts),
                None => attn_batch::dispatch(ctx, p, cfg, &attention),
            },
            attn_grid: match &a.q_parts {
                Some(_) => attn_batch_coop::grid,
                None => attn_batch::grid,
            },
            attn_v_b: mm(
                &l.attn_v_b,
                matmul::Matmul {
                    groups: Some((cfg.v_head, cfg.kv_lora_rank)),
                    ..plain(
                        &a.kqv,
                        heads * cfg.kv_lora_rank,
                        &a.kqv_out,
                        heads * cfg.v_head,
                    )
                },
            ),
            attn_output: mm(
                &l.attn_output,
                matmul::Matmul {
                    accumulate: true,
                    ..plain(&a.kqv_out, heads * cfg.v_head, &a.x, cfg.hidden)
                },
            ),
            ffn_norm: norm(&l.ffn_norm, &a.x, (cfg.hidden, cfg.hidden), &a.xn),
            ffn: FfnDispatches::new(&l.ffn, ctx, p, cfg, routing, a),
        }
    }

    fn count(&self) -> usize {
        let ffn = match &self.ffn {
            FfnDispatches::Dense { gate_up, down } => gate_up.len() + down.len(),
            FfnDispatches::Moe {
                router,
                gate_up,
                down,
                ..
            } => router.len() + gate_up.len() + down.len() + 3,
        };
        self.attn_qkv_a.len()
            + self.attn_q_b.len()
            + self.q_nope_absorbed.len()
            + self.attn_v_b.len()
            + self.attn_output.len()
            + 5 // three norms, kv_rows, attn
            + ffn
    }
}

impl FfnDispatches {
    fn new(
        f: &GpuFfn,
        ctx: &GpuContext,
        p: &Pipelines,
        cfg: &Config,
        routing: &Routing,
        a: &Activations,
    ) -> FfnDispatches {
        let spec = |x, x_stride, y, y_stride| plain(a, x, x_stride, y, y_stride);
        let mm = |m: &GpuMatrix, spec: matmul::Matmul| matmul::dispatches(ctx, p, m, &spec);
        let Some((router, bias)) = &f.router else {
            return FfnDispatches::Dense {
                gate_up: mm(
                    &f.gate_up,
                    matmul::Matmul {
                        swiglu: true,
                        ..spec(&a.xn, cfg.hidden, &a.act, f.width)
                    },
                ),
                down: mm(
                    &f.down,
                    matmul::Matmul {
                        accumulate: true,
                        ..spec(&a.act, f.width, &a.x, cfg.hidden)
                    },
                ),
            };
        };
        assert_eq!(
            (f.gate_up.rows / (2 * f.width), f.slots),
            (routing.experts, routing.slots),
            "every MoE layer has the same experts"
        );
        let experts = |gather| {
            Some(matmul::Experts {
                pairs: &a.pairs,
                tiles_at: routing.tiles_at(),
                experts: routing.experts,
                slots: routing.slots,
                gather,
            })
        };
        let rule = moe_route::Rule {
            experts: cfg.n_experts,
            k: cfg.n_experts_used,
            norm: cfg.expert_weights_norm,
            scale: cfg.expert_weights_scale,
        };
        FfnDispatches::Moe {
            router: mm(router, spec(&a.xn, cfg.hidden, &a.router, cfg.n_experts)),
            route: moe_route::dispatch(ctx, p, &rule, routing, &a.batch, &a.router, bias, &a.route),
            group: moe_group::dispatch(ctx, p, routing, &a.batch, &a.route, &a.pairs),
            gate_up: mm(
                &f.gate_up,
                matmul::Matmul {
                    swiglu: true,
                    experts: experts(true),
                    ..spec(&a.xn, cfg.hidden, &a.act, f.width)
                },
            ),
            down: mm(
                &f.down,
                matmul::Matmul {
                    experts: experts(false),
                    ..spec(&a.act, f.width, &a.down, cfg.hidden)
                },
            ),
            combine: moe_combine::dispatch(
                ctx, p, routing, cfg.hidden, &a.batch, &a.route, &a.pairs, &a.down, &a.x,
            ),
        }
    }
}
