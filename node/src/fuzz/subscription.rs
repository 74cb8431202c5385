//! `fuzz_subscription_path`: requests for `/sub/{token}` sent to the HTTP
//! listener of a real node running in-process (`--dev --insecure`, ports
//! 0), which holds three users. The route's path and query, percent
//! escapes, tokens that are real, escaped, mutated or made up, and any
//! User-Agent: the node answers 200, 400 or 404, never anything else; a
//! subscription (200) only for a path whose token is a user's own; and
//! always a subscription for a user's token asked for plainly.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use vpn_fuzzkit::{mutate, mutations, Mutation};
use vpn_proto::v1::users_client::UsersClient;
use vpn_proto::v1::{CreateUserRequest, UpdateUserRequest, UserStatus};

use super::text;
use crate::config::{Args, Config};

/// A node running on its own thread and runtime, until dropped.
struct Running {
    http: SocketAddr,
    tokens: Vec<String>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    stopped: mpsc::Receiver<()>,
    _dir: tempfile::TempDir,
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
            let _ = self.stopped.recv_timeout(Duration::from_secs(30));
        }
    }
}

fn start() -> Running {
    let dir = tempfile::tempdir().expect("a temp dir");
    let args = Args {
        dev: true,
        insecure: true,
        listen: Some("127.0.0.1:0".into()),
        http: Some("127.0.0.1:0".into()),
        data_dir: Some(dir.path().join("data")),
        ..Args::default()
    };
    let config = Config::from_args(args).expect("a dev configuration");
    let (bound, addrs) = mpsc::channel();
    let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (stopped_tx, stopped) = mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("rt");
        runtime.block_on(async move {
            let listeners = crate::Listeners::bind(&config).await.expect("listeners");
            let grpc = listeners.grpc.as_ref().and_then(|l| l.local_addr().ok()).expect("a gRPC listener");
            let http = listeners.http.local_addr().expect("an HTTP listener");
            let _ = bound.send((grpc, http));
            let _ = crate::run(config, listeners, async move {
                let _ = stop_rx.await;
            })
            .await;
        });
        let _ = stopped_tx.send(());
    });
    let (grpc, http) = addrs.recv_timeout(Duration::from_secs(30)).expect("the node's addresses");
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("rt");
    let tokens = runtime.block_on(users(grpc));
    Running { http, tokens, stop: Some(stop), stopped, _dir: dir }
}

/// Creates three users (one with limits, one disabled) once the node leads;
/// returns their subscription tokens.
async fn users(grpc: SocketAddr) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut client = loop {
        match UsersClient::connect(format!("http://{grpc}")).await {
            Ok(client) => break client,
            Err(e) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                let _ = e;
            }
            Err(e) => panic!("the node's gRPC port: {e}"),
        }
    };
    let asks = [
        CreateUserRequest { name: "alice".into(), ..Default::default() },
        CreateUserRequest {
            name: "bob".into(),
            data_limit_bytes: 1 << 30,
            reset: "monthly".into(),
            expires_at: "2999-01-01T00:00:00Z".into(),
            ..Default::default()
        },
        CreateUserRequest { name: "carol".into(), ..Default::default() },
    ];
    let mut tokens = Vec::new();
    for ask in asks {
        let user = loop {
            match client.create_user(ask.clone()).await {
                Ok(user) => break user.into_inner(),
                // No leader yet: the node is still electing itself.
                Err(s) if s.code() == tonic::Code::Unavailable && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(s) => panic!("creating {}: {s:?}", ask.name),
            }
        };
        tokens.push(user.subscription_token);
    }
    let disable =
        UpdateUserRequest { name: "carol".into(), status: Some(UserStatus::Disabled as i32), ..Default::default() };
    client.update_user(disable).await.expect("carol disabled");
    tokens
}

/// One keep-alive HTTP/1.1 connection, opened again when the server closes it.
struct Http {
    addr: SocketAddr,
    conn: std::cell::RefCell<Option<BufReader<TcpStream>>>,
}

struct Answer {
    status: u16,
    content_type: String,
    body: Vec<u8>,
}

impl Http {
    fn get(&self, target: &[u8], agent: Option<&[u8]>) -> io::Result<Answer> {
        let mut request = b"GET ".to_vec();
        request.extend_from_slice(target);
        request.extend_from_slice(b" HTTP/1.1\r\nHost: fuzz\r\n");
        if let Some(agent) = agent {
            request.extend_from_slice(b"User-Agent: ");
            request.extend_from_slice(agent);
            request.extend_from_slice(b"\r\n");
        }
        request.extend_from_slice(b"\r\n");
        // A kept connection the server has closed meanwhile fails once.
        match self.exchange(&request) {
            Ok(answer) => Ok(answer),
            Err(_) => {
                self.conn.replace(None);
                self.exchange(&request)
            }
        }
    }

    fn exchange(&self, request: &[u8]) -> io::Result<Answer> {
        let mut slot = self.conn.borrow_mut();
        if slot.is_none() {
            let stream = TcpStream::connect(self.addr)?;
            stream.set_read_timeout(Some(Duration::from_secs(20)))?;
            stream.set_nodelay(true)?;
            *slot = Some(BufReader::new(stream));
        }
        let conn = slot.as_mut().ok_or_else(|| io::Error::other("no connection"))?;
        conn.get_mut().write_all(request)?;
        let mut line = String::new();
        conn.read_line(&mut line)?;
        let status =
            line.split(' ').nth(1).and_then(|c| c.parse().ok()).ok_or_else(|| io::Error::other(line.clone()))?;
        let (mut length, mut close, mut content_type) = (None, false, String::new());
        loop {
            line.clear();
            conn.read_line(&mut line)?;
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            let (name, value) = header.split_once(':').unwrap_or((header, ""));
            let (name, value) = (name.to_ascii_lowercase(), value.trim());
            match name.as_str() {
                "content-length" => length = value.parse::<usize>().ok(),
                "connection" => close = value.eq_ignore_ascii_case("close"),
                "content-type" => content_type = value.to_owned(),
                "transfer-encoding" => return Err(io::Error::other("a chunked answer: not expected here")),
                _ => {}
            }
        }
        let mut body = vec![0; length.unwrap_or(0)];
        conn.read_exact(&mut body)?;
        if close || length.is_none() {
            *slot = None;
        }
        Ok(Answer { status, content_type, body })
    }
}

#[derive(Clone, Debug)]
enum Token {
    /// User `n`'s token as it is.
    Real(usize),
    /// User `n`'s token with every byte percent-escaped.
    Escaped(usize),
    Mutated(usize, Vec<Mutation>),
    Made(String),
}

#[derive(Clone, Debug)]
struct Ask {
    prefix: &'static str,
    token: Token,
    /// `k=v` pairs; `plain` when every key and value came from the known lists.
    query: Option<Vec<(String, String)>>,
    plain: bool,
    agent: Option<String>,
    /// Changes to the whole request target.
    target: Vec<Mutation>,
}

const FORMATS: &[&str] =
    &["base64", "v2ray", "links", "sing-box", "singbox", "json", "clash", "mihomo", "yaml", " Clash"];
const AGENTS: &[&str] = &[
    "v2rayN/6.42",
    "ClashMetaForAndroid/2.11",
    "FlClash/0.8",
    "SFA/1.10",
    "Hiddify/2.5 like ClashMeta",
    "NekoBox/1.0 Prefer ClashMeta Format",
    "curl/8",
    "",
];

fn ask() -> impl Strategy<Value = Ask> {
    let prefix = prop_oneof![
        12 => Just("/sub/"),
        1 => prop::sample::select(vec!["/sub", "//sub/", "/SUB/", "/sub//", "/sub/../sub/", "/sub/%2F", "sub/", "/sub/x/"]),
    ];
    let user = 0usize..3;
    let token = prop_oneof![
        4 => user.clone().prop_map(Token::Real),
        1 => user.clone().prop_map(Token::Escaped),
        2 => (user, mutations()).prop_map(|(n, m)| Token::Mutated(n, m)),
        1 => prop_oneof!["[A-Za-z0-9_-]{32}", text()].prop_map(Token::Made),
    ];
    let known = prop_oneof![
        2 => prop::sample::select(FORMATS).prop_map(|f| ("format".to_owned(), f.to_owned())),
        1 => Just(("verbose".to_owned(), String::new())),
    ];
    let made = prop_oneof![
        (prop::sample::select(vec!["format", "Format", "format[]", "a"]), text()).prop_map(|(k, v)| (k.to_owned(), v)),
        (text(), text()),
    ];
    let query = prop_oneof![
        2 => Just((None, true)),
        2 => vec(known.clone(), 0..2).prop_map(|q| (Some(q), true)),
        1 => vec(prop_oneof![known, made], 1..4).prop_map(|q| (Some(q), false)),
    ];
    let agent = option::of(prop_oneof![3 => prop::sample::select(AGENTS).prop_map(String::from), 1 => text()]);
    let target = prop_oneof![4 => Just(Vec::new()), 1 => mutations()];
    (prefix, token, query, agent, target).prop_map(|(prefix, token, (query, plain), agent, target)| Ask {
        prefix,
        token,
        query,
        plain,
        agent,
        target,
    })
}

/// Escapes what cannot stand in a request line (whitespace, controls,
/// non-ASCII); everything else, `%` included, goes as it is.
fn escape_line(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    for &b in bytes {
        if (0x21..0x7f).contains(&b) {
            out.push(b);
        } else {
            out.extend_from_slice(format!("%{b:02X}").as_bytes());
        }
    }
    out
}

impl Ask {
    /// The request target, and whether it plainly asks for user `n`'s subscription.
    fn target(&self, tokens: &[String]) -> (Vec<u8>, Option<usize>) {
        let (token, plain_user) = match &self.token {
            Token::Real(n) => (tokens[*n].clone().into_bytes(), Some(*n)),
            Token::Escaped(n) => {
                (tokens[*n].bytes().flat_map(|b| format!("%{b:02X}").into_bytes()).collect(), Some(*n))
            }
            Token::Mutated(n, m) => (mutate(tokens[*n].as_bytes(), m), None),
            Token::Made(t) => (t.clone().into_bytes(), None),
        };
        let mut target = self.prefix.as_bytes().to_vec();
        target.extend_from_slice(&token);
        if let Some(query) = &self.query {
            target.push(b'?');
            let pairs: Vec<String> = query.iter().map(|(k, v)| format!("{k}={v}")).collect();
            target.extend_from_slice(pairs.join("&").as_bytes());
        }
        let formats = self.query.iter().flatten().filter(|(k, _)| k == "format").count();
        let plain = self.prefix == "/sub/" && self.plain && formats <= 1 && self.target.is_empty();
        (escape_line(&mutate(&target, &self.target)), plain_user.filter(|_| plain))
    }

    fn agent(&self) -> Option<Vec<u8>> {
        let agent = self.agent.as_ref()?;
        // Header values: no control characters (they would end the header).
        Some(agent.bytes().map(|b| if b < 0x20 || b == 0x7f { b'?' } else { b }).collect())
    }
}

/// The token a target's path names, as the route reads it (one segment
/// after `/sub/`, percent-decoded, up to the query or a fragment); `None`
/// when the path is not that route.
fn token_of(target: &[u8]) -> Option<String> {
    let path = target.split(|b| *b == b'?' || *b == b'#').next()?;
    let segment = path.strip_prefix(b"/sub/")?;
    if segment.contains(&b'/') {
        return None;
    }
    percent_encoding::percent_decode(segment).decode_utf8().ok().map(|t| t.into_owned())
}

/// What a 200 carries must be a document of the type it says.
fn document(answer: &Answer) -> Result<(), TestCaseError> {
    let kind = answer.content_type.as_str();
    if kind.starts_with("application/json") {
        serde_json::from_slice::<serde_json::Value>(&answer.body).map_err(|e| TestCaseError::fail(format!("{e}")))?;
    } else if kind.starts_with("text/plain") {
        let text = String::from_utf8_lossy(&answer.body);
        base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .map_err(|e| TestCaseError::fail(format!("not base64: {e}")))?;
    } else {
        prop_assert!(kind.contains("yaml"), "a subscription of type {kind:?}");
    }
    Ok(())
}

#[test]
fn fuzz_subscription_path() {
    let node = start();
    let http = Http { addr: node.http, conn: std::cell::RefCell::new(None) };
    vpn_fuzzkit::run("subscription_path", file!(), ask(), |ask| {
        let (target, plain_user) = ask.target(&node.tokens);
        let answer = http
            .get(&target, ask.agent().as_deref())
            .map_err(|e| TestCaseError::fail(format!("no answer to {:?}: {e}", String::from_utf8_lossy(&target))))?;
        let shown = String::from_utf8_lossy(&target);
        prop_assert!(matches!(answer.status, 200 | 400 | 404), "{} for {shown}", answer.status);
        if answer.status == 200 {
            let token = token_of(&target);
            prop_assert!(token.is_some_and(|t| node.tokens.contains(&t)), "a subscription for {shown}");
            document(&answer)?;
        }
        if plain_user.is_some() {
            prop_assert_eq!(answer.status, 200, "user's own token asked plainly: {}", shown);
        }
        Ok(())
    });
}
