//! [`Proposer`]: concurrent writes share log entries.
//!
//! openraft 0.9's leader appends every `client_write` as an entry of its own
//! and waits for that entry's fdatasync before it takes the next request
//! (`RaftCore::append_to_log` blocks its loop), so one write per fsync is the
//! ceiling however many clients wait. The proposer keeps at most
//! [`MAX_IN_FLIGHT`] `client_write` calls running; proposals that arrive
//! meanwhile queue, and go together as one [`Command::Batch`] entry. A lone
//! proposal on an idle node goes straight to openraft from the caller's task,
//! as its own command: no added hop.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use openraft::error::{ClientWriteError, Fatal, RaftError};
use openraft::raft::ClientWriteResponse;
use openraft::BasicNode;
use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::command::{Command, CommandResponse};
use crate::types::{NodeId, Raft, TypeConfig};

/// `client_write` calls running at once. More means smaller batches but
/// more overlap between one batch's replication and the next one's append.
pub const MAX_IN_FLIGHT: usize = 2;
/// Most commands in one entry: keeps an AppendEntries of up to openraft's
/// `max_payload_entries` (300) entries well under the message size limit.
pub const MAX_BATCH: usize = 128;
/// Proposals waiting for a slot before new ones are refused: at the ~10,000
/// writes/s a leader commits, a second of backlog. A longer queue would only
/// add latency and memory under overload; a refusal (RESOURCE_EXHAUSTED)
/// tells clients to back off instead.
pub const MAX_QUEUED: usize = 10_000;

type RaftResult = Result<ClientWriteResponse<TypeConfig>, RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>>;
pub type WriteResult = Result<ClientWriteResponse<TypeConfig>, ProposeError>;

/// Why a proposal was not written.
#[derive(Debug, thiserror::Error)]
pub enum ProposeError {
    /// The queue is full; nothing was proposed.
    #[error("{queued} writes are already waiting on the leader: retry later")]
    Busy { queued: usize },
    #[error(transparent)]
    Raft(Box<RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>>),
}

impl From<RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>> for ProposeError {
    fn from(e: RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>) -> Self {
        ProposeError::Raft(Box::new(e))
    }
}

struct Pending {
    cmd: Command,
    reply: oneshot::Sender<RaftResult>,
}

/// Hands proposals to openraft in batches; cheap to share behind an `Arc`.
pub struct Proposer {
    raft: Raft,
    tx: mpsc::UnboundedSender<Pending>,
    in_flight: Arc<Semaphore>,
    /// Proposals sent to the batching task and not yet taken by it.
    queued: Arc<AtomicUsize>,
    max_queued: usize,
}

impl Proposer {
    /// Starts the batching task on the current tokio runtime; it ends when
    /// the proposer is dropped.
    pub fn new(raft: Raft) -> Self {
        Self::with_max_queued(raft, MAX_QUEUED)
    }

    /// A proposer that refuses proposals beyond `max_queued` waiting ones.
    pub fn with_max_queued(raft: Raft, max_queued: usize) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
        let queued = Arc::new(AtomicUsize::new(0));
        tokio::spawn(run(raft.clone(), rx, in_flight.clone(), queued.clone()));
        Self { raft, tx, in_flight, queued, max_queued }
    }

    /// Like [`openraft::Raft::client_write`]: the response of `cmd` once its
    /// entry is committed and applied (`log_id` is the shared entry's).
    pub async fn client_write(&self, cmd: Command) -> WriteResult {
        // Idle: propose right here, without a hop through the batching task.
        if self.queued.load(Ordering::Acquire) == 0 {
            if let Ok(_permit) = self.in_flight.try_acquire() {
                return Ok(self.raft.client_write(cmd).await?);
            }
        }
        let queued = self.queued.fetch_add(1, Ordering::AcqRel);
        if queued >= self.max_queued {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            return Err(ProposeError::Busy { queued });
        }
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Pending { cmd, reply }).is_err() {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            return Err(RaftError::Fatal(Fatal::Stopped).into());
        }
        Ok(rx.await.unwrap_or(Err(RaftError::Fatal(Fatal::Stopped)))?)
    }
}

async fn run(
    raft: Raft,
    mut rx: mpsc::UnboundedReceiver<Pending>,
    in_flight: Arc<Semaphore>,
    queued: Arc<AtomicUsize>,
) {
    while let Some(first) = rx.recv().await {
        // While every slot is busy, proposals pile up in `rx`.
        let Ok(permit) = in_flight.clone().acquire_owned().await else { return };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        queued.fetch_sub(batch.len(), Ordering::AcqRel);
        let raft = raft.clone();
        tokio::spawn(async move {
            write(&raft, batch).await;
            drop(permit);
        });
    }
}

async fn write(raft: &Raft, mut batch: Vec<Pending>) {
    if batch.len() == 1 {
        if let Some(p) = batch.pop() {
            let _caller_gone = p.reply.send(raft.client_write(p.cmd).await);
        }
        return;
    }
    let (cmds, replies): (Vec<Command>, Vec<_>) = batch.into_iter().map(|p| (p.cmd, p.reply)).unzip();
    let n = cmds.len();
    match raft.client_write(Command::Batch(cmds)).await {
        Ok(resp) => match resp.data {
            CommandResponse::Batch(responses) if responses.len() == n => {
                for (reply, data) in replies.into_iter().zip(responses) {
                    let one = ClientWriteResponse { log_id: resp.log_id, data, membership: None };
                    let _caller_gone = reply.send(Ok(one));
                }
            }
            other => {
                tracing::error!(?other, "a batch of {n} commands got a response that is not one per command");
                for reply in replies {
                    let _caller_gone = reply.send(Err(RaftError::Fatal(Fatal::Panicked)));
                }
            }
        },
        Err(e) => {
            for reply in replies {
                let _caller_gone = reply.send(Err(e.clone()));
            }
        }
    }
}
