//! `vpnctl login` and `logout` as a person or a script runs them: the binary, its stdin and its
//! context file, against the fake `vpn.v1.Access` server of `support` and, for the device flow,
//! a fake OIDC provider on port 0. (The real LDAP and OIDC servers are cluster-tests' concern.)

mod support;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};
use support::{seen, serve, Fake, Served, EXPIRES_AT, ID_TOKEN, LDAP_SESSION, OIDC_SESSION, PASSWORD};
use vpn_pki::contexts::{Context, Contexts};
use vpn_proto::v1::{LdapLogin, LoginOptionsResponse, LoginRequest};

/// What one run of the binary did.
#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn shown(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

/// Runs the vpnctl binary with `args`, `stdin` as its input and `config` as its context file;
/// no other `VPNCTL_*` setting leaks in from the environment.
async fn vpnctl(config: &Path, args: &[&str], stdin: &str) -> Run {
    let mut command = Command::new(env!("CARGO_BIN_EXE_vpnctl"));
    command.args(args).env("VPNCTL_CONFIG", config);
    for var in ["VPNCTL_ENDPOINTS", "VPNCTL_CA_CERT", "VPNCTL_CERT", "VPNCTL_KEY", "VPNCTL_TOKEN"] {
        command.env_remove(var);
    }
    command.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let stdin = stdin.to_owned();
    // Blocking, off the runtime, so the fake server keeps answering meanwhile.
    let ran = tokio::task::spawn_blocking(move || {
        let mut child = command.spawn().expect("vpnctl starts");
        if let Some(mut input) = child.stdin.take() {
            let _ = input.write_all(stdin.as_bytes());
        }
        child.wait_with_output().expect("vpnctl ends")
    });
    let output = ran.await.expect("joined");
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// `--endpoints <fake> --ca-cert <its CA>` followed by `args`.
fn at<'a>(served: &'a Served, args: &[&'a str]) -> Vec<&'a str> {
    [&["--endpoints", served.addr.as_str(), "--ca-cert", served.ca_cert.as_str()][..], args].concat()
}

fn logins(fake: &Fake) -> Vec<LoginRequest> {
    fake.logins.lock().map(|l| l.clone()).unwrap_or_default()
}

fn ldap_fake() -> Fake {
    Fake { options: LoginOptionsResponse { ldap: true, ..Default::default() }, ..Default::default() }
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).map(|m| m.permissions().mode() & 0o777).unwrap_or(0)
}

fn contexts(path: &Path) -> Contexts {
    Contexts::load(path).expect("the context file loads")
}

#[tokio::test]
async fn an_ldap_login_keeps_the_session_in_a_private_context_that_the_next_commands_use() {
    let served = serve(ldap_fake()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("vpnctl/config.toml");
    let run = vpnctl(&config, &at(&served, &["login", "--ldap", "alice"]), &format!("{PASSWORD}\n")).await;
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.stdout.starts_with(&format!("logged in as ldap:alice (groups ldap:ops) until {EXPIRES_AT} (in ")),
        "{run:?}"
    );
    assert!(run.stdout.contains("context \"default\", now the current one"), "{run:?}");
    assert!(!run.shown().contains(PASSWORD) && !run.shown().contains(LDAP_SESSION), "{run:?}");
    let login = LoginRequest {
        ldap: Some(LdapLogin { user: "alice".into(), password: PASSWORD.into() }),
        oidc_id_token: String::new(),
    };
    assert_eq!(logins(&served.fake), [login]);
    assert_eq!(seen(&served.fake), [None], "a login sends no other credential");

    assert_eq!(mode(&config), 0o600);
    let saved = contexts(&config);
    let (name, context) = saved.current().expect("a current context");
    assert_eq!(name, "default");
    assert_eq!(context.endpoints, [served.addr.as_str()]);
    assert_eq!(context.ca_cert.as_deref(), Some(Path::new(&served.ca_cert)));
    assert_eq!(context.token.as_ref().map(|t| t.expose()), Some(LDAP_SESSION));

    let run = vpnctl(&config, &["whoami"], "").await;
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(seen(&served.fake).last(), Some(&Some(format!("Bearer {LDAP_SESSION}"))), "the session is the bearer");

    let run = vpnctl(&config, &["logout"], "").await;
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.starts_with("logged out: context \"default\" holds no token any more"), "{run:?}");
    assert_eq!(contexts(&config).current().and_then(|(_, c)| c.token.clone()), None);
    assert_eq!(mode(&config), 0o600);
    let run = vpnctl(&config, &["whoami"], "").await;
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(seen(&served.fake).last(), Some(&None), "logged out: no bearer");
    let run = vpnctl(&config, &["logout", "-o", "json"], "").await;
    let json: Value = serde_json::from_str(&run.stdout).unwrap_or_default();
    assert_eq!((run.code, json), (0, json!({"context": "default", "removed": false})));
    let run = vpnctl(&config, &["logout", "--context", "nope"], "").await;
    assert_eq!(run.code, 3, "{run:?}");
}

#[tokio::test]
async fn refused_logins_exit_as_the_contract_says_and_store_nothing() {
    let served = serve(ldap_fake()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("config.toml");
    let ldap = at(&served, &["login", "--ldap", "alice"]);

    let run = vpnctl(&config, &ldap, "wr0ng-pw-x\n").await;
    assert_eq!(run.code, 5, "{run:?}");
    assert!(
        run.stderr.starts_with("vpnctl: UNAUTHENTICATED: wrong user name or password, or the account is disabled\n"),
        "{run:?}"
    );
    assert!(!run.shown().contains("wr0ng-pw-x"), "{run:?}");
    assert!(!config.exists(), "nothing stored");

    let run = vpnctl(&config, &ldap, "").await;
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("no password"), "{run:?}");

    let plain = format!("http://{}", served.addr);
    let run = vpnctl(&config, &["--endpoints", &plain, "login", "--ldap", "alice"], &format!("{PASSWORD}\n")).await;
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("only over TLS") && run.stderr.contains(&plain), "{run:?}");
    assert_eq!(logins(&served.fake).len(), 1, "only the wrong password reached the cluster");

    let no_ldap = serve(Fake::default()).await;
    let run = vpnctl(&config, &at(&no_ldap, &["login", "--ldap", "alice"]), &format!("{PASSWORD}\n")).await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("FAILED_PRECONDITION: this cluster has no LDAP login"), "{run:?}");
    assert!(!config.exists(), "nothing stored");
}

#[tokio::test]
async fn print_token_prints_the_session_alone_and_stores_nothing() {
    let served = serve(ldap_fake()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("config.toml");
    let args = at(&served, &["login", "--ldap", "alice", "--print-token"]);
    let run = vpnctl(&config, &args, &format!("{PASSWORD}\r\n")).await;
    assert_eq!((run.code, run.stdout.as_str()), (0, format!("{LDAP_SESSION}\n").as_str()), "{run:?}");
    assert!(!config.exists());
}

#[tokio::test]
async fn an_id_token_logs_in_with_oidc_into_the_named_context_and_other_endpoints_are_refused() {
    let served = serve(Fake::default()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("config.toml");
    let prod = Context { endpoints: vec!["10.9.9.9:7000".into()], ..Context::default() };
    let mut existing = Contexts { current_context: Some("prod".into()), ..Contexts::default() };
    existing.contexts.insert("prod".into(), prod.clone());
    existing.save(&config).expect("save");

    let token_file = dir.path().join("id.jwt");
    std::fs::write(&token_file, format!("{ID_TOKEN}\n")).expect("write");
    let file = token_file.display().to_string();
    let run = vpnctl(&config, &at(&served, &["login", "--oidc", "--id-token", &file]), "").await;
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("context \"prod\" is for endpoints 10.9.9.9:7000"), "{run:?}");
    assert!(logins(&served.fake).is_empty());

    let args = at(&served, &["login", "--oidc", "--id-token", &file, "--context", "lab", "-o", "json"]);
    let run = vpnctl(&config, &args, "").await;
    assert_eq!(run.code, 0, "{run:?}");
    let json: Value = serde_json::from_str(&run.stdout).unwrap_or_default();
    assert_eq!(
        json,
        json!({"principal": "oidc:carol@example.com", "groups": ["oidc:admins"], "expires_at": EXPIRES_AT})
    );
    let saved = contexts(&config);
    assert_eq!(
        saved.current().map(|(name, c)| (name, c.token.as_ref().map(|t| t.expose()))),
        Some(("lab", Some(OIDC_SESSION)))
    );
    assert_eq!(saved.contexts.get("prod"), Some(&prod), "the other context is left alone");

    let args = at(&served, &["login", "--oidc", "--id-token", "-", "--print-token"]);
    let run = vpnctl(&config, &args, &format!("  {ID_TOKEN}\n")).await;
    assert_eq!((run.code, run.stdout.as_str()), (0, format!("{OIDC_SESSION}\n").as_str()), "{run:?}");
    let sent: Vec<String> = logins(&served.fake).into_iter().map(|l| l.oidc_id_token).collect();
    assert_eq!(sent, [ID_TOKEN, ID_TOKEN]);
}

/// A fake OIDC provider on port 0: discovery, a device authorization, and a token endpoint
/// giving `token_answers` in turn. Records each request as `METHOD /path body`.
struct Provider {
    issuer: String,
    requests: Arc<Mutex<Vec<String>>>,
}

impl Provider {
    fn start(token_answers: Vec<(u16, Value)>, device: bool) -> Provider {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let issuer = format!("http://{}", listener.local_addr().expect("addr"));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (base, seen) = (issuer.clone(), requests.clone());
        std::thread::spawn(move || {
            let mut token_answers = token_answers.into_iter();
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let request = read_request(&mut stream);
                let (head, body) = request.split_once("\r\n\r\n").unwrap_or((&request, ""));
                let line: Vec<&str> = head.split(' ').take(2).collect();
                let (status, json) = match line.as_slice() {
                    ["GET", "/.well-known/openid-configuration"] => {
                        let mut doc = json!({"issuer": base, "token_endpoint": format!("{base}/token")});
                        if device {
                            doc["device_authorization_endpoint"] = json!(format!("{base}/device"));
                        }
                        (200, doc)
                    }
                    ["POST", "/device"] => (
                        200,
                        json!({
                            "device_code": "dev-code-1", "user_code": "WDJB-MJHT",
                            "verification_uri": format!("{base}/activate"),
                            "verification_uri_complete": format!("{base}/activate?user_code=WDJB-MJHT"),
                            "expires_in": 60, "interval": 1,
                        }),
                    ),
                    ["POST", "/token"] => token_answers.next().unwrap_or((400, json!({"error": "expired_token"}))),
                    _ => (404, json!({"error": "not_found"})),
                };
                if let Ok(mut seen) = seen.lock() {
                    seen.push(format!("{} {body}", line.join(" ")));
                }
                let body = json.to_string();
                let answer = format!(
                    "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(answer.as_bytes());
            }
        });
        Provider { issuer, requests }
    }

    fn requests(&self) -> Vec<String> {
        self.requests.lock().map(|r| r.clone()).unwrap_or_default()
    }
}

/// A request's head and its content-length body.
fn read_request(stream: &mut impl Read) -> String {
    let mut seen = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        let text = String::from_utf8_lossy(&seen).into_owned();
        if let Some(end) = text.find("\r\n\r\n") {
            let length = text[..end]
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .and_then(|n| n.trim().parse::<usize>().ok())
                .unwrap_or(0);
            if seen.len() >= end + 4 + length {
                return text;
            }
        }
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return text,
            Ok(n) => seen.extend_from_slice(&chunk[..n]),
        }
    }
}

fn oidc_fake(issuer: &str) -> Fake {
    let options = LoginOptionsResponse { ldap: false, oidc_issuer: issuer.into(), oidc_client_id: "vpn".into() };
    Fake { options, ..Default::default() }
}

#[tokio::test]
async fn the_device_flow_polls_until_approved_then_logs_in_with_the_id_token() {
    let pending = || (400, json!({"error": "authorization_pending"}));
    let approved = (200, json!({"id_token": ID_TOKEN, "access_token": "at", "token_type": "Bearer"}));
    let provider = Provider::start(vec![pending(), pending(), approved], true);
    let served = serve(oidc_fake(&provider.issuer)).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("config.toml");

    let run = vpnctl(&config, &at(&served, &["login", "--oidc"]), "").await;
    assert_eq!(run.code, 2, "an http issuer needs --oidc-insecure: {run:?}");
    assert!(run.stderr.contains("--oidc-insecure"), "{run:?}");
    assert!(provider.requests().is_empty(), "refused before any request");

    let run = vpnctl(&config, &at(&served, &["login", "--oidc", "--oidc-insecure", "-o", "json"]), "").await;
    assert_eq!(run.code, 0, "{run:?}");
    let json: Value = serde_json::from_str(&run.stdout).unwrap_or_default();
    assert_eq!(json["principal"], "oidc:carol@example.com", "{run:?}");
    let link = format!("{}/activate?user_code=WDJB-MJHT", provider.issuer);
    assert!(run.stderr.contains(&link) && run.stderr.contains("enter the code WDJB-MJHT"), "{run:?}");
    let poll = "POST /token grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Adevice_code\
                &device_code=dev-code-1&client_id=vpn";
    assert_eq!(
        provider.requests(),
        ["GET /.well-known/openid-configuration ", "POST /device client_id=vpn&scope=openid", poll, poll, poll,]
    );
    let sent: Vec<String> = logins(&served.fake).into_iter().map(|l| l.oidc_id_token).collect();
    assert_eq!(sent, [ID_TOKEN]);
    let saved = contexts(&config);
    assert_eq!(
        saved.current().and_then(|(_, c)| c.token.clone()).map(|t| t.expose().to_owned()).as_deref(),
        Some(OIDC_SESSION)
    );
    assert!(!run.shown().contains(OIDC_SESSION) && !run.shown().contains("dev-code-1"), "{run:?}");
}

async fn device_login(config: &Path, served: &Served) -> Run {
    vpnctl(config, &at(served, &["login", "--oidc", "--oidc-insecure"]), "").await
}

#[tokio::test]
async fn device_flows_that_cannot_succeed_say_why() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("config.toml");
    let denied = Provider::start(vec![(400, json!({"error": "access_denied"}))], true);
    let served = serve(oidc_fake(&denied.issuer)).await;
    let run = device_login(&config, &served).await;
    assert_eq!(run.code, 5, "{run:?}");
    assert!(run.stderr.contains("UNAUTHENTICATED: the login was denied at the OIDC provider"), "{run:?}");

    let no_device = Provider::start(Vec::new(), false);
    let served = serve(oidc_fake(&no_device.issuer)).await;
    let run = device_login(&config, &served).await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("offers no device login") && run.stderr.contains("--id-token FILE"), "{run:?}");

    let served = serve(Fake::default()).await;
    let run = device_login(&config, &served).await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("FAILED_PRECONDITION: this cluster has no OIDC login"), "{run:?}");

    let gone = TcpListener::bind("127.0.0.1:0").expect("bind");
    let issuer = format!("http://{}", gone.local_addr().expect("addr"));
    drop(gone);
    let served = serve(oidc_fake(&issuer)).await;
    let run = device_login(&config, &served).await;
    assert_eq!(run.code, 4, "{run:?}");
    assert!(run.stderr.contains("the OIDC provider is unavailable"), "{run:?}");
    assert!(!config.exists(), "nothing stored");
}
