//! sing-box's gRPC `api` service (h2c on loopback, bearer secret): the
//! stream of connection events, read for traffic accounting where the
//! kernel cannot count (see [`crate::usage::stream`]). Only the call vpnd
//! uses is declared (`proto/singbox/daemon.proto`).

use std::time::Duration;

use tonic::transport::Endpoint;

use crate::RuntimeError;

#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod pb {
    tonic::include_proto!("daemon");
}

pub use pb::{ConnectionEvent, ConnectionEventType, ConnectionEvents};

/// How often the engine sends byte deltas of live connections.
const UPDATE_INTERVAL: Duration = Duration::from_secs(1);

/// Subscribes to the connection events of the engine whose `api` service
/// listens on 127.0.0.1:`port`. The first message lists the live and the
/// recently closed connections (`reset`).
pub async fn subscribe(port: u16, secret: &str) -> Result<tonic::Streaming<ConnectionEvents>, RuntimeError> {
    let addr = format!("127.0.0.1:{port}");
    let fail = |reason: String| RuntimeError::EngineApi { api: "engine event stream", addr: addr.clone(), reason };
    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| fail(e.to_string()))?
        .connect_timeout(Duration::from_secs(2))
        .connect()
        .await
        .map_err(|e| fail(format!("connect: {e}")))?;
    let interval = i64::try_from(UPDATE_INTERVAL.as_nanos()).unwrap_or(i64::MAX);
    let mut request = tonic::Request::new(pb::SubscribeConnectionsRequest { interval });
    let bearer = format!("Bearer {secret}").parse().map_err(|_| fail("the API secret is not a header value".into()))?;
    request.metadata_mut().insert("authorization", bearer);
    let mut client = pb::started_service_client::StartedServiceClient::new(channel);
    let stream =
        client.subscribe_connections(request).await.map_err(|s| fail(format!("{}: {}", s.code(), s.message())))?;
    Ok(stream.into_inner())
}
