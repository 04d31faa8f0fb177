//! Named, shape-checked views into the GGUF file, shared read-only by both backends.
//!
//! Shapes in comments are row-major `[rows][cols]`: a mat-vec reads `cols` inputs and writes
//! `rows` outputs. GGUF lists dims innermost first, so a GGUF `{cols, rows}` is `[rows][cols]`.

use crate::config::Config;
use crate::error::{Error, Result};
use crate::formats::{self, WeightFormat};
use crate::gguf::{GgmlType, GgufFile, TensorInfo};

/// A weight matrix stored row by row in the file: `[rows][cols]` of `ty`.
#[derive(Clone, Copy)]
pub struct Matrix<'a> {
    /// The tensor it comes from, for messages.
    pub name: &'a str,
    pub ty: GgmlType,
    pub rows: usize,
    pub cols: usize,
    pub data: &'a [u8],
}

impl<'a> Matrix<'a> {
    pub fn row_bytes(&self) -> usize {
        self.ty.bytes_for(self.cols as u64).unwrap() as usize
    }

    pub fn row(&self, r: usize) -> &'a [u8] {
        let rb = self.row_bytes();
        &self.data[r * rb..(r + 1) * rb]
    }

    /// Rows `start..start + n` as a matrix of their own.
    pub fn rows(&self, start: usize, n: usize) -> Matrix<'a> {
        let rb = self.row_bytes();
        Matrix {
            name: self.name,
            ty: self.ty,
            rows: n,
            cols: self.cols,
            data: &self.data[start * rb..(start + n) * rb],
        }
    }

    /// The storage format (the loader admits only types that have one).
    pub fn format(&self) -> &'static WeightFormat {
        formats::of(self.ty)
            .unwrap_or_else(|| panic!("{}: type {} has no format", self.name, self.ty))
    }

    pub fn dot_row(&self, r: usize, x: &[f32]) -> f32 {
        self.format().dot(self.row(r), x)
    }

    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        self.format().dequantize(self.row(r), out)
    }
}

/// A stack of per-expert matrices inside one tensor: expert `e` is rows
/// `e * stride + first .. + rows`. Separate gate/up tensors have `stride = rows, first = 0`;
/// a fused `ffn_gate_up_exps` tensor holds gate then up for each expert.
#[derive(Clone, Copy)]
pub struct ExpertStack<'a> {
    pub all: Matrix<'a>,
    pub stride: usize,
    pub first: usize,
    pub rows: usize,
}

impl<'a> ExpertStack<'a> {
    pub fn expert(&self, e: usize) -> Matrix<'a> {
        self.all.rows(e * self.stride + self.first, self.rows)
    }
}

/// SwiGLU feed-forward: `down · (silu(gate · h) * (up · h))`.
pub struct DenseFfn<'a> {
    /// [ffn][hidden]
    pub gate: Matrix<'a>,
    /// [ffn][hidden]
    pub up: Matrix<'a>,
    /// [hidden][ffn]
    pub down: Matrix<'a>,
}

pub struct MoeFfn<'a> {
    /// [experts][hidden], usually f32.
    pub gate_inp: Matrix<'a>,
    /// [experts] selection bias, added to the sigmoid scores only to choose experts.
    pub exp_probs_b: Vec<f32>,
    /// per expert [expert_ffn][hidden]
    pub gate_exps: ExpertStack<'a>,
    /// per expert [expert_ffn][hidden]
    pub up_exps: ExpertStack<'a>,
    /// per expert [hidden][expert_ffn]
    pub down_exps: ExpertStack<'a>,
    /// The shared expert, always applied (None when the file has no shared expert).
    pub shexp: Option<DenseFfn<'a>>,
}

/// Chosen from the tensors a layer has, not from its index. (One per layer: boxing the
/// larger variant would save nothing worth an indirection.)
#[allow(clippy::large_enum_variant)]
pub enum Ffn<'a> {
    Dense(DenseFfn<'a>),
    Moe(MoeFfn<'a>),
}

pub struct Layer<'a> {
    /// [hidden]
    pub attn_norm: Vec<f32>,
    /// [q_lora][hidden]
    pub attn_q_a: Matrix<'a>,
    /// [q_lora]
    pub attn_q_a_norm: Vec<f32>,
    /// [heads * (nope + rope)][q_lora]
    pub attn_q_b: Matrix<'a>,
    /// [kv_lora + rope][hidden]
    pub attn_kv_a_mqa: Matrix<'a>,
    /// [kv_lora]
    pub attn_kv_a_norm: Vec<f32>,
    /// [heads * kv_lora][nope]: per head, q_nope -> latent space
    pub attn_k_b: Matrix<'a>,
    /// [heads * v_head][kv_lora]: per head, latent context -> v
    pub attn_v_b: Matrix<'a>,
    /// [hidden][heads * v_head]
    pub attn_output: Matrix<'a>,
    /// [hidden]
    pub ffn_norm: Vec<f32>,
    pub ffn: Ffn<'a>,
}

pub struct Weights<'a> {
    /// [vocab][hidden]
    pub token_embd: Matrix<'a>,
    pub layers: Vec<Layer<'a>>,
    /// [hidden]
    pub output_norm: Vec<f32>,
    /// [vocab][hidden]; the embedding when the file ties them.
    pub output: Matrix<'a>,
}

impl<'a> Weights<'a> {
    pub fn from_gguf(f: &'a GgufFile, cfg: &Config) -> Result<Weights<'a>> {
        let loader = Loader { f };
        let (h, v) = (cfg.hidden, cfg.vocab);
        let token_embd = loader.matrix("token_embd.weight", v, h)?;
        let output = match f.tensor("output.weight") {
            Some(_) => loader.matrix("output.weight", v, h)?,
            None => token_embd,
        };
        // Not `with_capacity(n_layers)`: the count comes from the file, and a hostile
        // block_count must fail at the first missing layer, not in the allocator.
        let layers = (0..cfg.n_layers)
            .map(|i| loader.layer(i, cfg))
            .collect::<Result<Vec<_>>>()?;
        Ok(Weights {
            token_embd,
            layers,
            output_norm: loader.vector("output_norm.weight", h)?,
            output,
        })
    }

    /// Every matrix of the model, each expert stack as its whole tensor (a fused gate/up
    /// tensor twice).
    pub fn matrices(&self) -> Vec<Matrix<'a>> {
        let mut out = vec![self.token_embd, self.output];
        for l in &self.layers {
            out.extend([
                l.attn_q_a,
                l.attn_q_b,
                l.attn_kv_a_mqa,
                l.attn_k_b,
                l.attn_v_b,
                l.attn_output,
            ]);
            let dense = |d: &DenseFfn<'a>| [d.gate, d.up, d.down];
            match &l.ffn {
                Ffn::Dense(d) => out.extend(dense(d)),
                Ffn::Moe(m) => {
                    out.extend([m.gate_inp, m.gate_exps.all, m.up_exps.all, m.down_exps.all]);
                    out.extend(m.shexp.as_ref().map(dense).into_iter().flatten());
                }
            }
        }
        out
    }

    /// Bytes of weights one decoded token reads (attention, the dense FFN, the experts a
    /// token uses, the shared expert, the head), for bandwidth figures.
    pub fn bytes_per_token(&self, cfg: &Config) -> u64 {
        self.token_embd.row_bytes() as u64
            + self
                .bytes_per_token_by_op(cfg)
                .iter()
                .map(|(_, b)| b)
                .sum::<u64>()
    }

    /// The same bytes split by the intermediate each mat-vec computes (llama.cpp's names,
    /// as the GPU profile labels its dispatches), summed over layers.
    pub fn bytes_per_token_by_op(&self, cfg: &Config) -> Vec<(&'static str, u64)> {
        let mut ops: Vec<(&'static str, u64)> = Vec::new();
        for l in &self.layers {
            for (i, (name, bytes)) in l.bytes_by_op(cfg.n_experts_used).into_iter().enumerate() {
                match ops.get_mut(i) {
                    Some(op) => op.1 += bytes,
                    None => ops.push((name, bytes)),
                }
            }
        }
        ops.push(("result_output", self.output.data.len() as u64));
        ops
    }
}

impl Layer<'_> {
    /// Bytes of the layer's matrices by the intermediate each computes, counting `experts`
    /// routed experts of a MoE layer (the shared expert and the router always): the experts
    /// a token uses for what it reads, all of them for the layer's size.
    pub fn bytes_by_op(&self, experts: usize) -> [(&'static str, u64); 8] {
        let m = |m: &Matrix| m.data.len() as u64;
        // gate + up (or down) of the dense FFN, or of the experts and the shared one
        let ffn = |up: bool| {
            let dense = |d: &DenseFfn| {
                if up {
                    m(&d.gate) + m(&d.up)
                } else {
                    m(&d.down)
                }
            };
            match &self.ffn {
                Ffn::Dense(d) => dense(d),
                Ffn::Moe(moe) => {
                    let expert = if up {
                        m(&moe.gate_exps.expert(0)) + m(&moe.up_exps.expert(0))
                    } else {
                        m(&moe.down_exps.expert(0))
                    };
                    expert * experts as u64 + moe.shexp.as_ref().map_or(0, dense)
                }
            }
        };
        [
            ("q_a+kv_cmpr_pe", m(&self.attn_q_a) + m(&self.attn_kv_a_mqa)),
            ("q", m(&self.attn_q_b)),
            ("q_nope_absorbed", m(&self.attn_k_b)),
            ("kqv_out", m(&self.attn_v_b)),
            ("attn_out", m(&self.attn_output)),
            (
                "ffn_moe_logits",
                match &self.ffn {
                    Ffn::Moe(moe) => m(&moe.gate_inp),
                    Ffn::Dense(_) => 0,
                },
            ),
            ("ffn_gate_up", ffn(true)),
            ("ffn_down", ffn(false)),
        ]
    }

    /// Bytes of all the layer's matrices (every expert), as stored in the file.
    pub fn bytes(&self, cfg: &Config) -> u64 {
        self.bytes_by_op(cfg.n_experts).iter().map(|(_, b)| b).sum()
    }
}

struct Loader<'a> {
    f: &'a GgufFile,
}

impl<'a> Loader<'a> {
    fn err(&self, msg: String) -> Error {
        Error::Model {
            file: self.f.name.clone(),
            msg,
        }
    }

    /// A tensor with exactly these GGUF dims (innermost first) and a supported type.
    fn tensor(&self, name: &str, dims: &[usize]) -> Result<&'a TensorInfo> {
        let t = self
            .f
            .tensor(name)
            .ok_or_else(|| self.err(format!("missing tensor {name}")))?;
        let want: Vec<u64> = dims.iter().map(|&d| d as u64).collect();
        if t.dims != want {
            return Err(self.err(format!(
                "tensor {name} has shape {:?}, expected {:?}",
                t.dims, want
            )));
        }
        if formats::of(t.ggml_type).is_none() {
            return Err(self.err(format!(
                "tensor {name} has type {}, which is not supported (supported: {})",
                t.ggml_type,
                formats::supported_names()
            )));
        }
        Ok(t)
    }

    /// `[rows][cols]` from GGUF dims `{cols, rows}`.
    fn matrix(&self, name: &str, rows: usize, cols: usize) -> Result<Matrix<'a>> {
        let t = self.tensor(name, &[cols, rows])?;
        Ok(Matrix {
            name: &t.name,
            ty: t.ggml_type,
            rows,
            cols,
            data: self.f.tensor_data(t),
        })
    }

    /// A 3-d tensor `{cols, rows, n}` viewed as `[n * rows][cols]`.
    fn stacked(&self, name: &str, n: usize, rows: usize, cols: usize) -> Result<Matrix<'a>> {
        let t = self.tensor(name, &[cols, rows, n])?;
        Ok(Matrix {
            name: &t.name,
            ty: t.ggml_type,
            rows: n * rows,
            cols,
            data: self.f.tensor_data(t),
        })
    }

    fn vector(&self, name: &str, n: usize) -> Result<Vec<f32>> {
        let t = self.tensor(name, &[n])?;
        let mut out = vec![0f32; n];
        formats::of(t.ggml_type)
            .expect("checked by tensor()")
            .dequantize(self.f.tensor_data(t), &mut out);
        Ok(out)
    }

    fn dense(&self, p: &str, suffix: &str, hidden: usize, ffn: usize) -> Result<DenseFfn<'a>> {
        Ok(DenseFfn {
            gate: self.matrix(&format!("{p}.ffn_gate{suffix}.weight"), ffn, hidden)?,
            up: self.matrix(&format!("{p}.ffn_up{suffix}.weight"), ffn, hidden)?,
            down: self.matrix(&format!("{p}.ffn_down{suffix}.weight"), hidden, ffn)?,
        })
    }

    fn layer(&self, i: usize, c: &Config) -> Result<Layer<'a>> {
        let p = format!("blk.{i}");
        let h = c.hidden;
        let has = |name: &str| self.f.tensor(&format!("{p}.{name}")).is_some();
        let ffn = if has("ffn_gate_inp.weight") {
            let (e, ef) = (c.n_experts, c.expert_ffn);
            let (gate_exps, up_exps) = if has("ffn_gate_up_exps.weight") {
                let all = self.stacked(&format!("{p}.ffn_gate_up_exps.weight"), e, 2 * ef, h)?;
                (
                    ExpertStack {
                        all,
                        stride: 2 * ef,
                        first: 0,
                        rows: ef,
                    },
                    ExpertStack {
                        all,
                        stride: 2 * ef,
                        first: ef,
                        rows: ef,
                    },
                )
            } else {
                let stack = |name: &str| -> Result<ExpertStack<'a>> {
                    Ok(ExpertStack {
                        all: self.stacked(&format!("{p}.{name}"), e, ef, h)?,
                        stride: ef,
                        first: 0,
                        rows: ef,
                    })
                };
                (stack("ffn_gate_exps.weight")?, stack("ffn_up_exps.weight")?)
            };
            let down = self.stacked(&format!("{p}.ffn_down_exps.weight"), e, h, ef)?;
            let shexp = if c.n_shared_experts > 0 {
                Some(self.dense(&p, "_shexp", h, ef * c.n_shared_experts)?)
            } else {
                None
            };
            let exp_probs_b = if has("exp_probs_b.bias") {
                self.vector(&format!("{p}.exp_probs_b.bias"), e)?
            } else {
                vec![0.0; e]
            };
            Ffn::Moe(MoeFfn {
                gate_inp: self.matrix(&format!("{p}.ffn_gate_inp.weight"), e, h)?,
                exp_probs_b,
                gate_exps,
                up_exps,
                down_exps: ExpertStack {
                    all: down,
                    stride: h,
                    first: 0,
                    rows: h,
                },
                shexp,
            })
        } else if has("ffn_gate.weight") {
            Ffn::Dense(self.dense(&p, "", h, c.dense_ffn)?)
        } else {
            return Err(self.err(format!(
                "layer {i} has neither a dense FFN ({p}.ffn_gate.weight) nor a router ({p}.ffn_gate_inp.weight)"
            )));
        };
        let (heads, nope, rope, kv, vh) =
            (c.n_heads, c.qk_nope, c.qk_rope, c.kv_lora_rank, c.v_head);
        Ok(Layer {
            attn_norm: self.vector(&format!("{p}.attn_norm.weight"), h)?,
            attn_q_a: self.matrix(&format!("{p}.attn_q_a.weight"), c.q_lora_rank, h)?,
            attn_q_a_norm: self.vector(&format!("{p}.attn_q_a_norm.weight"), c.q_lora_rank)?,
            attn_q_b: self.matrix(
                &format!("{p}.attn_q_b.weight"),
                heads * (nope + rope),
                c.q_lora_rank,
            )?,
            attn_kv_a_mqa: self.matrix(&format!("{p}.attn_kv_a_mqa.weight"), kv + rope, h)?,
            attn_kv_a_norm: self.vector(&format!("{p}.attn_kv_a_norm.weight"), kv)?,
            attn_k_b: self.stacked(&format!("{p}.attn_k_b.weight"), heads, kv, nope)?,
            attn_v_b: self.stacked(&format!("{p}.attn_v_b.weight"), heads, vh, kv)?,
            attn_output: self.matrix(&format!("{p}.attn_output.weight"), h, heads * vh)?,
            ffn_norm: self.vector(&format!("{p}.ffn_norm.weight"), h)?,
            ffn,
        })
    }
}
