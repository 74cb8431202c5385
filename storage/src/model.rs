//! The replicated domain model: users, the members' data-dir identities, and
//! the data-plane nodes with the public parameters clients need.
//!
//! Everything here is plain data. Values that need randomness (ids, keys) are
//! made by [`User::new`] on the proposing node, before the command enters the
//! log, so every replica applies identical bytes.

use std::collections::BTreeMap;
use std::fmt;

use base64::Engine as _;
use rand::RngCore as _;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::types::NodeId;

/// Longest allowed user name.
pub const MAX_USER_NAME_LEN: usize = 64;

/// Only `Active` users are placed and served. `Disabled` is the operator's
/// choice; `Limited` (data limit reached) and `Expired` are set by the cluster
/// and lifted by a traffic reset, a later expiry or a higher limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UserStatus {
    Active,
    Disabled,
    Limited,
    Expired,
}

impl UserStatus {
    pub const ALL: [UserStatus; 4] =
        [UserStatus::Active, UserStatus::Disabled, UserStatus::Limited, UserStatus::Expired];

    pub fn as_str(self) -> &'static str {
        match self {
            UserStatus::Active => "active",
            UserStatus::Disabled => "disabled",
            UserStatus::Limited => "limited",
            UserStatus::Expired => "expired",
        }
    }
}

/// How often a user's traffic counter starts again from zero.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResetPeriod {
    #[default]
    None,
    Daily,
    Weekly,
    Monthly,
}

impl ResetPeriod {
    pub const ALL: [ResetPeriod; 4] =
        [ResetPeriod::None, ResetPeriod::Daily, ResetPeriod::Weekly, ResetPeriod::Monthly];

    pub fn as_str(self) -> &'static str {
        match self {
            ResetPeriod::None => "none",
            ResetPeriod::Daily => "daily",
            ResetPeriod::Weekly => "weekly",
            ResetPeriod::Monthly => "monthly",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.as_str() == name)
    }

    /// When a period that started at `start_ms` ends (UTC calendar: a
    /// monthly period started on Jan 31 ends on Feb 28/29); `None` for no reset.
    pub fn period_end_ms(self, start_ms: i64) -> Option<i64> {
        const DAY_MS: i64 = 86_400_000;
        match self {
            ResetPeriod::None => None,
            ResetPeriod::Daily => Some(start_ms.saturating_add(DAY_MS)),
            ResetPeriod::Weekly => Some(start_ms.saturating_add(7 * DAY_MS)),
            ResetPeriod::Monthly => {
                let start = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(start_ms) * 1_000_000).ok()?;
                let (year, month) = match start.month() {
                    time::Month::December => (start.year() + 1, time::Month::January),
                    m => (start.year(), m.next()),
                };
                let day = start.day().min(time::util::days_in_month(month, year));
                let end = start
                    .replace_day(1)
                    .ok()?
                    .replace_year(year)
                    .ok()?
                    .replace_month(month)
                    .ok()?
                    .replace_day(day)
                    .ok()?;
                i64::try_from(end.unix_timestamp_nanos() / 1_000_000).ok()
            }
        }
    }
}

/// What a user may use. Zero means "no limit" for both numbers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Milliseconds since the Unix epoch; 0: never expires.
    pub expires_at_ms: i64,
    /// Bytes (up + down) per period; 0: unlimited.
    pub data_limit_bytes: u64,
    pub reset: ResetPeriod,
}

impl Limits {
    pub fn expired_at(&self, at_ms: i64) -> bool {
        self.expires_at_ms != 0 && self.expires_at_ms <= at_ms
    }

    pub fn over_limit(&self, used_bytes: u64) -> bool {
        self.data_limit_bytes != 0 && used_bytes >= self.data_limit_bytes
    }
}

/// A data-plane node serving a user, and the state generation that placed it
/// there: the placement is live once the node reports that generation applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    pub node: NodeId,
    pub since_generation: u64,
}

/// Per-user secrets for the protocols we serve.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credentials {
    pub vless_uuid: Uuid,
    /// Shadowsocks-2022 per-user key: 16 random bytes, standard base64.
    pub ss2022_key: String,
}

impl Credentials {
    pub fn generate() -> Self {
        let mut key = [0u8; 16];
        rand::rng().fill_bytes(&mut key);
        Self { vless_uuid: Uuid::new_v4(), ss2022_key: base64::engine::general_purpose::STANDARD.encode(key) }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub id: Uuid,
    pub name: String,
    pub status: UserStatus,
    /// Milliseconds since the Unix epoch, taken by the proposing node.
    pub created_at_ms: i64,
    pub credentials: Credentials,
    #[serde(default)]
    pub limits: Limits,
    /// Bytes used in the current period, as the nodes reported them.
    #[serde(default)]
    pub used_bytes: u64,
    /// When the current accounting period started (creation or last reset).
    #[serde(default)]
    pub period_start_ms: i64,
    /// The secret in the user's subscription URL (`/sub/{token}`).
    #[serde(default)]
    pub sub_token: String,
    /// Node labels a node must carry to be given this user (`region=eu`).
    #[serde(default)]
    pub constraint: BTreeMap<String, String>,
    /// Where the scheduler placed the user, in placement order.
    #[serde(default)]
    pub placements: Vec<Placement>,
}

impl User {
    /// A new active user with fresh id and credentials. `name` must already be
    /// valid (see [`validate_user_name`]).
    pub fn new(name: String, created_at_ms: i64) -> Self {
        Self {
            id: Uuid::new_v4(),
            name,
            status: UserStatus::Active,
            created_at_ms,
            credentials: Credentials::generate(),
            limits: Limits::default(),
            used_bytes: 0,
            period_start_ms: created_at_ms,
            sub_token: new_sub_token(),
            constraint: BTreeMap::new(),
            placements: Vec::new(),
        }
    }

    pub fn placed_on(&self, node: NodeId) -> bool {
        self.placements.iter().any(|p| p.node == node)
    }

    /// The nodes the user is placed on, in placement order.
    pub fn placed_nodes(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.placements.iter().map(|p| p.node)
    }

    /// The status the user's limits give it at `at_ms`: an operator's
    /// `Disabled` stays; otherwise expiry, then the data limit, decide.
    pub fn status_at(&self, at_ms: i64) -> UserStatus {
        if self.status == UserStatus::Disabled {
            UserStatus::Disabled
        } else if self.limits.expired_at(at_ms) {
            UserStatus::Expired
        } else if self.limits.over_limit(self.used_bytes) {
            UserStatus::Limited
        } else {
            UserStatus::Active
        }
    }
}

/// A fresh subscription token: 24 random bytes, base64url without padding.
pub fn new_sub_token() -> String {
    let mut raw = [0u8; 24];
    rand::rng().fill_bytes(&mut raw);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
}

/// The identity of a member's data dir. A wiped node gets a new incarnation, so
/// it cannot silently take over the log position and vote of its old id.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberRecord {
    pub id: NodeId,
    pub addr: String,
    pub incarnation: Uuid,
}

/// A protocol a data-plane node serves. The runtime crate has its own
/// equivalent; storage stays independent of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Protocol {
    #[serde(rename = "shadowsocks-2022")]
    Shadowsocks2022,
    #[serde(rename = "vless-tls")]
    VlessTls,
    #[serde(rename = "vless-reality")]
    VlessReality,
}

impl Protocol {
    pub const ALL: [Protocol; 3] = [Protocol::Shadowsocks2022, Protocol::VlessTls, Protocol::VlessReality];

    /// The contract's name, as in `--inbound vless-tls=443`.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Shadowsocks2022 => "shadowsocks-2022",
            Protocol::VlessTls => "vless-tls",
            Protocol::VlessReality => "vless-reality",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.as_str() == name)
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One inbound of a data-plane node with the public parameters a client
/// needs to connect. Secrets (TLS and Reality private keys) stay on the node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InboundRecord {
    pub protocol: Protocol,
    pub port: u16,
    /// Shadowsocks-2022: the inbound's server key (16 bytes, standard
    /// base64); clients send `<server key>:<user key>` as their password.
    pub ss2022_server_key: Option<String>,
    /// VLESS over TLS: the SNI clients send (the certificate's name).
    pub tls_server_name: Option<String>,
    /// VLESS over TLS: SHA-256 of the leaf certificate (DER), lowercase hex.
    pub tls_cert_sha256: Option<String>,
    /// VLESS over TLS: the node made its own certificate, so clients pin it
    /// (by `tls_cert_sha256`) instead of checking it against a CA.
    #[serde(default)]
    pub tls_self_signed: bool,
    /// VLESS+Reality: the x25519 public key, base64url without padding.
    pub reality_public_key: Option<String>,
    /// VLESS+Reality: the short id, hex.
    pub reality_short_id: Option<String>,
    /// VLESS+Reality: the camouflage server name clients send.
    pub reality_server_name: Option<String>,
}

impl InboundRecord {
    /// An inbound with no public parameters yet.
    pub fn new(protocol: Protocol, port: u16) -> Self {
        Self {
            protocol,
            port,
            ss2022_server_key: None,
            tls_server_name: None,
            tls_cert_sha256: None,
            tls_self_signed: false,
            reality_public_key: None,
            reality_short_id: None,
            reality_server_name: None,
        }
    }
}

/// A node that serves users: what it offers, as registered by its agent, and
/// the last state generation it reported applied.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataplaneNode {
    pub id: NodeId,
    /// Host name or IP address clients connect to.
    pub public_host: String,
    pub inbounds: Vec<InboundRecord>,
    pub labels: BTreeMap<String, String>,
    /// How many users the operator wants on this node at most; 0: no limit.
    pub capacity: u32,
    /// The last [`State::generation`](crate::state::State::generation) this
    /// node's engines applied, as the node reported it.
    pub applied_generation: u64,
    /// Liveness as the leader judged it from heartbeats.
    #[serde(default)]
    pub health: NodeHealth,
    /// The operator's maintenance setting.
    #[serde(default)]
    pub schedule: Schedule,
    /// The last traffic report sequence number applied from this node:
    /// reports at or below it are duplicates.
    #[serde(default)]
    pub traffic_seq: u64,
    /// What the node's engines last reported failing; `None` when healthy.
    #[serde(default)]
    pub engine_error: Option<String>,
    /// When the node's certificate for the control plane expires (ms since
    /// the epoch), as it registered it; `None` without mutual TLS.
    #[serde(default)]
    pub cert_not_after_ms: Option<i64>,
    /// Where the node's traffic counts come from, as it registered (see `vpnd --nftables`).
    #[serde(default)]
    pub accounting: Option<String>,
    /// The [`State::generation`](crate::state::State::generation) at which
    /// what this node should serve (its active users, their credentials,
    /// its offer) last changed: the generation of its assignment, which the
    /// node reports back as applied once its engines serve it.
    #[serde(default)]
    pub assigned_generation: u64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeHealth {
    #[default]
    Ready,
    Down,
}

/// Whether the scheduler may give a node users.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Schedule {
    #[default]
    Schedulable,
    /// No new users; those on it stay.
    Cordoned,
    /// No new users, and everyone is moved off (make-before-break).
    Draining,
}

impl DataplaneNode {
    /// A newly registered node: ready, schedulable, nothing applied yet.
    pub fn new(id: NodeId, public_host: String, inbounds: Vec<InboundRecord>) -> Self {
        Self {
            id,
            public_host,
            inbounds,
            labels: BTreeMap::new(),
            capacity: 0,
            applied_generation: 0,
            health: NodeHealth::Ready,
            schedule: Schedule::Schedulable,
            traffic_seq: 0,
            engine_error: None,
            cert_not_after_ms: None,
            accounting: None,
            assigned_generation: 0,
        }
    }

    /// The contract's one-word status: `down` wins over maintenance.
    pub fn status(&self) -> &'static str {
        match (self.health, self.schedule) {
            (NodeHealth::Down, _) => "down",
            (NodeHealth::Ready, Schedule::Draining) => "draining",
            (NodeHealth::Ready, Schedule::Cordoned) => "cordoned",
            (NodeHealth::Ready, Schedule::Schedulable) => "ready",
        }
    }

    /// Whether clients should be sent to this node.
    pub fn is_ready(&self) -> bool {
        self.health == NodeHealth::Ready
    }

    /// Whether the node's engines serve its current assignment.
    pub fn caught_up(&self) -> bool {
        self.applied_generation >= self.assigned_generation
    }

    /// Whether `other` describes the same offer (what the node registers, not
    /// what the cluster records about it).
    pub fn same_offer(&self, other: &DataplaneNode) -> bool {
        self.id == other.id
            && self.public_host == other.public_host
            && self.inbounds == other.inbounds
            && self.labels == other.labels
            && self.capacity == other.capacity
            && self.cert_not_after_ms == other.cert_not_after_ms
            && self.accounting == other.accounting
    }
}

/// Why a user name was refused; the message says what a valid name looks like.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("name is empty: give 1-64 characters of a-z, 0-9, '.', '_' or '-'")]
    Empty,
    #[error("name is {0} characters long: use at most 64")]
    TooLong(usize),
    #[error("name must start with a lowercase letter or digit")]
    BadStart,
    #[error("name contains {0:?}: use only a-z, 0-9, '.', '_' and '-'")]
    BadChar(char),
}

/// The contract's rule: 1-64 chars of `[a-z0-9._-]`, starting with a letter or digit.
pub fn validate_user_name(name: &str) -> Result<(), NameError> {
    let len = name.chars().count();
    if len == 0 {
        return Err(NameError::Empty);
    }
    if len > MAX_USER_NAME_LEN {
        return Err(NameError::TooLong(len));
    }
    if let Some(bad) =
        name.chars().find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-')))
    {
        return Err(NameError::BadChar(bad));
    }
    if !name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit()) {
        return Err(NameError::BadStart);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_contract() {
        for ok in ["a", "alice", "0day", "a.b_c-d", &"x".repeat(64)] {
            assert_eq!(validate_user_name(ok), Ok(()), "{ok}");
        }
        assert_eq!(validate_user_name(""), Err(NameError::Empty));
        assert_eq!(validate_user_name(&"x".repeat(65)), Err(NameError::TooLong(65)));
        assert_eq!(validate_user_name("-a"), Err(NameError::BadStart));
        assert_eq!(validate_user_name(".a"), Err(NameError::BadStart));
        assert_eq!(validate_user_name("Alice"), Err(NameError::BadChar('A')));
        assert_eq!(validate_user_name("a b"), Err(NameError::BadChar(' ')));
        assert_eq!(validate_user_name("ä"), Err(NameError::BadChar('ä')));
    }

    #[test]
    fn credentials_are_fresh_and_well_formed() {
        let a = Credentials::generate();
        let b = Credentials::generate();
        assert_ne!(a, b);
        let key = base64::engine::general_purpose::STANDARD.decode(&a.ss2022_key).expect("base64");
        assert_eq!(key.len(), 16);
        assert_eq!(a.vless_uuid.get_version_num(), 4);
    }
}
