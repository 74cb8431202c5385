//! Fuzz targets of what reaches a node from outside (see `vpn-fuzzkit`):
//! every gRPC request message, the agent protocol, the TOML config file and
//! the `/sub/{token}` route.
//!
//! A gRPC target decodes bytes as a message the way tonic does (prost),
//! checks that what decodes encodes back to itself, and hands the message
//! to the conversion the service runs first (where our validation lives).
//! A refusal must be a clean one: a status a client acts on, never INTERNAL.
//!
//! Layout:
//! - this file: the decoding every gRPC target shares, text generators.
//! - `public`: `fuzz_grpc_public`, every request of `vpn.v1`.
//! - `raft`: `fuzz_grpc_raft`, the requests of the internal Raft service.
//! - `agent`: `fuzz_agent_protocol`, the messages of `vpn.internal.v1.Agent`.
//! - `config`: `fuzz_config_toml`, the `--config` file.
//! - `subscription`: `fuzz_subscription_path`, requests to a node's HTTP
//!   listener, in-process.

mod agent;
mod config;
mod public;
mod raft;
mod subscription;

use std::fmt::Debug;

use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::TestCaseError;
use vpn_fuzzkit::{bytes, mutate, mutations, Mutation};

use crate::error::Error;

/// Defines an enum over the protobuf messages of one target, with what a
/// [`Case`] needs: each message's name, its encoding, decoding by name.
macro_rules! messages {
    ($name:ident { $($variant:ident($msg:ty)),* $(,)? }) => {
        #[derive(Clone, Debug, PartialEq)]
        enum $name {
            $($variant($msg)),*
        }

        impl $crate::fuzz::Messages for $name {
            const NAMES: &'static [&'static str] = &[$(stringify!($variant)),*];

            fn name(&self) -> &'static str {
                match self {
                    $(Self::$variant(_) => stringify!($variant)),*
                }
            }

            fn encode(&self) -> Vec<u8> {
                match self {
                    $(Self::$variant(m) => prost::Message::encode_to_vec(m)),*
                }
            }

            fn decode_as(name: &str, bytes: &[u8]) -> Result<Self, prost::DecodeError> {
                $(
                    if name == stringify!($variant) {
                        return <$msg as prost::Message>::decode(bytes).map(Self::$variant);
                    }
                )*
                unreachable!("no message {name}")
            }
        }
    };
}
use messages;

/// The messages of one target (see [`messages`]).
trait Messages: Clone + Debug + PartialEq + Sized {
    const NAMES: &'static [&'static str];
    fn name(&self) -> &'static str;
    fn encode(&self) -> Vec<u8>;
    fn decode_as(name: &str, bytes: &[u8]) -> Result<Self, prost::DecodeError>;
}

/// Random bytes read as one of the messages, or a message and mutations of
/// its encoding (read as the same message).
#[derive(Clone, Debug)]
enum Case<T> {
    Random(Index, Vec<u8>),
    Mutated(T, Vec<Mutation>),
}

fn case<T: Messages>(valid: impl Strategy<Value = T>) -> impl Strategy<Value = Case<T>> {
    prop_oneof![
        1 => (any::<Index>(), bytes(160)).prop_map(|(kind, bytes)| Case::Random(kind, bytes)),
        3 => (valid, mutations()).prop_map(|(message, mutations)| Case::Mutated(message, mutations)),
    ]
}

/// Decodes the case as tonic would: `None` when prost refuses it (which it
/// must not for a message passed on unchanged); else a message that encodes
/// back to itself.
fn decoded<T: Messages>(case: &Case<T>) -> Result<Option<T>, TestCaseError> {
    let (name, bytes, valid) = match case {
        Case::Random(kind, bytes) => (*kind.get(T::NAMES), bytes.clone(), None),
        Case::Mutated(message, mutations) => {
            let unchanged = mutations.is_empty().then_some(message);
            (message.name(), mutate(&message.encode(), mutations), unchanged)
        }
    };
    let message = match T::decode_as(name, &bytes) {
        Ok(message) => message,
        Err(e) => {
            prop_assert!(valid.is_none(), "{name}: a message prost encoded does not decode: {e}");
            return Ok(None);
        }
    };
    if let Some(valid) = valid {
        prop_assert_eq!(&message, valid);
    }
    let again = T::decode_as(name, &message.encode())
        .map_err(|e| TestCaseError::fail(format!("{name}: a decoded message does not decode once encoded: {e}")))?;
    prop_assert_eq!(&again, &message, "{} does not encode back to itself", name);
    Ok(Some(message))
}

/// A refusal a client can act on: not INTERNAL, and saying what is wrong
/// (the field, for a bad argument).
fn clean(e: Error) -> Result<(), TestCaseError> {
    if let Error::InvalidArgument { field, detail } = &e {
        prop_assert!(!field.is_empty() && !detail.is_empty(), "{e:?}");
    }
    let status = tonic::Status::from(e);
    let code = status.code();
    prop_assert!(!matches!(code, tonic::Code::Ok | tonic::Code::Internal | tonic::Code::Unknown), "{status:?}");
    prop_assert!(!status.message().is_empty(), "{status:?}");
    Ok(())
}

/// Checks a conversion's outcome: `accepted` on success, [`clean`] on refusal.
fn outcome<T>(
    result: Result<T, Error>,
    accepted: impl FnOnce(T) -> Result<(), TestCaseError>,
) -> Result<(), TestCaseError> {
    match result {
        Ok(value) => accepted(value),
        Err(e) => clean(e),
    }
}

/// Strings a field may hold: plausible ASCII, tricky tokens, any Unicode.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        2 => "[ -~]{0,24}",
        1 => prop::sample::select(vpn_fuzzkit::TOKENS).prop_map(String::from),
        1 => any::<String>(),
    ]
}

/// User names: valid ones, near misses, anything.
fn user_name() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "[a-z0-9][a-z0-9._-]{0,12}",
        1 => "[a-z0-9][a-z0-9._-]{62,64}",
        1 => prop::sample::select(vec!["", "-a", ".a", "A", "a b", "a/b", "é", "a\u{0}"]).prop_map(String::from),
        1 => text(),
    ]
}

/// RFC 3339 times and near misses.
fn time_text() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => (1970u32..2200, 1u32..13, 1u32..29, 0u32..24, 0u32..60, 0u32..61)
            .prop_map(|(y, mo, d, h, mi, s)| format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z")),
        1 => prop::sample::select(vec![
            "never", "", " ", "2030-02-30T00:00:00Z", "9999-12-31T23:59:60Z", "0000-01-01T00:00:00Z",
            "2030-01-01T00:00:00+23:59", "2030-01-01T00:00:00-23:59", "2030-01-01T00:00:00.123456789123Z",
            "2030-01-01t00:00:00z", "+10000-01-01T00:00:00Z", "2030-01-01", "30d",
        ])
        .prop_map(String::from),
        1 => text(),
    ]
}

/// UUIDs as text, and near misses.
fn uuid_text() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => any::<u128>().prop_map(|n| uuid::Uuid::from_u128(n).to_string()),
        1 => any::<u128>().prop_map(|n| uuid::Uuid::from_u128(n).simple().to_string()),
        1 => text(),
    ]
}
