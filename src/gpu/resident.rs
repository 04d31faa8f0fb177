//! The model resident on the GPU: every weight repacked once at load (through
//! [`upload`]), in the shapes the kernels read (the latent caches are in
//! [`cache`](crate::gpu::cache)). The decode schedule binds these buffers; nothing here
//! runs a kernel.

use crate::config::Config;
use crate::error::{Error, Result};
use crate::gpu::context::GpuContext;
use crate::gpu::upload::{self, try_storage_f32, GpuMatrix, RowRef, Uploader};
use crate::weights::{Ffn, Layer, Weights};

/// Every weight of the model on the GPU.
pub struct GpuModel {
    pub token_embd: GpuMatrix,
    pub output: GpuMatrix,
    pub output_norm: wgpu::Buffer,
    pub layers: Vec<GpuLayer>,
}

impl GpuModel {
    /// Uploads the weights of `w`.
    pub fn upload(
        ctx: &GpuContext,
        cfg: &Config,
        w: &Weights,
        up: &mut Uploader,
    ) -> Result<GpuModel> {
        let token_embd = GpuMatrix::from_matrix(ctx, "token_embd", &w.token_embd, up)?;
        let output = GpuMatrix::from_matrix(ctx, "output", &w.output, up)?;
        let output_norm = try_storage_f32(ctx, "output_norm", &w.output_norm)?;
        let mut layers = Vec::with_capacity(w.layers.len());
        for (i, l) in w.layers.iter().enumerate() {
            layers.push(GpuLayer::upload(ctx, cfg, i, l, up)?);
        }
        Ok(GpuModel {
            token_embd,
            output,
            output_norm,
            layers,
        })
    }

    /// Bytes [`GpuModel::upload`] reads from the file (for the progress total).
    pub fn file_bytes(cfg: &Config, w: &Weights) -> u64 {
        w.token_embd.data.len() as u64
            + w.output.data.len() as u64
            + w.layers.iter().map(|l| l.bytes(cfg)).sum::<u64>()
    }
}

/// The feed-forward weights of a layer, in the one shape the kernels know: a stack of
/// experts (`[experts][ffn][gate, up][hidden]` and `[experts][hidden][ffn]`) run for the
/// slots the route buffer lists. Shared experts are stacked after the routed ones; a dense
/// FFN is a stack of one expert with a fixed route.
pub struct GpuFfn {
    /// Router (`ffn_gate_inp`) and selection bias, MoE layers only.
    pub router: Option<(GpuMatrix, wgpu::Buffer)>,
    pub gate_up: GpuMatrix,
    pub down: GpuMatrix,
    /// Width of one expert.
    pub width: usize,
    /// Experts run per token (routed + shared, or 1).
    pub slots: usize,
    /// Dense layers: the fixed route `[0][1.0]`.
    pub fixed_route: Option<wgpu::Buffer>,
}

/// One layer's weights on the GPU (kept alive with the dispatches that bind them).
pub struct GpuLayer {
    pub attn_norm: wgpu::Buffer,
    /// `[q_a; kv_a_mqa]` stacked: one mat-vec gives `[q_a | kv_cmpr | k_pe]`.
    pub attn_qkv_a: GpuMatrix,
    pub attn_q_a_norm: wgpu::Buffer,
    pub attn_q_b: GpuMatrix,
    pub attn_kv_a_norm: wgpu::Buffer,
    pub attn_k_b: GpuMatrix,
    pub attn_v_b: GpuMatrix,
    pub attn_output: GpuMatrix,
    pub ffn_norm: wgpu::Buffer,
    pub ffn: GpuFfn,
}

impl GpuLayer {
    pub fn upload(
        ctx: &GpuContext,
        cfg: &Config,
        i: usize,
        l: &Layer,
        up: &mut Uploader,
    ) -> Result<GpuLayer> {
        let name = |s: &str| format!("blk.{i}.{s}");
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
        })
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
                let gate_up =
                    GpuMatrix::build(ctx, &format!("{name}_gate_up"), 2 * width, h, 2, up, |r| {
                        RowRef {
                            m: if r % 2 == 0 { d.gate } else { d.up },
                            row: r / 2,
                            col_start: 0,
                        }
                    })?;
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
                // Row 2i / 2i+1 of expert e: gate / up row i; shared expert j is expert
                // routed + j, made of rows j*ef.. of the shared gate and up.
                let gate_up = GpuMatrix::build(
                    ctx,
                    &format!("{name}_gate_up_exps"),
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
                // Expert e: its [hidden][ef] down rows; shared expert j: columns j*ef.. of
                // the shared down (the SwiGLU width splits exactly into per-expert sums).
                let down = GpuMatrix::build(
                    ctx,
                    &format!("{name}_down_exps"),
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
