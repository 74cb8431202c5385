//! sing-box's `ssm-api` (Shadowsocks Server Management API): live users of a
//! `managed: true` Shadowsocks-2022 inbound. Adding a user disturbs no
//! session; deleting one refuses its new sessions but leaves its running ones
//! (sing-box 1.14 has no per-user close for them).

use std::collections::BTreeMap;

use hyper::{Method, StatusCode};
use serde_json::json;

use super::http::ApiClient;
use crate::RuntimeError;

pub struct Ssm(ApiClient);

impl Ssm {
    pub fn new(port: u16) -> Self {
        Ssm(ApiClient::new("sing-box ssm-api", port, None))
    }

    /// Server info; answers once the service is up.
    pub async fn ping(&self) -> Result<(), RuntimeError> {
        self.0.get_json("/server/v1").await.map(drop)
    }

    /// Users (name -> uPSK) the inbound serves now.
    pub async fn users(&self) -> Result<BTreeMap<String, String>, RuntimeError> {
        let doc = self.0.get_json("/server/v1/users").await?;
        let users =
            doc["users"].as_array().ok_or_else(|| self.0.error("GET /server/v1/users: no `users` list".into()))?;
        users
            .iter()
            .map(|u| match (u["username"].as_str(), u["uPSK"].as_str()) {
                (Some(name), Some(key)) => Ok((name.to_string(), key.to_string())),
                _ => Err(self.0.error(format!("GET /server/v1/users: malformed entry {u}"))),
            })
            .collect()
    }

    pub async fn add(&self, name: &str, key: &str) -> Result<(), RuntimeError> {
        let body = json!({"username": name, "uPSK": key});
        self.0
            .expect(Method::POST, "/server/v1/users", Some(body), &[StatusCode::CREATED, StatusCode::OK])
            .await
            .map(drop)
    }

    /// Deletes a user; one already gone is fine (the goal state holds).
    pub async fn delete(&self, name: &str) -> Result<(), RuntimeError> {
        let path = format!("/server/v1/users/{name}");
        let ok = [StatusCode::NO_CONTENT, StatusCode::OK, StatusCode::NOT_FOUND];
        self.0.expect(Method::DELETE, &path, None, &ok).await.map(drop)
    }
}
