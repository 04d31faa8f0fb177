//! The model's blueprint: typed, validated hyper-parameters from the `deepseek2.*` keys.

use crate::error::{Error, Result};
use crate::gguf::GgufFile;

/// GGUF files of GLM-4.7-Flash declare this architecture.
pub const ARCHITECTURE: &str = "deepseek2";

/// The largest size or count `validate` accepts: products of two stay within 64 bits.
pub const MAX_SIZE: usize = u32::MAX as usize;

/// Length of one latent-cache row per layer and position: `kv_lora_rank + rope_dims`.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// Layers to run: `block_count - nextn_predict_layers`.
    pub n_layers: usize,
    /// Multi-token-prediction layers present in the file's count (never run).
    pub n_nextn_layers: usize,
    /// Leading layers with a dense FFN (the rest are MoE).
    pub n_dense_layers: usize,
    pub hidden: usize,
    pub dense_ffn: usize,
    pub n_heads: usize,
    pub q_lora_rank: usize,
    pub kv_lora_rank: usize,
    /// Per-head q/k dims without position (192 in the real model).
    pub qk_nope: usize,
    /// Per-head rotary dims (64).
    pub qk_rope: usize,
    /// Per-head v dims (256).
    pub v_head: usize,
    pub rope_base: f32,
    pub rms_eps: f32,
    pub n_experts: usize,
    pub n_experts_used: usize,
    pub n_shared_experts: usize,
    pub expert_ffn: usize,
    pub expert_weights_scale: f32,
    pub expert_weights_norm: bool,
    pub context_length: usize,
    pub vocab: usize,
}

impl Config {
    /// Softmax scale of attention: 1/sqrt(qk_nope + qk_rope), not 1/sqrt(latent width).
    pub fn attn_scale(&self) -> f32 {
        1.0 / ((self.qk_nope + self.qk_rope) as f32).sqrt()
    }

    /// Values per layer per position in the latent cache: [latent | k_pe].
    pub fn cache_row(&self) -> usize {
        self.kv_lora_rank + self.qk_rope
    }

    pub fn is_moe_layer(&self, layer: usize) -> bool {
        layer >= self.n_dense_layers
    }

    pub fn from_gguf(f: &GgufFile) -> Result<Config> {
        let err = |msg: String| Error::Model {
            file: f.name.clone(),
            msg,
        };
        let arch = f
            .get_str("general.architecture")?
            .ok_or_else(|| err("missing general.architecture".into()))?;
        if arch != ARCHITECTURE {
            return Err(err(format!(
                "architecture {arch:?} is not supported: glm-flash runs GLM-4.7-Flash, whose GGUF files declare {ARCHITECTURE:?}"
            )));
        }
        let key = |k: &str| format!("{ARCHITECTURE}.{k}");
        let req = |k: &str| -> Result<usize> {
            f.get_int::<usize>(&key(k))?
                .ok_or_else(|| err(format!("missing metadata {}", key(k))))
        };
        let opt = |k: &str| f.get_int::<usize>(&key(k));
        let req_f = |k: &str| -> Result<f64> {
            f.get_f64(&key(k))?
                .ok_or_else(|| err(format!("missing metadata {}", key(k))))
        };

        let block_count = req("block_count")?;
        let n_nextn_layers = opt("nextn_predict_layers")?.unwrap_or(0);
        if n_nextn_layers >= block_count {
            return Err(err(format!(
                "{} = {n_nextn_layers} leaves no layers of block_count = {block_count}",
                key("nextn_predict_layers")
            )));
        }
        let qk_head = req("attention.key_length_mla")?;
        let qk_rope = req("rope.dimension_count")?;
        if qk_rope >= qk_head || qk_rope % 2 != 0 {
            return Err(err(format!(
                "{} = {qk_rope} must be even and below {} = {qk_head}",
                key("rope.dimension_count"),
                key("attention.key_length_mla")
            )));
        }
        let gating = opt("expert_gating_func")?;
        // GLM-4.7-Flash gates with a sigmoid. Older conversions lack the key; softmax there
        // makes the model loop, so a missing key means sigmoid (2), and only sigmoid runs.
        if let Some(g) = gating {
            if g != 2 {
                return Err(err(format!(
                    "{} = {g} is not supported: only 2 (sigmoid, as GLM-4.7-Flash uses) is",
                    key("expert_gating_func")
                )));
            }
        }
        // The vocabulary is the tokenizer's token list; the embedding must have one row per
        // token, or ids from the tokenizer would index past it (or leave rows unreachable).
        let n_tokens = f.get_str_array("tokenizer.ggml.tokens")?.map(|t| t.len());
        let embd_rows = match f.tensor("token_embd.weight") {
            Some(t) if t.dims.len() == 2 => Some(t.dims[1]),
            _ => None,
        };
        let vocab = match (n_tokens, embd_rows) {
            (Some(n), Some(rows)) if n as u64 != rows => {
                return Err(err(format!(
                    "the tokenizer and the model disagree on the vocabulary: tokenizer.ggml.tokens has {n} tokens but token_embd.weight has {rows} rows"
                )))
            }
            (Some(n), _) => n,
            (None, Some(rows)) => usize::try_from(rows)
                .map_err(|_| err(format!("token_embd.weight has {rows} rows")))?,
            (None, None) => {
                return Err(err(
                    "missing tokenizer.ggml.tokens and token_embd.weight".into()
                ))
            }
        };
        let cfg = Config {
            n_layers: block_count - n_nextn_layers,
            n_nextn_layers,
            n_dense_layers: req("leading_dense_block_count")?,
            hidden: req("embedding_length")?,
            dense_ffn: req("feed_forward_length")?,
            n_heads: req("attention.head_count")?,
            q_lora_rank: req("attention.q_lora_rank")?,
            kv_lora_rank: req("attention.kv_lora_rank")?,
            qk_nope: qk_head - qk_rope,
            qk_rope,
            v_head: req("attention.value_length_mla")?,
            rope_base: req_f("rope.freq_base")? as f32,
            rms_eps: req_f("attention.layer_norm_rms_epsilon")? as f32,
            n_experts: req("expert_count")?,
            n_experts_used: req("expert_used_count")?,
            n_shared_experts: opt("expert_shared_count")?.unwrap_or(0),
            expert_ffn: req("expert_feed_forward_length")?,
            expert_weights_scale: f.get_f64(&key("expert_weights_scale"))?.unwrap_or(1.0) as f32,
            // GLM-4.7-Flash normalises the chosen weights (norm_topk_prob); files lacking the
            // key are older conversions of the same model.
            expert_weights_norm: f.get_int::<u8>(&key("expert_weights_norm"))? != Some(0),
            context_length: req("context_length")?,
            vocab,
        };
        cfg.validate().map_err(err)?;
        Ok(cfg)
    }

    /// Numbers that contradict each other or that no kernel can run.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let positive = [
            ("block_count", self.n_layers),
            ("embedding_length", self.hidden),
            ("attention.head_count", self.n_heads),
            ("attention.q_lora_rank", self.q_lora_rank),
            ("attention.kv_lora_rank", self.kv_lora_rank),
            ("attention.value_length_mla", self.v_head),
            ("context_length", self.context_length),
            ("vocabulary size", self.vocab),
        ];
        for (name, v) in positive {
            if v == 0 {
                return Err(format!("{name} is 0"));
            }
        }
        // Products of two sizes (heads * head dim, experts * rows) must not overflow.
        let sizes = [
            ("block_count", self.n_layers),
            ("embedding_length", self.hidden),
            ("feed_forward_length", self.dense_ffn),
            ("attention.head_count", self.n_heads),
            ("attention.q_lora_rank", self.q_lora_rank),
            ("attention.kv_lora_rank", self.kv_lora_rank),
            ("attention.key_length_mla", self.qk_nope + self.qk_rope),
            ("attention.value_length_mla", self.v_head),
            ("expert_count", self.n_experts),
            ("expert_shared_count", self.n_shared_experts),
            ("expert_feed_forward_length", self.expert_ffn),
            ("context_length", self.context_length),
            ("vocabulary size", self.vocab),
        ];
        for (name, v) in sizes {
            if v > MAX_SIZE {
                return Err(format!(
                    "{name} = {v} is larger than any model's (at most {MAX_SIZE})"
                ));
            }
        }
        if self.n_dense_layers > self.n_layers {
            return Err(format!(
                "leading_dense_block_count = {} exceeds the {} layers",
                self.n_dense_layers, self.n_layers
            ));
        }
        if self.n_dense_layers < self.n_layers {
            if self.n_experts == 0
                || self.n_experts_used == 0
                || self.n_experts_used > self.n_experts
            {
                return Err(format!(
                    "expert_used_count = {} must be between 1 and expert_count = {}",
                    self.n_experts_used, self.n_experts
                ));
            }
            if self.expert_ffn == 0 {
                return Err("expert_feed_forward_length is 0".into());
            }
        }
        if !(self.rms_eps > 0.0 && self.rms_eps < 1.0) {
            return Err(format!(
                "attention.layer_norm_rms_epsilon = {} is not in (0, 1)",
                self.rms_eps
            ));
        }
        if !(self.rope_base > 1.0 && self.rope_base.is_finite()) {
            return Err(format!(
                "rope.freq_base = {} must be a finite number above 1",
                self.rope_base
            ));
        }
        if !self.expert_weights_scale.is_finite() || self.expert_weights_scale <= 0.0 {
            return Err(format!(
                "expert_weights_scale = {} must be positive",
                self.expert_weights_scale
            ));
        }
        Ok(())
    }

    /// Parameters of the whole trunk (embedding and head included), for `info`.
    pub fn describe(&self) -> Vec<(&'static str, String)> {
        vec![
            (
                "layers",
                format!(
                    "{} ({} dense, {} MoE; {} MTP layers not run)",
                    self.n_layers,
                    self.n_dense_layers,
                    self.n_layers - self.n_dense_layers,
                    self.n_nextn_layers
                ),
            ),
            ("hidden size", self.hidden.to_string()),
            ("dense FFN width", self.dense_ffn.to_string()),
            ("heads", self.n_heads.to_string()),
            (
                "q / kv low rank",
                format!("{} / {}", self.q_lora_rank, self.kv_lora_rank),
            ),
            (
                "qk head dim",
                format!(
                    "{} = {} nope + {} rope",
                    self.qk_nope + self.qk_rope,
                    self.qk_nope,
                    self.qk_rope
                ),
            ),
            ("v head dim", self.v_head.to_string()),
            ("rope base", self.rope_base.to_string()),
            ("rms eps", self.rms_eps.to_string()),
            (
                "experts / used / shared",
                format!(
                    "{} / {} / {}",
                    self.n_experts, self.n_experts_used, self.n_shared_experts
                ),
            ),
            ("expert width", self.expert_ffn.to_string()),
            (
                "routed weight scale / norm",
                format!(
                    "{} / {}",
                    self.expert_weights_scale, self.expert_weights_norm
                ),
            ),
            ("gating", "sigmoid".into()),
            ("context", self.context_length.to_string()),
            ("vocab", self.vocab.to_string()),
        ]
    }
}
