//! The GPU backend: WGSL kernels through wgpu, one job per module, each using only those
//! listed after it.
//!
//! - [`backend`]: [`GpuBackend`], the [`Backend`](crate::backend::Backend) of the GPU:
//!   submits a token or a chunk of a prompt, reads back logits, hidden states or the argmax,
//!   keeps the next greedy token in flight.
//! - [`schedule`]: every dispatch of a token, built once at load, and its recording.
//! - [`batch`]: every dispatch of a chunk of a prompt, built once at load, and its recording.
//! - [`kernels`]: one launcher per kernel, its WGSL beside it (`kernels/<name>.wgsl`).
//! - [`resident`]: the model's weights, uploaded once.
//! - [`cache`]: the latent caches, f16 or f32, sized and checked before anything else.
//! - [`pipelines`]: the pipeline cache and its registry; a recorded
//!   [`Dispatch`](pipelines::Dispatch).
//! - [`upload`]: buffers, and a weight matrix repacked into the layout the kernels read.
//! - [`shader`]: a kernel's WGSL module and the declarations Rust shares with it
//!   (bindings, uniform structs, overrides, sizes), each written once.
//! - [`context`]: the adapter and device, and the minimum the engine asks of them.

pub mod backend;
pub mod batch;
pub mod cache;
pub mod context;
pub mod kernels;
pub mod memory_model;
pub mod pipelines;
pub mod resident;
pub mod schedule;
pub mod shader;
pub mod upload;

pub use backend::{GpuBackend, GpuStats};
pub use context::{list_adapters, GpuContext, GpuOptions};
pub use shader::TileMath;
