//! The decode schedule: every dispatch of one token built once at load (the embedding, each
//! layer's, the LM head and the argmax) over one set of activation buffers, and the
//! recording of a token into one compute pass. Only the per-token inputs (token id,
//! position, RoPE angles) and the attention grid change from token to token.

use crate::config::Config;
use crate::error::Result;
use crate::gpu::cache::LatentCaches;
use crate::gpu::context::GpuContext;
use crate::gpu::kernels::attn_partial::{Kernel, Kernels, Plan};
use crate::gpu::kernels::{
    argmax, attn_combine, attn_partial, attn_partial_coop, embed, ffn_down, ffn_gate_up, matvec,
    TokenParams,
};
use crate::gpu::pipelines::{Dispatch, Pipelines};
use crate::gpu::resident::{GpuLayer, GpuModel};
use crate::gpu::upload::{self, storage_zeroed, GpuMatrix};
use crate::ops_common::CacheType;

/// Activations: one buffer per intermediate, shared by all layers.
pub struct Activations {
    /// [hidden] the residual stream.
    x: wgpu::Buffer,
    /// [q_lora + kv_lora + rope] `[q_a | kv_cmpr | k_pe]`
    qkv_a: wgpu::Buffer,
    /// [heads][nope + rope] `[q_nope | q_pe]` per head
    q: wgpu::Buffer,
    /// [heads][kv_lora]
    q_nope_absorbed: wgpu::Buffer,
    /// [heads][splits][kv_lora + 4] per split of the positions: context, then max and sum
    attn_partial: wgpu::Buffer,
    /// The token's queries as the cooperative attention's f16 parts, where it runs.
    q_parts: Option<wgpu::Buffer>,
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
    /// One per variant of the kernel (heads per workgroup): `attn_partial::variants`.
    attn_partial: Vec<Dispatch>,
    /// The cooperative attention's dispatches, where it runs.
    attn_partial_coop: Option<attn_partial_coop::TokenDispatches>,
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
pub enum Feed {
    Id(u32),
    /// The argmax of the token before, still on the GPU.
    PreviousArgmax,
}

/// What a token's submit brings back.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Readback {
    Nothing,
    Logits,
    Argmax,
}

/// Counts dispatches while recording one compute pass, and when profiling writes a GPU
/// timestamp after each one.
pub struct Recorder<'p> {
    pass: wgpu::ComputePass<'p>,
    dispatches: u64,
    /// The query set and the name of each dispatch recorded so far (profiling only).
    timestamps: Option<(&'p wgpu::QuerySet, Vec<&'static str>)>,
}

impl<'p> Recorder<'p> {
    /// Begins the token's compute pass in `enc`; with `queries`, a timestamp first.
    pub fn begin(enc: &mut wgpu::CommandEncoder, queries: Option<&'p wgpu::QuerySet>) -> Self {
        let mut rec = Recorder {
            pass: enc
                .begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: Some("token"),
                    timestamp_writes: None,
                })
                .forget_lifetime(),
            dispatches: 0,
            timestamps: queries.map(|q| (q, Vec::new())),
        };
        if let Some((queries, _)) = &rec.timestamps {
            rec.pass.write_timestamp(queries, 0);
        }
        rec
    }

    /// Ends the pass: the dispatches recorded and, when profiling, the name of each.
    pub fn finish(self) -> (u64, Option<Vec<&'static str>>) {
        (self.dispatches, self.timestamps.map(|(_, names)| names))
    }

    /// Records the dispatches computing the intermediate `name` (llama.cpp's names).
    pub fn run(&mut self, name: &'static str, ds: &[Dispatch]) {
        for d in ds {
            self.run_sized(name, d, d.workgroups);
        }
    }

    pub fn run_sized(&mut self, name: &'static str, d: &Dispatch, workgroups: [u32; 3]) {
        d.record_sized(&mut self.pass, workgroups);
        self.dispatches += 1;
        if let Some((queries, names)) = &mut self.timestamps {
            names.push(name);
            self.pass.write_timestamp(queries, names.len() as u32);
        }
    }
}

/// Every dispatch of one token, in the order they run, and the activations they share.
pub struct Schedule {
    act: Activations,
    /// One per chunk of the embedding table.
    embed: Vec<Dispatch>,
    layers: Vec<LayerDispatches>,
    result_output: Vec<Dispatch>,
    result_argmax: Vec<Dispatch>,
    /// The attention kernels, and which one each context gets.
    attn_kernels: Kernels,
}

impl Schedule {
    /// The dispatches of a token over `act` and the weights of `model`.
    pub fn new(
        ctx: &GpuContext,
        p: &Pipelines,
        cfg: &Config,
        max_context: usize,
        act: Activations,
        model: &GpuModel,
        caches: &LatentCaches,
    ) -> Result<Schedule> {
        let tiles_from = act
            .q_parts
            .as_ref()
            .and_then(|_| attn_partial_coop::from_positions(ctx.tiles));
        let embed = embed::dispatches(ctx, p, &model.token_embd, &act.token_id, &act.x);
        let layers = model
            .layers
            .iter()
            .zip(&caches.layers)
            .map(|(l, cache)| {
                let c = (cache, caches.cache_type);
                LayerDispatches::new(l, c, ctx, p, cfg, max_context, &act)
            })
            .collect::<Vec<_>>();
        let result_output = matvec::dispatches(
            ctx,
            p,
            &model.output,
            &matvec::Matvec {
                input: &act.x,
                in_offset: 0,
                groups: None,
                norm: Some((&model.output_norm, cfg.rms_eps)),
                out: &act.result_output,
                accumulate: false,
            },
        );
        let result_argmax =
            argmax::dispatches(ctx, p, cfg.vocab, &act.result_output, &act.token_id)?;
        Ok(Schedule {
            act,
            embed,
            layers,
            result_output,
            result_argmax,
            attn_kernels: Kernels::new(cfg, tiles_from),
        })
    }

    /// Whether long contexts' attention runs on cooperative matrices.
    pub fn cooperative_attention(&self) -> bool {
        self.attn_kernels.tiles_from.is_some()
    }

    /// Dispatches one token records per layer (without the head), in layer order.
    pub fn dispatches_per_layer(&self) -> Vec<usize> {
        self.layers.iter().map(LayerDispatches::count).collect()
    }

    /// `[vocab]` logits of the last token recorded with the head.
    pub fn logits(&self) -> &wgpu::Buffer {
        &self.act.result_output
    }

    /// `[1]` the id fed to the next token: its argmax once recorded with [`Readback::Argmax`].
    pub fn token_id(&self) -> &wgpu::Buffer {
        &self.act.token_id
    }

    /// The attention of the token at `pos` (its kernel, split and grid follow the context):
    /// planned once per token, for its inputs and its recording.
    pub fn plan(&self, cfg: &Config, pos: usize) -> Plan {
        self.attn_kernels.plan(cfg, pos)
    }

    /// Queues the writes of the per-token inputs of the token at `pos`, whose attention is
    /// `attn`.
    pub fn write_inputs(
        &self,
        ctx: &GpuContext,
        cfg: &Config,
        feed: Feed,
        pos: usize,
        attn: &Plan,
    ) {
        let act = &self.act;
        if let Feed::Id(token) = feed {
            ctx.queue
                .write_buffer(&act.token_id, 0, bytemuck::bytes_of(&token));
        }
        let params = TokenParams::new(pos, attn.split);
        ctx.queue
            .write_buffer(&act.token, 0, bytemuck::bytes_of(&params));
        let rope = attn_partial::rope_table(pos, cfg.qk_rope, cfg.rope_base);
        ctx.queue
            .write_buffer(&act.rope_cs, 0, bytemuck::cast_slice(&rope));
    }

    /// Records a token whose attention is `attn` (the same for every layer) through every
    /// layer, and the head when `read` wants it.
    pub fn record(&self, rec: &mut Recorder, attn: &Plan, read: Readback) {
        rec.run("inp_embd", &self.embed); // x = token_embd[token]
        for l in &self.layers {
            // Attention: MLA over the latent cache, k_b absorbed into q.
            // [q_a | kv_cmpr | k_pe] = [q_a; kv_a] · rmsnorm(x) * attn_norm
            rec.run("q_a+kv_cmpr_pe", &l.attn_qkv_a);
            // q = q_b · rmsnorm(q_a) * q_a_norm
            rec.run("q", &l.attn_q_b);
            // q_nope_absorbed[h] = k_b[h] · q_nope[h]
            rec.run("q_nope_absorbed", &l.q_nope_absorbed);
            // Scores with rope(q_pe), softmax and context per split of the cached positions
            match (attn.kernel, &l.attn_partial_coop) {
                (Kernel::Lanes(v), _) => rec.run_sized("kq_partial", &l.attn_partial[v], attn.grid),
                (Kernel::Tiles, Some(coop)) => {
                    if let Some(queries) = &coop.prepare {
                        rec.run("kq_queries", std::slice::from_ref(queries));
                    }
                    rec.run_sized("kq_partial", &coop.attend, attn.grid);
                }
                (Kernel::Tiles, None) => unreachable!("tiles are planned only where they run"),
            }
            // cache[pos] = [rmsnorm(kv_cmpr) * kv_norm | rope(k_pe)];
            // kqv[h] = Σ_t p[h][t] · latent[t] over the splits and pos
            rec.run("kqv", std::slice::from_ref(&l.attn_combine));
            // kqv_out[h] = v_b[h] · kqv[h]
            rec.run("kqv_out", &l.attn_v_b);
            // x += attn_output · kqv_out
            rec.run("attn_out", &l.attn_output);
            // Feed-forward. MoE: router · rmsnorm(x) * ffn_norm
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
    }
}

impl Activations {
    /// With the cooperative attention's buffer where `tiles` (it runs, pays at some context
    /// with the device's tile math, and agrees with the f32 kernel on this device).
    pub fn new(
        ctx: &GpuContext,
        cfg: &Config,
        max_context: usize,
        tiles: bool,
    ) -> Result<Activations> {
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
            q_parts: match tiles {
                true => Some(buf("q_parts", attn_partial_coop::q_parts_words(cfg))?),
                false => None,
            },
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

impl LayerDispatches {
    fn new(
        l: &GpuLayer,
        (cache, cache_type): (&wgpu::Buffer, CacheType),
        ctx: &GpuContext,
        p: &Pipelines,
        cfg: &Config,
        max_context: usize,
        a: &Activations,
    ) -> LayerDispatches {
        let eps = cfg.rms_eps;
        let head_dim = cfg.qk_nope + cfg.qk_rope;
        let mv = |m: &GpuMatrix, spec: matvec::Matvec| matvec::dispatches(ctx, p, m, &spec);
        let f = &l.ffn;
        let route = f.fixed_route.as_ref().unwrap_or(&a.ffn_moe_route);
        let attention = attn_partial::Attention {
            token: &a.token,
            q_abs: &a.q_nope_absorbed,
            q: &a.q,
            cache,
            cache_type,
            rope_cs: &a.rope_cs,
            partial: &a.attn_partial,
        };
        LayerDispatches {
            attn_qkv_a: mv(
                &l.attn_qkv_a,
                matvec::Matvec {
                    input: &a.x,
                    in_offset: 0,
                    groups: None,
                    norm: Some((&l.attn_norm, eps)),
                    out: &a.qkv_a,
                    accumulate: false,
                },
            ),
            attn_q_b: mv(
                &l.attn_q_b,
                matvec::Matvec {
                    input: &a.qkv_a,
                    in_offset: 0,
                    groups: None,
                    norm: Some((&l.attn_q_a_norm, eps)),
                    out: &a.q,
                    accumulate: false,
                },
            ),
            q_nope_absorbed: mv(
                &l.attn_k_b,
                matvec::Matvec {
                    input: &a.q,
                    in_offset: 0,
                    groups: Some((cfg.kv_lora_rank, head_dim)),
                    norm: None,
                    out: &a.q_nope_absorbed,
                    accumulate: false,
                },
            ),
            attn_partial: attn_partial::variants(cfg)
                .into_iter()
                .map(|heads_wg| {
                    attn_partial::dispatch(ctx, p, cfg, max_context, &attention, heads_wg)
                })
                .collect(),
            attn_partial_coop: a.q_parts.as_ref().map(|q_parts| {
                attn_partial_coop::dispatches(ctx, p, cfg, max_context, &attention, q_parts)
            }),
            attn_combine: attn_combine::dispatch(
                ctx,
                p,
                cfg,
                max_context,
                &attention,
                &attn_combine::Combine {
                    kqv: &a.kqv,
                    kv_a: &a.qkv_a,
                    kv_norm: &l.attn_kv_a_norm,
                },
            ),
            attn_v_b: mv(
                &l.attn_v_b,
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
                &l.attn_output,
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
                        norm: Some((&l.ffn_norm, eps)),
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
                &l.ffn_norm,
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

    fn count(&self) -> usize {
        self.attn_qkv_a.len()
            + self.attn_q_b.len()
            + self.q_nope_absorbed.len()
            // attn_partial, attn_combine (and, with two parts, the cooperative one's queries
            // at long contexts)
            + 2
            + self.attn_v_b.len()
            + self.attn_output.len()
            + self.ffn_moe_logits.len()
            + self.ffn_gate_up.len()
            + self.ffn_down.len()
    }
}
