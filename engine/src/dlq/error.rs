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
    /// An S3 request failed: the store answered an error, or could not be reached in time.
    /// `transient` says whether the same request may succeed later (network, timeouts, 5xx,
    /// throttling, credentials); a malformed request or a refused argument is not.
    #[error("DLQ S3 {op} of {key:?}: {reason}")]
    S3 {
        op: &'static str,
        key: String,
        reason: String,
        transient: bool,
    },
    /// The task running the call was lost (the blocking pool or the S3 runtime is shutting
    /// down); try again.
    #[error("DLQ store call interrupted: {0}")]
    Interrupted(String),
}

impl Error {
    /// Whether the same call may succeed later: I/O and S3 outages are, a bad key or a corrupt
    /// object is not. Shipping retries every error anyway (an outage never drops a record);
    /// replay uses this to tell "try the item again" from "skip it".
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Io { .. } | Error::Interrupted(_) => true,
            Error::S3 { transient, .. } => *transient,
            Error::InvalidKey { .. }
            | Error::Corrupt { .. }
            | Error::TooLarge { .. }
            | Error::TooManyKeys { .. } => false,
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}

/// Result of DLQ store operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;
