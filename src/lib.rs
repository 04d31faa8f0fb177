//! glm-flash: GLM-4.7-Flash inference.
pub mod error;
pub mod gguf;
