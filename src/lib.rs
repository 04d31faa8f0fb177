//! glm-flash: GLM-4.7-Flash inference from GGUF files.
//!
//! Data flow: [`gguf::GgufFile`] (the mapped file) -> [`config::Config`] (the blueprint) and
//! [`weights::Weights`] (typed views into the file) -> a [`backend::Backend`] (the CPU
//! reference in [`cpu`], WGSL kernels in `gpu`) -> logits -> [`sampler`]; [`generate`] runs
//! the prefill/decode loop and [`synth`] writes random models of the real layout.
//!
//! What the command line and the server share: [`engine`] opens a model and a backend
//! (`auto` falling back to the CPU), [`session`] holds a conversation on it (cache reuse
//! across turns, the chat template with tools, stop strings, the reply split into thinking,
//! answer and [`tool_calls`]); [`server`] is `glm-flash serve`, the OpenAI-compatible HTTP
//! server.
pub mod backend;
pub mod bench;
pub mod chat;
pub mod config;
pub mod cpu;
pub mod engine;
pub mod error;
pub mod formats;
pub mod ftype;
pub mod generate;
pub mod gguf;
pub mod gpu;
pub mod json_output;
pub mod ops_common;
pub mod sampler;
pub mod server;
pub mod session;
pub mod synth;
pub mod tokenizer;
pub mod tool_calls;
pub mod weights;
