//! Writes the state machine's changes into sled's `sm` tree off the apply
//! path, coalesced: every sled batch makes sled write out an IO buffer (on
//! its own threads), so one batch per apply call cost more than the apply.
//!
//! The thread merges the changes of every apply call in a short window
//! (later values win) and writes them as one atomic batch that also carries
//! the newest `meta/*` keys, so the tree still holds a prefix of the applied
//! log: never data from an entry that its `meta/applied` does not cover.
//! The tree is not fsynced; after a crash the log (and the snapshot file)
//! re-apply what it lost.
//!
//! A failed write is not retried: the batches after it would claim entries
//! whose changes the tree lacks, so the tree takes none until a rewrite (a
//! whole state, from a snapshot install) succeeds. Meanwhile the state in
//! memory is ahead of the tree, and [`Persistence`] says so: the node serves
//! no reads and reports itself unready. It stays so until such a rewrite or
//! a restart, after which the tree is whole again: a restarted store loads
//! the tree as of its last good batch, and openraft re-applies the log from
//! there (the log still holds those entries: a snapshot, which would let
//! them be purged, cannot be built while the tree lags, as its flush fails;
//! openraft 0.9 takes that failure as fatal and stops Raft on the node,
//! which then needs the restart anyway).

use std::collections::BTreeMap;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use tokio::sync::oneshot;

/// How long changes gather before they are written.
const WINDOW: Duration = Duration::from_millis(20);

/// Keys with their new value, or `None` to remove the key.
pub(crate) type Changes = Vec<(Vec<u8>, Option<Vec<u8>>)>;

pub(crate) enum SmOp {
    Apply(Changes),
    /// Replaces the whole tree with these pairs (a snapshot was installed).
    Rewrite(Changes),
    /// Resolves once everything queued before it is in the tree.
    Flush(oneshot::Sender<io::Result<()>>),
}

/// Dropping it writes what is queued and joins the thread.
pub(crate) struct SmWriter {
    tx: Option<mpsc::Sender<SmOp>>,
    thread: Option<JoinHandle<()>>,
}

/// Where the writer puts changes: the `sm` tree. A trait only so that a test
/// can make writes fail.
pub(crate) trait Tree: Send + 'static {
    /// Applies `batch` atomically.
    fn apply(&self, batch: sled::Batch) -> io::Result<()>;
    /// Every key the tree holds.
    fn keys(&self) -> io::Result<Vec<sled::IVec>>;
}

impl Tree for sled::Tree {
    fn apply(&self, batch: sled::Batch) -> io::Result<()> {
        Ok(self.apply_batch(batch)?)
    }

    fn keys(&self) -> io::Result<Vec<sled::IVec>> {
        Ok(self.iter().keys().collect::<sled::Result<_>>()?)
    }
}

/// Whether the applied state is all in the tree, shared by the writer and
/// whoever serves reads or reports health. Clones share one record.
#[derive(Clone, Debug, Default)]
pub struct Persistence(Arc<Health>);

#[derive(Debug, Default)]
struct Health {
    failures: AtomicU64,
    unpersisted: AtomicBool,
    cause: Mutex<String>,
}

impl Persistence {
    /// How many writes of applied changes to sled have failed since the
    /// store was opened.
    pub fn write_failures(&self) -> u64 {
        self.0.failures.load(Ordering::Relaxed)
    }

    /// Why the applied state is not all in sled, while it is not (see the
    /// top of `sm_writer`); `None` when it is.
    pub fn unpersisted(&self) -> Option<String> {
        if !self.0.unpersisted.load(Ordering::Acquire) {
            return None;
        }
        Some(self.0.cause.lock().unwrap_or_else(PoisonError::into_inner).clone())
    }

    fn failed(&self, e: &io::Error) {
        *self.0.cause.lock().unwrap_or_else(PoisonError::into_inner) =
            format!("writing applied changes to sled failed: {e}");
        self.0.failures.fetch_add(1, Ordering::Relaxed);
        self.0.unpersisted.store(true, Ordering::Release);
    }

    fn persisted(&self) {
        self.0.unpersisted.store(false, Ordering::Release);
    }
}

impl SmWriter {
    pub(crate) fn start(tree: impl Tree, health: Persistence) -> io::Result<Self> {
        let (tx, rx) = mpsc::channel();
        let run = move || run(Target { tree, health }, &rx);
        let thread = thread::Builder::new().name("sm-writer".into()).spawn(run)?;
        Ok(Self { tx: Some(tx), thread: Some(thread) })
    }

    pub(crate) fn submit(&self, op: SmOp) -> io::Result<()> {
        let gone = || io::Error::other("the state machine writer has stopped");
        self.tx.as_ref().ok_or_else(gone)?.send(op).map_err(|_| gone())
    }

    pub(crate) async fn flush(&self) -> io::Result<()> {
        let (done, wait) = oneshot::channel();
        self.submit(SmOp::Flush(done))?;
        wait.await.map_err(|_| io::Error::other("the state machine writer has stopped"))?
    }
}

impl Drop for SmWriter {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!("the state machine writer thread panicked");
            }
        }
    }
}

fn run(mut tree: Target<impl Tree>, rx: &mpsc::Receiver<SmOp>) {
    let mut pending: BTreeMap<Vec<u8>, Option<Vec<u8>>> = BTreeMap::new();
    let mut waiting = Vec::new();
    while let Ok(first) = rx.recv() {
        // Sleep through the window rather than wake for every apply call.
        if !matches!(first, SmOp::Flush(_)) {
            thread::sleep(WINDOW);
        }
        for op in std::iter::once(first).chain(rx.try_iter()) {
            match op {
                SmOp::Apply(changes) => pending.extend(changes),
                SmOp::Rewrite(pairs) => {
                    pending.clear();
                    tree.rewrite(pairs);
                }
                SmOp::Flush(done) => waiting.push(done),
            }
        }
        let result = tree.write(std::mem::take(&mut pending));
        for done in waiting.drain(..) {
            let _receiver_gone =
                done.send(result.as_ref().map(|_| ()).map_err(|e| io::Error::new(e.kind(), e.to_string())));
        }
    }
}

/// The tree, and whether it holds the whole applied state: after a failed
/// write it takes no batch until a rewrite succeeds (see the top of this file).
struct Target<T> {
    tree: T,
    health: Persistence,
}

impl<T: Tree> Target<T> {
    fn write(&mut self, pending: BTreeMap<Vec<u8>, Option<Vec<u8>>>) -> io::Result<()> {
        if let Some(cause) = self.health.unpersisted() {
            return Err(io::Error::other(format!("an earlier state machine write failed ({cause})")));
        }
        if pending.is_empty() {
            return Ok(());
        }
        let mut batch = sled::Batch::default();
        for (key, value) in pending {
            match value {
                Some(value) => batch.insert(key, value),
                None => batch.remove(key),
            }
        }
        let result = self.tree.apply(batch);
        self.check(result)
    }

    fn rewrite(&mut self, pairs: Changes) {
        let result = self.tree.keys().and_then(|keys| {
            let mut batch = sled::Batch::default();
            keys.into_iter().for_each(|key| batch.remove(key));
            for (key, value) in pairs {
                if let Some(value) = value {
                    batch.insert(key, value);
                }
            }
            self.tree.apply(batch)
        });
        if result.is_ok() {
            self.health.persisted();
        }
        let _logged = self.check(result);
    }

    fn check(&mut self, result: io::Result<()>) -> io::Result<()> {
        if let Err(e) = &result {
            tracing::error!(
                "writing the state machine to sled failed: {e}; this node now serves no reads and reports itself \
                 unready until it is restarted (the log re-applies what sled lacks)"
            );
            self.health.failed(e);
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;

    use openraft::storage::RaftStateMachine as _;

    use super::*;
    use crate::command::Command;
    use crate::model::User;
    use crate::types::{Entry, LogId};

    /// The tree, failing every write while `fail` is set (a full or failing disk).
    struct Flaky {
        tree: sled::Tree,
        fail: Arc<AtomicBool>,
    }

    impl Tree for Flaky {
        fn apply(&self, batch: sled::Batch) -> io::Result<()> {
            if self.fail.load(Ordering::SeqCst) {
                return Err(io::Error::other("injected: no space left on device"));
            }
            self.tree.apply(batch)
        }

        fn keys(&self) -> io::Result<Vec<sled::IVec>> {
            self.tree.keys()
        }
    }

    fn set(key: &str) -> Changes {
        vec![(key.as_bytes().to_vec(), Some(b"1".to_vec()))]
    }

    fn keys(tree: &sled::Tree) -> Vec<String> {
        tree.keys().expect("keys").iter().map(|k| String::from_utf8_lossy(k).into_owned()).collect()
    }

    #[tokio::test]
    async fn a_failed_write_leaves_the_state_unpersisted_until_a_rewrite() {
        let db = sled::Config::new().temporary(true).open().expect("sled");
        let tree = db.open_tree("sm").expect("tree");
        let fail = Arc::new(AtomicBool::new(false));
        let health = Persistence::default();
        let writer = SmWriter::start(Flaky { tree: tree.clone(), fail: fail.clone() }, health.clone()).expect("writer");
        writer.submit(SmOp::Apply(set("a"))).expect("submit");
        writer.flush().await.expect("a good write");
        assert_eq!((health.unpersisted(), health.write_failures()), (None, 0));

        fail.store(true, Ordering::SeqCst);
        writer.submit(SmOp::Apply(set("b"))).expect("submit");
        assert!(writer.flush().await.is_err(), "a failed write was reported as written");
        let cause = health.unpersisted().expect("unpersisted after a failed write");
        assert!(cause.contains("no space left on device"), "{cause}");
        assert_eq!(health.write_failures(), 1);

        // The disk is fine again, yet a later batch is refused: its meta
        // would claim the entries of the lost one. Nothing more is counted.
        fail.store(false, Ordering::SeqCst);
        writer.submit(SmOp::Apply(set("c"))).expect("submit");
        assert!(writer.flush().await.is_err(), "a batch after a lost one was written");
        assert!(health.unpersisted().is_some());
        assert_eq!((health.write_failures(), keys(&tree)), (1, vec!["a".to_owned()]));

        // A whole state makes the tree whole again.
        let all = [set("a"), set("b"), set("c")].concat();
        writer.submit(SmOp::Rewrite(all)).expect("submit");
        writer.flush().await.expect("writes after a rewrite");
        assert_eq!(health.unpersisted(), None);
        assert_eq!(keys(&tree), ["a", "b", "c"]);
    }

    fn create(index: u64, name: &str) -> Entry {
        let cmd = Command::CreateUser(User::new(name.to_owned(), 1_700_000_000_000));
        Entry {
            log_id: LogId::new(openraft::CommittedLeaderId::new(1, 0), index),
            payload: openraft::EntryPayload::Normal(cmd),
        }
    }

    /// Polls `done` until it holds, for at most ten seconds.
    async fn wait_for(what: &str, done: impl Fn() -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(std::time::Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn snapshots(dir: &std::path::Path) -> (crate::snapshot_file::SnapshotFile, Option<crate::snapshot_file::Stored>) {
        crate::snapshot_file::SnapshotFile::open(&dir.join("snapshots")).expect("snapshots")
    }

    /// Through the state machine: `apply` still answers (the log is durable),
    /// the readers' handle says the state is not persisted, and a restart
    /// finds the tree as of its last good batch, for the log to re-apply.
    #[tokio::test]
    async fn the_readers_see_a_failed_write_and_a_restart_reloads_the_last_good_batch() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fail = Arc::new(AtomicBool::new(false));
        {
            let db = crate::durable::DurableDb::open(dir.path()).expect("db");
            let tree = db.db().open_tree("sm").expect("tree");
            let flaky = |tree| Flaky { tree, fail: fail.clone() };
            let mut sm = crate::StateMachineStore::open_with(db, snapshots(dir.path()), flaky).expect("open");
            let reader = sm.reader();
            sm.apply([create(1, "alice")]).await.expect("apply");
            wait_for("alice in sled", || tree.contains_key("u/alice").unwrap_or(false)).await;
            fail.store(true, Ordering::SeqCst);
            sm.apply([create(2, "bob")]).await.expect("apply answers: the log holds the entry");
            wait_for("the failed write", || reader.persistence().unpersisted().is_some()).await;
            assert_eq!(reader.persistence().write_failures(), 1);
            assert!(reader.read(|s| s.users.contains_key("bob")), "memory holds the applied state");
        }
        let (_log, mut sm) = crate::open(dir.path()).expect("reopen");
        assert_eq!(sm.reader().persistence().unpersisted(), None);
        let (applied, _) = sm.applied_state().await.expect("applied state");
        assert_eq!(applied.map(|id| id.index), Some(1), "the tree claims an entry it lacks");
        assert!(!sm.reader().read(|s| s.users.contains_key("bob")));
    }
}
