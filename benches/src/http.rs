//! A minimal HTTP/1.1 GET over loopback, enough for health endpoints and
//! a `/metrics` scrape.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Longest response read; health answers are tiny.
const MAX_RESPONSE: u64 = 64 * 1024;

/// `GET path` on `addr`: the status code and the body.
pub async fn get(addr: SocketAddr, path: &str, timeout: Duration) -> Result<(u16, String)> {
    get_up_to(addr, path, timeout, MAX_RESPONSE).await
}

/// [`get`], reading at most `max` bytes of the response (a `/metrics` page
/// with a line per data-plane node outgrows the health answers' bound).
pub async fn get_up_to(addr: SocketAddr, path: &str, timeout: Duration, max: u64) -> Result<(u16, String)> {
    tokio::time::timeout(timeout, async {
        let mut stream = TcpStream::connect(addr).await?;
        let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(req.as_bytes()).await?;
        let mut buf = Vec::new();
        stream.take(max).read_to_end(&mut buf).await?;
        let text = String::from_utf8_lossy(&buf).into_owned();
        let code = text
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse::<u16>().ok())
            .ok_or_else(|| anyhow!("not an HTTP response from {addr}"))?;
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
        Ok((code, body))
    })
    .await
    .with_context(|| format!("GET {addr}{path} timed out"))?
}
