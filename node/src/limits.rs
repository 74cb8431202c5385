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
/// Traffic reports one heartbeat carries (oldest first) and the leader
/// takes from it: a node back from a long cut-off catches up over a few
/// heartbeats instead of sending its whole journal in one.
pub const MAX_REPORTS: usize = 64;
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
pub const STREAMS_PER_CONNECTION: u32 = 256;
/// Longest a call may run on the server before it is ended with CANCELLED
/// ("Timeout expired"), whatever deadline the client gave (a forwarded
/// write's hop takes at most 10 s, a linearizable barrier as long as an
/// election).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// The gRPC server every node runs, with the two bounds above. HTTP/2
/// advertises `STREAMS_PER_CONNECTION` as its stream limit, so a client
/// queues further calls on its side (and a client that ignores the setting
/// has its extra streams refused) instead of parking them in the node's
/// memory; the handlers of one connection run at most that many at once.
pub fn grpc_server() -> tonic::transport::Server {
    tonic::transport::Server::builder()
        .max_concurrent_streams(STREAMS_PER_CONNECTION)
        .concurrency_limit_per_connection(STREAMS_PER_CONNECTION as usize)
        .timeout(CALL_TIMEOUT)
}

/// `/sub` lookups of unknown tokens per source and minute before the source
/// gets 429 for the rest of the minute (IPv6 sources by /64). A token is 256
/// random bits, so this is no defence against guessing, which cannot work;
/// it keeps a scanner from costing lookups and log lines. Loopback sources
/// are not limited (a reverse proxy on the host would make every client
/// one source).
pub const SUB_MISSES_PER_MINUTE: u32 = 30;
/// Sources the `/sub` limiter tracks at once.
pub const SUB_MISS_SOURCES: usize = 10_000;

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::Instant;

    use tokio_stream::wrappers::TcpListenerStream;
    use tonic::transport::{Channel, Endpoint};
    use tonic::{Code, Request, Response, Status};
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::health_server::{Health, HealthServer};
    use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

    use super::*;

    /// A handler that answers a check of the empty service name at once and
    /// never answers any other, counting the calls that reached it.
    struct Hangs {
        reached: Arc<AtomicUsize>,
    }

    #[tonic::async_trait]
    impl Health for Hangs {
        async fn check(&self, req: Request<HealthCheckRequest>) -> Result<Response<HealthCheckResponse>, Status> {
            if req.get_ref().service.is_empty() {
                return Ok(Response::new(HealthCheckResponse { status: 1 }));
            }
            self.reached.fetch_add(1, Ordering::SeqCst);
            std::future::pending().await
        }
        type WatchStream = tokio_stream::Empty<Result<HealthCheckResponse, Status>>;
        async fn watch(&self, _: Request<HealthCheckRequest>) -> Result<Response<Self::WatchStream>, Status> {
            Err(Status::unimplemented("not used"))
        }
    }

    async fn connection(addr: std::net::SocketAddr) -> HealthClient<Channel> {
        let channel = Endpoint::from_shared(format!("http://{addr}")).expect("endpoint").connect().await;
        HealthClient::new(channel.expect("connect"))
    }

    fn check(service: &str) -> Request<HealthCheckRequest> {
        Request::new(HealthCheckRequest { service: service.into() })
    }

    /// 257 calls that never finish on one connection: 256 reach their
    /// handler, the 257th waits; another connection is served at once; the
    /// hanging calls end at the server's deadline and the queue moves on.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_connection_runs_256_calls_at_once_and_none_past_the_call_timeout() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let reached = Arc::new(AtomicUsize::new(0));
        let server = grpc_server()
            .add_service(HealthServer::new(Hangs { reached: reached.clone() }))
            .serve_with_incoming(TcpListenerStream::new(listener));
        tokio::spawn(server);

        let crowded = connection(addr).await;
        let started = Instant::now();
        let calls: Vec<_> = (0..=STREAMS_PER_CONNECTION)
            .map(|_| {
                let mut client = crowded.clone();
                tokio::spawn(async move { client.check(check("hang")).await.map(|_| ()) })
            })
            .collect();
        let limit = STREAMS_PER_CONNECTION as usize;
        let deadline = Instant::now() + Duration::from_secs(20);
        while reached.load(Ordering::SeqCst) < limit {
            assert!(Instant::now() < deadline, "only {} calls reached the handler", reached.load(Ordering::SeqCst));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }

        let mut other = connection(addr).await;
        let answer = tokio::time::timeout(Duration::from_secs(10), other.check(check(""))).await;
        assert!(matches!(answer, Ok(Ok(_))), "another connection is served while one is full: {answer:?}");
        let mut same = crowded.clone();
        let queued = tokio::spawn(async move { same.check(check("")).await.map(|_| Instant::now()) });
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(reached.load(Ordering::SeqCst), limit, "the 257th call ran beside 256 on one connection");
        assert!(!queued.is_finished(), "a call on the full connection was answered before a stream freed");

        let mut ended = Vec::new();
        for call in calls {
            let outcome = tokio::time::timeout(CALL_TIMEOUT * 3, call).await.expect("a hanging call outlived 90 s");
            ended.push(outcome.expect("call task").expect_err("a call that never answers cannot succeed"));
        }
        assert!(started.elapsed() >= CALL_TIMEOUT, "calls ended before the server's deadline");
        for status in &ended {
            assert_eq!(status.code(), Code::Cancelled, "{status:?}");
            assert!(status.message().contains("Timeout expired"), "{status:?}");
        }
        let answered = tokio::time::timeout(Duration::from_secs(30), queued).await;
        let answered = answered.expect("the queued call ran once streams freed").expect("task");
        assert!(answered.expect("answered").duration_since(started) >= CALL_TIMEOUT);
    }
}
