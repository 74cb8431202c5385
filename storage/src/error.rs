//! What can go wrong when opening a data dir. Each message names the path and
//! says what the operator can do about it.

use std::io;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("data dir {path} is not writable: {source}: fix permissions or choose another --data-dir")]
    NotWritable { path: PathBuf, source: io::Error },

    #[error(
        "data dir {path} is in use by another process: {reason}: stop the other vpnd or choose another --data-dir"
    )]
    InUse { path: PathBuf, reason: String },

    #[error("data dir {path} is corrupt: {reason}: restore it from a backup or remove the node and re-add it under a new id")]
    Corrupt { path: PathBuf, reason: String },

    #[error("cannot read data dir {path}: {source}: check the disk and its mount, then restart")]
    Io { path: PathBuf, source: io::Error },
}

impl OpenError {
    pub(crate) fn corrupt(path: impl Into<PathBuf>, reason: impl std::fmt::Display) -> Self {
        Self::Corrupt { path: path.into(), reason: reason.to_string() }
    }

    /// Classifies an IO error by what the operator has to do about it.
    pub(crate) fn from_io(path: impl Into<PathBuf>, source: io::Error) -> Self {
        let path = path.into();
        match source.kind() {
            io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem | io::ErrorKind::NotADirectory => {
                Self::NotWritable { path, source }
            }
            _ => Self::Io { path, source },
        }
    }
}
