//! The sing-box engine (1.14): a container per generation of one protocol
//! inbound, users in the config file (see [`render`]), refused and their
//! sessions closed live through the clash API. Traffic is counted by the
//! kernel under each user's socket mark (see [`crate::nftables`]); without
//! nftables, from the engine's connection events ([`events`]).

use std::collections::BTreeMap;

use ring::digest;

use super::{ApiAccess, ConfigFile, Engine};
use crate::{EngineUser, InboundSpec, RuntimeError};

pub mod clash;
pub mod events;
pub mod http;
pub mod render;

use render::{api_port, CLASH};

/// Bumped when rendering changes in a way running engines must pick up: it
/// is part of the config hash, so a new vpnd starts new generations once.
const RENDER_VERSION: u32 = 4;

#[derive(Clone, Copy, Debug, Default)]
pub struct SingBox;

impl SingBox {
    fn clash(api: &ApiAccess) -> Result<clash::Clash, RuntimeError> {
        Ok(clash::Clash::new(api_port(api, CLASH)?, &api.secret))
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

    fn api_port_count(&self) -> usize {
        2
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
        Ok(hex::encode(&hash.as_ref()[..12]))
    }

    fn render(
        &self,
        inbound: &InboundSpec,
        listen_port: u16,
        users: &[EngineUser],
        marks: &BTreeMap<String, u32>,
        api: &ApiAccess,
    ) -> Result<Vec<ConfigFile>, RuntimeError> {
        let doc = render::config(inbound, listen_port, users, marks, api)?;
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

    async fn ping(&self, api: &ApiAccess) -> Result<(), RuntimeError> {
        Self::clash(api)?.ping().await
    }

    async fn sessions(&self, api: &ApiAccess) -> Result<usize, RuntimeError> {
        Ok(Self::clash(api)?.connections().await?.len())
    }

    async fn set_refused(&self, api: &ApiAccess, names: &[String], refused: bool) -> Result<u64, RuntimeError> {
        let clash = Self::clash(api)?;
        let selectors: Vec<String> = names.iter().map(|n| render::user_outbound(n)).collect();
        for (name, selector) in names.iter().zip(&selectors) {
            let target = if refused { render::DENY.to_string() } else { render::user_direct(name) };
            // A user the process does not have is refused already; serving one needs a new generation.
            if !clash.select(selector, &target).await? && !refused {
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
