//! sing-box's clash API (`experimental.clash_api`): lists live sessions with
//! their outbound chain, closes one (`DELETE /connections/{id}` cuts it at
//! once), and switches selector outbounds, which is how a VLESS user is
//! refused without a reload.
//!
//! Traffic: each listed session carries `upload` and `download`, cumulative
//! for that session. A session is listed only while it runs: the bytes a
//! session moves between the last read and its end are not listed anywhere
//! (sing-box keeps closed sessions only for its in-process platform API).

use hyper::{Method, StatusCode};
use serde_json::{json, Value};

use super::http::ApiClient;
use crate::RuntimeError;

pub struct Clash(ApiClient);

/// One live session as the clash API lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Connection {
    pub id: String,
    /// Outbound tags the session went through, innermost first (e.g. `["direct", "u-alice"]`).
    pub chains: Vec<String>,
    /// Bytes up + down so far.
    pub bytes: u64,
}

impl Clash {
    pub fn new(port: u16, secret: &str) -> Self {
        Clash(ApiClient::new("sing-box clash API", port, Some(secret.to_string())))
    }

    pub async fn ping(&self) -> Result<(), RuntimeError> {
        self.0.get_json("/version").await.map(drop)
    }

    pub async fn connections(&self) -> Result<Vec<Connection>, RuntimeError> {
        Ok(parse_connections(&self.0.get_json("/connections").await?))
    }

    /// Closes one session; one that ended meanwhile is fine. True when this call closed it.
    pub async fn close(&self, id: &str) -> Result<bool, RuntimeError> {
        let path = format!("/connections/{id}");
        let (status, _) = self.0.send(Method::DELETE, &path, None).await?;
        match status {
            StatusCode::NO_CONTENT | StatusCode::OK => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            other => Err(self.0.error(format!("DELETE {path}: HTTP {other}"))),
        }
    }

    /// Points selector `selector` at outbound `target`. False when the engine has no such selector.
    pub async fn select(&self, selector: &str, target: &str) -> Result<bool, RuntimeError> {
        let path = format!("/proxies/{selector}");
        let ok = [StatusCode::NO_CONTENT, StatusCode::OK, StatusCode::NOT_FOUND];
        let (status, _) = self.0.expect(Method::PUT, &path, Some(json!({"name": target})), &ok).await?;
        Ok(status != StatusCode::NOT_FOUND)
    }
}

fn parse_connections(doc: &Value) -> Vec<Connection> {
    doc["connections"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| {
            let chains = c["chains"].as_array()?.iter().filter_map(|t| t.as_str().map(str::to_string)).collect();
            let count = |field: &str| c[field].as_u64().unwrap_or(0);
            let bytes = count("upload").saturating_add(count("download"));
            Some(Connection { id: c["id"].as_str()?.to_string(), chains, bytes })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_connection_list_sing_box_serves() {
        // Trimmed from a real sing-box 1.14.4 answer.
        let doc = json!({
            "connections": [
                {"chains": ["direct", "u-alice"], "download": 19267331, "id": "4d555fce-2fce-4af0-b64b-5ec9f7dc1cab",
                 "metadata": {"type": "vless/vless-tls-in", "sourceIP": "127.0.0.1"},
                 "rule": "auth_user=alice => route(u-alice)", "upload": 86},
                {"id": "no-chains"}
            ],
            "downloadTotal": 1, "uploadTotal": 2
        });
        let parsed = parse_connections(&doc);
        assert_eq!(
            parsed,
            vec![Connection {
                id: "4d555fce-2fce-4af0-b64b-5ec9f7dc1cab".into(),
                chains: vec!["direct".into(), "u-alice".into()],
                bytes: 19267417,
            }]
        );
        assert!(parse_connections(&json!({"connections": null})).is_empty());
    }
}
