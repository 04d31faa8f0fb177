//! llama.cpp's file types (`general.file_type`) and the type `llama-quantize` gives each
//! tensor of this architecture at each, so synthetic models carry the mixes real files do.
//!
//! F16 and BF16 files keep every matrix but the router in their type.
//!
//! The rules, as llama.cpp's `llama_tensor_get_type` applies them to `deepseek2` files:
//! 1-D tensors (norms, the selection bias) and the router `ffn_gate_inp` stay F32; `output`
//! becomes Q6_K (Q8_0 when its rows are not whole blocks of the file's type, unchanged at
//! Q8_0); `attn_output` becomes Q5_K at Q2_K/Q4_K_M when the model has exactly 8 experts, and
//! Q3_K at Q2_K otherwise; `ffn_down` (dense, routed and shared) becomes Q3_K at Q2_K, and
//! Q6_K at Q4_K_M/Q5_K_M in the layers `use_more_bits` picks; everything else takes the
//! file's type. IQ4_NL and IQ4_XS follow the same path: `attn_output` becomes Q5_K with 8
//! experts, and `ffn_down` Q5_K in the first eighth of the layers (llama-quantize's choice
//! without an importance matrix, which synth has none of; with one, those stay IQ4).
//! MXFP4_MOE is simpler: `output` becomes Q8_0, every 3-D tensor (the expert stacks, and MLA's
//! per-head `attn_k_b`/`attn_v_b`) MXFP4, every other matrix Q8_0. Last, a type whose block
//! does not divide the row falls back: Q4_K to Q5_0, Q5_K to Q5_1, Q6_K to Q8_0, Q2_K and
//! Q3_K to Q4_0, IQ4_XS to IQ4_NL.

use crate::config::Config;
use crate::gguf::GgmlType;

#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileType {
    F16,
    BF16,
    Q8_0,
    Q4_0,
    Q2_K,
    Q4_K_M,
    Q5_K_M,
    Q6_K,
    IQ4_NL,
    IQ4_XS,
    MXFP4_MOE,
}

impl FileType {
    pub const ALL: [FileType; 11] = [
        FileType::Q8_0,
        FileType::Q4_0,
        FileType::Q2_K,
        FileType::Q4_K_M,
        FileType::Q5_K_M,
        FileType::Q6_K,
        FileType::IQ4_NL,
        FileType::IQ4_XS,
        FileType::MXFP4_MOE,
        FileType::F16,
        FileType::BF16,
    ];

    /// The `general.file_type` value (llama.cpp's `LLAMA_FTYPE_MOSTLY_*`).
    pub fn id(self) -> u32 {
        match self {
            FileType::F16 => 1,
            FileType::Q4_0 => 2,
            FileType::Q8_0 => 7,
            FileType::Q2_K => 10,
            FileType::Q4_K_M => 15,
            FileType::Q5_K_M => 17,
            FileType::Q6_K => 18,
            FileType::IQ4_NL => 25,
            FileType::IQ4_XS => 30,
            FileType::BF16 => 32,
            FileType::MXFP4_MOE => 38,
        }
    }

    pub fn from_id(id: u32) -> Option<FileType> {
        FileType::ALL.into_iter().find(|f| f.id() == id)
    }

    pub fn name(self) -> &'static str {
        match self {
            FileType::F16 => "F16",
            FileType::BF16 => "BF16",
            FileType::Q8_0 => "Q8_0",
            FileType::Q4_0 => "Q4_0",
            FileType::Q2_K => "Q2_K",
            FileType::Q4_K_M => "Q4_K_M",
            FileType::Q5_K_M => "Q5_K_M",
            FileType::Q6_K => "Q6_K",
            FileType::IQ4_NL => "IQ4_NL",
            FileType::IQ4_XS => "IQ4_XS",
            FileType::MXFP4_MOE => "MXFP4_MOE",
        }
    }

    /// By name, any case ("q4_k_m").
    pub fn from_name(name: &str) -> Option<FileType> {
        FileType::ALL
            .into_iter()
            .find(|f| f.name().eq_ignore_ascii_case(name))
    }

    /// The type most tensors get.
    fn base(self) -> GgmlType {
        match self {
            FileType::F16 => GgmlType::F16,
            FileType::BF16 => GgmlType::BF16,
            FileType::Q8_0 => GgmlType::Q8_0,
            FileType::Q4_0 => GgmlType::Q4_0,
            FileType::Q2_K => GgmlType::Q2_K,
            FileType::Q4_K_M => GgmlType::Q4_K,
            FileType::Q5_K_M => GgmlType::Q5_K,
            FileType::Q6_K => GgmlType::Q6_K,
            FileType::IQ4_NL => GgmlType::IQ4_NL,
            FileType::IQ4_XS => GgmlType::IQ4_XS,
            FileType::MXFP4_MOE => GgmlType::MXFP4,
        }
    }

    /// The type of tensor `name` with GGUF dims `dims` (innermost first) in a file of this
    /// type, for a model of `cfg`'s shape.
    pub fn tensor_type(self, name: &str, dims: &[u64], cfg: &Config) -> GgmlType {
        if dims.len() < 2 || name.contains("ffn_gate_inp.weight") {
            return GgmlType::F32;
        }
        let base = self.base();
        if matches!(self, FileType::F16 | FileType::BF16) {
            // llama-quantize applies its per-tensor choices to quantized types only.
            return base;
        }
        let row = dims[0];
        let chosen = if self == FileType::MXFP4_MOE {
            if dims.len() > 2 && dims[2] > 1 && name != "output.weight" {
                GgmlType::MXFP4
            } else {
                GgmlType::Q8_0
            }
        } else if name == "output.weight" {
            if !row.is_multiple_of(base.block_elems()) {
                GgmlType::Q8_0
            } else if base != GgmlType::Q8_0 {
                GgmlType::Q6_K
            } else {
                base
            }
        } else if name.contains("attn_output.weight") {
            match self {
                FileType::Q2_K | FileType::Q4_K_M | FileType::IQ4_NL | FileType::IQ4_XS
                    if cfg.n_experts == 8 =>
                {
                    GgmlType::Q5_K
                }
                FileType::Q2_K => GgmlType::Q3_K,
                _ => base,
            }
        } else if name.contains("ffn_down") {
            // llama.cpp counts layers with block_count, multi-token-prediction layers included.
            let layers = (cfg.n_layers + cfg.n_nextn_layers) as i64;
            match self {
                FileType::Q2_K => GgmlType::Q3_K,
                FileType::Q4_K_M | FileType::Q5_K_M if use_more_bits(layer_of(name), layers) => {
                    GgmlType::Q6_K
                }
                FileType::IQ4_NL | FileType::IQ4_XS if layer_of(name) < layers / 8 => {
                    GgmlType::Q5_K
                }
                _ => base,
            }
        } else {
            base
        };
        fallback(chosen, row)
    }
}

/// llama.cpp's choice of layers that get more bits: the first and last eighth, and every
/// third layer in between.
fn use_more_bits(layer: i64, layers: i64) -> bool {
    layer < layers / 8 || layer >= 7 * layers / 8 || (layer - layers / 8) % 3 == 2
}

/// N of a `blk.N.` tensor name (0 for others).
fn layer_of(name: &str) -> i64 {
    name.strip_prefix("blk.")
        .and_then(|r| r.split('.').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// A type whose block does not divide the row length is replaced as llama.cpp does (F16
/// when even the replacement does not fit).
fn fallback(ty: GgmlType, row: u64) -> GgmlType {
    if row.is_multiple_of(ty.block_elems()) {
        return ty;
    }
    let other = match ty {
        GgmlType::Q2_K | GgmlType::Q3_K => GgmlType::Q4_0,
        GgmlType::Q4_K => GgmlType::Q5_0,
        GgmlType::Q5_K => GgmlType::Q5_1,
        GgmlType::Q6_K => GgmlType::Q8_0,
        GgmlType::IQ4_XS => GgmlType::IQ4_NL,
        _ => GgmlType::F16,
    };
    if row.is_multiple_of(other.block_elems()) {
        other
    } else {
        GgmlType::F16
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::GgufFile;

    /// Every tensor of every llama-quantize fixture has the type these rules give it.
    #[test]
    fn rules_reproduce_llama_quantize_on_the_fixtures() {
        for name in [
            "tiny-q4_0",
            "tiny-q2_k",
            "tiny-q5_k_m",
            "tiny-q6_k",
            "small2-q4_k_m",
            "tiny-q8_0",
            "small2-q8_0",
        ] {
            let path = format!("{}/tests/fixtures/{name}.gguf", env!("CARGO_MANIFEST_DIR"));
            let file = GgufFile::open(&path).unwrap();
            let cfg = Config::from_gguf(&file).unwrap();
            let id = file.get_int::<u32>("general.file_type").unwrap().unwrap();
            let ftype = FileType::from_id(id).unwrap();
            for t in &file.tensors {
                assert_eq!(
                    ftype.tensor_type(&t.name, &t.dims, &cfg),
                    t.ggml_type,
                    "{name} ({}): {} {:?}",
                    ftype.name(),
                    t.name,
                    t.dims
                );
            }
        }
    }

    #[test]
    fn names_and_ids_round_trip() {
        for f in FileType::ALL {
            assert_eq!(FileType::from_id(f.id()), Some(f));
            assert_eq!(FileType::from_name(&f.name().to_lowercase()), Some(f));
        }
        assert_eq!(FileType::from_name("q3_k_m"), None);
    }

    /// llama-quantize's IQ4_XS and MXFP4_MOE rules (no fixture: llama.cpp's
    /// `llama_tensor_get_type` read) on the real model's shapes: IQ4_XS with Q6_K `output`,
    /// Q5_K down projections in layers 0..6 (48 / 8, no importance matrix) and IQ4_NL where a
    /// row is not 256 values; MXFP4_MOE with MXFP4 in every 3-D tensor, Q8_0 elsewhere.
    #[test]
    fn full_model_iq4_xs_and_mxfp4_moe_types() {
        let cfg = crate::synth::Preset::Full.config();
        let cases: [(FileType, &str, &[u64], GgmlType); 14] = [
            (
                FileType::IQ4_XS,
                "output.weight",
                &[2048, 154880],
                GgmlType::Q6_K,
            ),
            (
                FileType::IQ4_XS,
                "token_embd.weight",
                &[2048, 154880],
                GgmlType::IQ4_XS,
            ),
            (
                FileType::IQ4_XS,
                "blk.0.ffn_down.weight",
                &[10240, 2048],
                GgmlType::Q5_K,
            ),
            (
                FileType::IQ4_XS,
                "blk.5.ffn_down_exps.weight",
                &[1536, 2048, 64],
                GgmlType::Q5_K,
            ),
            (
                FileType::IQ4_XS,
                "blk.6.ffn_down_exps.weight",
                &[1536, 2048, 64],
                GgmlType::IQ4_XS,
            ),
            (
                FileType::IQ4_XS,
                "blk.6.ffn_up_exps.weight",
                &[2048, 1536, 64],
                GgmlType::IQ4_XS,
            ),
            (
                FileType::IQ4_XS,
                "blk.3.attn_k_b.weight",
                &[192, 512, 20],
                GgmlType::IQ4_NL,
            ),
            (
                FileType::IQ4_XS,
                "blk.3.attn_output.weight",
                &[5120, 2048],
                GgmlType::IQ4_XS,
            ),
            (
                FileType::MXFP4_MOE,
                "output.weight",
                &[2048, 154880],
                GgmlType::Q8_0,
            ),
            (
                FileType::MXFP4_MOE,
                "token_embd.weight",
                &[2048, 154880],
                GgmlType::Q8_0,
            ),
            (
                FileType::MXFP4_MOE,
                "blk.3.ffn_gate_exps.weight",
                &[2048, 1536, 64],
                GgmlType::MXFP4,
            ),
            (
                FileType::MXFP4_MOE,
                "blk.3.ffn_gate_shexp.weight",
                &[2048, 1536],
                GgmlType::Q8_0,
            ),
            (
                FileType::MXFP4_MOE,
                "blk.3.attn_k_b.weight",
                &[192, 512, 20],
                GgmlType::MXFP4,
            ),
            (
                FileType::MXFP4_MOE,
                "blk.3.ffn_gate_inp.weight",
                &[2048, 64],
                GgmlType::F32,
            ),
        ];
        for (ftype, name, dims, want) in cases {
            assert_eq!(
                ftype.tensor_type(name, dims, &cfg),
                want,
                "{} {name}",
                ftype.name()
            );
        }
    }

    /// The real model at Q4_K_M (block_count 48 with the MTP layer): the down projections of
    /// 23 of the 47 layers are Q6_K (about half).
    #[test]
    fn full_model_q4_k_m_raises_about_half_the_down_projections() {
        let cfg = crate::synth::Preset::Full.config();
        let q6: Vec<usize> = (0..cfg.n_layers)
            .filter(|i| {
                let name = format!("blk.{i}.ffn_down_exps.weight");
                FileType::Q4_K_M.tensor_type(&name, &[1536, 2048, 64], &cfg) == GgmlType::Q6_K
            })
            .collect();
        assert_eq!(q6.len(), 23, "{q6:?}");
        assert_eq!(
            FileType::Q4_K_M.tensor_type("blk.3.attn_k_b.weight", &[192, 512, 20], &cfg),
            GgmlType::Q5_0
        );
        assert_eq!(
            FileType::Q6_K.tensor_type("blk.3.attn_k_b.weight", &[192, 512, 20], &cfg),
            GgmlType::Q8_0
        );
    }
}
