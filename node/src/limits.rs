//! Every bound the node puts on what callers send, in one place, each with
//! its reason. A test sends just over each one: the message sizes in
//! `t70_bad_input`, the rest beside the code that applies them.

use std::time::Duration;

/// Largest public API request. The largest one is a CreateUser with every
/// constraint pair at its longest: under 4 KiB.
pub const PUBLIC_MESSAGE: usize = 64 * 1024;
/// Largest agent message: a heartbeat carries up to `MAX_REPORTS` traffic
/// reports of every user on the node (~100 bytes each).
pub const AGENT_MESSAGE: usize = 64 * 1024 * 1024;
/// Largest Raft message: AppendEntries batches and snapshot chunks.
pub const RAFT_MESSAGE: usize = 64 * 1024 * 1024;

/// Label pairs a user's placement constraint may name: a handful is what
/// placement rules use (region, provider, tier).
pub const CONSTRAINT_PAIRS: usize = 16;
/// Labels a data-plane node may register.
pub const NODE_LABELS: usize = 64;
/// Inbounds a data-plane node may offer: one per protocol, with room.
pub const NODE_INBOUNDS: usize = 8;
/// Users in one traffic report: more than any node serves.
pub const REPORT_USAGE_ENTRIES: usize = 1_000_000;
/// A page of a list (users, audit records); asking for more gets this many.
pub const PAGE_SIZE: usize = 1000;
/// A page when none is asked for.
pub const DEFAULT_PAGE_SIZE: usize = 100;

/// The page a list request gets for its `page_size` (0: the default).
pub fn page_size(requested: u32) -> usize {
    match requested as usize {
        0 => DEFAULT_PAGE_SIZE,
        n => n.min(PAGE_SIZE),
    }
}

/// Concurrent calls on one connection (HTTP/2 streams): a client that
/// needs more opens more connections; one connection cannot tie up the node.
pub const STREAMS_PER_CONNECTION: usize = 256;
/// Longest a call may run on the server before DEADLINE_EXCEEDED, whatever
/// deadline the client gave (a forwarded write's hop takes at most 10 s, a
/// linearizable barrier as long as an election).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// `/sub` lookups of unknown tokens per source and minute before the source
/// gets 429 for the rest of the minute (IPv6 sources by /64). A token is 256
/// random bits, so this is no defence against guessing, which cannot work;
/// it keeps a scanner from costing lookups and log lines. Loopback sources
/// are not limited (a reverse proxy on the host would make every client
/// one source).
pub const SUB_MISSES_PER_MINUTE: u32 = 30;
/// Sources the `/sub` limiter tracks at once.
pub const SUB_MISS_SOURCES: usize = 10_000;
