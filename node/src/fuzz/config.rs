//! `fuzz_config_toml`: the `--config` file, read by `Config::from_args` as
//! `vpnd --config FILE` reads it. Files are written by the TOML serializer
//! from settings of the right and the wrong types (valid-looking files),
//! then mutated as text; random bytes too. A file is accepted as a
//! configuration that holds together, or refused with an error that names
//! the file or the setting.

use std::path::{Path, PathBuf};

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use vpn_fuzzkit::{bytes, mutate, mutation, Mutation};

use super::text;
use crate::config::{Args, Bootstrap, Config};
use crate::error::Error;

#[derive(Clone, Copy, Debug)]
enum Kind {
    Int,
    Bool,
    Text(&'static [&'static str]),
    List(&'static [&'static str]),
}

const ADDRS: &[&str] =
    &["127.0.0.1:7000", "127.0.0.1:7080", "0.0.0.0:7000", "[::1]:7001", "127.0.0.1:0", "h:7000", ":7000"];
const PATHS: &[&str] = &["/nonexistent/vpnd/file.pem", "", "relative/dir", "/dev/null"];
const INBOUNDS: &[&str] = &[
    "vless-tls=443",
    "shadowsocks-2022=8388",
    "vless-reality=8443",
    "vless-tls=0",
    "vless-tls=7000",
    "x=1",
    "vless-tls",
];

/// The settings of the file (kebab-case), with values of their own kind.
const KEYS: &[(&str, Kind)] = &[
    ("id", Kind::Int),
    ("listen", Kind::Text(ADDRS)),
    ("advertise", Kind::Text(ADDRS)),
    ("http", Kind::Text(ADDRS)),
    ("data-dir", Kind::Text(PATHS)),
    ("initial-members", Kind::Text(&["1=127.0.0.1:7000", "1=127.0.0.1:7000,2=h:7001", "0=h:1", "1=h:1,1=h:2", ","])),
    ("join", Kind::Text(&["127.0.0.1:7000", "h:7000,g:7001", ",", "h"])),
    ("learner", Kind::Bool),
    ("voter", Kind::Bool),
    ("heartbeat-ms", Kind::Int),
    ("election-timeout-min-ms", Kind::Int),
    ("election-timeout-max-ms", Kind::Int),
    ("snapshot-every", Kind::Int),
    ("trusted-ca-file", Kind::Text(PATHS)),
    ("cert-file", Kind::Text(PATHS)),
    ("key-file", Kind::Text(PATHS)),
    ("insecure", Kind::Bool),
    ("join-token", Kind::Text(&["vpnj1-00-11-22", ""])),
    ("ca-key-file", Kind::Text(PATHS)),
    ("http-tls-cert", Kind::Text(PATHS)),
    ("http-tls-key", Kind::Text(PATHS)),
    ("node-cert-lifetime", Kind::Text(&["90d", "12h", "30m", "9s", "0d", "d", "99999999999999999999d"])),
    ("dataplane", Kind::Bool),
    ("public-host", Kind::Text(&["vpn.example.com", "10.0.0.1", "", " "])),
    ("inbound", Kind::List(INBOUNDS)),
    ("engine-image", Kind::Text(&["sing-box:local", ""])),
    ("labels", Kind::Text(&["region=eu", "region=eu,zone=a", "=", "a=b=c", ","])),
    ("capacity", Kind::Int),
    ("tls-cert", Kind::Text(PATHS)),
    ("tls-key", Kind::Text(PATHS)),
    ("tls-server-name", Kind::Text(&["vpn.example.com", ""])),
    ("reality-server-name", Kind::Text(&["www.example.com", ""])),
    ("reality-handshake", Kind::Text(&["www.example.com:443", "h", ":443"])),
    ("resync-secs", Kind::Int),
    ("docker-host", Kind::Text(&["unix:///var/run/docker.sock", ""])),
    ("replicas", Kind::Int),
    ("down-after-ms", Kind::Int),
    ("node-heartbeat-ms", Kind::Int),
    ("max-moves-per-sec", Kind::Int),
    ("subscription-base-url", Kind::Text(&["https://vpn.example.com", "http://[::1]:7080/", "", "ftp://x"])),
    ("no-such-setting", Kind::Bool),
];

fn int() -> impl Strategy<Value = toml::Value> {
    prop_oneof![
        4 => prop::sample::select(vec![0i64, 1, 2, 5, 10, 50, 100, 300, 600, 1000, 65535, 65536, -1, i64::MAX]),
        1 => any::<i64>(),
    ]
    .prop_map(toml::Value::Integer)
}

fn of_kind(kind: Kind) -> BoxedStrategy<toml::Value> {
    match kind {
        Kind::Int => int().boxed(),
        Kind::Bool => any::<bool>().prop_map(toml::Value::Boolean).boxed(),
        Kind::Text(pool) => prop_oneof![
            4 => prop::sample::select(pool).prop_map(String::from),
            1 => prop::sample::select(ADDRS).prop_map(String::from),
            1 => text(),
        ]
        .prop_map(toml::Value::String)
        .boxed(),
        Kind::List(pool) => vec(prop::sample::select(pool).prop_map(|s| toml::Value::String(s.to_owned())), 0..3)
            .prop_map(toml::Value::Array)
            .boxed(),
    }
}

/// A value for setting `key`: mostly of its own kind, sometimes of another.
fn value(kind: Kind) -> impl Strategy<Value = toml::Value> {
    let other = prop_oneof![
        int(),
        any::<bool>().prop_map(toml::Value::Boolean),
        text().prop_map(toml::Value::String),
        any::<f64>().prop_map(toml::Value::Float),
        Just(toml::Value::Array(vec![toml::Value::Integer(1), toml::Value::String("a".into())])),
        Just(toml::Value::Table(toml::Table::from_iter([("id".to_owned(), toml::Value::Integer(1))]))),
    ];
    prop_oneof![6 => of_kind(kind), 1 => other]
}

/// A file's settings, before serialising: mostly on top of the settings
/// every node needs, so the checks behind those are reached too.
#[derive(Clone, Debug)]
struct Settings {
    base: bool,
    set: Vec<(usize, toml::Value)>,
}

fn settings() -> impl Strategy<Value = Settings> {
    let one = (0..KEYS.len()).prop_flat_map(|i| value(KEYS[i].1).prop_map(move |v| (i, v)));
    (prop::bool::weighted(0.75), vec(one, 0..6)).prop_map(|(base, set)| Settings { base, set })
}

impl Settings {
    fn toml(&self, data_dir: &Path) -> Vec<u8> {
        let mut table = toml::Table::new();
        if self.base {
            table.insert("id".into(), toml::Value::Integer(1));
            table.insert("listen".into(), toml::Value::String("127.0.0.1:7000".into()));
            table.insert("http".into(), toml::Value::String("127.0.0.1:7080".into()));
            table.insert("data-dir".into(), toml::Value::String(data_dir.display().to_string()));
        }
        for (i, value) in &self.set {
            table.insert(KEYS[*i].0.into(), value.clone());
        }
        toml::to_string(&table).unwrap_or_default().into_bytes()
    }
}

#[derive(Clone, Debug)]
enum File {
    Random(Vec<u8>),
    /// Settings serialised, mutated, and (when `text`) made valid UTF-8
    /// again, so that more files get past the TOML reader.
    Mutated {
        settings: Settings,
        mutations: Vec<Mutation>,
        text: bool,
    },
}

impl File {
    fn bytes(&self, data_dir: &Path) -> Vec<u8> {
        match self {
            File::Random(bytes) => bytes.clone(),
            File::Mutated { settings, mutations, text } => {
                let bytes = mutate(&settings.toml(data_dir), mutations);
                if *text {
                    String::from_utf8_lossy(&bytes).into_owned().into_bytes()
                } else {
                    bytes
                }
            }
        }
    }
}

/// Fewer and lighter changes than for binary formats: most changed TOML no
/// longer parses, and the settings themselves already vary in kind.
fn text_mutations() -> impl Strategy<Value = Vec<Mutation>> {
    prop_oneof![3 => Just(Vec::new()), 3 => vec(mutation(), 1..2), 1 => vec(mutation(), 2..5)]
}

/// The file, and the flags given with it.
fn case() -> impl Strategy<Value = (File, bool, bool)> {
    let file = prop_oneof![
        1 => bytes(200).prop_map(File::Random),
        4 => (settings(), text_mutations(), prop::bool::weighted(0.75))
            .prop_map(|(settings, mutations, text)| File::Mutated { settings, mutations, text }),
    ];
    (file, prop::bool::weighted(0.2), prop::bool::weighted(0.6))
}

/// What an accepted configuration must hold, whatever the file said.
fn holds_together(c: &Config) -> Result<(), TestCaseError> {
    prop_assert!(c.id != 0);
    let t = &c.raft;
    prop_assert!(0 < t.heartbeat_ms && t.heartbeat_ms < t.election_timeout_min_ms, "{t:?}");
    prop_assert!(t.election_timeout_min_ms < t.election_timeout_max_ms && t.snapshot_every > 0, "{t:?}");
    if let Bootstrap::Initial(members) = &c.bootstrap {
        prop_assert_eq!(members.get(&c.id), Some(&c.advertise));
    }
    if let Bootstrap::Join { seeds, .. } | Bootstrap::Edge { control_plane: seeds } = &c.bootstrap {
        prop_assert!(!seeds.is_empty());
    }
    Ok(())
}

#[test]
fn fuzz_config_toml() {
    let scratch = tempfile::tempdir().expect("a temp dir");
    let path: PathBuf = scratch.path().join("vpnd.toml");
    vpn_fuzzkit::run("config_toml", file!(), case(), |(file, dev, insecure)| {
        std::fs::write(&path, file.bytes(scratch.path())).expect("the config file");
        let args = || Args { config: Some(path.clone()), dev, insecure, ..Args::default() };
        match Config::from_args(args()) {
            Ok(config) => {
                holds_together(&config)?;
                let again = Config::from_args(args()).map_err(|e| TestCaseError::fail(format!("read twice: {e}")))?;
                prop_assert_eq!(
                    (again.id, again.listen, again.bootstrap),
                    (config.id, config.listen, config.bootstrap)
                );
            }
            Err(e) => {
                let startup = matches!(e, Error::MissingFlag(_) | Error::InvalidFlag { .. } | Error::ConfigFile { .. });
                prop_assert!(startup, "not a settings error: {e:?}");
                prop_assert!(!e.to_string().is_empty());
            }
        }
        Ok(())
    });
}
