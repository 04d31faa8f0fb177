//! Synthetic models: GGUF files of the real GLM-4.7-Flash layout with random weights.
//!
//! They let us run, time and test every path (loading, both backends, the CLI) at the
//! real size without downloading 30 GB, and give `glm-flash run` a model when none is
//! named. Weights follow the fixtures' recipe (normal with std 1/sqrt(fan_in), residual
//! output projections further scaled by 1/sqrt(2·layers), norms 1 + 0.1·N(0,1), selection
//! bias 0.1·N(0,1)) so activations stay of order 1 over depth. Data is generated in
//! independently seeded chunks, in parallel, and streamed to the writer: a 32 GB file needs
//! a few tens of MB of memory and the same seed gives the same bytes on any machine.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use rayon::prelude::*;

use crate::config::{Config, ARCHITECTURE};
use crate::error::{Error, Result};
use crate::formats;
use crate::ftype::FileType;
use crate::gguf::{GgmlType, GgufFile, GgufWriter, Value, ValueType};
use crate::sampler::SplitMix64;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Preset {
    /// GLM-4.7-Flash's own dimensions (about 32 GB in Q8_0).
    Full,
    /// The dimensions of the fixtures' `tiny-q8_0.gguf`.
    Tiny,
}

impl Preset {
    pub fn config(self) -> Config {
        match self {
            Preset::Full => Config {
                n_layers: 47,
                // Current converters write block_count 48 and nextn_predict_layers 1 without
                // the MTP layer's tensors; we mirror that.
                n_nextn_layers: 1,
                n_dense_layers: 1,
                hidden: 2048,
                dense_ffn: 10240,
                n_heads: 20,
                q_lora_rank: 768,
                kv_lora_rank: 512,
                qk_nope: 192,
                qk_rope: 64,
                v_head: 256,
                rope_base: 1e6,
                rms_eps: 1e-5,
                n_experts: 64,
                n_experts_used: 4,
                n_shared_experts: 1,
                expert_ffn: 1536,
                expert_weights_scale: 1.8,
                expert_weights_norm: true,
                context_length: 202752,
                vocab: 154880,
            },
            Preset::Tiny => Config {
                n_layers: 4,
                n_nextn_layers: 0,
                n_dense_layers: 1,
                hidden: 256,
                dense_ffn: 512,
                n_heads: 4,
                q_lora_rank: 96,
                kv_lora_rank: 64,
                qk_nope: 96,
                qk_rope: 32,
                v_head: 128,
                expert_ffn: 128,
                n_experts: 16,
                vocab: 4096,
                ..Preset::Full.config()
            },
        }
    }
}

/// What to synthesize; filled by the CLI's `synth` command.
#[derive(Clone, Debug)]
pub struct SynthOptions {
    pub preset: Preset,
    /// Trunk layers (MTP layers are counted on top, as the preset has them).
    pub layers: Option<usize>,
    pub vocab: Option<usize>,
    pub seed: u64,
    /// The type mix of the matrices, as llama-quantize chooses it for this file type.
    pub ftype: FileType,
}

/// The GLM special tokens, in the order GLM-4.7-Flash (and the fixtures) list them at the
/// end of the vocabulary.
pub const SPECIAL_TOKENS: [&str; 36] = [
    "<|endoftext|>",
    "[MASK]",
    "[gMASK]",
    "[sMASK]",
    "<sop>",
    "<eop>",
    "<|system|>",
    "<|user|>",
    "<|assistant|>",
    "<|observation|>",
    "<|begin_of_image|>",
    "<|end_of_image|>",
    "<|begin_of_video|>",
    "<|end_of_video|>",
    "<|begin_of_audio|>",
    "<|end_of_audio|>",
    "<|begin_of_transcription|>",
    "<|end_of_transcription|>",
    "<|code_prefix|>",
    "<|code_middle|>",
    "<|code_suffix|>",
    "<think>",
    "</think>",
    "<tool_call>",
    "</tool_call>",
    "<tool_response>",
    "</tool_response>",
    "<arg_key>",
    "</arg_key>",
    "<arg_value>",
    "</arg_value>",
    "/nothink",
    "<|begin_of_box|>",
    "<|end_of_box|>",
    "<|image|>",
    "<|video|>",
];

/// How a tensor's values are drawn.
#[derive(Clone, Copy, Debug)]
enum Fill {
    /// F32 `1 + 0.1·N(0,1)` (RMSNorm weights).
    Norm,
    /// F32 `std·N(0,1)` (router, selection bias).
    F32Normal(f32),
    /// `std·N(0,1)` in the tensor's (quantized) type: every matrix.
    Matrix(f32),
}

/// A synthetic model planned but not yet written: metadata, tensor list and how to fill it.
pub struct SynthModel {
    pub config: Config,
    writer: GgufWriter,
    fills: Vec<Fill>,
    seed: u64,
    ftype: FileType,
}

impl SynthModel {
    pub fn new(opts: &SynthOptions) -> Result<SynthModel> {
        let mut cfg = opts.preset.config();
        if let Some(l) = opts.layers {
            cfg.n_layers = l;
            cfg.n_dense_layers = cfg.n_dense_layers.min(l);
        }
        if let Some(v) = opts.vocab {
            cfg.vocab = v;
        }
        let min_vocab = 256 + SPECIAL_TOKENS.len();
        if cfg.vocab < min_vocab {
            return Err(Error::Input(format!(
                "vocab {} is too small: the 256 byte tokens and {} special tokens need {min_vocab}",
                cfg.vocab,
                SPECIAL_TOKENS.len()
            )));
        }
        cfg.validate()
            .map_err(|m| Error::Input(format!("synthetic model: {m}")))?;

        let mut m = SynthModel {
            config: cfg.clone(),
            writer: GgufWriter::default(),
            fills: Vec::new(),
            seed: opts.seed,
            ftype: opts.ftype,
        };
        m.metadata(opts.preset, opts.ftype);
        m.tensors();
        Ok(m)
    }

    fn metadata(&mut self, preset: Preset, ftype: FileType) {
        let c = &self.config;
        let u = |v: usize| Value::U32(v as u32);
        let arch = |k: &str| format!("{ARCHITECTURE}.{k}");
        let mut kv: Vec<(String, Value)> = vec![
            (
                "general.architecture".into(),
                Value::String(ARCHITECTURE.into()),
            ),
            ("general.type".into(), Value::String("model".into())),
            (
                "general.name".into(),
                Value::String(format!(
                    "GLM-4.7-Flash layout, random weights (glm-flash synth {preset:?} {})",
                    ftype.name()
                )),
            ),
            ("general.file_type".into(), Value::U32(ftype.id())),
            ("general.quantization_version".into(), Value::U32(2)),
        ];
        let model_keys = [
            ("block_count", u(c.n_layers + c.n_nextn_layers)),
            ("context_length", u(c.context_length)),
            ("embedding_length", u(c.hidden)),
            ("feed_forward_length", u(c.dense_ffn)),
            ("attention.head_count", u(c.n_heads)),
            ("attention.head_count_kv", u(1)),
            ("rope.freq_base", Value::F32(c.rope_base)),
            ("attention.layer_norm_rms_epsilon", Value::F32(c.rms_eps)),
            ("expert_count", u(c.n_experts)),
            ("expert_used_count", u(c.n_experts_used)),
            ("expert_group_count", u(1)),
            ("expert_group_used_count", u(1)),
            ("expert_gating_func", u(2)),
            ("leading_dense_block_count", u(c.n_dense_layers)),
            ("vocab_size", u(c.vocab)),
            ("attention.q_lora_rank", u(c.q_lora_rank)),
            ("attention.kv_lora_rank", u(c.kv_lora_rank)),
            // The absorbed MQA view: one "head" of [latent | k_pe], values = latent.
            ("attention.key_length", u(c.kv_lora_rank + c.qk_rope)),
            ("attention.value_length", u(c.kv_lora_rank)),
            ("attention.key_length_mla", u(c.qk_nope + c.qk_rope)),
            ("attention.value_length_mla", u(c.v_head)),
            ("expert_feed_forward_length", u(c.expert_ffn)),
            ("expert_shared_count", u(c.n_shared_experts)),
            ("expert_weights_scale", Value::F32(c.expert_weights_scale)),
            ("expert_weights_norm", Value::Bool(c.expert_weights_norm)),
            ("rope.dimension_count", u(c.qk_rope)),
        ];
        kv.extend(model_keys.into_iter().map(|(k, v)| (arch(k), v)));
        if c.n_nextn_layers > 0 {
            kv.push((arch("nextn_predict_layers"), u(c.n_nextn_layers)));
        }
        kv.extend(tokenizer_metadata(c.vocab));
        for (k, v) in kv {
            self.writer.kv(&k, v);
        }
    }

    fn tensors(&mut self) {
        let c = self.config.clone();
        let h = c.hidden as u64;
        let inv_sqrt = |n: usize| 1.0 / (n as f32).sqrt();
        // Output projections of residual branches: smaller, so depth does not blow up x.
        let residual = |n: usize| inv_sqrt(n) / ((2 * c.n_layers) as f32).sqrt();
        let ftype = self.ftype;
        let mut add = |name: String, dims: &[u64], fill: Fill| {
            let ty = match fill {
                Fill::Matrix(_) => ftype.tensor_type(&name, dims, &c),
                _ => GgmlType::F32,
            };
            self.writer.tensor(&name, dims, ty);
            self.fills.push(fill);
        };
        let v = c.vocab as u64;
        add(
            "output.weight".into(),
            &[h, v],
            Fill::Matrix(inv_sqrt(c.hidden)),
        );
        add("token_embd.weight".into(), &[h, v], Fill::Matrix(1.0));
        let (heads, nope, rope) = (c.n_heads as u64, c.qk_nope as u64, c.qk_rope as u64);
        let (ql, kvl, vh) = (c.q_lora_rank as u64, c.kv_lora_rank as u64, c.v_head as u64);
        for i in 0..c.n_layers {
            let p = |n: &str| format!("blk.{i}.{n}");
            add(p("attn_norm.weight"), &[h], Fill::Norm);
            add(
                p("attn_q_a.weight"),
                &[h, ql],
                Fill::Matrix(inv_sqrt(c.hidden)),
            );
            add(p("attn_q_a_norm.weight"), &[ql], Fill::Norm);
            add(
                p("attn_q_b.weight"),
                &[ql, heads * (nope + rope)],
                Fill::Matrix(inv_sqrt(c.q_lora_rank)),
            );
            add(
                p("attn_kv_a_mqa.weight"),
                &[h, kvl + rope],
                Fill::Matrix(inv_sqrt(c.hidden)),
            );
            add(p("attn_kv_a_norm.weight"), &[kvl], Fill::Norm);
            add(
                p("attn_k_b.weight"),
                &[nope, kvl, heads],
                Fill::Matrix(inv_sqrt(c.qk_nope)),
            );
            add(
                p("attn_v_b.weight"),
                &[kvl, vh, heads],
                Fill::Matrix(inv_sqrt(c.kv_lora_rank)),
            );
            add(
                p("attn_output.weight"),
                &[heads * vh, h],
                Fill::Matrix(residual(c.n_heads * c.v_head)),
            );
            add(p("ffn_norm.weight"), &[h], Fill::Norm);
            let mut swiglu = |suffix: &str, width: usize, n: Option<u64>| {
                let w = width as u64;
                let dims = |a: u64, b: u64| match n {
                    Some(n) => vec![a, b, n],
                    None => vec![a, b],
                };
                let hid = inv_sqrt(c.hidden);
                add(
                    p(&format!("ffn_gate{suffix}.weight")),
                    &dims(h, w),
                    Fill::Matrix(hid),
                );
                add(
                    p(&format!("ffn_up{suffix}.weight")),
                    &dims(h, w),
                    Fill::Matrix(hid),
                );
                add(
                    p(&format!("ffn_down{suffix}.weight")),
                    &dims(w, h),
                    Fill::Matrix(residual(width)),
                );
            };
            if c.is_moe_layer(i) {
                let e = c.n_experts as u64;
                swiglu("_exps", c.expert_ffn, Some(e));
                if c.n_shared_experts > 0 {
                    swiglu("_shexp", c.expert_ffn * c.n_shared_experts, None);
                }
                add(
                    p("ffn_gate_inp.weight"),
                    &[h, e],
                    Fill::F32Normal(inv_sqrt(c.hidden)),
                );
                add(p("exp_probs_b.bias"), &[e], Fill::F32Normal(0.1));
            } else {
                swiglu("", c.dense_ffn, None);
            }
        }
        add("output_norm.weight".into(), &[h], Fill::Norm);
    }

    /// Bytes of tensor data (without the header), for a progress bar.
    pub fn tensor_bytes(&self) -> u64 {
        self.writer.tensors.iter().map(|t| t.n_bytes()).sum()
    }

    pub fn tensor_count(&self) -> usize {
        self.writer.tensors.len()
    }

    /// Writes the file at `path`: under `<path>.partial`, renamed at the end, so a file
    /// under the asked name is always whole. Checks first that the disk has room; on an
    /// error, or once `stop` is set, the partial file is removed and an error returned.
    pub fn write_file(
        &self,
        path: &Path,
        progress: &mut dyn FnMut(u64),
        stop: &AtomicBool,
    ) -> Result<()> {
        if path.is_dir() {
            return Err(Error::Input(format!(
                "{}: is a directory; --out names the file to write",
                path.display()
            )));
        }
        let partial = PathBuf::from(format!("{}.partial", path.display()));
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        check_room(
            dir,
            self.tensor_bytes() + METADATA_ROOM,
            available_bytes(dir),
        )?;
        let written = self
            .write_partial(&partial, progress, stop)
            .and_then(|()| std::fs::rename(&partial, path).map_err(|e| Error::io(path, e)));
        if written.is_err() {
            let _ = std::fs::remove_file(&partial);
        }
        written
    }

    fn write_partial(
        &self,
        partial: &Path,
        progress: &mut dyn FnMut(u64),
        stop: &AtomicBool,
    ) -> Result<()> {
        let io = |e| Error::io(partial, e);
        let file = std::fs::File::create(partial).map_err(io)?;
        let mut out = std::io::BufWriter::with_capacity(8 << 20, Stoppable { inner: file, stop });
        self.write(&mut out, progress).map_err(io)?;
        out.into_inner()
            .map_err(|e| io(e.into_error()))?
            .inner
            .sync_all()
            .map_err(io)
    }

    /// Streams the whole file to `out`; `progress` gets the tensor bytes written so far.
    pub fn write<W: Write>(
        &self,
        out: &mut W,
        progress: &mut dyn FnMut(u64),
    ) -> std::io::Result<()> {
        let mut index = 0;
        let mut done = 0u64;
        self.writer.write(out, |spec, w| {
            let fill = self.fills[index];
            let seed = tensor_seed(self.seed, &spec.name);
            index += 1;
            let elems: u64 = spec.dims.iter().product();
            let n_chunks = elems.div_ceil(CHUNK_ELEMS);
            // Generate a batch of chunks in parallel, write them in order.
            let batch = (rayon::current_num_threads() * 4) as u64;
            for first in (0..n_chunks).step_by(batch as usize) {
                let last = (first + batch).min(n_chunks);
                let chunks: Vec<Vec<u8>> = (first..last)
                    .into_par_iter()
                    .map(|c| {
                        let n = CHUNK_ELEMS.min(elems - c * CHUNK_ELEMS) as usize;
                        let rng = SplitMix64(seed ^ c.wrapping_mul(CHUNK_SEED_STEP));
                        chunk_bytes(fill, spec.ggml_type, n, rng)
                    })
                    .collect();
                for bytes in chunks {
                    w.write_all(&bytes)?;
                    done += bytes.len() as u64;
                    progress(done);
                }
            }
            Ok(())
        })
    }
}

/// Elements generated per independently seeded chunk (a multiple of every block size).
const CHUNK_ELEMS: u64 = 1 << 20;
const CHUNK_SEED_STEP: u64 = 0xD1B5_4A32_D192_ED03;

/// A tensor's seed depends on the model seed and its name only, so adding layers or
/// changing the vocabulary leaves the other tensors' values unchanged.
fn tensor_seed(seed: u64, name: &str) -> u64 {
    // FNV-1a over the name, then mixed with the seed.
    let h = name.bytes().fold(0xCBF2_9CE4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01B3)
    });
    SplitMix64(seed ^ h).next_u64()
}

/// Quantiles of N(0,1) at (i + 0.5) / 4096, rescaled to unit variance: one table lookup
/// per sample keeps a 30-billion-value file fast to generate.
fn normal_table() -> &'static [f32; 4096] {
    static TABLE: std::sync::OnceLock<[f32; 4096]> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        let mut t = [0f32; 4096];
        let mut var = 0f64;
        let q: Vec<f64> = (0..4096)
            .map(|i| inverse_normal_cdf((i as f64 + 0.5) / 4096.0))
            .collect();
        q.iter().for_each(|x| var += x * x / 4096.0);
        for (o, x) in t.iter_mut().zip(&q) {
            *o = (x / var.sqrt()) as f32;
        }
        t
    })
}

/// Acklam's rational approximation of the standard normal quantile (rel. error < 1.2e-9).
fn inverse_normal_cdf(p: f64) -> f64 {
    const A: [f64; 6] = [
        -3.969683028665376e+01,
        2.209460984245205e+02,
        -2.759285104469687e+02,
        1.38357751867269e+02,
        -3.066479806614716e+01,
        2.506628277459239e+00,
    ];
    const B: [f64; 5] = [
        -5.447609879822406e+01,
        1.615858368580409e+02,
        -1.556989798598866e+02,
        6.680131188771972e+01,
        -1.328068155288572e+01,
    ];
    const C: [f64; 6] = [
        -7.784894002430293e-03,
        -3.223964580411365e-01,
        -2.400758277161838e+00,
        -2.549671285802613e+00,
        4.374664141464968e+00,
        2.938163982698783e+00,
    ];
    const D: [f64; 4] = [
        7.784695709041462e-03,
        3.224671290700398e-01,
        2.445134137142996e+00,
        3.754408661907416e+00,
    ];
    let tail = |q: f64| {
        (((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    };
    const P_LOW: f64 = 0.02425;
    if p < P_LOW {
        tail((-2.0 * p.ln()).sqrt())
    } else if p <= 1.0 - P_LOW {
        let q = p - 0.5;
        let r = q * q;
        (((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * q
            / (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0)
    } else {
        -tail((-2.0 * (1.0 - p).ln()).sqrt())
    }
}

/// Five N(0,1) samples from one PRNG output (12 bits each).
struct Normals {
    rng: SplitMix64,
    bits: u64,
    left: u32,
}

impl Normals {
    fn next(&mut self) -> f32 {
        if self.left == 0 {
            self.bits = self.rng.next_u64();
            self.left = 5;
        }
        let i = (self.bits & 0xFFF) as usize;
        self.bits >>= 12;
        self.left -= 1;
        normal_table()[i]
    }
}

/// `n` values of `fill`, encoded as the tensor's type `ty`.
fn chunk_bytes(fill: Fill, ty: GgmlType, n: usize, rng: SplitMix64) -> Vec<u8> {
    let mut z = Normals {
        rng,
        bits: 0,
        left: 0,
    };
    let (base, std) = match fill {
        Fill::Norm => (1.0, 0.1),
        Fill::F32Normal(s) | Fill::Matrix(s) => (0.0, s),
    };
    let values: Vec<f32> = (0..n).map(|_| base + std * z.next()).collect();
    let mut out = Vec::new();
    formats::of(ty)
        .expect("synth writes only types with a format")
        .quantize(&values, &mut out);
    out
}

/// GPT-2's byte-level alphabet: printable Latin-1 bytes stand for themselves, the other 68
/// bytes (in byte order) for U+0100 onwards. Returned in vocabulary order, as GPT-2 and the
/// GLM files list the 256 byte tokens.
fn byte_alphabet() -> Vec<(u8, char)> {
    let printable = |b: u8| (0x21..=0x7E).contains(&b) || (0xA1..=0xAC).contains(&b) || b >= 0xAE;
    let mut out: Vec<(u8, char)> = (0..=255u8)
        .filter(|&b| printable(b))
        .map(|b| (b, b as char))
        .collect();
    let others = (0..=255u8).filter(|&b| !printable(b));
    out.extend(
        others
            .enumerate()
            .map(|(i, b)| (b, char::from_u32(256 + i as u32).unwrap())),
    );
    out
}

/// Text the built-in BPE merges are learnt from, so common English words get whole tokens.
const CORPUS: &str = "The lighthouse keeper wrote in his log every evening. \
The wind came from the north and the sea was grey. He counted the ships that passed \
and the birds that rested on the rail. In the morning he cleaned the lamp, and in the \
afternoon he read old letters from his sister, who lived in the city by the river. \
There is nothing so quiet as a light that turns all night for people you will never \
meet. What do you think about the weather today? I think it will rain, but the \
forecast says the sun should come out later this week. Please translate the following \
sentence into English and explain your answer step by step. The model should answer \
the question, then stop. Hello, world! This is a small model with random weights, \
made for testing: its text has no meaning at all. One, two, three, four, five, six, \
seven, eight, nine, ten. 2024 was a year; 1999 was another. They have been working \
on it for a long time, and they would like to see what happens next. We can write \
code in Rust, Python or C, and we can run it on a computer with a GPU.";

/// Tokens, token types and merges of a byte-level BPE of exactly `vocab` entries: the 256
/// byte tokens, merges learnt from [`CORPUS`], then synthetic merges of existing tokens
/// until the vocabulary is full, then the GLM special tokens (type 3, control).
fn vocabulary(vocab: usize) -> (Vec<String>, Vec<i32>, Vec<String>) {
    let n_normal = vocab - SPECIAL_TOKENS.len();
    let alphabet = byte_alphabet();
    let mut to_char = ['\0'; 256];
    alphabet.iter().for_each(|&(b, c)| to_char[b as usize] = c);
    let mut tokens: Vec<String> = alphabet.iter().map(|&(_, c)| c.to_string()).collect();
    let mut known: std::collections::HashSet<String> = tokens.iter().cloned().collect();
    let mut merges = Vec::new();

    // Learn merges on the corpus's words (a leading space belongs to the word, as the
    // glm4 pre-split does), most frequent pair first, ties broken by the pair's text.
    let mut words: Vec<(Vec<String>, usize)> = Vec::new();
    for w in split_words(CORPUS) {
        let syms: Vec<String> = w.bytes().map(|b| to_char[b as usize].to_string()).collect();
        match words.iter_mut().find(|(s, _)| *s == syms) {
            Some((_, n)) => *n += 1,
            None => words.push((syms, 1)),
        }
    }
    while tokens.len() < n_normal {
        let mut counts: std::collections::BTreeMap<(String, String), usize> = Default::default();
        for (syms, n) in &words {
            for p in syms.windows(2) {
                *counts.entry((p[0].clone(), p[1].clone())).or_default() += n;
            }
        }
        let Some(((a, b), count)) = counts
            .into_iter()
            .max_by(|x, y| x.1.cmp(&y.1).then(y.0.cmp(&x.0)))
        else {
            break;
        };
        if count < 2 {
            break;
        }
        let ab = format!("{a}{b}");
        for (syms, _) in &mut words {
            let mut i = 0;
            while i + 1 < syms.len() {
                if syms[i] == a && syms[i + 1] == b {
                    syms[i] = ab.clone();
                    syms.remove(i + 1);
                }
                i += 1;
            }
        }
        merges.push(format!("{a} {b}"));
        if known.insert(ab.clone()) {
            tokens.push(ab);
        }
    }

    // Fill the rest with merges of two printable-ASCII tokens (a space only at the start,
    // at most 16 characters), chosen by a fixed PRNG so the vocabulary depends on `vocab`
    // only. ASCII keeps every token valid UTF-8, so random models print words, not U+FFFD.
    let space = to_char[b' ' as usize];
    let ascii = |t: &String| t.chars().all(|c| c.is_ascii_graphic() || c == space);
    let mut pool: Vec<String> = tokens.iter().filter(|t| ascii(t)).cloned().collect();
    let mut rng = SplitMix64(0x5EED_0F70_CE50);
    while tokens.len() < n_normal {
        let a = &pool[(rng.next_u64() % pool.len() as u64) as usize];
        let b = &pool[(rng.next_u64() % pool.len() as u64) as usize];
        if b.starts_with(space) || a.len() + b.len() > 16 {
            continue;
        }
        let ab = format!("{a}{b}");
        if !known.insert(ab.clone()) {
            continue;
        }
        merges.push(format!("{a} {b}"));
        pool.push(ab.clone());
        tokens.push(ab);
    }
    let mut types = vec![1i32; tokens.len()];
    tokens.extend(SPECIAL_TOKENS.iter().map(|s| s.to_string()));
    types.resize(tokens.len(), 3);
    (tokens, types, merges)
}

/// Words with their leading space; digits and punctuation runs on their own.
fn split_words(text: &str) -> Vec<&str> {
    let class = |c: char| {
        if c.is_alphabetic() {
            0
        } else if c.is_numeric() {
            1
        } else if c == ' ' {
            2
        } else {
            3
        }
    };
    let mut out = Vec::new();
    let mut start = 0;
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    for i in 1..chars.len() {
        let (prev, cur) = (class(chars[i - 1].1), class(chars[i].1));
        // A space starts a new word and sticks to what follows it.
        if cur != prev && prev != 2 || cur == 2 {
            out.push(&text[start..chars[i].0]);
            start = chars[i].0;
        }
    }
    out.push(&text[start..]);
    out
}

fn tokenizer_metadata(vocab: usize) -> Vec<(String, Value)> {
    let (tokens, types, merges) = vocabulary(vocab);
    let id = |t: &str| {
        let i = tokens.iter().rposition(|x| x == t).expect("special token") as u32;
        Value::U32(i)
    };
    let strings = |v: Vec<String>| {
        Value::Array(
            ValueType::String,
            v.into_iter().map(Value::String).collect(),
        )
    };
    vec![
        ("tokenizer.ggml.model".into(), Value::String("gpt2".into())),
        ("tokenizer.ggml.pre".into(), Value::String("glm4".into())),
        (
            "tokenizer.ggml.token_type".into(),
            Value::Array(ValueType::I32, types.into_iter().map(Value::I32).collect()),
        ),
        ("tokenizer.ggml.eos_token_id".into(), id("<|endoftext|>")),
        (
            "tokenizer.ggml.padding_token_id".into(),
            id("<|endoftext|>"),
        ),
        ("tokenizer.ggml.bos_token_id".into(), id("[gMASK]")),
        ("tokenizer.ggml.eot_token_id".into(), id("<|user|>")),
        (
            "tokenizer.ggml.unknown_token_id".into(),
            id("<|endoftext|>"),
        ),
        ("tokenizer.ggml.eom_token_id".into(), id("<|observation|>")),
        ("tokenizer.ggml.add_bos_token".into(), Value::Bool(false)),
        ("tokenizer.ggml.add_eos_token".into(), Value::Bool(false)),
        (
            "tokenizer.chat_template".into(),
            Value::String(crate::chat::GLM47_CHAT_TEMPLATE.into()),
        ),
        ("tokenizer.ggml.tokens".into(), strings(tokens)),
        ("tokenizer.ggml.merges".into(), strings(merges)),
    ]
}

/// Room kept for the metadata (the tokenizer's vocabulary and merges) beyond the tensors.
const METADATA_ROOM: u64 = 64 << 20;

/// A writer that fails once `stop` is set (Ctrl-C), so a long write ends at the next buffer.
struct Stoppable<'a, W> {
    inner: W,
    stop: &'a AtomicBool,
}

impl<W: Write> Write for Stoppable<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.stop.load(Ordering::Relaxed) {
            // Not ErrorKind::Interrupted: write_all retries on that.
            return Err(std::io::Error::other("interrupted"));
        }
        self.inner.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// An error when `needed` bytes do not fit the `available` ones (None: unknown, no check).
fn check_room(dir: &Path, needed: u64, available: Option<u64>) -> Result<()> {
    match available {
        Some(free) if free < needed => Err(Error::Input(format!(
            "{}: {:.2} GB free, the file needs {:.2} GB",
            dir.display(),
            free as f64 / 1e9,
            needed as f64 / 1e9
        ))),
        _ => Ok(()),
    }
}

/// Bytes an unprivileged process may still write on the filesystem of `dir`.
#[cfg(unix)]
fn available_bytes(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `c` is a NUL-terminated path and `st` is written by statvfs before it is read.
    if unsafe { libc::statvfs(c.as_ptr(), st.as_mut_ptr()) } != 0 {
        return None;
    }
    let st = unsafe { st.assume_init() };
    // The field types differ between platforms (u32 on some BSDs and macOS).
    #[allow(clippy::unnecessary_cast)]
    Some(st.f_bavail as u64 * st.f_frsize as u64)
}

/// Not measured on this platform: the write itself reports a full disk.
#[cfg(not(unix))]
fn available_bytes(_dir: &Path) -> Option<u64> {
    None
}

/// Options of the model `glm-flash run` uses when no file is given: the tiny preset with
/// 2 layers and a 2048-token vocabulary (about 4 MB), always the same bytes.
pub fn builtin_options() -> SynthOptions {
    SynthOptions {
        preset: Preset::Tiny,
        layers: Some(2),
        vocab: Some(2048),
        seed: 0x61C8_8647,
        ftype: FileType::Q8_0,
    }
}

/// The built-in model, built in memory.
pub fn builtin_model() -> GgufFile {
    let model = SynthModel::new(&builtin_options()).expect("built-in options are valid");
    let mut bytes = Vec::with_capacity(model.tensor_bytes() as usize + (1 << 20));
    model
        .write(&mut bytes, &mut |_| {})
        .expect("writing to memory cannot fail");
    GgufFile::from_vec("<built-in random model>", bytes).expect("the built-in model parses")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{Backend, Rows};
    use crate::cpu::CpuBackend;
    use crate::tokenizer::Tokenizer;
    use crate::weights::Weights;

    #[test]
    fn builtin_model_loads_and_runs() {
        let file = builtin_model();
        let cfg = Config::from_gguf(&file).unwrap();
        let mut want = Preset::Tiny.config();
        want.n_layers = 2;
        want.vocab = 2048;
        assert_eq!(cfg, want, "metadata round trip");
        let weights = Weights::from_gguf(&file, &cfg).unwrap();
        let mut cpu = CpuBackend::new(&cfg, &weights, 64, 1).unwrap();
        let tok = Tokenizer::from_gguf(&file).unwrap();
        let ids = tok.encode("The lighthouse keeper wrote").unwrap();
        assert!(
            ids.len() < 20,
            "learnt merges shorten the 27 bytes: {ids:?}"
        );
        let logits = cpu.feed_logits(&ids, 0, Rows::All).unwrap();
        assert_eq!(logits.len(), ids.len() * cfg.vocab);
        assert!(logits.iter().all(|v| v.is_finite()));
        // Random weights of std 1/sqrt(fan_in) give logits of order 1, not 0 or 1e6.
        let rms = (logits.iter().map(|v| v * v).sum::<f32>() / logits.len() as f32).sqrt();
        assert!((0.05..50.0).contains(&rms), "logit rms {rms}");
    }

    #[test]
    fn builtin_model_is_deterministic() {
        let a = builtin_model();
        let b = builtin_model();
        let t = a.tensor("blk.1.ffn_up_exps.weight").unwrap();
        assert_eq!(a.tensor_data(t), b.tensor_data(b.tensor(&t.name).unwrap()));
        assert_eq!(a.file_len(), b.file_len());
    }

    #[test]
    fn tokenizer_metadata_round_trips() {
        let file = builtin_model();
        let tok = Tokenizer::from_gguf(&file).unwrap();
        assert_eq!(tok.vocab_size(), 2048);
        for s in SPECIAL_TOKENS {
            let id = tok.id_of(s).unwrap();
            assert!(id as usize >= 2048 - SPECIAL_TOKENS.len());
            assert_eq!(tok.encode(s).unwrap(), vec![id], "{s} is one token");
        }
        let eos = tok.id_of("<|endoftext|>").unwrap();
        let user = tok.id_of("<|user|>").unwrap();
        let obs = tok.id_of("<|observation|>").unwrap();
        let stops = tok.stop_tokens();
        assert!(stops.contains(&eos) && stops.contains(&user) && stops.contains(&obs));
        for text in [
            "Hello, world!",
            "Zürich 中文 🚀 \n\t x",
            "<|user|>hi</think>",
        ] {
            let ids = tok.encode(text).unwrap();
            assert_eq!(tok.decode(&ids).unwrap(), text);
        }
        assert_eq!(tok.chat_template(), Some(crate::chat::GLM47_CHAT_TEMPLATE));
    }

    #[test]
    fn tiny_preset_matches_the_fixture_dims() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tiny-q8_0.gguf");
        let Ok(fixture) = GgufFile::open(path) else {
            eprintln!("skipped: {path} not present");
            return;
        };
        assert_eq!(Config::from_gguf(&fixture).unwrap(), Preset::Tiny.config());
    }

    #[test]
    fn full_preset_plans_the_real_layout() {
        let m = SynthModel::new(&SynthOptions {
            preset: Preset::Full,
            layers: None,
            vocab: None,
            seed: 0,
            ftype: FileType::Q8_0,
        })
        .unwrap();
        // embedding and head, 46 MoE layers of 18 tensors, 1 dense layer of 13, output_norm
        assert_eq!(m.tensor_count(), 2 + 46 * 18 + 13 + 1);
        let gb = m.tensor_bytes() as f64 / 1e9;
        assert!((29.0..34.0).contains(&gb), "{gb} GB");
        let names: Vec<&str> = m.writer.tensors.iter().map(|t| t.name.as_str()).collect();
        assert!(names.contains(&"blk.46.ffn_down_exps.weight"));
        assert!(!names.iter().any(|n| n.starts_with("blk.47.")));
        let k_b = m
            .writer
            .tensors
            .iter()
            .find(|t| t.name == "blk.3.attn_k_b.weight")
            .unwrap();
        assert_eq!(k_b.dims, [192, 512, 20]);
    }

    /// The tiny preset planned at each llama-quantize file type has the tensors and the
    /// per-tensor types of the fixture llama-quantize wrote from the same shapes.
    #[test]
    fn tiny_plans_match_llama_quantize_fixtures() {
        for (ftype, fixture) in [
            (FileType::Q4_0, "tiny-q4_0"),
            (FileType::Q2_K, "tiny-q2_k"),
            (FileType::Q5_K_M, "tiny-q5_k_m"),
            (FileType::Q6_K, "tiny-q6_k"),
            (FileType::Q8_0, "tiny-q8_0"),
        ] {
            let path = format!(
                "{}/tests/fixtures/{fixture}.gguf",
                env!("CARGO_MANIFEST_DIR")
            );
            let file = GgufFile::open(&path).unwrap();
            let m = SynthModel::new(&SynthOptions {
                preset: Preset::Tiny,
                layers: None,
                vocab: None,
                seed: 0,
                ftype,
            })
            .unwrap();
            let mut planned: Vec<_> = m
                .writer
                .tensors
                .iter()
                .map(|t| (t.name.clone(), t.dims.clone(), t.ggml_type))
                .collect();
            let mut want: Vec<_> = file
                .tensors
                .iter()
                .map(|t| (t.name.clone(), t.dims.clone(), t.ggml_type))
                .collect();
            planned.sort_by(|a, b| a.0.cmp(&b.0));
            want.sort_by(|a, b| a.0.cmp(&b.0));
            assert_eq!(planned, want, "{fixture}");
        }
    }

    /// Sizes of the full model's tensor data at each file type (llama.cpp's files of the real
    /// model: Q8_0 31.8 GB, Q6_K 24.8, Q5_K_M 21.6, Q4_K_M 18.5; the IQ4 and MXFP4 mixes
    /// from their bits per value).
    #[test]
    fn full_preset_sizes_per_file_type() {
        for (ftype, lo, hi) in [
            (FileType::Q8_0, 31.0, 32.5),
            (FileType::Q6_K, 24.0, 25.5),
            (FileType::Q5_K_M, 20.5, 22.0),
            (FileType::Q4_K_M, 17.5, 19.0),
            (FileType::Q4_0, 16.0, 18.0),
            (FileType::Q2_K, 9.0, 12.0),
            // 4.25 bits per value against Q4_0's 4.5; IQ4_NL is Q4_0's size plus six Q5_K
            // down projections; MXFP4_MOE's experts are 4.25 bits, the rest Q8_0.
            (FileType::IQ4_XS, 15.5, 16.9),
            (FileType::IQ4_NL, 16.9, 17.6),
            (FileType::MXFP4_MOE, 16.0, 18.0),
        ] {
            let m = SynthModel::new(&SynthOptions {
                preset: Preset::Full,
                layers: None,
                vocab: None,
                seed: 0,
                ftype,
            })
            .unwrap();
            let gb = m.tensor_bytes() as f64 / 1e9;
            println!("full {}: {gb:.2} GB", ftype.name());
            assert!((lo..hi).contains(&gb), "{}: {gb} GB", ftype.name());
        }
    }

    /// Every type a K-quant mix uses is written and read back: a small K-quant model runs.
    #[test]
    fn kquant_and_iq4_synth_models_load_and_run() {
        for (ftype, want) in [
            (
                FileType::Q4_K_M,
                &["F32", "Q4_K", "Q5_0", "Q6_K", "Q8_0"][..],
            ),
            (FileType::IQ4_XS, &["F32", "IQ4_NL", "IQ4_XS", "Q6_K"]),
            (FileType::MXFP4_MOE, &["F32", "MXFP4", "Q8_0"]),
        ] {
            let m = SynthModel::new(&SynthOptions {
                ftype,
                ..builtin_options()
            })
            .unwrap();
            let mut bytes = Vec::new();
            m.write(&mut bytes, &mut |_| {}).unwrap();
            let file = GgufFile::from_vec("synth.gguf", bytes).unwrap();
            let cfg = Config::from_gguf(&file).unwrap();
            let types: std::collections::BTreeSet<String> =
                file.tensors.iter().map(|t| t.ggml_type.name()).collect();
            assert_eq!(
                types.into_iter().collect::<Vec<_>>(),
                want,
                "{}",
                ftype.name()
            );
            let weights = Weights::from_gguf(&file, &cfg).unwrap();
            let mut cpu = CpuBackend::new(&cfg, &weights, 16, 1).unwrap();
            let logits = cpu.feed_logits(&[5, 6, 7], 0, Rows::All).unwrap();
            assert!(logits.iter().all(|v| v.is_finite()), "{}", ftype.name());
        }
    }

    #[test]
    fn normal_samples_have_unit_variance() {
        let mut z = Normals {
            rng: SplitMix64(7),
            bits: 0,
            left: 0,
        };
        let xs: Vec<f64> = (0..100_000).map(|_| z.next() as f64).collect();
        let mean = xs.iter().sum::<f64>() / xs.len() as f64;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / xs.len() as f64;
        assert!(
            mean.abs() < 0.02 && (var - 1.0).abs() < 0.02,
            "{mean} {var}"
        );
        assert!((inverse_normal_cdf(0.975) - 1.959964).abs() < 1e-5);
    }

    #[test]
    fn write_file_checks_room_and_leaves_no_partial_file_behind() {
        let model = SynthModel::new(&builtin_options()).unwrap();
        let dir = std::env::temp_dir().join(format!("glm-flash-synth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let out = dir.join("model.gguf");
        let partial = dir.join("model.gguf.partial");

        // Stopped (Ctrl-C) before the first buffer is written: an error, and no file at all.
        let stopped = AtomicBool::new(true);
        assert!(model.write_file(&out, &mut |_| {}, &stopped).is_err());
        assert!(!out.exists() && !partial.exists());

        // Written whole: the same bytes as in memory, and no partial file.
        model
            .write_file(&out, &mut |_| {}, &AtomicBool::new(false))
            .unwrap();
        assert!(!partial.exists());
        let file = GgufFile::open(&out).unwrap();
        assert_eq!(Config::from_gguf(&file).unwrap(), model.config);

        // A directory as the output is named as such.
        let err = model
            .write_file(&dir, &mut |_| {}, &AtomicBool::new(false))
            .unwrap_err();
        assert!(err.to_string().contains("is a directory"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();

        // Room: refused when short, with both numbers; unknown room is not checked.
        let err = check_room(Path::new("/data"), 3_000_000_000, Some(1_000_000_000)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "/data: 1.00 GB free, the file needs 3.00 GB"
        );
        assert!(check_room(Path::new("/data"), 3, Some(3)).is_ok());
        assert!(check_room(Path::new("/data"), 3, None).is_ok());
        assert!(available_bytes(&std::env::temp_dir()).is_some_and(|b| b > 0));
    }
}
