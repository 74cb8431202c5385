//! One-hop forwarding of writes to the leader. The forwarded request is
//! marked, and a marked request is never forwarded again.

use std::time::Duration;

use tonic::Request;

use crate::metrics::MethodLabel;
use crate::node::Node;

const FORWARDED_HEADER: &str = "x-vpn-forwarded";
const FORWARD_TIMEOUT: Duration = Duration::from_secs(10);

pub fn was_forwarded<T>(req: &Request<T>) -> bool {
    req.metadata().contains_key(FORWARDED_HEADER)
}

/// A fresh request carrying `msg`, marked as forwarded, counted in metrics.
pub fn to_leader<T>(node: &Node, method: &'static str, msg: T) -> Request<T> {
    node.metrics.forwarded.get_or_create(&MethodLabel { method }).inc();
    let mut req = Request::new(msg);
    req.metadata_mut().insert(FORWARDED_HEADER, tonic::metadata::MetadataValue::from_static("1"));
    req.set_timeout(FORWARD_TIMEOUT);
    req
}
