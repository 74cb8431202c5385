//! The crash-safe traffic journal of one data-plane node:
//! `<data-dir>/dataplane/traffic.json`.
//!
//! The kernel's counters are cumulative per counting source
//! ([`vpn_runtime::usage`]). The journal keeps, per source, the count already
//! accounted for (its baseline); [`TrafficJournal::observe`] turns the growth
//! into a report with the next sequence number and persists baselines and
//! reports in one atomic file replace (write a temp file, fsync it, rename,
//! fsync the directory) *before* anything is sent. The leader applies each
//! (node, sequence) once, so sending a report again after a crash or a leader
//! change never counts twice, and a report is dropped only once the leader
//! says the cluster recorded it ([`TrafficJournal::acknowledge`]).
//!
//! Sequence numbers only grow: a journal opened with the cluster's recorded
//! sequence never reuses one, even when its file was lost.
//!
//! A journal whose baselines cannot be trusted (the file is missing although
//! the cluster already recorded reports of this node, or it is older than
//! what the cluster recorded) re-synchronises: its first observation only sets
//! the baselines. That drops the traffic since the last recorded report
//! rather than counting every engine's whole count a second time.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use uuid::Uuid;
use vpn_runtime::Counter;
use vpn_storage::command::{TrafficReport, UserUsage};

/// The journal's file name in the node's `dataplane` dir.
pub const FILE: &str = "traffic.json";

/// Unacknowledged reports beyond which the journal warns loudly. They are
/// kept all the same: merging reports would double count when the leader had
/// applied some of them already (a reply that never arrived), and dropping
/// them would lose traffic. So the list is unbounded; every report costs
/// about 100 bytes per user in it, and the whole file is rewritten on each
/// observation, so a node cut off from its leader for long grows a big file
/// and slower writes. Sequence numbers stay strictly increasing regardless.
pub const PENDING_WARN: usize = 100_000;

/// After [`PENDING_WARN`], warn again every this many reports.
const WARN_EVERY: usize = 1_000;

const VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("traffic journal: {action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error(
        "traffic journal {path} is damaged ({detail}); move it aside (`mv {path} {path}.damaged`) and start vpnd \
         again: a new journal starts after the sequence the cluster recorded, and the traffic the cluster has not \
         recorded yet is not counted",
        path = path.display()
    )]
    Corrupt { path: PathBuf, detail: String },
}

/// What the file holds.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Journal {
    version: u32,
    /// The highest sequence number used (or known recorded by the cluster).
    last_seq: u64,
    /// Source -> the count already accounted for.
    baselines: BTreeMap<String, u64>,
    /// Unacknowledged reports, oldest first, sequence numbers strictly increasing.
    pending: Vec<TrafficReport>,
}

/// Crash-safe traffic journal of one data-plane node, in
/// `<data-dir>/dataplane/traffic.json` (write tmp, fsync file, rename, fsync dir).
#[derive(Debug)]
pub struct TrafficJournal {
    dir: PathBuf,
    path: PathBuf,
    state: Journal,
    /// The baselines are not in step with the cluster: the next observation only sets them.
    resync: bool,
    /// Warn when the pending list reaches this length (and every [`WARN_EVERY`] after).
    pending_warn: usize,
}

impl TrafficJournal {
    /// Opens (or starts) the journal in `dir`. `recorded_seq`: the node's
    /// `traffic_seq` in the replicated state (the highest sequence the cluster
    /// applied), so a wiped journal never reuses a sequence number; pass the
    /// best value known (a local state that lags is fine when the file exists).
    /// Reports at or below it are dropped (recorded already). A damaged file
    /// is an error naming it and the fix, never a silent reset.
    pub fn open(dir: &Path, recorded_seq: u64) -> Result<Self, JournalError> {
        std::fs::create_dir_all(dir).map_err(|e| io("create", dir, e))?;
        let path = dir.join(FILE);
        let (mut state, existed) = match std::fs::read(&path) {
            Ok(bytes) => (parse(&path, &bytes)?, true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                (Journal { version: VERSION, ..Journal::default() }, false)
            }
            Err(e) => return Err(io("read", &path, e)),
        };
        let resync = if existed { recorded_seq > state.last_seq } else { recorded_seq > 0 };
        if resync {
            tracing::warn!(
                path = %path.display(),
                journal_seq = state.last_seq,
                recorded_seq,
                "traffic journal is missing or older than what the cluster recorded; its first reading only \
                 sets the baselines (the traffic since the last recorded report is not counted)"
            );
        }
        state.pending.retain(|r| r.seq > recorded_seq);
        state.last_seq = state.last_seq.max(recorded_seq);
        Ok(TrafficJournal { dir: dir.to_path_buf(), path, state, resync, pending_warn: PENDING_WARN })
    }

    /// Computes deltas against the persisted baselines (a counter below its
    /// baseline moved nothing and the baseline stays: a kernel count never
    /// restarts, since a mark given to a user again is a new source, but its
    /// payload estimate may dip by a few bytes when a header-only packet
    /// smaller than the estimated header arrives, such as a RST; sources that
    /// vanished are dropped from the baselines, so one that comes back counts
    /// in full), and if any user with an id moved bytes
    /// appends a report with the next sequence number; persists baselines and
    /// pending reports atomically BEFORE returning. `ids` maps a user name to
    /// the user's id in the replicated state; users with no id (deleted) are
    /// skipped but their baselines still advance. On error nothing changed
    /// (but a sequence number may be skipped), so the next call retries.
    pub fn observe(&mut self, counters: &[Counter], ids: impl Fn(&str) -> Option<Uuid>) -> Result<(), JournalError> {
        // One entry per source; of one listed twice (never expected) the last wins.
        let mut latest: BTreeMap<&str, &Counter> = BTreeMap::new();
        for c in counters {
            if latest.insert(c.source.as_str(), c).is_some() {
                tracing::warn!(source = %c.source, "traffic counter listed twice in one reading; the last one counts");
            }
        }
        let mut moved: BTreeMap<&str, u64> = BTreeMap::new();
        for c in latest.values() {
            let delta = match self.state.baselines.get(&c.source) {
                _ if self.resync => 0,
                Some(&base) => c.bytes.saturating_sub(base),
                None => c.bytes,
            };
            if delta > 0 {
                let sum = moved.entry(c.user.as_str()).or_default();
                *sum = sum.saturating_add(delta);
            }
        }
        let baselines: BTreeMap<String, u64> = latest
            .into_iter()
            .map(|(s, c)| (s.to_string(), c.bytes.max(self.state.baselines.get(s).copied().unwrap_or(0))))
            .collect();
        let mut usage = Vec::new();
        for (name, bytes) in moved {
            match ids(name) {
                Some(id) => usage.push(UserUsage { name: name.to_string(), id, bytes }),
                None => {
                    tracing::debug!(user = name, bytes, "traffic of a user the cluster does not know; not reported")
                }
            }
        }
        if usage.is_empty() && baselines == self.state.baselines && !self.resync {
            return Ok(());
        }

        let old_baselines = std::mem::replace(&mut self.state.baselines, baselines);
        let appended = !usage.is_empty();
        if appended {
            // Taken for good even if persisting fails: a number is never used for two contents.
            self.state.last_seq += 1;
            self.state.pending.push(TrafficReport { seq: self.state.last_seq, usage });
        }
        if let Err(e) = self.persist() {
            self.state.baselines = old_baselines;
            if appended {
                self.state.pending.pop();
            }
            return Err(e);
        }
        self.resync = false;
        let len = self.state.pending.len();
        if appended && len >= self.pending_warn && (len - self.pending_warn).is_multiple_of(WARN_EVERY) {
            tracing::error!(
                pending = len,
                path = %self.path.display(),
                "traffic reports pile up unacknowledged: the leader has not recorded this node's traffic for a \
                 long time; they are all kept (and resent), but the journal grows; check the connection to the \
                 cluster"
            );
        }
        Ok(())
    }

    /// The oldest unacknowledged reports, at most `max`.
    pub fn pending(&self, max: usize) -> Vec<TrafficReport> {
        self.state.pending.iter().take(max).cloned().collect()
    }

    /// How many reports wait for the cluster's acknowledgement.
    pub fn pending_len(&self) -> usize {
        self.state.pending.len()
    }

    /// Drops reports up to `through_seq` (the leader's reply) and persists.
    /// Should persisting fail, the dropped reports may come back after a
    /// restart; the leader skips them as duplicates.
    pub fn acknowledge(&mut self, through_seq: u64) -> Result<(), JournalError> {
        let acked = self.state.pending.partition_point(|r| r.seq <= through_seq);
        let ahead = through_seq > self.state.last_seq;
        if ahead {
            tracing::warn!(
                through_seq,
                journal_seq = self.state.last_seq,
                "the cluster recorded traffic sequence numbers this journal never used; continuing after them"
            );
            self.state.last_seq = through_seq;
        }
        if acked == 0 && !ahead {
            return Ok(());
        }
        self.state.pending.drain(..acked);
        self.persist()
    }

    /// Replaces the file with the current state: tmp, fsync, rename, fsync dir.
    fn persist(&self) -> Result<(), JournalError> {
        let bytes = serde_json::to_vec(&self.state).map_err(|e| io("encode", &self.path, std::io::Error::other(e)))?;
        let tmp = self.path.with_extension("json.tmp");
        let mut file = File::create(&tmp).map_err(|e| io("create", &tmp, e))?;
        file.write_all(&bytes).and_then(|()| file.sync_all()).map_err(|e| io("write", &tmp, e))?;
        drop(file);
        std::fs::rename(&tmp, &self.path).map_err(|e| io("rename into place", &self.path, e))?;
        File::open(&self.dir).and_then(|d| d.sync_all()).map_err(|e| io("sync", &self.dir, e))
    }
}

fn io(action: &'static str, path: &Path, source: std::io::Error) -> JournalError {
    JournalError::Io { action, path: path.to_path_buf(), source }
}

/// Reads the file, checking what the journal relies on.
fn parse(path: &Path, bytes: &[u8]) -> Result<Journal, JournalError> {
    let corrupt = |detail: String| JournalError::Corrupt { path: path.to_path_buf(), detail };
    let journal: Journal = serde_json::from_slice(bytes).map_err(|e| corrupt(format!("not a journal: {e}")))?;
    if journal.version != VERSION {
        return Err(corrupt(format!("format version {}, this vpnd reads version {VERSION}", journal.version)));
    }
    let mut previous = 0;
    for report in &journal.pending {
        if report.seq <= previous || report.seq > journal.last_seq {
            return Err(corrupt(format!(
                "report sequence {} out of order (after {previous}, last used {})",
                report.seq, journal.last_seq
            )));
        }
        previous = report.seq;
    }
    Ok(journal)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(source: &str, user: &str, bytes: u64) -> Counter {
        Counter { source: source.into(), user: user.into(), bytes }
    }

    fn id_of(name: &str) -> Option<Uuid> {
        match name {
            "alice" => Some(Uuid::from_bytes([1; 16])),
            "bob" => Some(Uuid::from_bytes([2; 16])),
            _ => None,
        }
    }

    fn usage(name: &str, bytes: u64) -> UserUsage {
        UserUsage { name: name.into(), id: id_of(name).expect("known user"), bytes }
    }

    fn report(seq: u64, usage: Vec<UserUsage>) -> TrafficReport {
        TrafficReport { seq, usage }
    }

    fn observe(j: &mut TrafficJournal, counters: &[Counter]) {
        j.observe(counters, id_of).expect("observe");
    }

    #[test]
    fn growth_is_reported_per_user_with_increasing_sequences() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut j = TrafficJournal::open(dir.path(), 0).expect("open");
        assert!(j.pending(10).is_empty());
        // Two sources of alice (two assignments of a mark to her) sum up.
        observe(
            &mut j,
            &[c("kernel/alice/1", "alice", 100), c("kernel/alice/2", "alice", 5), c("kernel/bob/3", "bob", 50)],
        );
        observe(
            &mut j,
            &[c("kernel/alice/1", "alice", 150), c("kernel/alice/2", "alice", 5), c("kernel/bob/3", "bob", 50)],
        );
        // Nothing moved: no report, no write.
        observe(
            &mut j,
            &[c("kernel/alice/1", "alice", 150), c("kernel/alice/2", "alice", 5), c("kernel/bob/3", "bob", 50)],
        );
        assert_eq!(
            j.pending(10),
            vec![report(1, vec![usage("alice", 105), usage("bob", 50)]), report(2, vec![usage("alice", 50)])]
        );
        assert_eq!(j.pending(1), vec![report(1, vec![usage("alice", 105), usage("bob", 50)])], "oldest first");
        assert_eq!(j.pending_len(), 2);
    }

    #[test]
    fn a_dip_moves_nothing_and_a_vanished_source_is_forgotten() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut j = TrafficJournal::open(dir.path(), 0).expect("open");
        observe(&mut j, &[c("kernel/alice/1", "alice", 1000), c("kernel/bob/2", "bob", 300)]);
        // alice's estimate dipped (a RST is smaller than the header it is charged); bob's mark was freed.
        observe(&mut j, &[c("kernel/alice/1", "alice", 988)]);
        assert_eq!(j.state.baselines, BTreeMap::from([("kernel/alice/1".to_string(), 1000)]), "bob's source forgotten");
        // Growth counts from the highest count seen; a source that comes back (same name) counts in full.
        observe(&mut j, &[c("kernel/alice/1", "alice", 1060), c("kernel/bob/2", "bob", 310)]);
        assert_eq!(
            j.pending(10),
            vec![
                report(1, vec![usage("alice", 1000), usage("bob", 300)]),
                report(2, vec![usage("alice", 60), usage("bob", 310)]),
            ]
        );
    }

    #[test]
    fn deleted_users_are_skipped_but_their_baselines_advance() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut j = TrafficJournal::open(dir.path(), 0).expect("open");
        observe(&mut j, &[c("kernel/gone/1", "gone", 500)]);
        assert!(j.pending(10).is_empty(), "no report for a user without an id");
        assert_eq!(j.state.baselines.get("kernel/gone/1"), Some(&500));
        observe(&mut j, &[c("kernel/gone/1", "gone", 700), c("kernel/bob/2", "bob", 1)]);
        assert_eq!(j.pending(10), vec![report(1, vec![usage("bob", 1)])]);
        // And it persisted: after a reopen the baseline is 700, not 500.
        drop(j);
        let j = TrafficJournal::open(dir.path(), 0).expect("reopen");
        assert_eq!(j.state.baselines.get("kernel/gone/1"), Some(&700));
    }

    #[test]
    fn a_crash_before_the_ack_brings_the_same_reports_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut j = TrafficJournal::open(dir.path(), 0).expect("open");
        observe(&mut j, &[c("kernel/alice/1", "alice", 100)]);
        observe(&mut j, &[c("kernel/alice/1", "alice", 250)]);
        let sent = j.pending(10);
        drop(j); // crash: no ack
        let mut j = TrafficJournal::open(dir.path(), 0).expect("reopen");
        assert_eq!(j.pending(10), sent, "same reports, same sequence numbers");
        // The baselines survived too: no double count, and the next number follows.
        observe(&mut j, &[c("kernel/alice/1", "alice", 260)]);
        assert_eq!(j.pending(10)[2], report(3, vec![usage("alice", 10)]));
        assert!(!dir.path().join("traffic.json.tmp").exists(), "no temp file left behind");
    }

    #[test]
    fn acknowledged_reports_are_dropped_for_good() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut j = TrafficJournal::open(dir.path(), 0).expect("open");
        for bytes in [10, 20, 30] {
            observe(&mut j, &[c("kernel/bob/2", "bob", bytes)]);
        }
        j.acknowledge(2).expect("ack");
        assert_eq!(j.pending(10), vec![report(3, vec![usage("bob", 10)])]);
        j.acknowledge(1).expect("an older ack changes nothing");
        assert_eq!(j.pending_len(), 1);
        drop(j);
        let mut j = TrafficJournal::open(dir.path(), 0).expect("reopen");
        assert_eq!(j.pending(10), vec![report(3, vec![usage("bob", 10)])]);
        j.acknowledge(3).expect("ack");
        observe(&mut j, &[c("kernel/bob/2", "bob", 31)]);
        assert_eq!(j.pending(10), vec![report(4, vec![usage("bob", 1)])]);
    }

    #[test]
    fn sequence_numbers_are_never_reused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut j = TrafficJournal::open(dir.path(), 0).expect("open");
        observe(&mut j, &[c("kernel/bob/2", "bob", 10)]);
        observe(&mut j, &[c("kernel/bob/2", "bob", 20)]);
        drop(j);
        // The cluster recorded both (the ack was lost): they are not sent again.
        let mut j = TrafficJournal::open(dir.path(), 2).expect("reopen");
        assert!(j.pending(10).is_empty());
        observe(&mut j, &[c("kernel/bob/2", "bob", 25)]);
        assert_eq!(j.pending(10), vec![report(3, vec![usage("bob", 5)])]);

        // The leader says it recorded more than this journal ever sent: continue after that.
        j.acknowledge(7).expect("ack");
        observe(&mut j, &[c("kernel/bob/2", "bob", 26)]);
        assert_eq!(j.pending(10), vec![report(8, vec![usage("bob", 1)])]);
    }

    #[test]
    fn a_lost_or_stale_journal_resyncs_instead_of_counting_twice() {
        // Lost: no file, but the cluster recorded up to 5 from this node.
        let dir = tempfile::tempdir().expect("tempdir");
        let mut j = TrafficJournal::open(dir.path(), 5).expect("open");
        observe(&mut j, &[c("kernel/alice/1", "alice", 1_000_000)]);
        assert!(j.pending(10).is_empty(), "the first reading only sets the baselines");
        observe(&mut j, &[c("kernel/alice/1", "alice", 1_000_100)]);
        assert_eq!(j.pending(10), vec![report(6, vec![usage("alice", 100)])]);

        // Stale: a file older than what the cluster recorded (say restored from a backup).
        drop(j);
        let mut j = TrafficJournal::open(dir.path(), 9).expect("reopen");
        assert!(j.pending(10).is_empty(), "report 6 was recorded");
        observe(&mut j, &[c("kernel/alice/1", "alice", 2_000_000)]);
        assert!(j.pending(10).is_empty(), "resync again");
        observe(&mut j, &[c("kernel/alice/1", "alice", 2_000_001)]);
        assert_eq!(j.pending(10), vec![report(10, vec![usage("alice", 1)])]);

        // A new node (nothing recorded yet) counts everything from the start.
        let fresh = tempfile::tempdir().expect("tempdir");
        let mut j = TrafficJournal::open(fresh.path(), 0).expect("open");
        observe(&mut j, &[c("kernel/bob/2", "bob", 42)]);
        assert_eq!(j.pending(10), vec![report(1, vec![usage("bob", 42)])]);
    }

    #[test]
    fn a_damaged_file_is_an_error_that_names_it_and_the_fix() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(FILE);
        for (contents, what) in [
            (&b"{\"version\":1,\"last_seq\":3,\"baseli"[..], "not a journal"),
            (b"", "not a journal"),
            (br#"{"version":9,"last_seq":0,"baselines":{},"pending":[]}"#, "format version 9"),
            (
                br#"{"version":1,"last_seq":2,"baselines":{},"pending":[{"seq":2,"usage":[]},{"seq":1,"usage":[]}]}"#,
                "out of order",
            ),
        ] {
            std::fs::write(&path, contents).expect("write");
            let err = TrafficJournal::open(dir.path(), 0).expect_err("damaged").to_string();
            assert!(err.contains(&path.display().to_string()) && err.contains(what), "{err}");
            assert!(err.contains("move it aside"), "{err}");
            assert_eq!(std::fs::read(&path).expect("read"), contents, "the file is left as it was");
        }
    }

    #[test]
    fn reports_beyond_the_warning_mark_are_kept_in_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut j = TrafficJournal::open(dir.path(), 0).expect("open");
        j.pending_warn = 2;
        for bytes in 1..=5 {
            observe(&mut j, &[c("kernel/bob/2", "bob", bytes)]);
        }
        let seqs: Vec<u64> = j.pending(usize::MAX).iter().map(|r| r.seq).collect();
        assert_eq!(seqs, vec![1, 2, 3, 4, 5], "nothing merged or dropped");
    }

    #[test]
    fn a_source_listed_twice_counts_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut j = TrafficJournal::open(dir.path(), 0).expect("open");
        observe(&mut j, &[c("kernel/bob/2", "bob", 12), c("kernel/bob/2", "bob", 12)]);
        assert_eq!(j.pending(10), vec![report(1, vec![usage("bob", 12)])]);
    }
}
