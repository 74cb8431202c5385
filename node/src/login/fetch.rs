//! A small HTTPS (or, with `--oidc-insecure`, HTTP) GET of a JSON document:
//! the OIDC discovery document and key sets. Bounded in time and size; the
//! server's certificate is checked against the system's roots.

use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

const TIMEOUT: Duration = Duration::from_secs(10);
/// Largest document read (key sets are a few KiB).
const MAX_BODY: usize = 1 << 20;

/// Fetches and parses `url`; `allow_http` lets a plain `http://` URL through.
pub async fn json(
    url: &str,
    allow_http: bool,
    roots: &Arc<rustls::RootCertStore>,
) -> Result<serde_json::Value, String> {
    tokio::time::timeout(TIMEOUT, get(url, allow_http, roots))
        .await
        .map_err(|_| format!("{url}: no answer within {TIMEOUT:?}"))?
}

async fn get(url: &str, allow_http: bool, roots: &Arc<rustls::RootCertStore>) -> Result<serde_json::Value, String> {
    let parsed = url::Url::parse(url).map_err(|e| format!("{url}: {e}"))?;
    let host = parsed.host_str().ok_or_else(|| format!("{url}: no host"))?.to_owned();
    let port = parsed.port_or_known_default().ok_or_else(|| format!("{url}: no port"))?;
    let tcp = TcpStream::connect((host.trim_matches(['[', ']']), port)).await.map_err(|e| format!("{url}: {e}"))?;
    match parsed.scheme() {
        "https" => {
            let config =
                rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                    .with_safe_default_protocol_versions()
                    .map_err(|e| e.to_string())?
                    .with_root_certificates(roots.clone())
                    .with_no_client_auth();
            let name = rustls::pki_types::ServerName::try_from(host.trim_matches(['[', ']']).to_owned())
                .map_err(|e| format!("{url}: {e}"))?;
            let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
                .connect(name, tcp)
                .await
                .map_err(|e| format!("{url}: TLS: {e}"))?;
            request(tls, &parsed).await
        }
        "http" if allow_http => request(tcp, &parsed).await,
        "http" => {
            Err(format!("{url}: plain http: the keys could be swapped on the way; use https (or --oidc-insecure)"))
        }
        other => Err(format!("{url}: scheme {other:?}: use https")),
    }
}

async fn request<S>(stream: S, url: &url::Url) -> Result<serde_json::Value, String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| format!("{url}: {e}"))?;
    tokio::spawn(conn);
    let authority = match url.port() {
        Some(port) => format!("{}:{port}", url.host_str().unwrap_or_default()),
        None => url.host_str().unwrap_or_default().to_owned(),
    };
    let path = match url.query() {
        Some(q) => format!("{}?{q}", url.path()),
        None => url.path().to_owned(),
    };
    let req = http::Request::get(path)
        .header(http::header::HOST, authority)
        .header(http::header::ACCEPT, "application/json")
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let response = sender.send_request(req).await.map_err(|e| format!("{url}: {e}"))?;
    if !response.status().is_success() {
        return Err(format!("{url}: HTTP {}", response.status()));
    }
    let body = Limited::new(response.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| format!("{url}: the answer: {e}"))?
        .to_bytes();
    serde_json::from_slice(&body).map_err(|e| format!("{url}: not JSON: {e}"))
}
