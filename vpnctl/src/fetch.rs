//! A small HTTPS client for `vpnctl login --oidc`'s talk with the OIDC provider: a GET or a
//! form POST answered with JSON, one HTTP/1.1 connection per request. vpnctl needs no more of
//! HTTP than that, so no client library: hyper's connection over tokio-rustls, the crates
//! tonic's TLS runs on. Every request is bounded in time (`--timeout`) and its answer in size;
//! the provider's certificate is checked against the system's roots; plain `http://` only with
//! `--oidc-insecure`. Redirects are not followed.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use url::{Position, Url};

use crate::error::CliError;

/// Largest answer read: discovery documents and token answers are a few KiB.
pub const MAX_BODY: usize = 1 << 20;
/// Longest text of the provider's put in a message.
const MAX_SHOWN: usize = 300;

/// An answer: its status, and its body as JSON (`Null` when an error's body is not JSON).
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub status: u16,
    pub json: Value,
}

/// Requests to one provider, under one policy.
pub struct Fetch {
    timeout: Duration,
    allow_http: bool,
    /// Made on the first https request: reading the system's roots takes a while.
    tls: OnceLock<Arc<rustls::ClientConfig>>,
}

impl Fetch {
    /// Each request within `timeout`; `allow_http` lets plain `http://` URLs through.
    pub fn new(timeout: Duration, allow_http: bool) -> Self {
        Self { timeout, allow_http, tls: OnceLock::new() }
    }

    pub async fn get(&self, url: &str) -> Result<Answer, CliError> {
        self.send(url, None).await
    }

    /// POSTs `form` as `application/x-www-form-urlencoded`.
    pub async fn post_form(&self, url: &str, form: &[(&str, &str)]) -> Result<Answer, CliError> {
        let body = url::form_urlencoded::Serializer::new(String::new()).extend_pairs(form).finish();
        self.send(url, Some(body)).await
    }

    async fn send(&self, url: &str, form: Option<String>) -> Result<Answer, CliError> {
        let shown = clean(url);
        let parsed = Url::parse(url).map_err(|e| CliError::Provider(format!("{shown} is not a URL: {e}")))?;
        match parsed.scheme() {
            "https" => {}
            "http" if self.allow_http => {}
            "http" => {
                return Err(CliError::InvalidInput(format!(
                    "the OIDC provider's {shown} is plain http: the codes and the ID token could be read \
                     on the way; give --oidc-insecure only for a provider on a network you trust"
                )))
            }
            other => return Err(CliError::Provider(format!("{shown}: scheme {other:?}, expected https"))),
        }
        let exchange = self.exchange(&parsed, form);
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| CliError::ProviderUnavailable(format!("{shown}: no answer within {:?}", self.timeout)))?
            .map_err(|e| match e {
                Failed::Unreachable(why) => CliError::ProviderUnavailable(format!("{shown}: {why}")),
                Failed::Answer(why) => CliError::Provider(format!("{shown}: {why}")),
            })
    }

    async fn exchange(&self, url: &Url, form: Option<String>) -> Result<Answer, Failed> {
        let host = url.host_str().ok_or_else(|| Failed::Answer("no host".into()))?;
        let host = host.trim_start_matches('[').trim_end_matches(']').to_owned();
        let port = url.port_or_known_default().ok_or_else(|| Failed::Answer("no port".into()))?;
        let tcp = TcpStream::connect((host.as_str(), port)).await.map_err(|e| Failed::Unreachable(e.to_string()))?;
        if url.scheme() == "http" {
            return request(tcp, url, form).await;
        }
        let name = rustls::pki_types::ServerName::try_from(host).map_err(|e| Failed::Answer(e.to_string()))?;
        let config = match self.tls.get() {
            Some(config) => config.clone(),
            None => {
                let config = tls_config().map_err(|e| Failed::Unreachable(format!("TLS: {e}")))?;
                self.tls.get_or_init(|| config).clone()
            }
        };
        let tls = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(|e| Failed::Unreachable(format!("TLS: {e}")))?;
        request(tls, url, form).await
    }
}

/// Why a request failed: the provider was not reached (exit 4), or its answer is unusable.
enum Failed {
    Unreachable(String),
    Answer(String),
}

/// TLS 1.2 and 1.3 with ring, trusting the system's roots.
fn tls_config() -> Result<Arc<rustls::ClientConfig>, rustls::Error> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

async fn request<S>(stream: S, url: &Url, form: Option<String>) -> Result<Answer, Failed>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| Failed::Unreachable(e.to_string()))?;
    let _connection = Abort(tokio::spawn(connection).abort_handle());
    let method = if form.is_some() { http::Method::POST } else { http::Method::GET };
    let mut builder = http::Request::builder()
        .method(method)
        .uri(&url[Position::BeforePath..Position::AfterQuery])
        .header(http::header::HOST, &url[Position::BeforeHost..Position::AfterPort])
        .header(http::header::ACCEPT, "application/json")
        .header(http::header::USER_AGENT, concat!("vpnctl/", env!("CARGO_PKG_VERSION")));
    if form.is_some() {
        builder = builder.header(http::header::CONTENT_TYPE, "application/x-www-form-urlencoded");
    }
    let req =
        builder.body(Full::new(Bytes::from(form.unwrap_or_default()))).map_err(|e| Failed::Answer(e.to_string()))?;
    let response = sender.send_request(req).await.map_err(|e| Failed::Unreachable(e.to_string()))?;
    let status = response.status();
    let body = Limited::new(response.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| match e.downcast_ref::<http_body_util::LengthLimitError>() {
            Some(_) => Failed::Answer(format!("the answer is over {MAX_BODY} bytes")),
            None => Failed::Unreachable(format!("the answer broke off: {e}")),
        })?
        .to_bytes();
    let json = match serde_json::from_slice(&body) {
        Ok(json) => json,
        Err(_) if !status.is_success() => Value::Null,
        Err(e) => return Err(Failed::Answer(format!("HTTP {status}, but the answer is not JSON: {e}"))),
    };
    Ok(Answer { status: status.as_u16(), json })
}

/// Ends a connection's task with its request, also when a timeout drops the request midway.
struct Abort(tokio::task::AbortHandle);

impl Drop for Abort {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A provider's text fit for a terminal: no control characters (no escape sequences), short.
pub fn clean(text: &str) -> String {
    let mut shown: String = text.chars().filter(|c| !c.is_control()).take(MAX_SHOWN).collect();
    if text.chars().filter(|c| !c.is_control()).nth(MAX_SHOWN).is_some() {
        shown.push_str("...");
    }
    shown
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use super::*;

    /// Serves one connection with `answer` (head and body) and returns the request it read.
    fn serve_once(answer: Vec<u8>) -> (String, std::thread::JoinHandle<String>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let served = std::thread::spawn(move || {
            let Ok((mut stream, _)) = listener.accept() else { return String::new() };
            let seen = read_request(&mut stream);
            let _ = stream.write_all(&answer);
            seen
        });
        (addr, served)
    }

    /// A request's head and its content-length body.
    fn read_request(stream: &mut impl Read) -> String {
        let mut seen = Vec::new();
        let mut chunk = [0u8; 1024];
        loop {
            let text = String::from_utf8_lossy(&seen).into_owned();
            if let Some(end) = text.find("\r\n\r\n") {
                let length = text[..end]
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length: "))
                    .and_then(|n| n.trim().parse::<usize>().ok())
                    .unwrap_or(0);
                if seen.len() >= end + 4 + length {
                    return text;
                }
            }
            match stream.read(&mut chunk) {
                Ok(0) | Err(_) => return text,
                Ok(n) => seen.extend_from_slice(&chunk[..n]),
            }
        }
    }

    fn http_answer(status: &str, body: &[u8]) -> Vec<u8> {
        let head = format!("HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n", body.len());
        [head.as_bytes(), body].concat()
    }

    #[tokio::test]
    async fn a_form_post_is_encoded_and_its_json_answer_read() {
        let (addr, served) = serve_once(http_answer("200 OK", br#"{"a": 1}"#));
        let fetch = Fetch::new(Duration::from_secs(5), true);
        let answer = fetch.post_form(&format!("http://{addr}/token?x=1"), &[("scope", "openid email")]).await;
        assert_eq!(answer.map_err(|e| e.to_string()), Ok(Answer { status: 200, json: serde_json::json!({"a": 1}) }));
        let seen = served.join().expect("served");
        assert!(seen.starts_with("POST /token?x=1 HTTP/1.1\r\n"), "{seen}");
        assert!(seen.contains(&format!("host: {addr}\r\n")), "{seen}");
        assert!(seen.contains("content-type: application/x-www-form-urlencoded\r\n"), "{seen}");
        assert!(seen.ends_with("\r\n\r\nscope=openid+email"), "{seen}");
    }

    #[tokio::test]
    async fn an_error_keeps_its_status_and_junk_is_refused() {
        let (addr, _served) = serve_once(http_answer("400 Bad Request", b"<html>no</html>"));
        let answer = Fetch::new(Duration::from_secs(5), true).get(&format!("http://{addr}/")).await;
        assert_eq!(answer.map_err(|e| e.to_string()), Ok(Answer { status: 400, json: Value::Null }));
        let (addr, _served) = serve_once(http_answer("200 OK", b"<html>no</html>"));
        let err = Fetch::new(Duration::from_secs(5), true).get(&format!("http://{addr}/")).await.err();
        assert!(err.is_some_and(|e| e.exit_code() == 1 && e.to_string().contains("not JSON")));
    }

    #[tokio::test]
    async fn answers_are_bounded_in_size_and_time() {
        let (addr, _served) = serve_once(http_answer("200 OK", &vec![b' '; MAX_BODY + 1]));
        let err = Fetch::new(Duration::from_secs(5), true).get(&format!("http://{addr}/")).await.err();
        assert!(err.is_some_and(|e| e.to_string().contains("the answer is over 1048576 bytes")));
        // Accepts, reads, never answers.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let err = Fetch::new(Duration::from_millis(300), true).get(&format!("http://{addr}/")).await.err();
        assert!(err.is_some_and(|e| e.exit_code() == 4 && e.to_string().contains("no answer within 300ms")));
        drop(listener);
    }

    #[tokio::test]
    async fn plain_http_needs_the_flag_and_other_schemes_are_refused() {
        let err = Fetch::new(Duration::from_secs(1), false).get("http://127.0.0.1:1/x").await.err();
        assert!(err.is_some_and(|e| e.exit_code() == 2 && e.to_string().contains("--oidc-insecure")));
        let err = Fetch::new(Duration::from_secs(1), true).get("ftp://idp.example/x").await.err();
        assert!(err.is_some_and(|e| e.to_string().contains("scheme \"ftp\"")));
    }

    #[test]
    fn provider_text_loses_control_characters_and_length() {
        assert_eq!(clean("bad\u{1b}[31m code\n"), "bad[31m code");
        let long = "x".repeat(MAX_SHOWN + 1);
        assert_eq!(clean(&long).len(), MAX_SHOWN + 3);
        assert_eq!(clean(&long[..MAX_SHOWN]), long[..MAX_SHOWN]);
    }
}
