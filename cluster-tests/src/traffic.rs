//! Real traffic through the data plane: a local HTTP source of known bytes, a
//! real sing-box client configured from a user's link, and a SOCKS5 fetch
//! through that client.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::net::free_port;

/// The byte at offset `i` of every payload: a pattern that catches reordering
/// and truncation, not only a wrong length.
fn pattern(i: usize) -> u8 {
    (i % 251) as u8
}

/// Serves `GET /<n>` with `n` pattern bytes on 127.0.0.1, until dropped.
/// `/slow/<n>` sends the same bytes slowly (about 256 KiB/s), for downloads
/// that must outlive a change.
pub struct HttpSource {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl HttpSource {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind source");
        let addr = listener.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream));
            }
        });
        Self { addr, task }
    }
}

impl Drop for HttpSource {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(mut stream: TcpStream) {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let head = String::from_utf8_lossy(&head);
    let path = head.split(' ').nth(1).unwrap_or("/");
    let (slow, size) = match path.strip_prefix("/slow/") {
        Some(n) => (true, n.parse().unwrap_or(0)),
        None => (false, path.trim_start_matches('/').parse().unwrap_or(0)),
    };
    let body: Vec<u8> = (0..size).map(pattern).collect();
    let header = format!("HTTP/1.1 200 OK\r\nContent-Length: {size}\r\nConnection: close\r\n\r\n");
    if stream.write_all(header.as_bytes()).await.is_err() {
        return;
    }
    for chunk in body.chunks(if slow { 16 * 1024 } else { 256 * 1024 }) {
        if stream.write_all(chunk).await.is_err() {
            return;
        }
        if slow {
            tokio::time::sleep(Duration::from_millis(60)).await;
        }
    }
}

/// Fetches `http://{target}{path}` through the SOCKS5 proxy at `proxy` and
/// checks the body: `Ok(bytes)` only when every byte is the expected one.
pub async fn fetch_via_socks(proxy: SocketAddr, target: SocketAddr, path: &str, size: usize) -> Result<usize, String> {
    let io = async {
        let mut s = TcpStream::connect(proxy).await.map_err(|e| format!("connect proxy: {e}"))?;
        s.write_all(&[5, 1, 0]).await.map_err(|e| e.to_string())?;
        let mut greet = [0u8; 2];
        s.read_exact(&mut greet).await.map_err(|e| format!("socks greeting: {e}"))?;
        let ip = match target.ip() {
            std::net::IpAddr::V4(ip) => ip.octets(),
            std::net::IpAddr::V6(_) => return Err("IPv6 target".to_owned()),
        };
        let mut req = vec![5, 1, 0, 1];
        req.extend_from_slice(&ip);
        req.extend_from_slice(&target.port().to_be_bytes());
        s.write_all(&req).await.map_err(|e| e.to_string())?;
        let mut reply = [0u8; 10];
        s.read_exact(&mut reply).await.map_err(|e| format!("socks reply: {e}"))?;
        if reply[1] != 0 {
            return Err(format!("socks connect refused with code {}", reply[1]));
        }
        let get = format!("GET {path} HTTP/1.1\r\nHost: {target}\r\nConnection: close\r\n\r\n");
        s.write_all(get.as_bytes()).await.map_err(|e| e.to_string())?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).await.map_err(|e| format!("read body: {e}"))?;
        Ok(raw)
    };
    let raw = tokio::time::timeout(Duration::from_secs(60), io).await.map_err(|_| "fetch timed out".to_owned())??;
    let split =
        raw.windows(4).position(|w| w == b"\r\n\r\n").ok_or("no HTTP reply (connection refused by the proxy?)")?;
    let body = &raw[split + 4..];
    if body.len() != size {
        return Err(format!("got {} of {size} bytes", body.len()));
    }
    match body.iter().enumerate().find(|(i, b)| **b != pattern(*i)) {
        Some((i, _)) => Err(format!("byte {i} differs")),
        None => Ok(body.len()),
    }
}

/// A real sing-box client process with a local `mixed` (SOCKS5/HTTP) inbound.
pub struct SingBoxClient {
    pub proxy: SocketAddr,
    child: Child,
    _dir: tempfile::TempDir,
}

/// The sing-box binary `ops/images/build-sing-box.sh` leaves for tests.
pub fn sing_box_binary() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let path = root.join("target/sing-box/sing-box");
    assert!(path.exists(), "{} is missing: run `bash ops/images/build-sing-box.sh`", path.display());
    path
}

impl SingBoxClient {
    /// Starts a client whose single outbound is `outbound` (sing-box JSON).
    pub async fn start(outbound: serde_json::Value) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let config = serde_json::json!({
            "log": {"level": "warn"},
            "inbounds": [{"type": "mixed", "listen": "127.0.0.1", "listen_port": port}],
            "outbounds": [outbound],
        });
        let path = dir.path().join("client.json");
        std::fs::write(&path, serde_json::to_vec_pretty(&config).expect("json")).expect("write client config");
        let child = Command::new(sing_box_binary())
            .args(["run", "-c"])
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start sing-box client");
        let proxy: SocketAddr = ([127, 0, 0, 1], port).into();
        crate::eventually("the sing-box client listens", Duration::from_secs(10), || async move {
            TcpStream::connect(proxy).await.map(|_| ()).map_err(|e| e.to_string())
        })
        .await;
        Self { proxy, child, _dir: dir }
    }
}

impl Drop for SingBoxClient {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
