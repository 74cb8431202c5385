//! Per-user traffic counters of this node, for accounting.
//!
//! The kernel counts them (see [`crate::nftables`]): every packet of a
//! user's upstream connections carries the user's socket mark (see
//! [`crate::marks`]), in every engine generation. So a count runs on through
//! generation handoffs, engine crashes and vpnd restarts, covers connections
//! of any length (short ones included), and includes the sessions cut when a
//! user is removed up to their last packet.
//!
//! **What is billed: payload bytes**, both directions: the bytes the user's
//! connections carried to and from the far end, without IP and TCP/UDP
//! headers (so what the destination sent and received, and what a client
//! app's own traffic counter shows, within the header estimate). The kernel
//! counts whole packets; the payload is `bytes - packets x header`, with the
//! header 20 (IPv4) or 40 (IPv6) + 32 (TCP with timestamps, Linux's default)
//! or 8 (UDP). GSO/GRO super-packets are counted once with one header, so
//! they come out exact; a SYN's options add 8 bytes per connection and
//! direction. A segment dropped on the way (or by a starved receiver) and
//! sent again is counted again: the kernel sees both, and the host carried
//! both.
//!
//! [`UsageReader::counters`] answers with one cumulative byte count per
//! *counting source*, `kernel/<user>/<n>` (one assignment of a mark to a
//! user). The caller keeps a baseline per source and reports the growth, so
//! a read that is lost (say vpnd crashes before persisting it) loses
//! nothing: the next read sees the same counts.
//!
//! A source's count never goes down while it exists. It ends when the
//! reconciler forgets a user that no engine holds any more: it reads the
//! count a last time first and keeps that final reading in the answer for
//! [`FINAL_READING_TTL`] (in memory only), so the caller sees the last bytes
//! if it reads within that time.
//!
//! Without nftables (`--nftables off`, or `auto` where it does not work)
//! the counts come from the engines' own connection events instead, one
//! source per engine process and user: see [`stream`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::marks::Marks;
use crate::nftables::NodeTable;
use crate::RuntimeError;

pub mod stream;

/// How long a final reading stays listed after its source ended.
pub const FINAL_READING_TTL: Duration = Duration::from_secs(600);

/// One cumulative byte counter of one counting source.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Counter {
    /// Stable identity of the counting source, e.g. `kernel/alice/3`.
    pub source: String,
    /// The user ([`EngineUser::name`](crate::EngineUser)) whose bytes these are.
    pub user: String,
    /// Payload bytes up + down, cumulative for this source.
    pub bytes: u64,
}

/// Reads this node's per-user counters. Cheap to clone; get it from
/// [`ReconcilerHandle::usage`](crate::ReconcilerHandle), which shares the
/// reconciler's marks and final readings (or its event counts).
#[derive(Clone, Debug)]
pub struct UsageReader {
    source: Source,
}

#[derive(Clone, Debug)]
enum Source {
    Kernel { table: NodeTable, marks: Arc<Mutex<Marks>>, finals: FinalReadings },
    Stream(stream::StreamCounts),
}

impl UsageReader {
    pub(crate) fn kernel(table: NodeTable, marks: Arc<Mutex<Marks>>, finals: FinalReadings) -> Self {
        UsageReader { source: Source::Kernel { table, marks, finals } }
    }

    pub(crate) fn stream(counts: stream::StreamCounts) -> Self {
        UsageReader { source: Source::Stream(counts) }
    }

    /// Every user's counter, plus the final readings of sources ended recently.
    pub async fn counters(&self) -> Result<Vec<Counter>, RuntimeError> {
        let (table, marks, finals) = match &self.source {
            Source::Kernel { table, marks, finals } => (table, marks, finals),
            Source::Stream(counts) => return counts.counters(),
        };
        let prefix = marks.lock().unwrap_or_else(PoisonError::into_inner).prefix;
        let counted = table.payload_bytes(prefix).await?;
        let mut out = named(&marks.lock().unwrap_or_else(PoisonError::into_inner), counted);
        finals.merge(&mut out, Instant::now());
        Ok(out)
    }
}

/// The kernel's counts per mark as counters of the users the marks belong to
/// (a mark no user holds is a count on its way out: skipped).
pub(crate) fn named(marks: &Marks, counted: std::collections::BTreeMap<u32, u64>) -> Vec<Counter> {
    counted
        .into_iter()
        .filter_map(|(mark, bytes)| {
            let (user, source) = marks.owner(mark)?;
            Some(Counter { source: format!("kernel/{source}"), user: user.to_string(), bytes })
        })
        .collect()
}

/// The last readings of sources the reconciler is about to end, shared
/// between the reconciler (which takes them) and the [`UsageReader`].
#[derive(Clone, Debug, Default)]
pub(crate) struct FinalReadings(Arc<Mutex<HashMap<String, Final>>>);

#[derive(Clone, Debug)]
struct Final {
    user: String,
    bytes: u64,
    until: Instant,
}

impl FinalReadings {
    /// Records readings taken just before their sources are ended.
    pub(crate) fn keep(&self, counters: Vec<Counter>, now: Instant) {
        let until = now + FINAL_READING_TTL;
        let mut map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        for c in counters {
            let f = map.entry(c.source).or_insert(Final { user: c.user, bytes: 0, until });
            f.bytes = f.bytes.max(c.bytes);
            f.until = until;
        }
    }

    /// Adds the final readings whose sources are no longer live to `live`
    /// (a live source with a final reading raises it, so it is never below a
    /// count already handed out).
    fn merge(&self, live: &mut Vec<Counter>, now: Instant) {
        let mut map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        map.retain(|_, f| f.until > now);
        if map.is_empty() {
            return;
        }
        let mut seen = std::collections::HashSet::new();
        for c in live.iter() {
            seen.insert(c.source.clone());
            if let Some(f) = map.get_mut(&c.source) {
                f.bytes = f.bytes.max(c.bytes);
            }
        }
        live.extend(map.iter().filter(|(source, _)| !seen.contains(*source)).map(|(source, f)| Counter {
            source: source.clone(),
            user: f.user.clone(),
            bytes: f.bytes,
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counter(source: &str, user: &str, bytes: u64) -> Counter {
        Counter { source: source.into(), user: user.into(), bytes }
    }

    fn merged(finals: &FinalReadings, mut live: Vec<Counter>, now: Instant) -> Vec<Counter> {
        finals.merge(&mut live, now);
        live.sort();
        live
    }

    #[test]
    fn final_readings_outlive_their_sources_for_a_while() {
        let t0 = Instant::now();
        let finals = FinalReadings::default();
        finals.keep(vec![counter("kernel/bob/2", "bob", 500)], t0);
        // Still live and grown: the live count is the answer, and raises the final reading.
        let live = merged(&finals, vec![counter("kernel/bob/2", "bob", 700), counter("kernel/al/1", "al", 1)], t0);
        assert_eq!(live, vec![counter("kernel/al/1", "al", 1), counter("kernel/bob/2", "bob", 700)]);
        // Gone (forgotten): the final reading stands in, never below what was handed out.
        assert_eq!(merged(&finals, vec![], t0), vec![counter("kernel/bob/2", "bob", 700)]);
        // Until the TTL passes.
        assert_eq!(merged(&finals, vec![], t0 + FINAL_READING_TTL), vec![]);
    }

    #[test]
    fn counts_are_named_by_the_users_marks_and_unknown_marks_skipped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut marks = Marks::load_or_create(dir.path(), 7, &Default::default()).expect("marks");
        marks.assign(["alice"]).expect("assign");
        let alice = marks.mark("alice").expect("mark");
        let counted = std::collections::BTreeMap::from([(alice, 1000), (alice + 1, 5)]);
        assert_eq!(named(&marks, counted), vec![counter("kernel/alice/1", "alice", 1000)]);
    }
}
