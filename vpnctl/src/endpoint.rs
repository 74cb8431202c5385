//! Parsing of `--endpoints` entries and `host:port` arguments.
//!
//! Done by hand rather than through `http::Uri` so a typo gets a reason an operator can act on
//! ("missing port", "IPv6 needs brackets") instead of a generic URI error.

use std::fmt;
use std::net::Ipv6Addr;

use crate::error::CliError;

/// One node's gRPC address, as given on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    tls: bool,
    host: String,
    port: u16,
}

impl Endpoint {
    /// Parses `host:port`, `http://host:port` or `https://host:port` (IPv6 as `[::1]:7000`);
    /// a bare `host:port` is plaintext.
    pub fn parse(input: &str) -> Result<Self, String> {
        Self::parse_with(input, false)
    }

    /// Like [`Endpoint::parse`], a bare `host:port` speaking TLS when `bare_tls`.
    pub fn parse_with(input: &str, bare_tls: bool) -> Result<Self, String> {
        let input = input.trim();
        let (tls, rest) = match input.split_once("://") {
            None => (bare_tls, input),
            Some((scheme, rest)) => match scheme.to_ascii_lowercase().as_str() {
                "http" => (false, rest),
                "https" => (true, rest),
                _ => return Err(format!("unsupported scheme '{scheme}', use http or https")),
            },
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains('/') {
            return Err("an endpoint has no path, give only host:port".into());
        }
        let (host, port) = parse_host_port(rest)?;
        Ok(Self { tls, host, port })
    }

    /// The URI tonic connects to.
    pub fn uri(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}:{}", self.host, self.port)
    }

    /// Whether to speak TLS to this endpoint.
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// The same address with another endpoint's scheme: a leader hint is a bare `host:port`
    /// and should be reached the way the node that gave it was.
    pub fn with_tls_of(mut self, other: &Endpoint) -> Self {
        self.tls = other.tls;
        self
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.tls {
            write!(f, "https://")?;
        }
        write!(f, "{}:{}", self.host, self.port)
    }
}

/// Parses the `--endpoints` list (already split on commas); empty entries are skipped so a
/// trailing comma in a script does no harm. Bare entries speak TLS when `bare_tls`.
pub fn parse_endpoints(values: &[String], bare_tls: bool) -> Result<Vec<Endpoint>, CliError> {
    let mut endpoints = Vec::new();
    for value in values.iter().map(|v| v.trim()).filter(|v| !v.is_empty()) {
        let endpoint = Endpoint::parse_with(value, bare_tls).map_err(|reason| {
            CliError::InvalidInput(format!(
                "invalid --endpoints entry '{value}': {reason}; expected host:port or \
                 http(s)://host:port, e.g. --endpoints 10.0.0.1:7000,10.0.0.2:7000 \
                 (also read from VPNCTL_ENDPOINTS)"
            ))
        })?;
        if !endpoints.contains(&endpoint) {
            endpoints.push(endpoint);
        }
    }
    if endpoints.is_empty() {
        return Err(CliError::InvalidInput(
            "--endpoints is empty; give at least one host:port, e.g. --endpoints 127.0.0.1:7000".into(),
        ));
    }
    Ok(endpoints)
}

/// Splits and checks `host:port`; the host is a DNS name, an IPv4 address or `[IPv6]`.
pub fn parse_host_port(input: &str) -> Result<(String, u16), String> {
    let (host, port) = if let Some(bracketed) = input.strip_prefix('[') {
        let (addr, after) = bracketed.split_once(']').ok_or("missing ']' after the IPv6 address")?;
        addr.parse::<Ipv6Addr>().map_err(|_| format!("'{addr}' is not an IPv6 address"))?;
        let port = after.strip_prefix(':').ok_or("missing port after ']'")?;
        (format!("[{addr}]"), port)
    } else {
        let (host, port) = input.rsplit_once(':').ok_or("missing port")?;
        if host.contains(':') {
            return Err("write an IPv6 address in brackets, e.g. [::1]:7000".into());
        }
        if host.is_empty() {
            return Err("missing host".into());
        }
        if let Some(bad) = host.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))) {
            return Err(format!("'{bad}' is not allowed in a host name"));
        }
        (host.to_string(), port)
    };
    let port = match port.parse::<u16>() {
        Ok(0) | Err(_) => return Err(format!("'{port}' is not a port (1-65535)")),
        Ok(port) => port,
    };
    Ok((host, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(input: &str) -> Endpoint {
        match Endpoint::parse(input) {
            Ok(endpoint) => endpoint,
            Err(reason) => panic!("{input}: {reason}"),
        }
    }

    fn reason(input: &str) -> String {
        match Endpoint::parse(input) {
            Ok(endpoint) => panic!("{input} parsed as {endpoint:?}"),
            Err(reason) => reason,
        }
    }

    #[test]
    fn accepts_the_three_forms() {
        assert_eq!(ok("127.0.0.1:7000").uri(), "http://127.0.0.1:7000");
        assert_eq!(ok("http://node-1.example:7000").uri(), "http://node-1.example:7000");
        assert_eq!(ok("HTTPS://vpn.example.com:443/").uri(), "https://vpn.example.com:443");
        assert!(ok("https://a:1").is_tls());
        assert!(!ok(" a:1 ").is_tls());
    }

    #[test]
    fn accepts_bracketed_ipv6() {
        assert_eq!(ok("[::1]:7000").uri(), "http://[::1]:7000");
        assert_eq!(ok("https://[fd00::2]:7000").to_string(), "https://[fd00::2]:7000");
    }

    #[test]
    fn display_is_what_the_operator_typed_minus_http() {
        assert_eq!(ok("http://a:1").to_string(), "a:1");
        assert_eq!(ok("a:1").to_string(), "a:1");
    }

    #[test]
    fn rejects_malformed_endpoints_with_a_reason() {
        assert_eq!(reason("localhost"), "missing port");
        assert_eq!(reason("http://localhost"), "missing port");
        assert_eq!(reason(":7000"), "missing host");
        assert!(reason("a:0").contains("not a port"));
        assert!(reason("a:70000").contains("not a port"));
        assert!(reason("a:port").contains("not a port"));
        assert!(reason("grpc://a:1").contains("unsupported scheme 'grpc'"));
        assert!(reason("http://a:1/v1").contains("no path"));
        assert!(reason("::1:7000").contains("brackets"));
        assert!(reason("[::1]").contains("missing port"));
        assert!(reason("[nope]:1").contains("not an IPv6 address"));
        assert!(reason("user@host:1").contains("'@'"));
    }

    #[test]
    fn endpoint_list_names_the_flag_and_drops_duplicates() {
        let list = |items: &[&str]| parse_endpoints(&items.iter().map(|s| s.to_string()).collect::<Vec<_>>(), false);
        let parsed = list(&["a:1", "", "http://a:1", "b:2"]).map_err(|e| e.to_string());
        assert_eq!(parsed.map(|v| v.len()), Ok(2));
        let err = list(&["a:1", "b"]).err().map(|e| (e.exit_code(), e.to_string()));
        let (code, message) = err.unwrap_or_default();
        assert_eq!(code, 2);
        assert!(message.starts_with("invalid --endpoints entry 'b': missing port"));
        let err = list(&[" "]).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.starts_with("--endpoints is empty"));
    }
}
