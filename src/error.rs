//! One error type for the whole crate. Every message names the thing that is wrong
//! (file, key, tensor, value) so a user can act on it without a debugger.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The GGUF container itself is malformed: a length, count or offset that does not fit.
    #[error("{file}: GGUF error at byte offset {offset}: {msg}")]
    Gguf {
        file: String,
        offset: u64,
        msg: String,
    },

    /// The container is fine but it is not a model we can run (architecture, shapes, types).
    #[error("{file}: {msg}")]
    Model { file: String, msg: String },

    #[error("tokenizer: {0}")]
    Tokenizer(String),

    #[error("chat template: {0}")]
    Template(String),

    #[error("GPU: {0}")]
    Gpu(String),

    /// Something the user asked for that cannot be done (prompt too long, bad flag value).
    #[error("{0}")]
    Input(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
