//! Per-user traffic counters of this node's engines, for accounting.
//!
//! [`UsageReader::counters`] answers, at any time, with one cumulative byte
//! count (up + down) per *counting source*. The caller keeps a baseline per
//! source and reports the growth, so a read that is lost (say vpnd crashes
//! before persisting it) loses nothing: the next read sees the same counts.
//!
//! Sources, `<engine>` being `<12-hex container id>@<Docker start time>` so a
//! replaced or restarted engine process has new sources:
//! - `<engine>/ss/<user>`: a Shadowsocks-2022 user (sing-box `ssm-api`
//!   stats, read without `clear`); exact while the user stays in the engine.
//! - `<engine>/conn/<id>`: one VLESS session (clash API), attributed to the
//!   user whose selector (`u-<name>`) is in its chain.
//!
//! What the caller can rely on:
//! - A source's count never goes down, with one exception it must handle: a
//!   Shadowsocks user deleted and added again in the same engine process
//!   starts from zero under the same source (a count below the baseline means
//!   "restarted": the whole count is new).
//! - All or nothing. An engine that is not running (stopped, crash-looping,
//!   removed) has no sources: they ended. But when a *running* engine does not
//!   answer, the whole call fails, naming it, instead of leaving its sources
//!   out: a missing source looks ended, and when it came back its whole count
//!   would be counted a second time. The counts are cumulative, so a failed
//!   read only delays accounting.
//! - Final readings. Before the reconciler itself ends sources (deletes a
//!   Shadowsocks user, refuses a VLESS user and closes its sessions, reloads a
//!   VLESS engine, removes or replaces an engine), it reads them once more;
//!   these readings stay in the answer for [`FINAL_READING_TTL`] after the
//!   source is gone, so the bytes up to the change are counted if the caller
//!   reads within that time. They live in memory only.
//!
//! What is not counted (sing-box 1.14.4's accounting granularity; the build
//! has no `with_v2ray_api`, whose per-user counters would be exact):
//! - VLESS: the bytes a session moves between the last read and its end when
//!   the client ends it, and sessions that start and end between two reads.
//!   Read often (every heartbeat) to keep this small.
//! - Shadowsocks: the bytes of a deleted user's sessions that keep running
//!   after the delete (sing-box serves them on but drops the user's counter);
//!   and, for a user deleted and added again between two reads, the count
//!   before the delete when the new count has already passed it.
//! - Anything after the last read of an engine that crashes or is removed by
//!   someone else.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::docker::{ContainerInfo, Docker, LABEL_API_PORTS, LABEL_API_SECRET, LABEL_ENGINE, LABEL_OWNER};
use crate::docker::{LABEL_PROTOCOL, LABEL_ROLE};
use crate::engine::singbox::SingBox;
use crate::engine::{ApiAccess, Engine};
use crate::reconcile::observe::parse_api;
use crate::{Protocol, RuntimeError};

/// How long a final reading stays listed after its source ended.
pub const FINAL_READING_TTL: Duration = Duration::from_secs(600);

/// One cumulative byte counter of one counting source.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Counter {
    /// Stable identity of the counting source; changes when the engine
    /// container is replaced or its process restarts, e.g.
    /// `3f2a9c81d0e4@2025-01-01T10:00:00.123Z/ss/alice` or `.../conn/<session id>`.
    pub source: String,
    /// The user ([`EngineUser::name`](crate::EngineUser)) whose bytes these are.
    pub user: String,
    /// Uplink + downlink, cumulative for this source.
    pub bytes: u64,
}

/// Reads the counters of every engine this node runs. Cheap to clone; get
/// it from [`ReconcilerHandle::usage`](crate::ReconcilerHandle), which shares
/// the reconciler's final readings.
#[derive(Clone, Debug)]
pub struct UsageReader {
    engine: SingBox,
    docker: Docker,
    node_id: u64,
    finals: FinalReadings,
}

impl UsageReader {
    pub(crate) fn new(engine: SingBox, docker: Docker, node_id: u64, finals: FinalReadings) -> Self {
        UsageReader { engine, docker, node_id, finals }
    }

    /// Every counter of every running engine of this node, plus the final
    /// readings of sources the reconciler ended recently. Fails, naming the
    /// engine, when Docker or a running engine does not answer.
    pub async fn counters(&self) -> Result<Vec<Counter>, RuntimeError> {
        let mut out = Vec::new();
        for info in self.docker.list(&[format!("{LABEL_OWNER}={}", self.node_id)]).await? {
            let Some((protocol, api)) = engine_of(&self.engine, &info) else { continue };
            if !info.running {
                continue;
            }
            match read_engine(&self.engine, protocol, &info.id, &info.started_at, &api).await {
                Ok(counters) => out.extend(counters),
                Err(e) => match self.docker.inspect(&info.id).await {
                    // Stopped, restarted or removed meanwhile: its sources ended.
                    Ok(now) if !now.running || now.started_at != info.started_at => {}
                    Err(RuntimeError::Docker { source, .. }) if crate::docker::is_not_found(&source) => {}
                    _ => return Err(RuntimeError::CountersUnavailable { container: info.name, source: Box::new(e) }),
                },
            }
        }
        self.finals.merge(&mut out, Instant::now());
        Ok(out)
    }
}

/// The protocol and API access of one of our engine containers; `None` for
/// check containers, other engines and damaged labels (the reconciler
/// replaces such a container; its counters cannot be read).
fn engine_of<E: Engine>(engine: &E, info: &ContainerInfo) -> Option<(Protocol, ApiAccess)> {
    let label = |key: &str| info.labels.get(key).map(String::as_str);
    if label(LABEL_ENGINE) != Some(engine.name()) || label(LABEL_ROLE).is_some() {
        return None;
    }
    let protocol = Protocol::parse(label(LABEL_PROTOCOL)?)?;
    Some((protocol, parse_api(label(LABEL_API_PORTS), label(LABEL_API_SECRET))?))
}

/// The counters of one running engine, with their full source names.
pub(crate) async fn read_engine<E: Engine>(
    engine: &E,
    protocol: Protocol,
    container_id: &str,
    started_at: &str,
    api: &ApiAccess,
) -> Result<Vec<Counter>, RuntimeError> {
    let prefix = format!("{}@{started_at}", &container_id[..container_id.len().min(12)]);
    let counters = engine.counters(protocol, api).await?;
    Ok(counters
        .into_iter()
        .map(|c| Counter { source: format!("{prefix}/{}", c.key), user: c.user, bytes: c.bytes })
        .collect())
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
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        for c in counters {
            let f = map.entry(c.source).or_insert(Final { user: c.user, bytes: 0, until });
            f.bytes = f.bytes.max(c.bytes);
            f.until = until;
        }
    }

    /// Adds the final readings whose sources are no longer live to `live`.
    /// A live source with a final reading raises it (so the final reading is
    /// never below a count already handed out); a live count below it means
    /// the source restarted (a Shadowsocks user added again): the final
    /// reading is superseded and dropped.
    fn merge(&self, live: &mut Vec<Counter>, now: Instant) {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|_, f| f.until > now);
        if map.is_empty() {
            return;
        }
        let mut seen = std::collections::HashSet::new();
        for c in live.iter() {
            seen.insert(c.source.clone());
            match map.get_mut(&c.source) {
                Some(f) if c.bytes >= f.bytes => f.bytes = c.bytes,
                Some(_) => {
                    map.remove(&c.source);
                }
                None => {}
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
        finals.keep(vec![counter("e/ss/bob", "bob", 500)], t0);
        // Still live and grown: the live count is the answer, and raises the final reading.
        let live = merged(&finals, vec![counter("e/ss/bob", "bob", 700), counter("e/ss/al", "al", 1)], t0);
        assert_eq!(live, vec![counter("e/ss/al", "al", 1), counter("e/ss/bob", "bob", 700)]);
        // Gone (deleted): the final reading stands in, never below what was handed out.
        assert_eq!(merged(&finals, vec![], t0), vec![counter("e/ss/bob", "bob", 700)]);
        // Until the TTL passes.
        assert_eq!(merged(&finals, vec![], t0 + FINAL_READING_TTL), vec![]);
    }

    #[test]
    fn a_restarted_source_supersedes_its_final_reading() {
        let t0 = Instant::now();
        let finals = FinalReadings::default();
        finals.keep(vec![counter("e/ss/bob", "bob", 500)], t0);
        // Added again: counts from zero under the same source.
        assert_eq!(merged(&finals, vec![counter("e/ss/bob", "bob", 20)], t0), vec![counter("e/ss/bob", "bob", 20)]);
        assert_eq!(merged(&finals, vec![], t0), vec![], "the old final reading is gone");
    }
}
