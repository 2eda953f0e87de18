//! Errors of the DLQ stores.

use std::path::PathBuf;

/// What went wrong storing or reading a DLQ object. Says which key or path.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The key is not `{tn_..}/{ep_..}/{yyyy}/{mm}/{dd}/{dl_..}.json` (or an id is malformed);
    /// nothing was touched.
    #[error("invalid DLQ key {key:?}: {reason}")]
    InvalidKey { key: String, reason: &'static str },
    /// A filesystem operation failed.
    #[error("DLQ I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A stored object is not valid JSON of the contract's shape, or does not match its key.
    #[error("corrupt DLQ object {key}: {reason}")]
    Corrupt { key: String, reason: String },
    /// A stored object is larger than the store will read back.
    #[error("DLQ object {key} is {bytes} bytes, over the limit of {limit}")]
    TooLarge { key: String, bytes: u64, limit: u64 },
    /// A listing matched more keys than one call may return; page through it instead.
    #[error("DLQ listing matched more than {limit} keys; use a narrower range or pages")]
    TooManyKeys { limit: usize },
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}

/// Result of DLQ store operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;
