//! glm-flash: GLM-4.7-Flash inference from GGUF files.
//!
//! Data flow: [`gguf::GgufFile`] (the mapped file) -> [`config::Config`] (the blueprint) and
//! [`weights::Weights`] (typed views into the file) -> a [`backend::Backend`] (the CPU
//! reference in [`cpu`], WGSL kernels in `gpu`) -> logits -> [`sampler`]; [`generate`] runs
//! the prefill/decode loop and [`synth`] writes random models of the real layout.
pub mod backend;
pub mod bench;
pub mod chat;
pub mod config;
pub mod cpu;
pub mod error;
pub mod formats;
pub mod ftype;
pub mod generate;
pub mod gguf;
pub mod gpu;
pub mod sampler;
pub mod synth;
pub mod tokenizer;
pub mod weights;
