use std::path::PathBuf;

/// Every way a WAL operation can fail. The Python bindings map each variant
/// to a `WalError` subclass.
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    #[error("entry not found: offset {0}")]
    EntryNotFound(i64),

    #[error("invalid next offset: expected {expected}, got {got}")]
    InvalidNextOffset { expected: i64, got: i64 },

    #[error("previous CRC mismatch at offset {offset}: log has {expected:#010x}, caller gave {got:#010x}")]
    CrcMismatch { offset: i64, expected: u32, got: u32 },

    #[error("corrupted log: {path}: byte {position}: {reason}")]
    Corrupted {
        path: PathBuf,
        position: u64,
        reason: String,
    },

    #[error("the WAL is closed")]
    Closed,

    #[error("the WAL failed earlier and must be reopened: {0}")]
    Poisoned(String),

    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T> = std::result::Result<T, WalError>;

pub(crate) trait IoContext<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| WalError::Io {
            context: context(),
            source,
        })
    }
}
