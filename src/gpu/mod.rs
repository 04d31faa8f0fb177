//! The GPU backend: WGSL kernels through wgpu.
//!
//! [`context`] picks the adapter and opens the device; [`upload`] repacks the weights into
//! GPU buffers once; [`shaders`] builds pipelines; [`kernels`] holds one launcher per WGSL
//! file; [`GpuBackend`] records a whole token into one command encoder.

pub mod context;
pub mod kernels;
pub mod shaders;
pub mod upload;

pub use context::{list_adapters, GpuContext, GpuOptions};

use crate::backend::Backend;
use crate::config::Config;
use crate::cpu::check_positions;
use crate::error::{Error, Result};
use crate::weights::{DenseFfn, Ffn, Layer, Matrix, Weights};
use kernels::{
    argmax, attn_combine, attn_partial, embed, ffn_down, ffn_gate_up, matvec, TokenParams,
};
use shaders::{Dispatch, PipelineInfo, Pipelines};
use upload::{storage_zeroed, try_storage_f32, GpuMatrix, RowRef, Uploader};

pub use crate::backend::{TokenProfile, TokenStats};

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
}

/// The feed-forward weights of a layer, in the one shape the kernels know: a stack of
/// experts (`[experts][ffn][gate, up][hidden]` and `[experts][hidden][ffn]`) run for the
/// slots the route buffer lists. Shared experts are stacked after the routed ones; a dense
/// FFN is a stack of one expert with a fixed route.
struct GpuFfn {
    /// Router (`ffn_gate_inp`) and selection bias, MoE layers only.
    router: Option<(GpuMatrix, wgpu::Buffer)>,
    gate_up: GpuMatrix,
    down: GpuMatrix,
    /// Width of one expert.
    width: usize,
    /// Experts run per token (routed + shared, or 1).
    slots: usize,
    /// Dense layers: the fixed route `[0][1.0]`.
    fixed_route: Option<wgpu::Buffer>,
}

/// One layer's weights on the GPU (kept alive with the dispatches that bind them).
struct GpuLayer {
    attn_norm: wgpu::Buffer,
    /// `[q_a; kv_a_mqa]` stacked: one mat-vec gives `[q_a | kv_cmpr | k_pe]`.
    attn_qkv_a: GpuMatrix,
    attn_q_a_norm: wgpu::Buffer,
    attn_q_b: GpuMatrix,
    attn_kv_a_norm: wgpu::Buffer,
    attn_k_b: GpuMatrix,
    attn_v_b: GpuMatrix,
    attn_output: GpuMatrix,
    ffn_norm: wgpu::Buffer,
    ffn: GpuFfn,
    /// `[max_context][kv_lora + rope]`: latent and roped k_pe of every position.
    kv_cache: wgpu::Buffer,
}

/// Activations: one buffer per intermediate, shared by all layers.
struct Activations {
    /// [hidden] the residual stream.
    x: wgpu::Buffer,
    /// [q_lora + kv_lora + rope] `[q_a | kv_cmpr | k_pe]`
    qkv_a: wgpu::Buffer,
    /// [heads][nope + rope] `[q_nope | q_pe]` per head
    q: wgpu::Buffer,
    /// [heads][kv_lora]
    q_nope_absorbed: wgpu::Buffer,
    /// [heads][chunks][2 + kv_lora] per chunk of positions: max, sum, context
    attn_partial: wgpu::Buffer,
    /// [heads][kv_lora] softmax-weighted latent context
    kqv: wgpu::Buffer,
    /// [heads][v_head]
    kqv_out: wgpu::Buffer,
    /// [experts] router logits
    ffn_moe_logits: wgpu::Buffer,
    /// [slots] expert ids, then [slots] weights (f32 bits)
    ffn_moe_route: wgpu::Buffer,
    /// [slots][ffn] SwiGLU activations of every expert run
    ffn_act: wgpu::Buffer,
    /// [vocab]
    result_output: wgpu::Buffer,
    /// [1] id of the token fed: written by the CPU for a given token, or by the previous
    /// token's argmax when greedy decoding feeds its own choice (no round trip).
    token_id: wgpu::Buffer,
    /// per-token uniform: position, context length, embedding row
    token: wgpu::Buffer,
    /// [rope / 2] (cos, sin) of this position
    rope_cs: wgpu::Buffer,
}

/// The dispatches of one layer, in the order they run.
struct LayerDispatches {
    attn_qkv_a: Vec<Dispatch>,
    attn_q_b: Vec<Dispatch>,
    q_nope_absorbed: Vec<Dispatch>,
    attn_partial: Dispatch,
    attn_combine: Dispatch,
    attn_v_b: Vec<Dispatch>,
    attn_output: Vec<Dispatch>,
    /// MoE only: the router mat-vec (ffn_gate_up chooses the experts from its output).
    ffn_moe_logits: Vec<Dispatch>,
    ffn_gate_up: Vec<Dispatch>,
    ffn_down: Vec<Dispatch>,
}

/// Where the id of the token fed comes from.
#[derive(Clone, Copy)]
enum Feed {
    Id(u32),
    /// The argmax of the token before, still on the GPU.
    PreviousArgmax,
}

/// What a token's submit brings back.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Readback {
    Nothing,
    Logits,
    Argmax,
}

/// Counts dispatches while recording one compute pass, and when profiling writes a GPU
/// timestamp after each one.
struct Recorder<'p> {
    pass: wgpu::ComputePass<'p>,
    dispatches: u64,
    /// The query set and the name of each dispatch recorded so far (profiling only).
    timestamps: Option<(&'p wgpu::QuerySet, Vec<&'static str>)>,
}

impl Recorder<'_> {
    /// Records the dispatches computing the intermediate `name` (llama.cpp's names).
    fn run(&mut self, name: &'static str, ds: &[Dispatch]) {
        for d in ds {
            self.run_sized(name, d, d.workgroups);
        }
    }

    fn run_sized(&mut self, name: &'static str, d: &Dispatch, workgroups: [u32; 3]) {
        d.record_sized(&mut self.pass, workgroups);
        self.dispatches += 1;
        if let Some((queries, names)) = &mut self.timestamps {
            names.push(name);
            self.pass.write_timestamp(queries, names.len() as u32);
        }
    }
}

/// Timestamps of one profiled token: at most this many dispatches are timed (wgpu's cap).
const MAX_TIMESTAMPS: u32 = wgpu::QUERY_SET_MAX_QUERIES;

pub struct GpuBackend {
    ctx: GpuContext,
    cfg: Config,
    pipelines: Pipelines,
    max_context: usize,
    act: Activations,
    /// Kept alive for the dispatches that bind them.
    _layers: Vec<GpuLayer>,
    _token_embd: GpuMatrix,
    _output: GpuMatrix,
    _output_norm: wgpu::Buffer,
    /// One per chunk of the embedding table.
    embed: Vec<Dispatch>,
    layers: Vec<LayerDispatches>,
    result_output: Vec<Dispatch>,
    result_argmax: Vec<Dispatch>,
    logits_staging: wgpu::Buffer,
    /// Two, so a token's id can be read while the next token computes.
    argmax_staging: [wgpu::Buffer; 2],
    stats: GpuStats,
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
        if let Some(why) = attn_partial::unsupported(cfg) {
            return Err(Error::Gpu(format!(
                "the GPU attention cannot run this model: {why}"
            )));
        }
        let total: u64 = std::iter::once(&w.token_embd)
            .chain(std::iter::once(&w.output))
            .map(|m| m.data.len() as u64)
            .sum::<u64>()
            + w.layers.iter().map(layer_bytes).sum::<u64>();
        let mut up = Uploader::new(total, progress);
        let pipelines = Pipelines::new();
        let act = Activations::new(&ctx, cfg, max_context)?;

        let token_embd = GpuMatrix::from_matrix(&ctx, "token_embd", &w.token_embd, &mut up)?;
        let output = GpuMatrix::from_matrix(&ctx, "output", &w.output, &mut up)?;
        let output_norm = try_storage_f32(&ctx, "output_norm", &w.output_norm)?;
        let mut layers = Vec::with_capacity(w.layers.len());
        for (i, l) in w.layers.iter().enumerate() {
            layers.push(GpuLayer::upload(&ctx, cfg, i, l, max_context, &mut up)?);
        }

        let p = &pipelines;
        let embed = embed::dispatches(&ctx, p, &token_embd, &act.token_id, &act.x);
        let layer_dispatches = layers
            .iter()
            .map(|l| l.dispatches(&ctx, p, cfg, max_context, &act))
            .collect::<Vec<_>>();
        let result_output = matvec::dispatches(
            &ctx,
            p,
            &output,
            &matvec::Matvec {
                input: &act.x,
                in_offset: 0,
                groups: None,
                norm: Some((&output_norm, cfg.rms_eps)),
                out: &act.result_output,
                accumulate: false,
            },
        );
        let result_argmax =
            argmax::dispatches(&ctx, p, cfg.vocab, &act.result_output, &act.token_id)?;
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
        let dispatches_per_layer = layer_dispatches
            .iter()
            .map(LayerDispatches::count)
            .collect();
        let stats = GpuStats {
            upload_bytes: up.bytes,
            upload_bytes_per_second: up.bytes_per_second(),
            dispatches_per_layer,
            ..Default::default()
        };
        Ok(GpuBackend {
            ctx,
            cfg: cfg.clone(),
            pipelines,
            max_context,
            act,
            _layers: layers,
            _token_embd: token_embd,
            _output: output,
            _output_norm: output_norm,
            embed,
            layers: layer_dispatches,
            result_output,
            result_argmax,
            logits_staging,
            argmax_staging,
            stats,
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
        let needed =
            wgpu::Features::TIMESTAMP_QUERY | wgpu::Features::TIMESTAMP_QUERY_INSIDE_PASSES;
        if !self.ctx.features.contains(needed) {
            return Err(Error::Gpu(format!(
                "{} cannot time dispatches (needs timestamp queries inside passes)",
                self.ctx.describe()
            )));
        }
        check_positions(&[token], pos, self.max_context, self.cfg.vocab)?;
        let queries = self.ctx.device.create_query_set(&wgpu::QuerySetDescriptor {
            label: Some("dispatch timestamps"),
            ty: wgpu::QueryType::Timestamp,
            count: MAX_TIMESTAMPS,
        });
        let mut names = Vec::new();
        let profile = Some((&queries, &mut names));
        let submitted = self.submit(Feed::Id(token), pos, Readback::Argmax, 0, profile)?;
        self.read_back(Readback::Argmax, 0, submitted)?;
        let size = 8 * (names.len() as u64 + 1);
        let resolved = self.ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("timestamps"),
            size,
            usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        let mut enc = self.ctx.device.create_command_encoder(&Default::default());
        enc.resolve_query_set(&queries, 0..names.len() as u32 + 1, &resolved, 0);
        self.ctx.queue.submit([enc.finish()]);
        let ticks: Vec<u64> = bytemuck::pod_collect_to_vec(&self.ctx.read_bytes(&resolved, size)?);
        let period = self.ctx.queue.get_timestamp_period() as f64 * 1e-9;
        let dispatches = names
            .iter()
            .zip(ticks.windows(2))
            .map(|(&n, w)| (n, w[1].saturating_sub(w[0]) as f64 * period))
            .collect();
        Ok(TokenProfile { dispatches })
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
        let (ctx, cfg, act) = (&self.ctx, &self.cfg, &self.act);
        if let Feed::Id(token) = feed {
            ctx.queue
                .write_buffer(&act.token_id, 0, bytemuck::bytes_of(&token));
        }
        let params = TokenParams::new(pos);
        // The attention grid grows with the context: the same for every layer of this token.
        let attn_grid = attn_partial::grid(cfg, pos + 1);
        ctx.queue
            .write_buffer(&act.token, 0, bytemuck::bytes_of(&params));
        let rope = attn_partial::rope_table(pos, cfg.qk_rope, cfg.rope_base);
        ctx.queue
            .write_buffer(&act.rope_cs, 0, bytemuck::cast_slice(&rope));

        let mut enc = ctx
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("token"),
            });
        let mut rec = Recorder {
            pass: enc
                .begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: Some("token"),
                    timestamp_writes: None,
                })
                .forget_lifetime(),
            dispatches: 0,
            timestamps: profile.as_ref().map(|(q, _)| (*q, Vec::new())),
        };
        if let Some((queries, _)) = &rec.timestamps {
            rec.pass.write_timestamp(queries, 0);
        }
        rec.run("inp_embd", &self.embed); // x = token_embd[token]
        for l in &self.layers {
            // Attention (DESIGN steps 1-9).
            // [q_a | kv_cmpr | k_pe] = [q_a; kv_a] · rmsnorm(x) * attn_norm
            rec.run("q_a+kv_cmpr_pe", &l.attn_qkv_a);
            // q = q_b · rmsnorm(q_a) * q_a_norm
            rec.run("q", &l.attn_q_b);
            // q_nope_absorbed[h] = k_b[h] · q_nope[h]
            rec.run("q_nope_absorbed", &l.q_nope_absorbed);
            // cache[pos] = [rmsnorm(kv_cmpr) * kv_norm | rope(k_pe)]; scores with rope(q_pe),
            // softmax and context per split of positions
            rec.run_sized("kq_partial", &l.attn_partial, attn_grid);
            // kqv[h] = Σ_t p[h][t] · latent[t]
            rec.run("kqv", std::slice::from_ref(&l.attn_combine));
            // kqv_out[h] = v_b[h] · kqv[h]
            rec.run("kqv_out", &l.attn_v_b);
            // x += attn_output · kqv_out
            rec.run("attn_out", &l.attn_output);
            // Feed-forward (DESIGN step 10). MoE: router · rmsnorm(x) * ffn_norm
            rec.run("ffn_moe_logits", &l.ffn_moe_logits);
            // MoE: top-k ids and weights; act[s] = silu(gate_e · h) * (up_e · h)
            rec.run("ffn_gate_up", &l.ffn_gate_up);
            rec.run("ffn_down", &l.ffn_down); // x += Σ_s w_s · down_e · act[s]
        }
        if read != Readback::Nothing {
            rec.run("result_output", &self.result_output); // output · rmsnorm(x) * output_norm
        }
        if read == Readback::Argmax {
            rec.run("result_argmax", &self.result_argmax);
        }
        let dispatches = rec.dispatches;
        if let (Some((_, names)), Some((_, out))) = (rec.timestamps.take(), profile) {
            *out = names;
        }
        drop(rec);
        let size = self.readback_size(read);
        match read {
            Readback::Nothing => {}
            Readback::Logits => {
                enc.copy_buffer_to_buffer(&act.result_output, 0, &self.logits_staging, 0, size)
            }
            Readback::Argmax => {
                enc.copy_buffer_to_buffer(&act.token_id, 0, &self.argmax_staging[slot], 0, size)
            }
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

    /// Blocks until every submitted token has run (for timing).
    pub fn finish(&self) -> Result<()> {
        self.ctx.wait()
    }
}

impl Backend for GpuBackend {
    fn describe(&self) -> String {
        format!(
            "gpu: {}{}",
            self.ctx.describe(),
            if self.ctx.subgroups {
                ", subgroups"
            } else {
                ""
            }
        )
    }

    fn forward(&mut self, tokens: &[u32], start_pos: usize, all_logits: bool) -> Result<Vec<f32>> {
        check_positions(tokens, start_pos, self.max_context, self.cfg.vocab)?;
        let mut out = Vec::new();
        for (i, &t) in tokens.iter().enumerate() {
            let read = if all_logits || i + 1 == tokens.len() {
                Readback::Logits
            } else {
                Readback::Nothing
            };
            let bytes = self.token(t, start_pos + i, read)?;
            out.extend(bytemuck::pod_collect_to_vec::<u8, f32>(&bytes));
        }
        Ok(out)
    }

    fn forward_argmax(&mut self, tokens: &[u32], start_pos: usize) -> Result<u32> {
        check_positions(tokens, start_pos, self.max_context, self.cfg.vocab)?;
        let mut id = 0;
        for (i, &t) in tokens.iter().enumerate() {
            let last = i + 1 == tokens.len();
            let bytes = self.token(
                t,
                start_pos + i,
                if last {
                    Readback::Argmax
                } else {
                    Readback::Nothing
                },
            )?;
            if last {
                id = u32::from_le_bytes(bytes[..4].try_into().unwrap());
            }
        }
        Ok(id)
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
        check_positions(&[token], pos, self.max_context, self.cfg.vocab)?;
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

    fn max_context(&self) -> usize {
        self.max_context
    }

    fn last_token_stats(&self) -> Option<TokenStats> {
        Some(self.stats.last_token)
    }

    fn profile_token(&mut self, token: u32, pos: usize) -> Result<Option<TokenProfile>> {
        GpuBackend::profile_token(self, token, pos).map(Some)
    }
}

fn layer_bytes(l: &Layer) -> u64 {
    let m = |m: &Matrix| m.data.len() as u64;
    let dense = |d: &DenseFfn| m(&d.gate) + m(&d.up) + m(&d.down);
    m(&l.attn_q_a)
        + m(&l.attn_kv_a_mqa)
        + m(&l.attn_q_b)
        + m(&l.attn_k_b)
        + m(&l.attn_v_b)
        + m(&l.attn_output)
        + match &l.ffn {
            Ffn::Dense(d) => dense(d),
            Ffn::Moe(moe) => {
                m(&moe.gate_inp)
                    + m(&moe.gate_exps.all)
                    + if moe.gate_exps.all.data.as_ptr() == moe.up_exps.all.data.as_ptr() {
                        0
                    } else {
                        m(&moe.up_exps.all)
                    }
                    + m(&moe.down_exps.all)
                    + moe.shexp.as_ref().map_or(0, dense)
            }
        }
}

impl Activations {
    fn new(ctx: &GpuContext, cfg: &Config, max_context: usize) -> Result<Activations> {
        let heads = cfg.n_heads;
        let head_dim = cfg.qk_nope + cfg.qk_rope;
        let slots = cfg.n_experts_used + cfg.n_shared_experts;
        let ffn_act = (slots * cfg.expert_ffn).max(cfg.dense_ffn);
        // Rounded up to whole vec4s: kernels read some of these as arrays of vec4.
        let buf = |label: &str, n: usize| storage_zeroed(ctx, label, n.div_ceil(4) * 4);
        Ok(Activations {
            x: buf("x", cfg.hidden)?,
            qkv_a: buf("qkv_a", cfg.q_lora_rank + cfg.cache_row())?,
            q: buf("q", heads * head_dim)?,
            q_nope_absorbed: buf("q_nope_absorbed", heads * cfg.kv_lora_rank)?,
            attn_partial: buf("attn_partial", attn_partial::partial_len(cfg, max_context))?,
            kqv: buf("kqv", heads * cfg.kv_lora_rank)?,
            kqv_out: buf("kqv_out", heads * cfg.v_head)?,
            ffn_moe_logits: buf("ffn_moe_logits", cfg.n_experts.max(1))?,
            ffn_moe_route: buf("ffn_moe_route", 2 * slots.max(1))?,
            ffn_act: buf("ffn_act", ffn_act)?,
            result_output: buf("result_output", cfg.vocab)?,
            token_id: buf("token_id", 1)?,
            token: upload::uniform(ctx, "token", &TokenParams::default()),
            rope_cs: buf("rope_cs", cfg.qk_rope)?,
        })
    }
}

impl GpuLayer {
    fn upload(
        ctx: &GpuContext,
        cfg: &Config,
        i: usize,
        l: &Layer,
        max_context: usize,
        up: &mut Uploader,
    ) -> Result<GpuLayer> {
        let name = |s: &str| format!("blk.{i}.{s}");
        let cache_bytes = (max_context * cfg.cache_row() * 4) as u64;
        if cache_bytes > ctx.max_binding {
            return Err(Error::Gpu(format!(
                "a latent cache of {max_context} positions needs {cache_bytes} bytes per layer, over the {}-byte binding limit: use a smaller context",
                ctx.max_binding
            )));
        }
        Ok(GpuLayer {
            attn_norm: try_storage_f32(ctx, &name("attn_norm"), &l.attn_norm)?,
            attn_qkv_a: GpuMatrix::concat(
                ctx,
                &name("attn_q_a+kv_a_mqa"),
                &[l.attn_q_a, l.attn_kv_a_mqa],
                up,
            )?,
            attn_q_a_norm: try_storage_f32(ctx, &name("attn_q_a_norm"), &l.attn_q_a_norm)?,
            attn_q_b: GpuMatrix::from_matrix(ctx, &name("attn_q_b"), &l.attn_q_b, up)?,
            attn_kv_a_norm: try_storage_f32(ctx, &name("attn_kv_a_norm"), &l.attn_kv_a_norm)?,
            attn_k_b: GpuMatrix::from_matrix(ctx, &name("attn_k_b"), &l.attn_k_b, up)?,
            attn_v_b: GpuMatrix::from_matrix(ctx, &name("attn_v_b"), &l.attn_v_b, up)?,
            attn_output: GpuMatrix::from_matrix(ctx, &name("attn_output"), &l.attn_output, up)?,
            ffn_norm: try_storage_f32(ctx, &name("ffn_norm"), &l.ffn_norm)?,
            ffn: GpuFfn::upload(ctx, cfg, &name("ffn"), &l.ffn, up)?,
            kv_cache: storage_zeroed(ctx, &name("kv_cache"), max_context * cfg.cache_row())?,
        })
    }

    fn dispatches(
        &self,
        ctx: &GpuContext,
        p: &Pipelines,
        cfg: &Config,
        max_context: usize,
        a: &Activations,
    ) -> LayerDispatches {
        let eps = cfg.rms_eps;
        let head_dim = cfg.qk_nope + cfg.qk_rope;
        let mv = |m: &GpuMatrix, spec: matvec::Matvec| matvec::dispatches(ctx, p, m, &spec);
        let f = &self.ffn;
        let route = f.fixed_route.as_ref().unwrap_or(&a.ffn_moe_route);
        LayerDispatches {
            attn_qkv_a: mv(
                &self.attn_qkv_a,
                matvec::Matvec {
                    input: &a.x,
                    in_offset: 0,
                    groups: None,
                    norm: Some((&self.attn_norm, eps)),
                    out: &a.qkv_a,
                    accumulate: false,
                },
            ),
            attn_q_b: mv(
                &self.attn_q_b,
                matvec::Matvec {
                    input: &a.qkv_a,
                    in_offset: 0,
                    groups: None,
                    norm: Some((&self.attn_q_a_norm, eps)),
                    out: &a.q,
                    accumulate: false,
                },
            ),
            q_nope_absorbed: mv(
                &self.attn_k_b,
                matvec::Matvec {
                    input: &a.q,
                    in_offset: 0,
                    groups: Some((cfg.kv_lora_rank, head_dim)),
                    norm: None,
                    out: &a.q_nope_absorbed,
                    accumulate: false,
                },
            ),
            attn_partial: attn_partial::dispatch(
                ctx,
                p,
                cfg,
                max_context,
                &attn_partial::Attention {
                    token: &a.token,
                    q_abs: &a.q_nope_absorbed,
                    q: &a.q,
                    kv_a: &a.qkv_a,
                    kv_norm: &self.attn_kv_a_norm,
                    rope_cs: &a.rope_cs,
                    cache: &self.kv_cache,
                    partial: &a.attn_partial,
                },
            ),
            attn_combine: attn_combine::dispatch(
                ctx,
                p,
                cfg,
                max_context,
                &a.token,
                &a.attn_partial,
                &a.kqv,
            ),
            attn_v_b: mv(
                &self.attn_v_b,
                matvec::Matvec {
                    input: &a.kqv,
                    in_offset: 0,
                    groups: Some((cfg.v_head, cfg.kv_lora_rank)),
                    norm: None,
                    out: &a.kqv_out,
                    accumulate: false,
                },
            ),
            attn_output: mv(
                &self.attn_output,
                matvec::Matvec {
                    input: &a.kqv_out,
                    in_offset: 0,
                    groups: None,
                    norm: None,
                    out: &a.x,
                    accumulate: true,
                },
            ),
            ffn_moe_logits: f.router.as_ref().map_or(Vec::new(), |(router, _)| {
                mv(
                    router,
                    matvec::Matvec {
                        input: &a.x,
                        in_offset: 0,
                        groups: None,
                        norm: Some((&self.ffn_norm, eps)),
                        out: &a.ffn_moe_logits,
                        accumulate: false,
                    },
                )
            }),
            ffn_gate_up: ffn_gate_up::dispatches(
                ctx,
                p,
                &f.gate_up,
                f.width,
                f.slots,
                &a.x,
                &self.ffn_norm,
                eps,
                &match &f.router {
                    Some((_, bias)) => ffn_gate_up::Route::Router {
                        logits: &a.ffn_moe_logits,
                        bias,
                        experts: cfg.n_experts,
                        k: cfg.n_experts_used,
                        norm: cfg.expert_weights_norm,
                        scale: cfg.expert_weights_scale,
                    },
                    None => ffn_gate_up::Route::Fixed,
                },
                route,
                &a.ffn_act,
            ),
            ffn_down: ffn_down::dispatches(
                ctx, p, &f.down, cfg.hidden, f.slots, &a.ffn_act, route, &a.x,
            ),
        }
    }
}

impl LayerDispatches {
    fn count(&self) -> usize {
        self.attn_qkv_a.len()
            + self.attn_q_b.len()
            + self.q_nope_absorbed.len()
            + 2 // attn_partial, attn_combine
            + self.attn_v_b.len()
            + self.attn_output.len()
            + self.ffn_moe_logits.len()
            + self.ffn_gate_up.len()
            + self.ffn_down.len()
    }
}

impl GpuFfn {
    fn upload(
        ctx: &GpuContext,
        cfg: &Config,
        name: &str,
        ffn: &Ffn,
        up: &mut Uploader,
    ) -> Result<GpuFfn> {
        let h = cfg.hidden;
        match ffn {
            Ffn::Dense(d) => {
                let width = d.gate.rows;
                let gate_up = GpuMatrix::build(
                    ctx,
                    &format!("{name}_gate_up"),
                    upload::layout_for(&format!("{name}_gate_up"), &[d.gate, d.up])?,
                    2 * width,
                    h,
                    2,
                    up,
                    |r| RowRef {
                        m: if r % 2 == 0 { d.gate } else { d.up },
                        row: r / 2,
                        col_start: 0,
                    },
                )?;
                let down = GpuMatrix::from_matrix(ctx, &format!("{name}_down"), &d.down, up)?;
                let route: [u32; 2] = [0, 1f32.to_bits()];
                Ok(GpuFfn {
                    router: None,
                    gate_up,
                    down,
                    width,
                    slots: 1,
                    fixed_route: Some(upload::try_storage_init(
                        ctx,
                        "dense route",
                        bytemuck::cast_slice(&route),
                    )?),
                })
            }
            Ffn::Moe(m) => {
                let ef = cfg.expert_ffn;
                let (routed, shared) = (cfg.n_experts, cfg.n_shared_experts);
                if let Some(s) = &m.shexp {
                    if s.gate.rows != shared * ef {
                        return Err(Error::Gpu(format!(
                            "{name}: shared expert width {} is not {shared} x {ef}",
                            s.gate.rows
                        )));
                    }
                }
                let shexp = m.shexp.as_ref();
                let n_shared = shexp.map_or(0, |_| shared);
                let mut parts = vec![m.gate_exps.all, m.up_exps.all];
                if let Some(s) = shexp {
                    parts.extend([s.gate, s.up]);
                }
                // Row 2i / 2i+1 of expert e: gate / up row i; shared expert j is expert
                // routed + j, made of rows j*ef.. of the shared gate and up.
                let gate_up = GpuMatrix::build(
                    ctx,
                    &format!("{name}_gate_up_exps"),
                    upload::layout_for(&format!("{name}_gate_up_exps"), &parts)?,
                    (routed + n_shared) * 2 * ef,
                    h,
                    2,
                    up,
                    |r| {
                        let (e, i, is_up) = (r / (2 * ef), (r % (2 * ef)) / 2, r % 2 == 1);
                        if e < routed {
                            let stack = if is_up { m.up_exps } else { m.gate_exps };
                            RowRef {
                                m: stack.expert(e),
                                row: i,
                                col_start: 0,
                            }
                        } else {
                            let s = shexp.unwrap();
                            let mat = if is_up { s.up } else { s.gate };
                            RowRef {
                                m: mat,
                                row: (e - routed) * ef + i,
                                col_start: 0,
                            }
                        }
                    },
                )?;
                let mut down_parts = vec![m.down_exps.all];
                down_parts.extend(shexp.map(|s| s.down));
                // Expert e: its [hidden][ef] down rows; shared expert j: columns j*ef.. of
                // the shared down (the SwiGLU width splits exactly into per-expert sums).
                let down = GpuMatrix::build(
                    ctx,
                    &format!("{name}_down_exps"),
                    upload::layout_for(&format!("{name}_down_exps"), &down_parts)?,
                    (routed + n_shared) * h,
                    ef,
                    1,
                    up,
                    |r| {
                        let (e, row) = (r / h, r % h);
                        if e < routed {
                            RowRef {
                                m: m.down_exps.expert(e),
                                row,
                                col_start: 0,
                            }
                        } else {
                            RowRef {
                                m: shexp.unwrap().down,
                                row,
                                col_start: (e - routed) * ef,
                            }
                        }
                    },
                )?;
                let router =
                    GpuMatrix::from_matrix(ctx, &format!("{name}_gate_inp"), &m.gate_inp, up)?;
                let bias = try_storage_f32(ctx, &format!("{name}_exp_probs_b"), &m.exp_probs_b)?;
                Ok(GpuFfn {
                    router: Some((router, bias)),
                    gate_up,
                    down,
                    width: ef,
                    slots: cfg.n_experts_used + n_shared,
                    fixed_route: None,
                })
            }
        }
    }
}
