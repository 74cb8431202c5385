//! A minimal HTTP/1.1 JSON client for sing-box's loopback APIs (clash API,
//! ssm-api): one connection per request, bounded by a timeout. No TLS: the
//! APIs listen on 127.0.0.1 only.

use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpStream;

use crate::RuntimeError;

/// Every API call, connect to last byte.
const TIMEOUT: Duration = Duration::from_secs(5);

/// One loopback API of one engine container.
#[derive(Clone, Debug)]
pub struct ApiClient {
    api: &'static str,
    port: u16,
    bearer: Option<String>,
}

impl ApiClient {
    pub fn new(api: &'static str, port: u16, bearer: Option<String>) -> Self {
        ApiClient { api, port, bearer }
    }

    /// Sends a request and returns status and body; transport failures are errors, HTTP statuses are not.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<(StatusCode, Bytes), RuntimeError> {
        match tokio::time::timeout(TIMEOUT, self.send_inner(method, path, body)).await {
            Ok(result) => result,
            Err(_) => Err(self.error(format!("no answer within {TIMEOUT:?}"))),
        }
    }

    /// Like [`send`](Self::send), but a status outside `expected` is an error naming the request.
    pub async fn expect(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        expected: &[StatusCode],
    ) -> Result<(StatusCode, Bytes), RuntimeError> {
        let (status, bytes) = self.send(method.clone(), path, body).await?;
        if expected.contains(&status) {
            return Ok((status, bytes));
        }
        let text = String::from_utf8_lossy(&bytes);
        Err(self.error(format!("{method} {path}: HTTP {status}: {}", text.trim())))
    }

    /// GETs a JSON document.
    pub async fn get_json(&self, path: &str) -> Result<Value, RuntimeError> {
        let (_, bytes) = self.expect(Method::GET, path, None, &[StatusCode::OK]).await?;
        serde_json::from_slice(&bytes).map_err(|e| self.error(format!("GET {path}: bad JSON: {e}")))
    }

    pub fn error(&self, reason: String) -> RuntimeError {
        RuntimeError::EngineApi { api: self.api, addr: format!("127.0.0.1:{}", self.port), reason }
    }

    async fn send_inner(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<(StatusCode, Bytes), RuntimeError> {
        let stream =
            TcpStream::connect(("127.0.0.1", self.port)).await.map_err(|e| self.error(format!("connect: {e}")))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| self.error(format!("handshake: {e}")))?;
        // The connection task ends with the request; its error, if any, shows in the response.
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut request =
            Request::builder().method(method).uri(path).header("host", format!("127.0.0.1:{}", self.port));
        if let Some(token) = &self.bearer {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let payload = match body {
            Some(value) => {
                request = request.header("content-type", "application/json");
                Bytes::from(value.to_string())
            }
            None => Bytes::new(),
        };
        let request = request.body(Full::new(payload)).map_err(|e| self.error(format!("request: {e}")))?;
        let response = sender.send_request(request).await.map_err(|e| self.error(format!("{path}: {e}")))?;
        let status = response.status();
        let bytes = response.into_body().collect().await.map_err(|e| self.error(format!("{path}: body: {e}")))?;
        Ok((status, bytes.to_bytes()))
    }
}
