//! One write for each system: `vpnd` CreateUser, etcd Put of 256 bytes;
//! under `--auth`, each with its system's credential on every request.

use std::time::Duration;

use anyhow::{anyhow, Result};
use tonic::metadata::AsciiMetadataValue;
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

/// A secret sent as gRPC metadata on every request: `vpnd`'s API token
/// (`authorization: Bearer`) or etcd's auth token (`token`). Parsed once,
/// so a write only clones it, as a real client does.
#[derive(Clone)]
pub struct Credential {
    key: &'static str,
    value: AsciiMetadataValue,
}

impl Credential {
    /// A `vpnd` API token (`vpnat1.NAME.SECRET`).
    pub fn bearer(token: &str) -> Result<Self> {
        Self::new("authorization", &format!("Bearer {token}"))
    }

    /// What etcd's `Auth/Authenticate` answered.
    pub fn etcd_token(token: &str) -> Result<Self> {
        Self::new("token", token)
    }

    fn new(key: &'static str, value: &str) -> Result<Self> {
        // The error names the key only: the value is a secret.
        let value = value.parse().map_err(|_| anyhow!("the {key} credential is not printable ASCII"))?;
        Ok(Self { key, value })
    }

    /// Adds the credential to `req`'s metadata.
    pub fn attach<T>(&self, req: &mut Request<T>) {
        req.metadata_mut().insert(self.key, self.value.clone());
    }
}

/// Creates the user named by the key.
pub struct VpndWriter {
    clients: Vec<UsersClient<Channel>>,
    timeout: Duration,
    credential: Option<Credential>,
}

impl VpndWriter {
    pub fn new(channels: Vec<Channel>, timeout: Duration) -> Self {
        Self { clients: channels.into_iter().map(UsersClient::new).collect(), timeout, credential: None }
    }

    /// Sends `credential` with every write (an API token; a certificate is the channel's).
    pub fn with_credential(self, credential: Credential) -> Self {
        Self { credential: Some(credential), ..self }
    }
}

impl Writer for VpndWriter {
    async fn write(&self, worker: usize, key: String) -> Result<(), String> {
        let mut client = self.clients[worker % self.clients.len()].clone();
        let mut req = Request::new(CreateUserRequest { name: key, ..Default::default() });
        req.set_timeout(self.timeout);
        if let Some(c) = &self.credential {
            c.attach(&mut req);
        }
        client.create_user(req).await.map(drop).map_err(|s| describe(&s))
    }
}

/// Puts a 256-byte value under the key.
pub struct EtcdWriter {
    clients: Vec<KvClient<Channel>>,
    value: Vec<u8>,
    timeout: Duration,
    credential: Option<Credential>,
}

impl EtcdWriter {
    pub fn new(channels: Vec<Channel>, timeout: Duration) -> Self {
        let value = (0..ETCD_VALUE_LEN).map(|i| b'a' + (i % 26) as u8).collect();
        Self { clients: channels.into_iter().map(KvClient::new).collect(), value, timeout, credential: None }
    }

    /// Sends `credential` (etcd's auth token) with every write.
    pub fn with_credential(self, credential: Credential) -> Self {
        Self { credential: Some(credential), ..self }
    }
}

impl Writer for EtcdWriter {
    async fn write(&self, worker: usize, key: String) -> Result<(), String> {
        let mut client = self.clients[worker % self.clients.len()].clone();
        let mut req = Request::new(PutRequest { key: key.into_bytes(), value: self.value.clone() });
        req.set_timeout(self.timeout);
        if let Some(c) = &self.credential {
            c.attach(&mut req);
        }
        client.put(req).await.map(drop).map_err(|s| describe(&s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sent(req: &Request<()>, key: &str) -> Option<String> {
        req.metadata().get(key).and_then(|v| v.to_str().ok()).map(str::to_owned)
    }

    #[test]
    fn a_credential_goes_in_its_systems_metadata_and_never_in_an_error() {
        let mut req = Request::new(());
        Credential::bearer("vpnat1.bot.c0ffee").expect("ASCII").attach(&mut req);
        assert_eq!(sent(&req, "authorization").as_deref(), Some("Bearer vpnat1.bot.c0ffee"));
        let mut req = Request::new(());
        Credential::etcd_token("AbC.42").expect("ASCII").attach(&mut req);
        assert_eq!(sent(&req, "token").as_deref(), Some("AbC.42"));
        let refused = Credential::etcd_token("s\u{e9}cret\n").err().expect("not printable ASCII").to_string();
        assert!(!refused.contains("cret"), "{refused}");
    }
}
