//! sing-box's `ssm-api` (Shadowsocks Server Management API): live users of a
//! `managed: true` Shadowsocks-2022 inbound. Adding a user disturbs no
//! session; deleting one refuses its new sessions but leaves its running ones
//! (sing-box 1.14 has no per-user close for them).
//!
//! Traffic: `GET /server/v1/stats` lists every user the inbound serves with
//! `uplinkBytes` and `downlinkBytes`, cumulative since the user was added to
//! this process (`?clear=true` would reset them; we never ask for that, so a
//! read that is lost before it is persisted loses nothing). Deleting a user
//! drops its counters: it vanishes from the list, and if added again it
//! starts from zero. Bytes its still-running sessions move after the delete
//! are counted nowhere we can read.

use std::collections::BTreeMap;

use hyper::{Method, StatusCode};
use serde_json::{json, Value};

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

    /// Bytes (uplink + downlink) per user the inbound serves, cumulative since the user was added.
    pub async fn stats(&self) -> Result<BTreeMap<String, u64>, RuntimeError> {
        let doc = self.0.get_json("/server/v1/stats").await?;
        parse_stats(&doc).map_err(|e| self.0.error(format!("GET /server/v1/stats: {e}")))
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

fn parse_stats(doc: &Value) -> Result<BTreeMap<String, u64>, String> {
    let users = doc["users"].as_array().ok_or("no `users` list")?;
    let mut out = BTreeMap::new();
    for u in users {
        let name = u["username"].as_str().ok_or_else(|| format!("entry without a username: {u}"))?;
        // sing-box writes both fields always; a missing one is a user with no traffic yet.
        let count = |field: &str| match &u[field] {
            Value::Null => Ok(0),
            v => v.as_u64().ok_or_else(|| format!("{name}: {field} is not a byte count: {v}")),
        };
        let bytes = count("uplinkBytes")?.saturating_add(count("downlinkBytes")?);
        out.insert(name.to_string(), bytes);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_stats_sing_box_serves() {
        // The shape of a real sing-box 1.14.4 answer (service/ssmapi/api.go, getStats).
        let doc = json!({
            "uplinkBytes": 2100, "downlinkBytes": 1050000, "uplinkPackets": 0, "downlinkPackets": 0,
            "tcpSessions": 2, "udpSessions": 0,
            "users": [
                {"username": "alice", "downlinkBytes": 1049000, "uplinkBytes": 1100, "downlinkPackets": 0,
                 "uplinkPackets": 0, "tcpSessions": 1, "udpSessions": 0},
                {"username": "bob", "downlinkBytes": 0, "uplinkBytes": 0, "downlinkPackets": 0,
                 "uplinkPackets": 0, "tcpSessions": 0, "udpSessions": 0},
            ]
        });
        let stats = parse_stats(&doc).expect("parses");
        assert_eq!(stats, BTreeMap::from([("alice".to_string(), 1_050_100), ("bob".to_string(), 0)]));
        assert!(parse_stats(&json!({"users": [{"username": "x", "uplinkBytes": -1}]})).is_err());
        assert!(parse_stats(&json!({"users": [{"uplinkBytes": 1}]})).is_err());
        assert!(parse_stats(&json!({})).is_err());
    }
}
