//! The GPU backend: WGSL kernels through wgpu.
//!
//! [`context`] picks the adapter and opens the device; [`upload`] repacks the weights into
//! GPU buffers once; [`shaders`] builds pipelines; [`kernels`] holds one launcher per WGSL
//! file; [`GpuBackend`] records a whole token into one command encoder.

pub mod context;
pub mod kernels;
pub mod shaders;
pub mod upload;

pub use context::{list_adapters, GpuContext, GpuOptions};
