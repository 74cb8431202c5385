//! A node's data dir is its own: the Raft log and the state hold every
//! user's credentials and subscription tokens, so nothing in it may be
//! readable by another local user. `vpnd` sets its umask to 077 (new files
//! 0600, new dirs 0700); at start, a dir that others can read is said so in
//! the log and narrowed, with everything in it.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::error::Error;

/// Makes `dir` (created when missing) and everything under it private to
/// this user; returns how many entries had to be narrowed.
pub fn make_private(dir: &Path) -> Result<usize, Error> {
    let fail = |path: &Path, e: std::io::Error| Error::DataDir {
        path: path.to_owned(),
        detail: format!("{e}: give --data-dir a directory this user can create and own"),
    };
    std::fs::create_dir_all(dir).map_err(|e| fail(dir, e))?;
    let mut narrowed = 0;
    let mut pending = vec![dir.to_owned()];
    while let Some(path) = pending.pop() {
        // Not followed: a link's target is not ours to change.
        let meta = std::fs::symlink_metadata(&path).map_err(|e| fail(&path, e))?;
        if meta.file_type().is_symlink() {
            continue;
        }
        let mode = meta.permissions().mode();
        if mode & 0o077 != 0 {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode & 0o700))
                .map_err(|e| fail(&path, e))?;
            narrowed += 1;
        }
        if meta.is_dir() {
            for entry in std::fs::read_dir(&path).map_err(|e| fail(&path, e))? {
                pending.push(entry.map_err(|e| fail(&path, e))?.path());
            }
        }
    }
    if narrowed > 0 {
        tracing::warn!(
            dir = %dir.display(),
            "{narrowed} entries of the data dir were readable by other users (it holds every user's credentials): made them private to this user"
        );
    }
    Ok(narrowed)
}

/// New files of this process: 0600, new dirs 0700.
pub fn private_umask() {
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_readable_data_dir_and_its_files_are_narrowed_to_the_owner() {
        let root = tempfile::tempdir().expect("tempdir");
        let dir = root.path().join("data");
        std::fs::create_dir_all(dir.join("sm")).expect("mkdir");
        std::fs::write(dir.join("sm/db"), "secrets").expect("write");
        std::fs::write(dir.join("identity.json"), "{}").expect("write");
        for (path, mode) in [(dir.clone(), 0o755), (dir.join("sm"), 0o755), (dir.join("sm/db"), 0o644)] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
        }
        std::fs::set_permissions(dir.join("identity.json"), std::fs::Permissions::from_mode(0o600)).expect("chmod");
        assert_eq!(make_private(&dir).expect("narrowed"), 3);
        let mode = |p: &Path| std::fs::metadata(p).expect("meta").permissions().mode() & 0o777;
        assert_eq!((mode(&dir), mode(&dir.join("sm")), mode(&dir.join("sm/db"))), (0o700, 0o700, 0o600));
        assert_eq!(make_private(&dir).expect("again"), 0, "nothing left to narrow");
        let fresh = root.path().join("fresh");
        make_private(&fresh).expect("made");
        assert_eq!(mode(&fresh), 0o700);
    }
}
