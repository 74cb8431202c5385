//! Which document a subscription request gets: the `?format=` the user asked
//! for, else what the requesting app is known to import.

/// A subscription document format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// v2rayN-style: standard base64 of the newline-joined share links.
    Base64,
    /// A sing-box client configuration (JSON).
    SingBox,
    /// A Clash/Mihomo configuration (YAML).
    Clash,
}

/// `?format=` named no known format.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown subscription format {0:?}: use base64 (or v2ray, links), sing-box (or singbox, json) \
     or clash (or mihomo, yaml)"
)]
pub struct UnknownFormat(pub String);

/// Apps whose User-Agent also names Clash or v2ray for compatibility but that
/// take sing-box configurations best, so they are checked first.
const SING_BOX_APPS: [&str; 3] = ["hiddify", "karing", "sing-box"];
/// The sing-box apps for Android, iOS, macOS and tvOS.
const SING_BOX_GUI: [&str; 4] = ["sfa", "sfi", "sfm", "sft"];
/// Clash, Clash.Meta, ClashX, Clash Verge, ClashMetaForAndroid, FlClash, Stash, Mihomo (Party).
const CLASH_APPS: [&str; 4] = ["clash", "flclash", "mihomo", "stash"];

impl Format {
    /// `?format=` wins (names: base64|v2ray|links, sing-box|singbox|json,
    /// clash|mihomo|yaml; unknown: an error naming the accepted values);
    /// else by User-Agent the way popular clients expect: Clash family ->
    /// Clash; sing-box apps (SFA/SFI/SFM/SFT, Hiddify, Karing) -> SingBox;
    /// everything else (v2rayN(G), Shadowrocket, NekoBox, Streisand,
    /// browsers) -> Base64.
    pub fn choose(query_format: Option<&str>, user_agent: Option<&str>) -> Result<Format, UnknownFormat> {
        match query_format {
            Some(name) => Self::parse(name),
            None => Ok(user_agent.map_or(Format::Base64, Self::from_user_agent)),
        }
    }

    fn parse(name: &str) -> Result<Format, UnknownFormat> {
        match name.trim().to_ascii_lowercase().as_str() {
            "base64" | "v2ray" | "links" => Ok(Format::Base64),
            "sing-box" | "singbox" | "json" => Ok(Format::SingBox),
            "clash" | "mihomo" | "yaml" => Ok(Format::Clash),
            _ => Err(UnknownFormat(name.into())),
        }
    }

    /// Judged by the product that leads the User-Agent (`FlClash/0.8 ...`),
    /// not by words anywhere in it: NekoBox says "Prefer ClashMeta Format"
    /// yet imports links, and Hiddify says "like ClashMeta".
    fn from_user_agent(user_agent: &str) -> Format {
        let lower = user_agent.trim_start().to_ascii_lowercase();
        let product = lower.split(|c: char| c == '/' || c.is_whitespace() || c == ';').next().unwrap_or_default();
        if SING_BOX_APPS.iter().any(|app| product.starts_with(app)) || SING_BOX_GUI.contains(&product) {
            Format::SingBox
        } else if CLASH_APPS.iter().any(|app| product.starts_with(app)) {
            Format::Clash
        } else {
            Format::Base64
        }
    }

    /// The file name extension clients save the document under.
    pub(crate) fn extension(self) -> &'static str {
        match self {
            Format::Base64 => "txt",
            Format::SingBox => "json",
            Format::Clash => "yaml",
        }
    }

    pub(crate) fn content_type(self) -> &'static str {
        match self {
            Format::Base64 => "text/plain; charset=utf-8",
            Format::SingBox => "application/json; charset=utf-8",
            Format::Clash => "application/yaml; charset=utf-8",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_query_wins_over_the_user_agent() {
        for (name, want) in [
            ("base64", Format::Base64),
            ("v2ray", Format::Base64),
            ("links", Format::Base64),
            ("sing-box", Format::SingBox),
            ("singbox", Format::SingBox),
            ("json", Format::SingBox),
            ("clash", Format::Clash),
            ("mihomo", Format::Clash),
            ("yaml", Format::Clash),
            ("Clash", Format::Clash),
        ] {
            assert_eq!(Format::choose(Some(name), Some("v2rayNG/1.8.5")), Ok(want), "{name}");
            assert_eq!(Format::choose(Some(name), Some("clash-verge/v1.3.8")), Ok(want), "{name}");
        }
    }

    #[test]
    fn an_unknown_format_names_the_accepted_ones() {
        let err = Format::choose(Some("surge"), Some("clash-verge/v1.3.8")).expect_err("unknown");
        assert_eq!(err, UnknownFormat("surge".into()));
        let message = err.to_string();
        for name in ["\"surge\"", "base64", "v2ray", "links", "sing-box", "singbox", "json", "clash", "mihomo", "yaml"]
        {
            assert!(message.contains(name), "{name} in {message}");
        }
        assert!(Format::choose(Some(""), None).is_err(), "an empty ?format= is a mistake, not a default");
    }

    #[test]
    fn the_user_agent_picks_what_the_app_imports() {
        for (ua, want) in [
            ("ClashMetaForAndroid/2.10.1.Meta", Format::Clash),
            ("ClashForAndroid/2.5.12", Format::Clash),
            ("clash-verge/v1.3.8", Format::Clash),
            (
                "ClashX Pro/1.72.0.4 (com.west2online.ClashXPro; build:1.72.0.4; macOS 13.0.0) Alamofire/5.4.4",
                Format::Clash,
            ),
            ("ClashX Meta/v1.3.4", Format::Clash),
            ("clash.meta", Format::Clash),
            ("Clash/1.18.0", Format::Clash),
            ("mihomo/1.18.3", Format::Clash),
            ("mihomo.party/v1.5.12 (clash.meta)", Format::Clash),
            ("Stash/2.4.6 Clash/1.9.0", Format::Clash),
            ("FlClash/v0.8.66 clash-verge Platform/android", Format::Clash),
            ("SFA/1.11.0 (583; sing-box 1.11.0; language zh_CN)", Format::SingBox),
            ("SFI/1.10.1 (Build 2; sing-box 1.10.1; language en_US)", Format::SingBox),
            ("SFM/1.9.3 (Build 1; sing-box 1.9.3)", Format::SingBox),
            ("SFT/1.10.0", Format::SingBox),
            ("sing-box 1.14.4", Format::SingBox),
            ("HiddifyNext/2.5.7 (android) like ClashMeta v2ray sing-box", Format::SingBox),
            ("karing/1.0.30.380 android arm64", Format::SingBox),
            ("v2rayN/6.42", Format::Base64),
            ("v2rayNG/1.8.5", Format::Base64),
            ("Shadowrocket/2070 CFNetwork/1485 Darwin/23.1.0 iPhone14,5", Format::Base64),
            ("NekoBox/Android/1.3.0 (Prefer ClashMeta Format)", Format::Base64),
            ("Streisand/1.5.6", Format::Base64),
            ("Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0", Format::Base64),
            ("curl/8.5.0", Format::Base64),
            ("", Format::Base64),
        ] {
            assert_eq!(Format::choose(None, Some(ua)), Ok(want), "{ua}");
        }
        assert_eq!(Format::choose(None, None), Ok(Format::Base64));
    }
}
