//! Everything a VPN client imports for one user: share links (`ss://`,
//! `vless://`) and subscriptions (`GET /sub/{token}`) as a v2rayN-style
//! base64 link list, a sing-box client configuration or a Clash/Mihomo
//! configuration. Pure functions of the replicated model: the caller picks
//! the user and the healthy nodes that hold them.
//!
//! # Layout
//! - `links`: the share link of one user on one inbound.
//! - `format`: [`Format`] and how a request chooses it (`?format=`, User-Agent).
//! - `subscription`: [`render`] a [`Subscription`] (body and headers).
//! - `singbox`, `clash`: the two configuration documents.
//! - `endpoint`: which inbounds are usable, with what parameters; shared by all.

mod clash;
mod endpoint;
mod format;
pub mod links;
mod singbox;
mod subscription;
#[cfg(test)]
mod testutil;

pub use format::{Format, UnknownFormat};
pub use links::{link, SS2022_METHOD};
pub use subscription::{render, Subscription, UPDATE_INTERVAL_HOURS};
