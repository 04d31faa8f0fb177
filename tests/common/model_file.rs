//! GGUF files as plain values for tests: read one, change a key or a tensor, write it back;
//! or build a micro model (a complete GLM-4.7-Flash-shaped model of about 10 KB).

use glm_flash::gguf::{GgmlType, GgufFile, GgufWriter, Value, ValueType};

/// splitmix64: a tiny, fixed-seed PRNG (no dependency, same stream on every machine).
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0; the modulo bias is irrelevant here).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// Uniform in [-1, 1).
    pub fn signed_unit(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
}

pub struct Tensor {
    pub name: String,
    /// Innermost first, as GGUF stores them.
    pub dims: Vec<u64>,
    pub ty: GgmlType,
    pub data: Vec<u8>,
}

/// Metadata and tensors of a GGUF file, owned and editable.
#[derive(Default)]
pub struct ModelFile {
    pub metadata: Vec<(String, Value)>,
    pub tensors: Vec<Tensor>,
}

impl ModelFile {
    /// A copy of everything in `f`.
    pub fn read(f: &GgufFile) -> ModelFile {
        ModelFile {
            metadata: f.metadata.clone(),
            tensors: f
                .tensors
                .iter()
                .map(|t| Tensor {
                    name: t.name.clone(),
                    dims: t.dims.clone(),
                    ty: t.ggml_type,
                    data: f.tensor_data(t).to_vec(),
                })
                .collect(),
        }
    }

    /// Replace `key`'s value in place, or append it.
    pub fn set(&mut self, key: &str, value: Value) {
        match self.metadata.iter_mut().find(|(k, _)| k == key) {
            Some((_, v)) => *v = value,
            None => self.metadata.push((key.to_string(), value)),
        }
    }

    pub fn get(&self, key: &str) -> &Value {
        let found = self.metadata.iter().find(|(k, _)| k == key);
        &found.unwrap_or_else(|| panic!("no key {key}")).1
    }

    pub fn remove(&mut self, key: &str) {
        let before = self.metadata.len();
        self.metadata.retain(|(k, _)| k != key);
        assert_eq!(self.metadata.len() + 1, before, "no key {key} to remove");
    }

    pub fn tensor_mut(&mut self, name: &str) -> &mut Tensor {
        let found = self.tensors.iter_mut().find(|t| t.name == name);
        found.unwrap_or_else(|| panic!("no tensor {name}"))
    }

    pub fn remove_tensor(&mut self, name: &str) -> Tensor {
        let i = self.tensors.iter().position(|t| t.name == name);
        self.tensors
            .remove(i.unwrap_or_else(|| panic!("no tensor {name}")))
    }

    pub fn add_tensor(&mut self, name: &str, dims: &[u64], ty: GgmlType, data: Vec<u8>) {
        self.tensors.push(Tensor {
            name: name.to_string(),
            dims: dims.to_vec(),
            ty,
            data,
        });
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut w = GgufWriter::default();
        for (k, v) in &self.metadata {
            w.kv(k, v.clone());
        }
        for t in &self.tensors {
            w.tensor(&t.name, &t.dims, t.ty);
        }
        let mut out = Vec::new();
        let mut next = self.tensors.iter();
        w.write(&mut out, |_, sink| {
            sink.write_all(&next.next().unwrap().data)
        })
        .expect("writing to a Vec");
        out
    }

    /// Written and parsed back; `name` appears in the errors of later checks.
    pub fn parse(&self, name: &str) -> GgufFile {
        GgufFile::from_vec(name, self.to_bytes()).expect("a file written by GgufWriter parses")
    }
}

/// Random bytes of a tensor: small values around `center` (F32) or Q8_0 blocks of them.
pub fn random_data(rng: &mut SplitMix64, dims: &[u64], ty: GgmlType, center: f32) -> Vec<u8> {
    let n: u64 = dims.iter().product();
    match ty {
        GgmlType::F32 => (0..n)
            .flat_map(|_| (center + 0.2 * rng.signed_unit()).to_le_bytes())
            .collect(),
        GgmlType::Q8_0 => (0..n / 32)
            .flat_map(|_| {
                let scale = half::f16::from_f32(0.2 / 127.0).to_le_bytes();
                let quants: Vec<u8> = (0..32).map(|_| rng.next_u64() as u8).collect();
                scale.into_iter().chain(quants)
            })
            .collect(),
        other => panic!("random_data: {other} not handled"),
    }
}

/// A complete model of the GLM-4.7-Flash architecture, about 10 KB: hidden size 32, one
/// dense layer and one MoE layer (2 experts, 1 used, 1 shared), 16 tokens. Matrices whose
/// rows are 32 wide are Q8_0, the rest F32. It also carries one key of every value type
/// (arrays, a nested array, general.alignment) so the reader's every path sees valid data.
pub fn micro_model(seed: u64) -> ModelFile {
    let mut m = ModelFile::default();
    let a = |k: &str| format!("deepseek2.{k}");
    m.set("general.architecture", Value::String("deepseek2".into()));
    m.set("general.name", Value::String("micro".into()));
    m.set("general.alignment", Value::U32(32));
    for (k, v) in [
        ("block_count", 2),
        ("leading_dense_block_count", 1),
        ("context_length", 64),
        ("embedding_length", 32),
        ("feed_forward_length", 8),
        ("attention.head_count", 1),
        ("attention.q_lora_rank", 4),
        ("attention.kv_lora_rank", 4),
        ("attention.key_length_mla", 6),
        ("attention.value_length_mla", 4),
        ("rope.dimension_count", 2),
        ("expert_count", 2),
        ("expert_used_count", 1),
        ("expert_shared_count", 1),
        ("expert_feed_forward_length", 4),
        ("expert_gating_func", 2),
    ] {
        m.set(&a(k), Value::U32(v));
    }
    m.set(&a("rope.freq_base"), Value::F32(10000.0));
    m.set(&a("attention.layer_norm_rms_epsilon"), Value::F32(1e-5));
    m.set(&a("expert_weights_scale"), Value::F32(1.5));
    m.set(&a("expert_weights_norm"), Value::Bool(true));
    m.set("test.u8", Value::U8(7));
    m.set("test.i8", Value::I8(-7));
    m.set("test.u16", Value::U16(700));
    m.set("test.i16", Value::I16(-700));
    m.set("test.i32", Value::I32(-70000));
    m.set("test.u64", Value::U64(1 << 40));
    m.set("test.i64", Value::I64(-(1 << 40)));
    m.set("test.f64", Value::F64(0.25));
    let bytes = |v: &[u8]| Value::Array(ValueType::U8, v.iter().map(|&b| Value::U8(b)).collect());
    m.set(
        "test.nested",
        Value::Array(ValueType::Array, vec![bytes(&[1, 2]), bytes(&[3])]),
    );
    let tokens = (0..16).map(|i| Value::String(format!("t{i}"))).collect();
    m.set(
        "tokenizer.ggml.tokens",
        Value::Array(ValueType::String, tokens),
    );
    let types = (0..16).map(|_| Value::I32(1)).collect();
    m.set(
        "tokenizer.ggml.token_type",
        Value::Array(ValueType::I32, types),
    );

    let (q8, f32) = (GgmlType::Q8_0, GgmlType::F32);
    let mut tensors: Vec<(String, Vec<u64>, GgmlType)> = vec![
        ("token_embd.weight".into(), vec![32, 16], q8),
        ("output_norm.weight".into(), vec![32], f32),
    ];
    for l in 0..2 {
        let t = |n: &str, dims: &[u64], ty| (format!("blk.{l}.{n}.weight"), dims.to_vec(), ty);
        tensors.extend([
            t("attn_norm", &[32], f32),
            t("attn_q_a", &[32, 4], q8),
            t("attn_q_a_norm", &[4], f32),
            t("attn_q_b", &[4, 6], f32),
            t("attn_kv_a_mqa", &[32, 6], q8),
            t("attn_kv_a_norm", &[4], f32),
            t("attn_k_b", &[4, 4, 1], f32),
            t("attn_v_b", &[4, 4, 1], f32),
            t("attn_output", &[4, 32], f32),
            t("ffn_norm", &[32], f32),
        ]);
        if l == 0 {
            tensors.extend([
                t("ffn_gate", &[32, 8], q8),
                t("ffn_up", &[32, 8], q8),
                t("ffn_down", &[8, 32], f32),
            ]);
        } else {
            tensors.extend([
                t("ffn_gate_inp", &[32, 2], f32),
                t("ffn_gate_exps", &[32, 4, 2], q8),
                t("ffn_up_exps", &[32, 4, 2], q8),
                t("ffn_down_exps", &[4, 32, 2], f32),
                t("ffn_gate_shexp", &[32, 4], q8),
                t("ffn_up_shexp", &[32, 4], q8),
                t("ffn_down_shexp", &[4, 32], f32),
            ]);
            tensors.push((format!("blk.{l}.exp_probs_b.bias"), vec![2], f32));
        }
    }
    let mut rng = SplitMix64(seed);
    for (name, dims, ty) in tensors {
        let center = if name.contains("norm") { 1.0 } else { 0.0 };
        let data = random_data(&mut rng, &dims, ty, center);
        m.add_tensor(&name, &dims, ty, data);
    }
    m
}
