//! Per-user traffic counts from the engines' own connection events, where
//! the kernel cannot count (no nftables: see `--nftables`).
//!
//! Each engine process streams NEW, UPDATE (byte deltas, every second) and
//! CLOSED events naming the connection's user, CLOSED with the connection's
//! totals (see [`crate::engine::singbox::events`]). Per engine process this
//! keeps, per user, the bytes of the connections that ended plus those of
//! the live ones so far: a cumulative count that never goes down, one
//! counting source `stream/<container>/<user>` each.
//!
//! What the events can and cannot tell, and how it is handled:
//! - **Repeats.** A CLOSED event can come twice, and a (re)subscription lists
//!   recently closed connections again: the ids of the last ended
//!   connections are kept, and a connection counts once.
//! - **Gaps.** Events are lost while no stream is read (vpnd restarting, a
//!   broken stream), and the engine drops some under load (2-3 % at 100
//!   connections in parallel per user, checked). Every subscription starts
//!   with a list of the live and the recently closed connections, and the
//!   stream is opened afresh every [`RESYNC`]: a connection known as live
//!   that the list shows closed is settled with its final totals; one it no
//!   longer shows at all is settled with the last bytes known, and counted as
//!   a *gap* (its last bytes may be missing; `vpn_runtime_accounting_gaps_total`).
//! - **vpnd restarts.** The counts are written to `stream-counts.json` (0600)
//!   at every reading, and read back at start, so a restart loses at most the
//!   bytes of connections that ended meanwhile and left the engine's list.
//!
//! Bytes are payload bytes, as the engine relays them (both directions).

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;

use super::{Counter, FINAL_READING_TTL};
use crate::engine::singbox::events::{self, ConnectionEvent, ConnectionEventType, ConnectionEvents};
use crate::fsutil::write_atomic;
use crate::{Metrics, RuntimeError};

/// A subscription is opened afresh this often: its first message settles
/// connections whose CLOSED event was lost.
pub const RESYNC: Duration = Duration::from_secs(60);
/// Ids of ended connections kept per engine, to count each once.
const ENDED_KEPT: usize = 8192;
/// Wait before subscribing again after a stream broke or could not open.
const RETRY: Duration = Duration::from_secs(1);
const FILE: &str = "stream-counts.json";

/// What one engine process carried, per user, as its events tell.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct EngineCounts {
    /// Bytes of the connections that ended, per user.
    ended_bytes: BTreeMap<String, u64>,
    /// Live connections: id -> (user, bytes so far).
    live: BTreeMap<String, (String, u64)>,
    /// Ids of the last connections that ended, oldest first.
    ended: VecDeque<String>,
    /// The same ids, for lookups (rebuilt after a load).
    #[serde(skip)]
    ended_index: HashSet<String>,
    /// Connections settled with the last bytes known (their end was not seen).
    gaps: u64,
}

impl EngineCounts {
    /// Applies one message of a subscription. Returns the gaps it found.
    fn apply(&mut self, message: &ConnectionEvents) -> u64 {
        if self.ended_index.len() != self.ended.len() {
            self.ended_index = self.ended.iter().cloned().collect();
        }
        for event in &message.events {
            self.apply_event(event);
        }
        if !message.reset {
            return 0;
        }
        // The first message of a subscription lists every live connection:
        // one known as live that it does not list ended unseen.
        let listed: HashSet<&str> = message.events.iter().map(|e| e.id.as_str()).collect();
        let unseen: Vec<String> = self.live.keys().filter(|id| !listed.contains(id.as_str())).cloned().collect();
        for id in &unseen {
            if let Some((user, bytes)) = self.live.remove(id) {
                self.end(id, &user, bytes);
            }
        }
        let found = unseen.len() as u64;
        self.gaps += found;
        found
    }

    fn apply_event(&mut self, event: &ConnectionEvent) {
        if self.ended_index.contains(&event.id) {
            return;
        }
        let conn = event.connection.as_ref();
        let total = conn.map(|c| positive(c.uplink_total) + positive(c.downlink_total));
        match ConnectionEventType::try_from(event.r#type) {
            Ok(ConnectionEventType::ConnectionEventNew) => {
                let Some(c) = conn else { return };
                let total = total.unwrap_or(0);
                if c.closed_at > 0 || event.closed_at > 0 {
                    let known = self.live.remove(&event.id).map_or(0, |(_, b)| b);
                    self.end(&event.id, &c.user, total.max(known));
                } else {
                    let entry = self.live.entry(event.id.clone()).or_insert_with(|| (c.user.clone(), 0));
                    entry.1 = entry.1.max(total);
                }
            }
            Ok(ConnectionEventType::ConnectionEventUpdate) => {
                if let Some((_, bytes)) = self.live.get_mut(&event.id) {
                    *bytes += positive(event.uplink_delta) + positive(event.downlink_delta);
                }
            }
            Ok(ConnectionEventType::ConnectionEventClosed) => {
                let known = self.live.remove(&event.id);
                let user =
                    conn.map(|c| c.user.clone()).filter(|u| !u.is_empty()).or(known.as_ref().map(|k| k.0.clone()));
                match user {
                    Some(user) => {
                        let bytes = total.unwrap_or(0).max(known.map_or(0, |k| k.1));
                        self.end(&event.id, &user, bytes);
                    }
                    // Neither its start nor its totals were seen.
                    None => self.gaps += 1,
                }
            }
            Err(_) => {}
        }
    }

    fn end(&mut self, id: &str, user: &str, bytes: u64) {
        *self.ended_bytes.entry(user.to_owned()).or_default() += bytes;
        self.ended.push_back(id.to_owned());
        self.ended_index.insert(id.to_owned());
        if self.ended.len() > ENDED_KEPT {
            if let Some(oldest) = self.ended.pop_front() {
                self.ended_index.remove(&oldest);
            }
        }
    }

    /// Each user's cumulative bytes.
    fn per_user(&self) -> BTreeMap<String, u64> {
        let mut out = self.ended_bytes.clone();
        for (user, bytes) in self.live.values() {
            *out.entry(user.clone()).or_default() += bytes;
        }
        out
    }
}

fn positive(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Counts {
    /// Container id -> its engine's counts.
    engines: BTreeMap<String, EngineCounts>,
    /// Containers gone, kept readable until then (not written: a restart reads them once more).
    #[serde(skip)]
    gone: HashMap<String, Instant>,
}

/// The counts of every engine of this node, and the tasks that read their
/// event streams. Cheap to clone.
#[derive(Clone, Debug)]
pub struct StreamCounts {
    counts: Arc<Mutex<Counts>>,
    tasks: Arc<Mutex<HashMap<String, JoinHandle<()>>>>,
    path: PathBuf,
    metrics: Metrics,
}

/// An engine whose events are to be read: container id, `api` port, secret.
pub struct EngineStream {
    pub container_id: String,
    pub port: u16,
    pub secret: String,
}

impl StreamCounts {
    /// Loads the counts kept in `config_dir` (none yet is fine; an unreadable file is an error naming it).
    pub fn load(config_dir: &std::path::Path, metrics: Metrics) -> Result<StreamCounts, RuntimeError> {
        let path = config_dir.join(FILE);
        let counts = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                RuntimeError::io(
                    "read the traffic counts in",
                    &path,
                    std::io::Error::other(format!("{e}; delete it to start counting afresh")),
                )
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Counts::default(),
            Err(e) => return Err(RuntimeError::io("read", &path, e)),
        };
        Ok(StreamCounts { counts: Arc::new(Mutex::new(counts)), tasks: Arc::default(), path, metrics })
    }

    /// Reads the events of exactly `engines` from now on: starts a reader
    /// for each new one, stops those of engines gone (their counts stay
    /// readable for [`FINAL_READING_TTL`]).
    pub fn follow(&self, engines: Vec<EngineStream>) {
        let following = |id: &str| engines.iter().any(|e| e.container_id == id);
        let mut tasks = lock(&self.tasks);
        tasks.retain(|id, task| {
            if !following(id) {
                task.abort();
            }
            following(id)
        });
        let mut counts = lock(&self.counts);
        let now = Instant::now();
        let gone: Vec<String> = counts.engines.keys().filter(|id| !following(id)).cloned().collect();
        for id in gone {
            counts.gone.entry(id).or_insert(now);
        }
        for engine in engines {
            counts.gone.remove(&engine.container_id);
            counts.engines.entry(engine.container_id.clone()).or_default();
            if !tasks.contains_key(&engine.container_id) {
                tasks.insert(engine.container_id.clone(), tokio::spawn(read_events(self.clone(), engine)));
            }
        }
    }

    /// Every user's counter on every engine (and on engines gone recently),
    /// written to disk first so a restart goes on from here.
    pub fn counters(&self) -> Result<Vec<Counter>, RuntimeError> {
        let mut counts = lock(&self.counts);
        let now = Instant::now();
        let expired: Vec<String> =
            counts.gone.iter().filter(|(_, at)| now >= **at + FINAL_READING_TTL).map(|(id, _)| id.clone()).collect();
        for id in expired {
            counts.gone.remove(&id);
            counts.engines.remove(&id);
        }
        let bytes = serde_json::to_vec(&*counts)
            .map_err(|e| RuntimeError::io("encode", &self.path, std::io::Error::other(e)))?;
        write_atomic(&self.path, &bytes, true)?;
        Ok(counts
            .engines
            .iter()
            .flat_map(|(id, engine)| {
                let short: String = id.chars().take(12).collect();
                engine.per_user().into_iter().map(move |(user, bytes)| Counter {
                    source: format!("stream/{short}/{user}"),
                    user,
                    bytes,
                })
            })
            .collect())
    }

    fn apply(&self, container_id: &str, message: &ConnectionEvents) {
        let gaps = lock(&self.counts).engines.entry(container_id.to_owned()).or_default().apply(message);
        if gaps > 0 {
            self.metrics.accounting_gaps(gaps);
            tracing::warn!(
                container = container_id,
                connections = gaps,
                "connections ended while their events were not read: counted up to their last known bytes"
            );
        }
    }
}

/// Reads one engine's events until aborted: subscribes, applies every
/// message, and subscribes afresh after [`RESYNC`] or when the stream breaks.
async fn read_events(counts: StreamCounts, engine: EngineStream) {
    loop {
        match events::subscribe(engine.port, &engine.secret).await {
            Ok(mut stream) => {
                let until = tokio::time::Instant::now() + RESYNC;
                loop {
                    match tokio::time::timeout_at(until, stream.message()).await {
                        Ok(Ok(Some(message))) => counts.apply(&engine.container_id, &message),
                        Ok(Ok(None)) | Err(_) => break,
                        Ok(Err(status)) => {
                            tracing::debug!(container = %engine.container_id, %status, "engine event stream broke");
                            break;
                        }
                    }
                }
            }
            Err(e) => tracing::debug!(container = %engine.container_id, error = %e, "engine event stream unavailable"),
        }
        tokio::time::sleep(RETRY).await;
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::events::pb::Connection;
    use super::*;

    fn new(id: &str, user: &str, total: i64, closed_at: i64) -> ConnectionEvent {
        let connection = Connection {
            id: id.into(),
            user: user.into(),
            uplink_total: total / 2,
            downlink_total: total - total / 2,
            closed_at,
            ..Default::default()
        };
        ConnectionEvent {
            r#type: ConnectionEventType::ConnectionEventNew as i32,
            id: id.into(),
            connection: Some(connection),
            ..Default::default()
        }
    }

    fn update(id: &str, up: i64, down: i64) -> ConnectionEvent {
        ConnectionEvent {
            r#type: ConnectionEventType::ConnectionEventUpdate as i32,
            id: id.into(),
            uplink_delta: up,
            downlink_delta: down,
            ..Default::default()
        }
    }

    fn closed(id: &str, totals: Option<(&str, i64)>) -> ConnectionEvent {
        let connection = totals.map(|(user, total)| Connection {
            id: id.into(),
            user: user.into(),
            downlink_total: total,
            closed_at: 1,
            ..Default::default()
        });
        ConnectionEvent {
            r#type: ConnectionEventType::ConnectionEventClosed as i32,
            id: id.into(),
            connection,
            closed_at: 1,
            ..Default::default()
        }
    }

    fn msg(reset: bool, events: Vec<ConnectionEvent>) -> ConnectionEvents {
        ConnectionEvents { events, reset }
    }

    #[test]
    fn live_and_ended_connections_add_up_per_user_and_a_repeated_close_counts_once() {
        let mut e = EngineCounts::default();
        e.apply(&msg(true, vec![]));
        e.apply(&msg(false, vec![new("a1", "alice", 100, 0), new("b1", "bob", 10, 0)]));
        e.apply(&msg(false, vec![update("a1", 50, 1000), update("unknown", 5, 5)]));
        assert_eq!(e.per_user(), BTreeMap::from([("alice".into(), 1150), ("bob".into(), 10)]));
        // The close carries the final totals (more than the last update said).
        e.apply(&msg(false, vec![closed("a1", Some(("alice", 1200)))]));
        e.apply(&msg(false, vec![closed("a1", Some(("alice", 1200)))]));
        // A short connection whose NEW was lost: its close names the user.
        e.apply(&msg(false, vec![closed("a2", Some(("alice", 64)))]));
        // A close without totals settles with what was known.
        e.apply(&msg(false, vec![closed("b1", None)]));
        assert_eq!(e.per_user(), BTreeMap::from([("alice".into(), 1264), ("bob".into(), 10)]));
        assert_eq!(e.gaps, 0);
        // Nothing is known of this one: a gap.
        e.apply(&msg(false, vec![closed("x", None)]));
        assert_eq!(e.gaps, 1);
    }

    #[test]
    fn a_resubscription_settles_what_ended_unseen_and_counts_nothing_twice() {
        let mut e = EngineCounts::default();
        e.apply(&msg(true, vec![new("a1", "alice", 100, 0), new("a2", "alice", 10, 0), new("a3", "alice", 1, 0)]));
        e.apply(&msg(false, vec![update("a1", 0, 400), closed("a3", Some(("alice", 7)))]));
        assert_eq!(e.per_user()["alice"], 517);
        // The stream broke; the next one lists a1 live (grown), a2 as closed
        // recently (final totals), a3 closed again (counted already), and a4
        // that started and ended meanwhile.
        let found = e.apply(&msg(
            true,
            vec![
                new("a1", "alice", 900, 0),
                new("a2", "alice", 30, 5),
                new("a3", "alice", 7, 5),
                new("a4", "alice", 64, 6),
            ],
        ));
        assert_eq!(found, 0);
        assert_eq!(e.per_user()["alice"], 900 + 30 + 7 + 64);
        // Then a1 is in no list at all: it ended unseen, settled with what was known.
        assert_eq!(e.apply(&msg(true, vec![])), 1);
        assert_eq!(e.per_user()["alice"], 1001);
        assert_eq!(e.gaps, 1);
    }

    #[test]
    fn counts_survive_a_restart_through_their_file_and_stay_a_while_after_the_engine() {
        let dir = tempfile::tempdir().expect("tempdir");
        let counts = StreamCounts::load(dir.path(), Metrics::default()).expect("load");
        counts.apply("c0ffee0123456789", &msg(true, vec![new("a1", "alice", 100, 0)]));
        let read = counts.counters().expect("counters");
        assert_eq!(
            read,
            vec![Counter { source: "stream/c0ffee012345/alice".into(), user: "alice".into(), bytes: 100 }]
        );
        let mode = std::fs::metadata(dir.path().join(FILE)).expect("file").permissions();
        assert_eq!(std::os::unix::fs::PermissionsExt::mode(&mode) & 0o077, 0, "private");

        let again = StreamCounts::load(dir.path(), Metrics::default()).expect("reload");
        assert_eq!(again.counters().expect("counters"), read);
        // A live connection that grew while vpnd was away: counted on from its total.
        again.apply("c0ffee0123456789", &msg(true, vec![new("a1", "alice", 250, 0)]));
        assert_eq!(again.counters().expect("counters")[0].bytes, 250);

        std::fs::write(dir.path().join(FILE), b"{not json").expect("write");
        let err = StreamCounts::load(dir.path(), Metrics::default()).expect_err("damaged").to_string();
        assert!(err.contains(FILE) && err.contains("delete it"), "{err}");
    }
}
