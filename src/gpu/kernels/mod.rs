//! One launcher per WGSL kernel, each beside its WGSL (`argmax.rs` launches `argmax.wgsl`;
//! `lib/` holds the WGSL appended to several kernels). A launcher declares its kernel's
//! [`Shader`] (bindings, overrides, uniform struct) and builds the
//! [`Dispatch`](crate::gpu::pipelines::Dispatch)es of one use of it (one per weight chunk
//! where the weights are split); the decode schedule (and the batched one) creates them
//! once and records them for every token (every chunk of a prompt).

pub mod argmax;
pub mod attn_batch;
pub mod attn_batch_coop;
pub mod attn_combine;
pub mod attn_partial;
pub mod attn_partial_coop;
pub mod embed;
pub mod ffn_down;
pub mod ffn_gate_up;
pub mod kv_rows;
pub mod matmul;
pub mod matvec;
pub mod moe_combine;
pub mod moe_group;
pub mod moe_route;
pub mod rms_norm;

pub use attn_partial::TokenParams;
pub use matmul::BatchParams;

use crate::gpu::shader::Shader;

/// Every kernel (the tests reflect each one's WGSL against its launcher).
pub fn all_shaders() -> Vec<Shader> {
    vec![
        embed::SHADER,
        matvec::SHADER,
        attn_partial::SHADER,
        attn_combine::SHADER,
        ffn_gate_up::SHADER,
        ffn_down::SHADER,
        argmax::SHADER,
        matmul::SHADER,
        rms_norm::SHADER,
        kv_rows::SHADER,
        attn_batch::SHADER,
        attn_batch_coop::SHADER,
        attn_partial_coop::SHADER,
        moe_route::SHADER,
        moe_group::SHADER,
        moe_combine::SHADER,
    ]
}
