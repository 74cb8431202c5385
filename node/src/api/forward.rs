//! One-hop forwarding of writes to the leader. The forwarded request is
//! marked, and a marked request is never forwarded again. The leader's
//! answer is passed on as it came; a failure of the hop itself is UNAVAILABLE.

use std::time::Duration;

use tonic::{Request, Response, Status};

use crate::metrics::MethodLabel;
use crate::node::Node;

pub const FORWARDED_HEADER: &str = "x-vpn-forwarded";
const FORWARD_TIMEOUT: Duration = Duration::from_secs(10);

pub fn was_forwarded<T>(req: &Request<T>) -> bool {
    req.metadata().contains_key(FORWARDED_HEADER)
}

/// A fresh request carrying `msg`, marked as forwarded, counted in metrics,
/// with the identity of the caller this node authenticated: the leader
/// authorizes the call again and writes it in the audit log as that
/// caller's (believing it for this node's control-plane certificate).
pub fn to_leader<T>(node: &Node, method: &'static str, msg: T) -> Request<T> {
    node.metrics.forwarded.get_or_create(&MethodLabel { method }).inc();
    let mut req = Request::new(msg);
    req.metadata_mut().insert(FORWARDED_HEADER, tonic::metadata::MetadataValue::from_static("1"));
    let identity = crate::auth::audit::current().and_then(|scope| scope.identity.to_header().parse().ok());
    if let Some(identity) = identity {
        req.metadata_mut().insert(crate::auth::identity::IDENTITY_HEADER, identity);
    }
    req.set_timeout(FORWARD_TIMEOUT);
    req
}

/// The leader's answer, as it came. A failure of the hop itself (the
/// connection reset, closed by GOAWAY or timed out) becomes UNAVAILABLE:
/// the write may or may not have been applied, as with any UNAVAILABLE, and
/// the caller may retry. tonic names such failures by their HTTP/2 reason
/// (RESOURCE_EXHAUSTED for a GOAWAY with ENHANCE_YOUR_CALM, INTERNAL,
/// CANCELLED), which would tell a client not to retry.
pub fn relayed<T>(reply: Result<Response<T>, Status>) -> Result<Response<T>, Status> {
    reply.map_err(|status| {
        if !is_transport_failure(&status) {
            return status;
        }
        Status::unavailable(format!("the write could not be relayed to the leader: {}; retry", status.message()))
    })
}

/// Whether `status` was made on this side from a transport error rather
/// than sent by the peer: tonic keeps the transport error as its source,
/// and a status read from a response has none.
pub fn is_transport_failure(status: &Status) -> bool {
    std::error::Error::source(status).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_transport_failure_is_relayed_as_unavailable_and_an_answer_as_it_came() {
        let goaway = h2_status(h2::Reason::ENHANCE_YOUR_CALM);
        assert_eq!(goaway.code(), tonic::Code::ResourceExhausted, "tonic's own mapping of the GOAWAY");
        let unavailable = relayed::<()>(Err(goaway)).expect_err("failed");
        assert_eq!(unavailable.code(), tonic::Code::Unavailable);
        assert!(unavailable.message().contains("retry"), "{}", unavailable.message());

        let answered = relayed::<()>(Err(Status::resource_exhausted("queue full"))).expect_err("failed");
        assert_eq!((answered.code(), answered.message()), (tonic::Code::ResourceExhausted, "queue full"));
        let exists = relayed::<()>(Err(Status::already_exists("user \"a\" already exists"))).expect_err("failed");
        assert_eq!(exists.code(), tonic::Code::AlreadyExists);
    }

    /// The status tonic's client makes when the connection dies with `reason`.
    fn h2_status(reason: h2::Reason) -> Status {
        Status::from_error(Box::new(h2::Error::from(reason)))
    }
}
