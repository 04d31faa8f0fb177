//! The GPU backend: WGSL kernels through wgpu, one job per module.
//!
//! - [`context`]: the adapter and device, and the minimum the engine asks of them.
//! - [`upload`]: buffers, and a weight matrix repacked into the layout the kernels read.
//! - [`resident`]: the model's weights and latent caches, uploaded once.
//! - [`shader`]: a kernel's WGSL module and the declarations Rust shares with it
//!   (bindings, uniform structs, overrides, sizes), each written once.
//! - [`pipelines`]: the pipeline cache and its registry; a recorded
//!   [`Dispatch`](pipelines::Dispatch).
//! - [`kernels`]: one launcher per kernel, its WGSL beside it (`kernels/<name>.wgsl`).
//! - [`schedule`]: every dispatch of a token, built once, and the recording of a token.
//! - [`backend`]: [`GpuBackend`], the [`Backend`](crate::backend::Backend) of the GPU.

pub mod backend;
pub mod context;
pub mod kernels;
pub mod pipelines;
pub mod resident;
pub mod schedule;
pub mod shader;
pub mod upload;

pub use backend::{GpuBackend, GpuStats};
pub use context::{list_adapters, GpuContext, GpuOptions};

pub use crate::backend::{TokenProfile, TokenStats};
