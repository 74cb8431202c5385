//! Real traffic through the data plane: a local HTTP source of known bytes, a
//! real sing-box client, its outbound made from a user's `ss://` or `vless://`
//! link ([`outbound_from_link`]), SOCKS5 fetches through it and downloads
//! observed while they run ([`Download`]).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::net::free_addr;

/// The byte at offset `i` of every payload: a pattern that catches reordering
/// and truncation, not only a wrong length.
fn pattern(i: usize) -> u8 {
    (i % 251) as u8
}

/// Serves `GET /<n>` with `n` pattern bytes on 127.0.0.1, until dropped.
/// `/slow/<n>` sends the same bytes slowly (about 256 KiB/s), for downloads
/// that must outlive a change; `/trickle/<n>` at about 10 KiB/s, for many
/// sessions that last minutes; `/held/<n>` as `/slow/`, but its last chunk
/// waits for [`HttpSource::release_held`], so a download outlives a series of
/// changes however long the machine takes over them.
pub struct HttpSource {
    pub addr: SocketAddr,
    moved: Arc<AtomicU64>,
    held: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl HttpSource {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind source");
        let addr = listener.local_addr().expect("addr");
        let moved = Arc::new(AtomicU64::new(0));
        let counter = moved.clone();
        let (held, released) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream, counter.clone(), released.clone()));
            }
        });
        Self { addr, moved, held, task }
    }

    /// Lets every `/held/` download send its last chunk.
    pub fn release_held(&self) {
        self.held.send_replace(true);
    }

    /// Bytes received and handed to the kernel to send, over every connection
    /// so far: what the accounting of the users' payload is checked against.
    pub fn moved(&self) -> u64 {
        self.moved.load(Ordering::Relaxed)
    }
}

impl Drop for HttpSource {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(mut stream: TcpStream, moved: Arc<AtomicU64>, mut released: tokio::sync::watch::Receiver<bool>) {
    let count = |n: usize| moved.fetch_add(n as u64, Ordering::Relaxed);
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                count(n);
                head.extend_from_slice(&buf[..n]);
            }
        }
    }
    let head = String::from_utf8_lossy(&head);
    let path = head.split(' ').nth(1).unwrap_or("/");
    // (chunk, pause): `/slow/` ~256 KiB/s, `/trickle/` ~10 KiB/s (many sessions that last).
    let held = path.starts_with("/held/");
    let (pace, size) = if let Some(n) = path.strip_prefix("/slow/").or_else(|| path.strip_prefix("/held/")) {
        (Some((16 * 1024, 60)), n.parse().unwrap_or(0))
    } else if let Some(n) = path.strip_prefix("/trickle/") {
        (Some((1024, 100)), n.parse().unwrap_or(0))
    } else {
        (None, path.trim_start_matches('/').parse().unwrap_or(0))
    };
    let body: Vec<u8> = (0..size).map(pattern).collect();
    let header = format!("HTTP/1.1 200 OK\r\nContent-Length: {size}\r\nConnection: close\r\n\r\n");
    if stream.write_all(header.as_bytes()).await.is_err() {
        return;
    }
    count(header.len());
    let chunks: Vec<&[u8]> = body.chunks(pace.map_or(256 * 1024, |(chunk, _)| chunk)).collect();
    for (i, chunk) in chunks.iter().enumerate() {
        if held && i + 1 == chunks.len() && released.wait_for(|r| *r).await.is_err() {
            return;
        }
        if stream.write_all(chunk).await.is_err() {
            return;
        }
        count(chunk.len());
        if let Some((_, pause)) = pace {
            tokio::time::sleep(Duration::from_millis(pause)).await;
        }
    }
}

/// Fetches `http://{target}{path}` through the SOCKS5 proxy at `proxy` and
/// checks the body: `Ok(bytes)` only when every byte is the expected one.
pub async fn fetch_via_socks(proxy: SocketAddr, target: SocketAddr, path: &str, size: usize) -> Result<usize, String> {
    fetch_via_socks_within(proxy, target, path, size, Duration::from_secs(60)).await
}

/// [`fetch_via_socks`] bounded by `timeout`: a server that holds a refused
/// connection open (instead of closing it) fails the fetch at the deadline.
pub async fn fetch_via_socks_within(
    proxy: SocketAddr,
    target: SocketAddr,
    path: &str,
    size: usize,
    timeout: Duration,
) -> Result<usize, String> {
    let io = async {
        let mut s = request_via_socks(proxy, target, path).await?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).await.map_err(|e| format!("read body: {e}"))?;
        Ok::<_, String>(raw)
    };
    let raw = tokio::time::timeout(timeout, io).await.map_err(|_| format!("fetch timed out after {timeout:?}"))??;
    check_reply(&raw, size)
}

/// Opens a SOCKS5 tunnel through `proxy` to `target` and sends `GET path`.
pub async fn request_via_socks(proxy: SocketAddr, target: SocketAddr, path: &str) -> Result<TcpStream, String> {
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
    Ok(s)
}

/// Checks a raw HTTP reply from [`HttpSource`]: `Ok(size)` only when the
/// body is exactly the `size` pattern bytes.
fn check_reply(raw: &[u8], size: usize) -> Result<usize, String> {
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

/// A download running in the background (a live session), observable while
/// it runs: bytes so far, whether and when it ended, and whether it was whole.
pub struct Download {
    size: usize,
    received: Arc<AtomicUsize>,
    task: Option<tokio::task::JoinHandle<Ended>>,
}

/// What a [`Download`] read (or why it stopped early), and when it ended.
type Ended = (Result<Vec<u8>, String>, Instant);

impl Download {
    /// Starts `GET path` (`size` body bytes) through the SOCKS5 proxy at `proxy`.
    pub fn start(proxy: SocketAddr, target: SocketAddr, path: &str, size: usize) -> Self {
        let received = Arc::new(AtomicUsize::new(0));
        let counter = received.clone();
        let path = path.to_owned();
        let task = tokio::spawn(async move {
            let mut s = match request_via_socks(proxy, target, &path).await {
                Ok(s) => s,
                Err(e) => return (Err(e), Instant::now()),
            };
            let mut raw = Vec::new();
            let mut buf = vec![0u8; 64 * 1024];
            // Ends on EOF or on a cut (reset): either way the session is over.
            let end = loop {
                match s.read(&mut buf).await {
                    Ok(0) => break Ok(()),
                    Ok(n) => {
                        raw.extend_from_slice(&buf[..n]);
                        counter.store(raw.len(), Ordering::Relaxed);
                    }
                    Err(e) => break Err(format!("cut after {} bytes: {e}", raw.len())),
                }
            };
            (end.map(|()| raw), Instant::now())
        });
        Self { size, received, task: Some(task) }
    }

    /// Bytes received so far (header included).
    pub fn received(&self) -> usize {
        self.received.load(Ordering::Relaxed)
    }

    pub fn is_finished(&self) -> bool {
        self.task.as_ref().is_none_or(tokio::task::JoinHandle::is_finished)
    }

    /// Waits (at most `timeout`) for the session to end; returns when it
    /// ended and `Ok(size)` only when the whole body arrived intact.
    pub async fn end(mut self, timeout: Duration) -> (Result<usize, String>, Instant) {
        let task = self.task.take().expect("a download ends once");
        let (raw, at) = tokio::time::timeout(timeout, task)
            .await
            .unwrap_or_else(|_| panic!("the download did not end within {timeout:?}"))
            .expect("download task");
        (raw.and_then(|raw| check_reply(&raw, self.size)), at)
    }
}

impl Drop for Download {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// What users of the data plane see while something else goes on: every
/// 250 ms, a 4 KiB fetch through each proxy, each bounded by 2 s; every
/// failure is kept with when it happened. Bounded besides [`Prober::stop`]:
/// ten minutes of rounds.
pub struct Prober {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Probed>,
}

/// Probes run, and the failures among them (`<elapsed> <protocol>: <error>`).
pub type Probed = (usize, Vec<String>);

impl Prober {
    /// Starts probing `origin` through each `(protocol, proxy)`.
    pub fn start(proxies: Vec<(String, SocketAddr)>, origin: SocketAddr) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let task = tokio::spawn(async move {
            let (started, mut probes, mut failures) = (Instant::now(), 0, Vec::new());
            for _ in 0..2400 {
                if stopped.load(Ordering::Relaxed) {
                    break;
                }
                for (protocol, proxy) in &proxies {
                    let fetched = fetch_via_socks_within(*proxy, origin, "/4096", 4096, Duration::from_secs(2)).await;
                    probes += 1;
                    if let Err(e) = fetched {
                        failures.push(format!("{:.1?} {protocol}: {e}", started.elapsed()));
                    }
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            (probes, failures)
        });
        Self { stop, task }
    }

    /// Stops after the round in flight; what was probed.
    pub async fn stop(self) -> Probed {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.expect("the prober")
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
    ///
    /// Its port comes from below the kernel's ephemeral range, away from the
    /// engines' ports ([`crate::net::free_port`]) and from outgoing connections, and it
    /// counts as started only when it listens and is still running: a client
    /// that lost its port to another process exits at once, and a connect
    /// check alone would take that process's listener for its own. Its log
    /// (`client.log` in its temp dir) is shown when it does not start.
    pub async fn start(outbound: serde_json::Value) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut last_log = String::new();
        for _ in 0..3 {
            let proxy = free_addr(Ipv4Addr::LOCALHOST);
            let config = serde_json::json!({
                "log": {"level": "warn"},
                "inbounds": [{"type": "mixed", "listen": proxy.ip().to_string(), "listen_port": proxy.port()}],
                "outbounds": [outbound.clone()],
            });
            let path = dir.path().join("client.json");
            std::fs::write(&path, serde_json::to_vec_pretty(&config).expect("json")).expect("write client config");
            let log_path = dir.path().join("client.log");
            let log = std::fs::File::create(&log_path).expect("create client.log");
            let mut child = Command::new(sing_box_binary())
                .args(["run", "-c"])
                .arg(&path)
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("client.log"))
                .stderr(log)
                .spawn()
                .expect("start sing-box client");
            crate::eventually("the sing-box client listens", Duration::from_secs(10), || async move {
                TcpStream::connect(proxy).await.map(|_| ()).map_err(|e| e.to_string())
            })
            .await;
            // A client that failed to bind exits within moments of starting.
            tokio::time::sleep(Duration::from_millis(200)).await;
            match child.try_wait() {
                Ok(None) => return Self { proxy, child, _dir: dir },
                exited => {
                    last_log = std::fs::read_to_string(&log_path).unwrap_or_default();
                    eprintln!("sing-box client on {proxy} exited ({exited:?}); trying another port: {last_log}");
                }
            }
        }
        panic!("the sing-box client exited three times; its last log:\n{last_log}");
    }
}

impl Drop for SingBoxClient {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Where a data-plane node keeps the self-signed certificate of its
/// vless-tls inbound (made on first start, see `node/src/agent/secrets.rs`).
pub fn dataplane_cert(data_dir: &Path) -> PathBuf {
    data_dir.join("dataplane/tls/cert.pem")
}

/// A sing-box client outbound for one link of `vpnctl user links -o json`.
///
/// - `ss://method:password@host:port` (SIP002, plain userinfo): method and
///   password (`<server key>:<user key>` for Shadowsocks-2022) as given.
/// - `vless://uuid@host:port?...`: uuid, `flow`, and `security=tls` (server
///   name from `sni`) or `security=reality` (`pbk`, `sid`, uTLS `fp`).
///   sing-box cannot pin a certificate's hash (its pin is of the public key),
///   so a self-signed certificate is trusted through `tls_cert` (the node's
///   [`dataplane_cert`]); without it the link's `allowInsecure=1` is obeyed.
///
/// Panics with the link when it is not one of these forms (a test fixture).
pub fn outbound_from_link(url: &str, tls_cert: Option<&Path>) -> serde_json::Value {
    use serde_json::json;
    let link = url::Url::parse(url).unwrap_or_else(|e| panic!("not a link ({e}): {url}"));
    let server = match link.host() {
        Some(url::Host::Domain(d)) => d.to_owned(),
        Some(url::Host::Ipv4(ip)) => ip.to_string(),
        Some(url::Host::Ipv6(ip)) => ip.to_string(),
        None => panic!("no host in {url}"),
    };
    let port = link.port().unwrap_or_else(|| panic!("no port in {url}"));
    let query: std::collections::HashMap<String, String> = link.query_pairs().into_owned().collect();
    let param = |key: &str| query.get(key).cloned();
    let tag = link.fragment().map(decode).unwrap_or_else(|| "proxy".to_owned());
    match link.scheme() {
        "ss" => {
            let password = link.password().unwrap_or_else(|| {
                panic!("only the plain SIP002 form (ss://method:password@host:port) is supported: {url}")
            });
            json!({
                "type": "shadowsocks", "tag": tag, "server": server, "server_port": port,
                "method": decode(link.username()), "password": decode(password),
            })
        }
        "vless" => {
            let mut out = json!({
                "type": "vless", "tag": tag, "server": server, "server_port": port,
                "uuid": decode(link.username()),
            });
            if let Some(flow) = param("flow").filter(|f| !f.is_empty()) {
                out["flow"] = json!(flow);
            }
            match param("type").as_deref() {
                None | Some("tcp") => {}
                Some(other) => panic!("transport {other:?} is not supported: {url}"),
            }
            let sni = param("sni").unwrap_or_else(|| server.clone());
            match param("security").as_deref() {
                None | Some("none") => {}
                Some("tls") => {
                    let mut tls = json!({"enabled": true, "server_name": sni});
                    match tls_cert {
                        Some(cert) => tls["certificate_path"] = json!(cert),
                        None if param("allowInsecure").as_deref() == Some("1") => tls["insecure"] = json!(true),
                        None => {}
                    }
                    out["tls"] = tls;
                }
                Some("reality") => {
                    let need = |key: &str| param(key).unwrap_or_else(|| panic!("reality link without {key}: {url}"));
                    out["tls"] = json!({
                        "enabled": true, "server_name": sni,
                        "utls": {"enabled": true, "fingerprint": param("fp").unwrap_or_else(|| "chrome".to_owned())},
                        "reality": {"enabled": true, "public_key": need("pbk"), "short_id": param("sid").unwrap_or_default()},
                    });
                }
                Some(other) => panic!("security {other:?} is not supported: {url}"),
            }
            out
        }
        other => panic!("scheme {other:?} is not supported: {url}"),
    }
}

fn decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s).decode_utf8_lossy().into_owned()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_shadowsocks_2022_link_gives_method_and_both_keys() {
        let link = "ss://2022-blake3-aes-128-gcm:c2VydmVyLWtleS0xNmJ5dA%3D%3D%3Aab%2B%2Fcd%2B%2Fef%2B%2Fgh%2B%2Fij%2B%2Fkw%3D%3D\
                    @127.0.0.1:8388#alice-node3-shadowsocks-2022";
        assert_eq!(
            outbound_from_link(link, None),
            json!({
                "type": "shadowsocks", "tag": "alice-node3-shadowsocks-2022",
                "server": "127.0.0.1", "server_port": 8388,
                "method": "2022-blake3-aes-128-gcm",
                "password": "c2VydmVyLWtleS0xNmJ5dA==:ab+/cd+/ef+/gh+/ij+/kw==",
            })
        );
    }

    const VLESS_TLS: &str = "vless://0b6f0e6e-4c1e-4b8a-9d3e-2f1a7c5d9e10@203.0.113.7:443?encryption=none\
                             &flow=xtls-rprx-vision&security=tls&sni=vpn.example.com&type=tcp&allowInsecure=1\
                             &pcs=abab#alice-node3-vless-tls";

    #[test]
    fn a_vless_tls_link_trusts_the_nodes_certificate_file() {
        let cert = Path::new("/data/node-3/dataplane/tls/cert.pem");
        assert_eq!(
            outbound_from_link(VLESS_TLS, Some(cert)),
            json!({
                "type": "vless", "tag": "alice-node3-vless-tls",
                "server": "203.0.113.7", "server_port": 443,
                "uuid": "0b6f0e6e-4c1e-4b8a-9d3e-2f1a7c5d9e10", "flow": "xtls-rprx-vision",
                "tls": {"enabled": true, "server_name": "vpn.example.com", "certificate_path": cert},
            })
        );
        assert_eq!(dataplane_cert(Path::new("/data/node-3")), cert);
    }

    #[test]
    fn without_the_certificate_file_the_links_allow_insecure_is_obeyed() {
        let tls = &outbound_from_link(VLESS_TLS, None)["tls"];
        assert_eq!(tls, &json!({"enabled": true, "server_name": "vpn.example.com", "insecure": true}));
        let ca_signed = VLESS_TLS.replace("&allowInsecure=1", "");
        let tls = &outbound_from_link(&ca_signed, None)["tls"];
        assert_eq!(
            tls,
            &json!({"enabled": true, "server_name": "vpn.example.com"}),
            "checked against the system roots"
        );
    }

    #[test]
    fn a_vless_reality_link_on_ipv6_gives_key_short_id_and_fingerprint() {
        let link = "vless://0b6f0e6e-4c1e-4b8a-9d3e-2f1a7c5d9e10@[2001:db8::1]:8443?encryption=none\
                    &flow=xtls-rprx-vision&security=reality&sni=www.example.org&fp=chrome\
                    &pbk=jNXHt1yRo0vDuchQlIP6Z0ZvjT3KtzVI-T4E7RoLJS0&sid=0123abcd&type=tcp#a";
        let out = outbound_from_link(link, None);
        assert_eq!((&out["server"], &out["server_port"]), (&json!("2001:db8::1"), &json!(8443)));
        assert_eq!(
            out["tls"],
            json!({
                "enabled": true, "server_name": "www.example.org",
                "utls": {"enabled": true, "fingerprint": "chrome"},
                "reality": {"enabled": true, "public_key": "jNXHt1yRo0vDuchQlIP6Z0ZvjT3KtzVI-T4E7RoLJS0", "short_id": "0123abcd"},
            })
        );
    }

    #[test]
    #[should_panic(expected = "not supported")]
    fn an_unknown_scheme_is_refused_loudly() {
        outbound_from_link("trojan://secret@127.0.0.1:443#t", None);
    }
}
