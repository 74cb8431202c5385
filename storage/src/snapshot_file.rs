//! The current snapshot as one file, `<data dir>/snapshots/current`: a check
//! line `vpnsnap1 <length> <crc32>` over the rest, a line of JSON
//! [`SnapshotMeta`], then the snapshot bytes. It is replaced atomically (temp
//! file, fsync, rename, fsync of the dir), so a crash leaves it whole or
//! absent; the check line catches what a disk does to it afterwards (a lost
//! end, a flipped bit): such a file is refused at open rather than served
//! to a follower. Files written before the check line are read as they are.

use std::fs::{self, File};
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use crate::durable::{decode, encode};
use crate::error::OpenError;
use crate::types::SnapshotMeta;

const CURRENT: &str = "current";
const TEMP: &str = "current.tmp";
/// Leads the check line.
const CHECKED: &[u8] = b"vpnsnap1 ";

/// A snapshot as stored: its meta and its bytes.
pub(crate) type Stored = (SnapshotMeta, Vec<u8>);

pub(crate) struct SnapshotFile {
    dir: PathBuf,
    /// Meta of the file on disk; the lock also serializes writers.
    current: Mutex<Option<SnapshotMeta>>,
}

impl SnapshotFile {
    /// Opens `dir` (creating it) and returns the current snapshot, if any.
    pub(crate) fn open(dir: &Path) -> Result<(Self, Option<Stored>), OpenError> {
        fs::create_dir_all(dir).map_err(|e| OpenError::from_io(dir, e))?;
        // A temp file is a write that crashed before its rename: never current.
        match fs::remove_file(dir.join(TEMP)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(OpenError::from_io(dir, e)),
            _ => {}
        }
        let current = read(&dir.join(CURRENT)).map_err(|e| match e.kind() {
            io::ErrorKind::InvalidData => OpenError::corrupt(dir.join(CURRENT), e),
            _ => OpenError::from_io(dir, e),
        })?;
        let file = Self { dir: dir.to_owned(), current: Mutex::new(current.as_ref().map(|(meta, _)| meta.clone())) };
        Ok((file, current))
    }

    /// Makes `data` the current snapshot, durably, unless a newer one already is.
    pub(crate) fn save(&self, meta: &SnapshotMeta, data: &[u8]) -> io::Result<()> {
        let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        if matches!(&*current, Some(cur) if cur.last_log_id > meta.last_log_id) {
            return Ok(());
        }
        let temp = self.dir.join(TEMP);
        let mut body = encode(meta)?;
        body.push(b'\n');
        body.extend_from_slice(data);
        let mut file = File::create(&temp)?;
        file.write_all(CHECKED)?;
        file.write_all(format!("{} {:08x}\n", body.len(), crc32fast::hash(&body)).as_bytes())?;
        file.write_all(&body)?;
        file.sync_all()?;
        fs::rename(&temp, self.dir.join(CURRENT))?;
        File::open(&self.dir)?.sync_all()?;
        *current = Some(meta.clone());
        Ok(())
    }

    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// Needs no lock: the rename makes a reader see the old file or the new one.
    pub(crate) fn load(&self) -> io::Result<Option<Stored>> {
        read(&self.dir.join(CURRENT))
    }
}

fn read(path: &Path) -> io::Result<Option<Stored>> {
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut bytes = match bytes.strip_prefix(CHECKED) {
        Some(rest) => checked(rest)?,
        None => bytes,
    };
    let Some(newline) = bytes.iter().position(|b| *b == b'\n') else {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "snapshot file has no header line"));
    };
    let meta = decode(&bytes[..newline])?;
    let data = bytes.split_off(newline + 1);
    Ok(Some((meta, data)))
}

/// The bytes after a check line (`<length> <crc32>\n`), if they match it.
fn checked(rest: &[u8]) -> io::Result<Vec<u8>> {
    let invalid = |what: String| io::Error::new(io::ErrorKind::InvalidData, what);
    let end =
        rest.iter().position(|b| *b == b'\n').ok_or_else(|| invalid("snapshot file: check line cut off".into()))?;
    let line = std::str::from_utf8(&rest[..end]).map_err(|_| invalid("snapshot file: check line unreadable".into()))?;
    let (len, crc) = line
        .split_once(' ')
        .and_then(|(len, crc)| Some((len.parse::<usize>().ok()?, u32::from_str_radix(crc, 16).ok()?)))
        .ok_or_else(|| invalid(format!("snapshot file: check line {line:?} unreadable")))?;
    let body = &rest[end + 1..];
    if body.len() != len {
        return Err(invalid(format!("snapshot file holds {} bytes where it wrote {len}", body.len())));
    }
    if crc32fast::hash(body) != crc {
        return Err(invalid("snapshot file: its bytes changed since it was written (checksum)".into()));
    }
    Ok(body.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> SnapshotMeta {
        let last_log_id = Some(openraft::LogId::new(openraft::CommittedLeaderId::new(1, 0), 7));
        SnapshotMeta { last_log_id, last_membership: Default::default(), snapshot_id: "s7".into() }
    }

    fn refused(dir: &Path, what: &str) {
        match SnapshotFile::open(dir) {
            Err(e @ OpenError::Corrupt { .. }) => assert!(e.to_string().contains("current"), "{what}: {e}"),
            Err(other) => panic!("{what}: expected a corrupt snapshot, got {other}"),
            Ok(_) => panic!("{what}: a damaged snapshot opened"),
        }
    }

    #[test]
    fn a_snapshot_cut_short_or_with_a_flipped_bit_is_refused_and_a_whole_one_reads_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (file, none) = SnapshotFile::open(dir.path()).expect("open");
        assert!(none.is_none());
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        file.save(&meta(), &data).expect("save");
        let (_, read) = SnapshotFile::open(dir.path()).expect("reopen");
        assert_eq!(read, Some((meta(), data.clone())));

        let path = dir.path().join(CURRENT);
        let whole = fs::read(&path).expect("read");
        fs::write(&path, &whole[..whole.len() / 2]).expect("cut");
        refused(dir.path(), "cut to half");
        let mut flipped = whole.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 0x01;
        fs::write(&path, &flipped).expect("flip");
        refused(dir.path(), "a flipped bit");

        // Written before the check line existed: read as it is.
        let mut legacy = encode(&meta()).expect("encode");
        legacy.push(b'\n');
        legacy.extend_from_slice(&data);
        fs::write(&path, &legacy).expect("legacy");
        let (_, read) = SnapshotFile::open(dir.path()).expect("a legacy file opens");
        assert_eq!(read, Some((meta(), data)));
    }
}
