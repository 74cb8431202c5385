//! The sing-box engine (1.14). Shadowsocks-2022: one container per inbound,
//! users managed live through `ssm-api`. VLESS: users in the config file, so
//! a change of them starts the next generation (a container of its own; see
//! [`crate::handoff`]), with removals refused live through the clash API
//! (see [`render`]).
//!
//! Traffic counters: Shadowsocks-2022 per user from `ssm-api` stats (exact);
//! VLESS per live session from the clash API, attributed to the user whose
//! selector is in the session's chain. This build has no `with_v2ray_api`
//! (`sing-box version` lists `with_quic,with_wireguard,with_clash_api,
//! with_gvisor`), so VLESS has no per-user totals: a session's bytes after
//! the last read before it ends are not seen (see [`crate::usage`]).

use std::collections::BTreeMap;

use ring::digest;

use super::{ApiAccess, ConfigFile, Engine, EngineCounter, UserStrategy};
use crate::{EngineUser, InboundSpec, Protocol, RuntimeError};

pub mod clash;
pub mod http;
pub mod render;
pub mod ssm;

use render::{api_port, CLASH, SSM};

/// Bumped when rendering changes in a way running engines must pick up: it
/// is part of the config hash, so a new vpnd recreates its engines once.
const RENDER_VERSION: u32 = 2;

#[derive(Clone, Copy, Debug, Default)]
pub struct SingBox;

impl SingBox {
    fn clash(api: &ApiAccess) -> Result<clash::Clash, RuntimeError> {
        Ok(clash::Clash::new(api_port(api, CLASH)?, &api.secret))
    }

    fn ssm(api: &ApiAccess) -> Result<ssm::Ssm, RuntimeError> {
        Ok(ssm::Ssm::new(api_port(api, SSM)?))
    }
}

/// Reads a file the node owns (TLS material).
fn read(path: &std::path::Path) -> Result<Vec<u8>, RuntimeError> {
    std::fs::read(path).map_err(|e| RuntimeError::io("read", path, e))
}

impl Engine for SingBox {
    fn name(&self) -> &'static str {
        "sing-box"
    }

    fn user_strategy(&self, protocol: Protocol) -> UserStrategy {
        match protocol {
            Protocol::Shadowsocks2022 => UserStrategy::Live,
            Protocol::VlessTls | Protocol::VlessReality => UserStrategy::Generations,
        }
    }

    fn api_port_count(&self, protocol: Protocol) -> usize {
        match protocol {
            Protocol::Shadowsocks2022 => 2,
            Protocol::VlessTls | Protocol::VlessReality => 1,
        }
    }

    fn container_dir(&self) -> &'static str {
        render::CONTAINER_DIR
    }

    fn config_file(&self) -> &'static str {
        render::CONFIG_FILE
    }

    fn run_args(&self) -> Vec<String> {
        ["run", "--disable-color", "-c", &format!("{}/{}", render::CONTAINER_DIR, render::CONFIG_FILE)]
            .map(String::from)
            .to_vec()
    }

    fn check_args(&self, file: &str) -> Vec<String> {
        ["check", "--disable-color", "-c", &format!("{}/{file}", render::CONTAINER_DIR)].map(String::from).to_vec()
    }

    fn config_hash(&self, image: &str, inbound: &InboundSpec) -> Result<String, RuntimeError> {
        let mut ctx = digest::Context::new(&digest::SHA256);
        let mut field = |bytes: &[u8]| {
            // Length-prefixed, so no two different inputs hash alike.
            ctx.update(&(bytes.len() as u64).to_be_bytes());
            ctx.update(bytes);
        };
        field(&RENDER_VERSION.to_be_bytes());
        field(image.as_bytes());
        field(inbound.protocol.as_str().as_bytes());
        field(&inbound.listen_port.to_be_bytes());
        field(inbound.ss2022_server_key.as_deref().unwrap_or("").as_bytes());
        if let Some(tls) = &inbound.tls {
            field(tls.server_name.as_bytes());
            field(&read(&tls.cert_path)?);
            field(&read(&tls.key_path)?);
        }
        if let Some(r) = &inbound.reality {
            for part in [&r.private_key, &r.short_id, &r.server_name, &r.handshake_server] {
                field(part.as_bytes());
            }
            field(&r.handshake_port.to_be_bytes());
        }
        let hash = ctx.finish();
        Ok(hash.as_ref()[..12].iter().map(|b| format!("{b:02x}")).collect())
    }

    fn render(
        &self,
        inbound: &InboundSpec,
        listen_port: u16,
        users: &[EngineUser],
        api: &ApiAccess,
    ) -> Result<Vec<ConfigFile>, RuntimeError> {
        let doc = render::config(inbound, listen_port, users, api)?;
        let mut files = vec![ConfigFile {
            path: render::CONFIG_FILE.into(),
            contents: serde_json::to_vec_pretty(&doc)
                .map_err(|e| RuntimeError::invalid(inbound.protocol.as_str(), format!("render: {e}")))?,
            // Holds the clash API secret and server keys.
            private: true,
        }];
        if let Some(tls) = &inbound.tls {
            files.push(ConfigFile { path: render::TLS_CERT.into(), contents: read(&tls.cert_path)?, private: false });
            files.push(ConfigFile { path: render::TLS_KEY.into(), contents: read(&tls.key_path)?, private: true });
        }
        Ok(files)
    }

    fn users_in_config(&self, config: &[u8]) -> BTreeMap<String, String> {
        serde_json::from_slice(config).map(|doc| render::users_in(&doc)).unwrap_or_default()
    }

    async fn ping(&self, protocol: Protocol, api: &ApiAccess) -> Result<(), RuntimeError> {
        Self::clash(api)?.ping().await?;
        if protocol == Protocol::Shadowsocks2022 {
            Self::ssm(api)?.ping().await?;
        }
        Ok(())
    }

    async fn sessions(&self, api: &ApiAccess) -> Result<usize, RuntimeError> {
        Ok(Self::clash(api)?.connections().await?.len())
    }

    async fn live_users(&self, api: &ApiAccess) -> Result<BTreeMap<String, String>, RuntimeError> {
        Self::ssm(api)?.users().await
    }

    async fn add_users(&self, api: &ApiAccess, users: &[(String, String)]) -> Result<(), RuntimeError> {
        let ssm = Self::ssm(api)?;
        for (name, key) in users {
            ssm.add(name, key).await?;
        }
        Ok(())
    }

    async fn remove_users(&self, api: &ApiAccess, names: &[String]) -> Result<(), RuntimeError> {
        let ssm = Self::ssm(api)?;
        for name in names {
            ssm.delete(name).await?;
        }
        Ok(())
    }

    async fn counters(&self, protocol: Protocol, api: &ApiAccess) -> Result<Vec<EngineCounter>, RuntimeError> {
        if protocol == Protocol::Shadowsocks2022 {
            let stats = Self::ssm(api)?.stats().await?;
            return Ok(stats
                .into_iter()
                .map(|(user, bytes)| EngineCounter { key: format!("ss/{user}"), user, bytes })
                .collect());
        }
        let connections = Self::clash(api)?.connections().await?;
        Ok(connections
            .into_iter()
            .filter_map(|c| {
                // Sessions no user rule claimed went to `deny` and carry no user's bytes.
                let user = c.chains.iter().find_map(|tag| render::outbound_user(tag))?.to_string();
                Some(EngineCounter { key: format!("conn/{}", c.id), user, bytes: c.bytes })
            })
            .collect())
    }

    async fn set_refused(&self, api: &ApiAccess, names: &[String], refused: bool) -> Result<u64, RuntimeError> {
        let clash = Self::clash(api)?;
        let target = if refused { render::DENY } else { render::DIRECT };
        let selectors: Vec<String> = names.iter().map(|n| render::user_outbound(n)).collect();
        for selector in &selectors {
            // A user the process does not have is refused already; serving one needs a new generation.
            if !clash.select(selector, target).await? && !refused {
                return Err(RuntimeError::EngineApi {
                    api: "sing-box clash API",
                    addr: format!("selector {selector}"),
                    reason: "not in the running engine".into(),
                });
            }
        }
        if !refused {
            return Ok(0);
        }
        // New sessions are refused now; close the ones that were already running.
        let mut closed = 0;
        for conn in clash.connections().await? {
            if conn.chains.iter().any(|tag| selectors.contains(tag)) && clash.close(&conn.id).await? {
                closed += 1;
            }
        }
        Ok(closed)
    }
}
