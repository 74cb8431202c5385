//! A tiny HTTP/1.0 server on 127.0.0.1 that serves a known byte pattern:
//! `/bytes/<n>` at once, `/slow/<n>` in 16 KiB steps every 20 ms (a long-lived session).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

pub struct HttpServer {
    pub port: u16,
    /// Bytes received and sent over every connection so far: what an
    /// accounting of the users' payload must match.
    moved: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

/// Byte `i` of every body.
pub fn pattern(i: usize) -> u8 {
    (i % 251) as u8
}

pub fn is_pattern(body: &[u8]) -> bool {
    body.iter().enumerate().all(|(i, b)| *b == pattern(i))
}

impl HttpServer {
    pub async fn start() -> HttpServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind http");
        let port = listener.local_addr().expect("addr").port();
        let moved = Arc::new(AtomicU64::new(0));
        let counter = moved.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let moved = counter.clone();
                tokio::spawn(async move {
                    let count = |n: usize| moved.fetch_add(n as u64, Ordering::Relaxed);
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match conn.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => {
                                count(n);
                                head.extend_from_slice(&buf[..n]);
                            }
                        }
                    }
                    let line = String::from_utf8_lossy(&head).lines().next().unwrap_or_default().to_string();
                    let path = line.split_whitespace().nth(1).unwrap_or_default().to_string();
                    let (slow, len) = match path.split('/').collect::<Vec<_>>().as_slice() {
                        ["", "bytes", n] => (false, n.parse().unwrap_or(0)),
                        ["", "slow", n] => (true, n.parse().unwrap_or(0)),
                        _ => (false, 0usize),
                    };
                    let body: Vec<u8> = (0..len).map(pattern).collect();
                    let header = format!("HTTP/1.0 200 OK\r\nContent-Length: {len}\r\n\r\n");
                    if conn.write_all(header.as_bytes()).await.is_err() {
                        return;
                    }
                    count(header.len());
                    let step = if slow { 16 * 1024 } else { len.max(1) };
                    for chunk in body.chunks(step) {
                        if conn.write_all(chunk).await.is_err() {
                            return;
                        }
                        count(chunk.len());
                        if slow {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                    let _ = conn.shutdown().await;
                });
            }
        });
        HttpServer { port, moved, task }
    }

    pub fn moved(&self) -> u64 {
        self.moved.load(Ordering::Relaxed)
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
