//! What a node holds, searched byte by byte: every file under its data dir,
//! and the memory of its running process (`/proc/<pid>/mem` over the
//! readable mappings of `/proc/<pid>/maps`, which needs the right to trace
//! it: root, or its parent under Yama's default). The edge secrecy tests use
//! them to show that a data-plane node holds no credential of a user it does
//! not serve, and no CA key.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// Largest mapping read (larger ones are reservations, not data).
const MAX_REGION: u64 = 1 << 30;

/// The `needles` found in files under `dir`, each with the file it is in.
pub fn in_files(dir: &Path, needles: &[&str]) -> Vec<(String, PathBuf)> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(path) = pending.pop() {
        let Ok(meta) = std::fs::symlink_metadata(&path) else { continue };
        if meta.is_dir() {
            pending.extend(std::fs::read_dir(&path).into_iter().flatten().flatten().map(|e| e.path()));
        } else if meta.is_file() {
            let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
            for needle in needles {
                if memchr::memmem::find(&bytes, needle.as_bytes()).is_some() {
                    found.push(((*needle).to_owned(), path.clone()));
                }
            }
        }
    }
    found
}

/// The `needles` found in process `pid`'s readable memory.
pub fn in_memory(pid: u32, needles: &[&str]) -> Vec<String> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_else(|e| panic!("maps of {pid}: {e}"));
    let mut mem = std::fs::File::open(format!("/proc/{pid}/mem")).unwrap_or_else(|e| panic!("mem of {pid}: {e}"));
    let mut found: Vec<String> = Vec::new();
    let mut scanned = 0u64;
    for line in maps.lines() {
        let mut fields = line.split_whitespace();
        let (Some(range), Some(perms)) = (fields.next(), fields.next()) else { continue };
        let name = fields.nth(3).unwrap_or("");
        if !perms.starts_with('r') || ["[vvar]", "[vsyscall]", "[vvar_vclock]"].contains(&name) {
            continue;
        }
        let Some((start, end)) = range.split_once('-') else { continue };
        let (Ok(start), Ok(end)) = (u64::from_str_radix(start, 16), u64::from_str_radix(end, 16)) else { continue };
        if end <= start || end - start > MAX_REGION {
            continue;
        }
        let mut region = vec![0u8; (end - start) as usize];
        // A region that went away since maps was read is skipped.
        if mem.seek(SeekFrom::Start(start)).is_err() || mem.read_exact(&mut region).is_err() {
            continue;
        }
        scanned += end - start;
        for needle in needles {
            if !found.iter().any(|f| f == needle) && memchr::memmem::find(&region, needle.as_bytes()).is_some() {
                found.push((*needle).to_owned());
            }
        }
    }
    assert!(scanned > 0, "nothing of process {pid}'s memory could be read");
    found
}
