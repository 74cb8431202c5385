//! One write for each system: `vpnd` CreateUser, etcd Put of 256 bytes.

use std::time::Duration;

use anyhow::Result;
use tonic::transport::{Channel, ClientTlsConfig};
use tonic::Request;
use vpn_proto::v1::users_client::UsersClient;
use vpn_proto::v1::CreateUserRequest;

use crate::etcdserverpb::kv_client::KvClient;
use crate::etcdserverpb::PutRequest;
use crate::load::Writer;
use crate::vpnd::channel_with;

/// The etcd value size the issue asks for.
pub const ETCD_VALUE_LEN: usize = 256;

/// Worker `w` writes through `channels[w % len]`.
pub async fn connect_all(endpoints: &[String]) -> Result<Vec<Channel>> {
    connect_all_with(endpoints, None).await
}

/// [`connect_all`], over TLS when `tls` is given.
pub async fn connect_all_with(endpoints: &[String], tls: Option<&ClientTlsConfig>) -> Result<Vec<Channel>> {
    let mut out = Vec::with_capacity(endpoints.len());
    for ep in endpoints {
        out.push(channel_with(ep, tls).await?);
    }
    Ok(out)
}

fn describe(status: &tonic::Status) -> String {
    format!("{:?}: {}", status.code(), status.message())
}

/// Creates the user named by the key.
pub struct VpndWriter {
    clients: Vec<UsersClient<Channel>>,
    timeout: Duration,
}

impl VpndWriter {
    pub fn new(channels: Vec<Channel>, timeout: Duration) -> Self {
        Self { clients: channels.into_iter().map(UsersClient::new).collect(), timeout }
    }
}

impl Writer for VpndWriter {
    async fn write(&self, worker: usize, key: String) -> Result<(), String> {
        let mut client = self.clients[worker % self.clients.len()].clone();
        let mut req = Request::new(CreateUserRequest { name: key, ..Default::default() });
        req.set_timeout(self.timeout);
        client.create_user(req).await.map(drop).map_err(|s| describe(&s))
    }
}

/// Puts a 256-byte value under the key.
pub struct EtcdWriter {
    clients: Vec<KvClient<Channel>>,
    value: Vec<u8>,
    timeout: Duration,
}

impl EtcdWriter {
    pub fn new(channels: Vec<Channel>, timeout: Duration) -> Self {
        let value = (0..ETCD_VALUE_LEN).map(|i| b'a' + (i % 26) as u8).collect();
        Self { clients: channels.into_iter().map(KvClient::new).collect(), value, timeout }
    }
}

impl Writer for EtcdWriter {
    async fn write(&self, worker: usize, key: String) -> Result<(), String> {
        let mut client = self.clients[worker % self.clients.len()].clone();
        let mut req = Request::new(PutRequest { key: key.into_bytes(), value: self.value.clone() });
        req.set_timeout(self.timeout);
        client.put(req).await.map(drop).map_err(|s| describe(&s))
    }
}
