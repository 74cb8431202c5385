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

use std::collections::BTreeMap;
use std::io;
use std::sync::mpsc;
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

impl SmWriter {
    pub(crate) fn start(tree: sled::Tree) -> io::Result<Self> {
        let (tx, rx) = mpsc::channel();
        let thread = thread::Builder::new().name("sm-writer".into()).spawn(move || run(&tree, &rx))?;
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

fn run(tree: &sled::Tree, rx: &mpsc::Receiver<SmOp>) {
    let mut tree = Target { tree, failed: false };
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

/// The tree, and whether a write to it failed: after that, later batches
/// would claim entries whose changes the tree lacks, so it takes none until
/// a rewrite (a whole state) succeeds. The log re-applies what it missed.
struct Target<'a> {
    tree: &'a sled::Tree,
    failed: bool,
}

impl Target<'_> {
    fn write(&mut self, pending: BTreeMap<Vec<u8>, Option<Vec<u8>>>) -> io::Result<()> {
        if self.failed {
            return Err(io::Error::other("an earlier state machine write failed"));
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
        let result = self.tree.apply_batch(batch).map_err(io::Error::from);
        self.check(result)
    }

    fn rewrite(&mut self, pairs: Changes) {
        let mut batch = sled::Batch::default();
        let mut result = Ok(());
        for key in self.tree.iter().keys() {
            match key {
                Ok(key) => batch.remove(key),
                Err(e) => result = Err(e),
            }
        }
        for (key, value) in pairs {
            if let Some(value) = value {
                batch.insert(key, value);
            }
        }
        let result = result.and_then(|()| self.tree.apply_batch(batch)).map_err(io::Error::from);
        self.failed = false;
        let _logged = self.check(result);
    }

    fn check(&mut self, result: io::Result<()>) -> io::Result<()> {
        if let Err(e) = &result {
            tracing::error!("writing the state machine to sled failed (the log will re-apply it): {e}");
            self.failed = true;
        }
        result
    }
}
