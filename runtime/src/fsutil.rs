//! Small file helpers: engines read what we write while they run, so files
//! are replaced atomically (write, fsync, rename) and never seen half-written.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use crate::RuntimeError;

/// Replaces `path` with `contents`; `private` makes the file mode 0600.
pub(crate) fn write_atomic(path: &Path, contents: &[u8], private: bool) -> Result<(), RuntimeError> {
    let tmp = path.with_extension("tmp");
    // A stale temp file would keep its old mode; start from none.
    if let Err(e) = std::fs::remove_file(&tmp) {
        if e.kind() != std::io::ErrorKind::NotFound {
            return Err(RuntimeError::io("remove", &tmp, e));
        }
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(if private { 0o600 } else { 0o644 })
        .open(&tmp)
        .map_err(|e| RuntimeError::io("create", &tmp, e))?;
    file.write_all(contents).and_then(|()| file.sync_all()).map_err(|e| RuntimeError::io("write", &tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| RuntimeError::io("rename into place", path, e))
}

/// Removes a directory tree; a missing one is fine.
pub(crate) fn remove_dir(path: &Path) -> Result<(), RuntimeError> {
    match std::fs::remove_dir_all(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(RuntimeError::io("remove", path, e)),
        _ => Ok(()),
    }
}
