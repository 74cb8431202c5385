//! Disk faults that tests inflict on a data dir's log, written once against
//! the log's layout (see [`crate::wal`]) so tests in other crates need not
//! know it: where a segment's frames end, and a torn write after them.

use std::io;
use std::os::unix::fs::FileExt as _;
use std::path::Path;

use crate::wal::{HEADER, MAGIC, SECTOR};

/// Where the frames of `segment` end (the zero fill ahead of them starts):
/// after the magic, each frame is a header led by its length.
pub fn frames_end(segment: &Path) -> io::Result<usize> {
    let bytes = std::fs::read(segment)?;
    let mut pos = MAGIC.len();
    while pos + HEADER <= bytes.len() {
        let len = u32::from_le_bytes([bytes[pos], bytes[pos + 1], bytes[pos + 2], bytes[pos + 3]]) as usize;
        if len == 0 {
            break;
        }
        pos += HEADER + len;
    }
    Ok(pos)
}

/// Writes part of a frame after the last one of `segment`, as a crash in
/// the middle of an append leaves it: a valid header announcing 1000 bytes,
/// then garbage up to the end of its sector (the disk wrote that sector, not
/// the next). Returns where it was written.
pub fn tear_tail(segment: &Path) -> io::Result<usize> {
    let end = frames_end(segment)?;
    let len: u32 = 1000;
    let mut torn = [len.to_le_bytes(), (!len).to_le_bytes()].concat();
    torn.resize(SECTOR - end % SECTOR, 0xab);
    std::fs::OpenOptions::new().write(true).open(segment)?.write_all_at(&torn, end as u64)?;
    Ok(end)
}
