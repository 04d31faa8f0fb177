//! Valid GGUF files that are not a model glm-flash can run: each is refused by Config or
//! Weights with a message naming what is wrong. And the variants that are fine (no gating
//! key, MTP layers, fused gate/up experts) load and compute the same logits.
mod common;

use std::sync::OnceLock;

use common::fixture;
use common::model_file::{micro_model, ModelFile};
use glm_flash::backend::{Backend, Rows};
use glm_flash::config::Config;
use glm_flash::cpu::CpuBackend;
use glm_flash::gguf::{GgmlType, GgufFile, Value, ValueType};
use glm_flash::weights::Weights;

fn tiny_file() -> &'static GgufFile {
    static TINY: OnceLock<GgufFile> = OnceLock::new();
    TINY.get_or_init(|| GgufFile::open(fixture("tiny-q8_0.gguf")).unwrap())
}

/// tiny-q8_0.gguf with one edit, written and parsed back.
fn tiny_with(edit: impl FnOnce(&mut ModelFile)) -> GgufFile {
    let mut m = ModelFile::read(tiny_file());
    edit(&mut m);
    m.parse("edited.gguf")
}

/// Config and Weights of `f`, or the error's message.
fn load(f: &GgufFile) -> Result<(Config, usize), String> {
    let cfg = Config::from_gguf(f).map_err(|e| e.to_string())?;
    let w = Weights::from_gguf(f, &cfg).map_err(|e| e.to_string())?;
    Ok((cfg, w.layers.len()))
}

/// Loading the edited fixture fails with a message holding every one of `needles`.
fn refused(edit: impl FnOnce(&mut ModelFile), needles: &[&str]) {
    let f = tiny_with(edit);
    match load(&f) {
        Ok(_) => panic!("the edited model loaded; expected an error naming {needles:?}"),
        Err(msg) => {
            assert!(msg.starts_with("edited.gguf: "), "{msg}");
            for n in needles {
                assert!(msg.contains(n), "message {msg:?} does not name {n:?}");
            }
        }
    }
}

fn ds(key: &str) -> String {
    format!("deepseek2.{key}")
}

/// Below the micro model's 16 tokens too.
const TOKENS: [u32; 6] = [1, 7, 15, 0, 3, 12];

/// CPU logits of every position of `TOKENS`.
fn logits(f: &GgufFile) -> Vec<f32> {
    let cfg = Config::from_gguf(f).unwrap();
    let w = Weights::from_gguf(f, &cfg).unwrap();
    let mut cpu = CpuBackend::new(&cfg, &w, 64, 2).unwrap();
    cpu.feed_logits(&TOKENS, 0, Rows::All).unwrap()
}

fn tiny_logits() -> &'static [f32] {
    static LOGITS: OnceLock<Vec<f32>> = OnceLock::new();
    LOGITS.get_or_init(|| logits(tiny_file()))
}

// ---------------------------------------------------------------------------------------
// Refused

#[test]
fn wrong_architecture() {
    let llama = |m: &mut ModelFile| m.set("general.architecture", Value::String("llama".into()));
    refused(
        llama,
        &["architecture \"llama\" is not supported", "\"deepseek2\""],
    );
    refused(
        |m| m.remove("general.architecture"),
        &["missing general.architecture"],
    );
    refused(
        |m| m.set("general.architecture", Value::U32(2)),
        &["metadata general.architecture should be a string, found U32"],
    );
}

#[test]
fn missing_metadata_and_wrong_value_types() {
    refused(
        |m| m.remove(&ds("embedding_length")),
        &["missing metadata deepseek2.embedding_length"],
    );
    refused(
        |m| m.set(&ds("embedding_length"), Value::String("256".into())),
        &["metadata deepseek2.embedding_length should be an integer, found String"],
    );
    refused(
        |m| m.set(&ds("attention.head_count"), Value::I32(-4)),
        &["metadata deepseek2.attention.head_count = -4 is out of range"],
    );
    refused(
        |m| m.set(&ds("rope.freq_base"), Value::String("1e6".into())),
        &["metadata deepseek2.rope.freq_base should be a number, found String"],
    );
}

#[test]
fn missing_tensor() {
    for name in [
        "blk.2.attn_kv_a_mqa.weight",
        "output_norm.weight",
        "token_embd.weight",
        "blk.3.ffn_down_exps.weight",
        "blk.1.ffn_up_shexp.weight",
    ] {
        refused(
            |m| drop(m.remove_tensor(name)),
            &[&format!("missing tensor {name}")],
        );
    }
    // Without its router and dense FFN a layer is neither kind.
    refused(
        |m| drop(m.remove_tensor("blk.2.ffn_gate_inp.weight")),
        &["layer 2 has neither a dense FFN (blk.2.ffn_gate.weight) nor a router (blk.2.ffn_gate_inp.weight)"],
    );
}

#[test]
fn wrong_shape() {
    let name = "blk.1.attn_q_b.weight";
    refused(
        |m| {
            let t = m.tensor_mut(name);
            t.dims = vec![96, 256];
            t.data.truncate(t.data.len() / 2);
        },
        &[&format!(
            "tensor {name} has shape [96, 256], expected [96, 512]"
        )],
    );
    // Same element count, other arrangement.
    let name = "blk.0.attn_norm.weight";
    refused(
        |m| m.tensor_mut(name).dims = vec![128, 2],
        &[&format!("tensor {name} has shape [128, 2], expected [256]")],
    );
}

#[test]
fn unsupported_tensor_type() {
    let name = "blk.1.attn_q_a.weight";
    refused(
        |m| {
            let t = m.tensor_mut(name);
            assert_eq!(t.dims, [256, 96]);
            t.ty = GgmlType(16);
            // IQ2_XXS: 256 values in 66 bytes; one block per row.
            t.data = vec![0; 96 * 66];
        },
        &[
            &format!("tensor {name} has type IQ2_XXS, which is not supported"),
            "F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_NL, IQ4_XS, MXFP4",
        ],
    );
}

#[test]
fn tokenizer_and_embedding_disagree() {
    let needles = [
        "tokenizer.ggml.tokens has 4095 tokens but token_embd.weight has 4096 rows",
        "vocabulary",
    ];
    refused(
        |m| {
            let Value::Array(_, tokens) = m.get("tokenizer.ggml.tokens").clone() else {
                panic!("tokens are an array")
            };
            let fewer = tokens[..4095].to_vec();
            m.set(
                "tokenizer.ggml.tokens",
                Value::Array(ValueType::String, fewer),
            );
        },
        &needles,
    );
    // The head must have as many rows as the embedding.
    refused(
        |m| {
            let t = m.tensor_mut("output.weight");
            t.dims = vec![256, 4064];
            t.data.truncate(4064 * 8 * 34);
        },
        &["tensor output.weight has shape [256, 4064], expected [256, 4096]"],
    );
    refused(
        |m| m.set("tokenizer.ggml.tokens", Value::U32(4096)),
        &["metadata tokenizer.ggml.tokens should be an array, found U32"],
    );
    refused(
        |m| {
            let ids = (0..4096).map(Value::U32).collect();
            m.set("tokenizer.ggml.tokens", Value::Array(ValueType::U32, ids));
        },
        &["metadata tokenizer.ggml.tokens should hold strings"],
    );
}

#[test]
fn contradicting_config_numbers() {
    let set = |key: &str, v: Value| {
        let key = ds(key);
        move |m: &mut ModelFile| m.set(&key, v)
    };
    refused(
        set("expert_used_count", Value::U32(17)),
        &["expert_used_count = 17 must be between 1 and expert_count = 16"],
    );
    refused(
        set("expert_used_count", Value::U32(0)),
        &["expert_used_count = 0 must be between 1"],
    );
    refused(
        set("nextn_predict_layers", Value::U32(4)),
        &["deepseek2.nextn_predict_layers = 4 leaves no layers of block_count = 4"],
    );
    for rope in [31, 128, 130] {
        refused(
            set("rope.dimension_count", Value::U32(rope)),
            &[&format!(
                "deepseek2.rope.dimension_count = {rope} must be even and below deepseek2.attention.key_length_mla = 128"
            )],
        );
    }
    for eps in [0.0, -1e-5, f32::NAN, 1.0] {
        refused(
            set("attention.layer_norm_rms_epsilon", Value::F32(eps)),
            &[&format!(
                "attention.layer_norm_rms_epsilon = {eps} is not in (0, 1)"
            )],
        );
    }
    refused(
        set("rope.freq_base", Value::F32(f32::INFINITY)),
        &["rope.freq_base = inf must be a finite number above 1"],
    );
    refused(
        set("leading_dense_block_count", Value::U32(5)),
        &["leading_dense_block_count = 5 exceeds the 4 layers"],
    );
    refused(
        set("attention.kv_lora_rank", Value::U32(0)),
        &["attention.kv_lora_rank is 0"],
    );
    refused(
        set("expert_weights_scale", Value::F32(0.0)),
        &["expert_weights_scale = 0 must be positive"],
    );
}

/// Sizes no model has are refused by Config, before any product of them can overflow or
/// any allocation is sized by them.
#[test]
fn absurd_sizes() {
    for (key, v) in [
        ("attention.head_count", 1u64 << 40),
        ("embedding_length", u64::MAX),
        ("expert_feed_forward_length", 1 << 33),
        ("expert_count", 1 << 32),
    ] {
        refused(
            |m| m.set(&ds(key), Value::U64(v)),
            &[&format!("{key} = {v} is larger than any model's")],
        );
    }
    // A layer count no file has tensors for fails at the first missing layer.
    refused(
        |m| m.set(&ds("block_count"), Value::U64(1 << 31)),
        &["layer 4 has neither a dense FFN (blk.4.ffn_gate.weight) nor a router"],
    );
}

#[test]
fn gating_other_than_sigmoid_is_refused() {
    for g in [0, 1, 3] {
        refused(
            |m| m.set(&ds("expert_gating_func"), Value::U32(g)),
            &[&format!(
                "deepseek2.expert_gating_func = {g} is not supported: only 2 (sigmoid"
            )],
        );
    }
}

// ---------------------------------------------------------------------------------------
// Accepted

#[test]
fn the_fixture_and_the_micro_model_load() {
    let (cfg, layers) = load(tiny_file()).unwrap();
    assert_eq!((cfg.n_layers, layers, cfg.vocab), (4, 4, 4096));

    let micro = micro_model(1).parse("micro.gguf");
    let (cfg, layers) = load(&micro).unwrap();
    assert_eq!(
        (cfg.n_layers, layers, cfg.n_dense_layers, cfg.vocab),
        (2, 2, 1, 16)
    );
    let out = logits(&micro);
    assert_eq!(out.len(), TOKENS.len() * 16);
    assert!(out.iter().all(|v| v.is_finite()));
}

/// Older conversions lack expert_gating_func: the model still gates with a sigmoid.
#[test]
fn missing_gating_key_means_sigmoid() {
    let f = tiny_with(|m| m.remove(&ds("expert_gating_func")));
    assert_eq!(logits(&f), tiny_logits());
}

/// A file counting one multi-token-prediction layer in block_count, with that layer's
/// tensors present: the layer is not run, and the logits do not change.
#[test]
fn nextn_layers_are_counted_but_not_run() {
    let f = tiny_with(|m| {
        m.set(&ds("block_count"), Value::U32(5));
        m.set(&ds("nextn_predict_layers"), Value::U32(1));
        let copies: Vec<_> = m
            .tensors
            .iter()
            .filter(|t| t.name.starts_with("blk.3."))
            .map(|t| {
                (
                    t.name.replace("blk.3.", "blk.4."),
                    t.dims.clone(),
                    t.ty,
                    t.data.clone(),
                )
            })
            .collect();
        for (name, dims, ty, data) in copies {
            m.add_tensor(&name, &dims, ty, data);
        }
        let norm = 1f32.to_le_bytes().repeat(256);
        m.add_tensor(
            "blk.4.nextn.enorm.weight",
            &[256],
            GgmlType::F32,
            norm.clone(),
        );
        m.add_tensor("blk.4.nextn.hnorm.weight", &[256], GgmlType::F32, norm);
        let eh_proj = vec![0; 256 * (512 / 32) * 34];
        m.add_tensor(
            "blk.4.nextn.eh_proj.weight",
            &[512, 256],
            GgmlType::Q8_0,
            eh_proj,
        );
    });
    let (cfg, layers) = load(&f).unwrap();
    assert_eq!((cfg.n_layers, cfg.n_nextn_layers, layers), (4, 1, 4));
    assert_eq!(logits(&f), tiny_logits());
}

/// Some conversions fuse each layer's gate and up experts into one `ffn_gate_up_exps`
/// tensor (per expert: gate rows, then up rows). Same weights, same logits.
#[test]
fn fused_gate_up_experts_match_separate_ones() {
    let mut fused_layers = 0;
    let f = tiny_with(|m| {
        for layer in 0..4 {
            let p = format!("blk.{layer}");
            if !m
                .tensors
                .iter()
                .any(|t| t.name == format!("{p}.ffn_gate_exps.weight"))
            {
                continue;
            }
            let gate = m.remove_tensor(&format!("{p}.ffn_gate_exps.weight"));
            let up = m.remove_tensor(&format!("{p}.ffn_up_exps.weight"));
            let [cols, rows, experts] = gate.dims[..] else {
                panic!("3-d experts")
            };
            assert_eq!(up.dims, gate.dims);
            let per_expert = gate.data.len() / experts as usize;
            let data: Vec<u8> = gate
                .data
                .chunks(per_expert)
                .zip(up.data.chunks(per_expert))
                .flat_map(|(g, u)| [g, u].concat())
                .collect();
            m.add_tensor(
                &format!("{p}.ffn_gate_up_exps.weight"),
                &[cols, 2 * rows, experts],
                gate.ty,
                data,
            );
            fused_layers += 1;
        }
    });
    assert_eq!(fused_layers, 3);
    assert!(f.tensor("blk.1.ffn_gate_exps.weight").is_none());
    assert_eq!(logits(&f), tiny_logits());

    // A fused tensor of the wrong height is a shape error naming it.
    refused(
        |m| {
            let gate = m.remove_tensor("blk.1.ffn_gate_exps.weight");
            m.add_tensor("blk.1.ffn_gate_up_exps.weight", &gate.dims, gate.ty, gate.data);
        },
        &["tensor blk.1.ffn_gate_up_exps.weight has shape [256, 128, 16], expected [256, 256, 16]"],
    );
}
