//! `fuzz_grpc_public`: every request of the public API (`vpn.v1`), decoded
//! and handed to the checks its service runs before anything else. What a
//! check accepts must be what the service can act on (and show back).

use std::sync::OnceLock;
use std::time::Duration;

use proptest::collection::{hash_map, vec};
use proptest::option;
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use vpn_fuzzkit::{mutate, mutation, Mutation};
use vpn_pki::{Ca, Role};
use vpn_proto::v1::{
    AddMemberRequest, CreateJoinTokenRequest, CreateUserRequest, DeleteUserRequest, GetNodeRequest,
    GetUserLinksRequest, GetUserRequest, JoinRequest, ListJoinTokensRequest, ListNodesRequest, ListUsersRequest,
    NodeRequest, RemoveMemberRequest, RenewCertificateRequest, ResetTrafficRequest, RevokeJoinTokenRequest,
    RotateTokenRequest, StatusRequest, UpdateUserRequest,
};
use vpn_storage::model;

use super::{case, clean, decoded, messages, outcome, text, time_text, user_name, uuid_text};
use crate::api::{cluster, convert, join_tokens, users};
use crate::error::Error;

messages!(Public {
    CreateUser(CreateUserRequest),
    GetUser(GetUserRequest),
    ListUsers(ListUsersRequest),
    UpdateUser(UpdateUserRequest),
    DeleteUser(DeleteUserRequest),
    GetUserLinks(GetUserLinksRequest),
    ResetTraffic(ResetTrafficRequest),
    RotateToken(RotateTokenRequest),
    Status(StatusRequest),
    AddMember(AddMemberRequest),
    RemoveMember(RemoveMemberRequest),
    CreateJoinToken(CreateJoinTokenRequest),
    ListJoinTokens(ListJoinTokensRequest),
    RevokeJoinToken(RevokeJoinTokenRequest),
    Join(JoinRequest),
    RenewCertificate(RenewCertificateRequest),
    ListNodes(ListNodesRequest),
    GetNode(GetNodeRequest),
    CordonNode(NodeRequest),
});

fn consistency() -> impl Strategy<Value = i32> {
    prop_oneof![4 => 0i32..2, 1 => any::<i32>()]
}

fn id() -> impl Strategy<Value = u64> {
    prop_oneof![4 => 0u64..8, 1 => any::<u64>()]
}

fn labels() -> impl Strategy<Value = std::collections::HashMap<String, String>> {
    let label = || prop_oneof![4 => "[A-Za-z0-9._/-]{1,8}", 1 => "[a-z]{63,64}", 1 => text()];
    hash_map(label(), label(), 0..3)
}

fn reset() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(vec!["", "none", "daily", "weekly", "monthly", "Monthly", " daily"]).prop_map(String::from),
        1 => text(),
    ]
}

fn addr() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => ("[a-z0-9.]{1,12}", any::<u16>()).prop_map(|(host, port)| format!("{host}:{port}")),
        1 => prop::sample::select(vec!["", ":", ":7000", "h:", "h:0", "h:65536", "[::1]:7000", "::1", "h:+1"])
            .prop_map(String::from),
        1 => text(),
    ]
}

fn join_token_text() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => ("[0-9a-f]{64}", "[0-9a-f]{16}", "[0-9a-f]{32}").prop_map(|(d, i, s)| format!("vpnj1-{d}-{i}-{s}")),
        1 => ("[0-9a-fA-F-]{0,70}", "[0-9a-f]{16}").prop_map(|(d, i)| format!("vpnj1-{d}-{i}-")),
        1 => text(),
    ]
}

/// A real CSR (from a pool made once per run), its DER or its PEM mutated.
#[derive(Clone, Debug)]
struct Csr {
    which: usize,
    der: Vec<Mutation>,
    pem: Vec<Mutation>,
}

const CSR_POOL: usize = 4;

fn csr_pool() -> &'static [String] {
    static POOL: OnceLock<Vec<String>> = OnceLock::new();
    POOL.get_or_init(|| {
        let hosts = [vec![], vec!["n1.example.com".to_owned()], vec!["10.0.0.1".to_owned(), "a.b".to_owned()]];
        (0..CSR_POOL).map(|i| vpn_pki::ca::make_csr(&hosts[i % hosts.len()]).expect("a CSR").1).collect()
    })
}

impl Csr {
    fn pem(&self) -> String {
        let pem = &csr_pool()[self.which % CSR_POOL];
        let pem = if self.der.is_empty() {
            pem.clone()
        } else {
            let der = vpn_pki::files::pem_to_der(pem, "CERTIFICATE REQUEST").expect("a CSR's DER");
            to_pem(&mutate(&der, &self.der))
        };
        String::from_utf8_lossy(&mutate(pem.as_bytes(), &self.pem)).into_owned()
    }
}

fn to_pem(der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> = b64.as_bytes().chunks(64).map(|c| std::str::from_utf8(c).unwrap_or_default()).collect();
    format!("-----BEGIN CERTIFICATE REQUEST-----\n{}\n-----END CERTIFICATE REQUEST-----\n", lines.join("\n"))
}

fn csr() -> impl Strategy<Value = String> {
    let changes = || prop_oneof![2 => Just(Vec::new()), 1 => vec(mutation(), 1..4)];
    prop_oneof![
        4 => (0..CSR_POOL, changes(), changes()).prop_map(|(which, der, pem)| Csr { which, der, pem }.pem()),
        1 => text(),
    ]
}

fn public() -> impl Strategy<Value = Public> {
    prop_oneof![
        (user_name(), time_text(), any::<u64>(), reset(), labels()).prop_map(
            |(name, expires_at, data_limit_bytes, reset, placement_constraint)| Public::CreateUser(CreateUserRequest {
                name,
                expires_at,
                data_limit_bytes,
                reset,
                placement_constraint,
            })
        ),
        (user_name(), consistency()).prop_map(|(name, consistency)| Public::GetUser(GetUserRequest { name, consistency })),
        (any::<u32>(), prop_oneof![Just(String::new()), user_name()], consistency()).prop_map(
            |(page_size, page_token, consistency)| Public::ListUsers(ListUsersRequest {
                page_size,
                page_token,
                consistency
            })
        ),
        (
            user_name(),
            option::of(prop_oneof![0i32..5, any::<i32>()]),
            option::of(time_text()),
            option::of(any::<u64>()),
            option::of(reset())
        )
            .prop_map(|(name, status, expires_at, data_limit_bytes, reset)| Public::UpdateUser(UpdateUserRequest {
                name,
                status,
                expires_at,
                data_limit_bytes,
                reset
            })),
        user_name().prop_map(|name| Public::DeleteUser(DeleteUserRequest { name })),
        (user_name(), consistency())
            .prop_map(|(name, consistency)| Public::GetUserLinks(GetUserLinksRequest { name, consistency })),
        user_name().prop_map(|name| Public::ResetTraffic(ResetTrafficRequest { name })),
        user_name().prop_map(|name| Public::RotateToken(RotateTokenRequest { name })),
        Just(Public::Status(StatusRequest {})),
        (id(), addr(), any::<bool>(), prop_oneof![Just(String::new()), uuid_text()]).prop_map(
            |(id, addr, voter, incarnation)| Public::AddMember(AddMemberRequest { id, addr, voter, incarnation })
        ),
        id().prop_map(|id| Public::RemoveMember(RemoveMemberRequest { id })),
        (
            prop_oneof![3 => prop::sample::select(vec!["controlplane", "dataplane"]).prop_map(String::from), 1 => text()],
            prop_oneof![0u64..3_000_000, any::<u64>()],
            prop_oneof![0u32..1100, any::<u32>()]
        )
            .prop_map(|(role, ttl_seconds, uses)| Public::CreateJoinToken(CreateJoinTokenRequest {
                role,
                ttl_seconds,
                uses
            })),
        Just(Public::ListJoinTokens(ListJoinTokensRequest {})),
        text().prop_map(|id| Public::RevokeJoinToken(RevokeJoinTokenRequest { id })),
        (join_token_text(), id(), csr())
            .prop_map(|(token, node_id, csr_pem)| Public::Join(JoinRequest { token, node_id, csr_pem })),
        csr().prop_map(|csr_pem| Public::RenewCertificate(RenewCertificateRequest { csr_pem })),
        consistency().prop_map(|consistency| Public::ListNodes(ListNodesRequest { consistency })),
        (id(), consistency()).prop_map(|(id, consistency)| Public::GetNode(GetNodeRequest { id, consistency })),
        id().prop_map(|id| Public::CordonNode(NodeRequest { id })),
    ]
}

/// What the checks run against: a time, and a CA that signs CSRs.
struct Context {
    now_ms: i64,
    ca: Ca,
}

/// Signing a CSR as Join and RenewCertificate do: a certificate naming the
/// node, or a clean refusal naming the CSR.
fn sign(cx: &Context, csr_pem: &str, id: u64) -> Result<(), TestCaseError> {
    match cx.ca.sign_node_csr(csr_pem, id, Role::DataPlane, Duration::from_secs(3600)) {
        Ok(cert_pem) => {
            let der = vpn_pki::files::pem_to_der(&cert_pem, "CERTIFICATE").map_err(TestCaseError::fail)?;
            let info = cx.ca.verify(&der).map_err(|e| TestCaseError::fail(format!("an issued certificate: {e}")))?;
            prop_assert_eq!(info.principal, vpn_pki::Principal::Node { id, role: Role::DataPlane });
            Ok(())
        }
        Err(e) => clean(Error::InvalidArgument { field: "csr_pem", detail: e.to_string() }),
    }
}

fn accepted<T>(_: T) -> Result<(), TestCaseError> {
    Ok(())
}

fn name_and<T>(name: &str, then: impl FnOnce() -> Result<T, Error>) -> Result<T, Error> {
    users::check_name("name", name)?;
    then()
}

/// The checks the service runs on `request`, and what must hold of what they accept.
fn check(request: &Public, cx: &Context) -> Result<(), TestCaseError> {
    let read = |name: &str, consistency: i32| name_and(name, || crate::api::consistency(consistency).map(|_| ()));
    match request {
        Public::CreateUser(r) => {
            outcome(name_and(&r.name, || users::new_user_fields(r, cx.now_ms)), |(limits, constraint)| {
                prop_assert!(limits.expires_at_ms == 0 || limits.expires_at_ms > cx.now_ms);
                let mut user = model::User::new(r.name.clone(), cx.now_ms);
                user.limits = limits;
                user.constraint = constraint;
                // What the service answers shows the fields as they were given.
                let shown = convert::user(&user, "https://fuzz.example");
                prop_assert_eq!(&shown.name, &r.name);
                prop_assert_eq!(shown.placement_constraint.len(), r.placement_constraint.len());
                if limits.expires_at_ms != 0 {
                    prop_assert_eq!(convert::parse_rfc3339_ms(&shown.expires_at), Some(limits.expires_at_ms));
                }
                Ok(())
            })
        }
        Public::GetUser(r) => outcome(read(&r.name, r.consistency), accepted),
        Public::GetUserLinks(r) => outcome(read(&r.name, r.consistency), accepted),
        Public::ListUsers(r) => {
            let checked = users::page(r).and_then(|page| crate::api::consistency(r.consistency).map(|_| page));
            outcome(checked, |(after, size)| {
                prop_assert!((1..=1000).contains(&size));
                prop_assert!(after.is_none_or(|a| model::validate_user_name(a).is_ok()));
                Ok(())
            })
        }
        Public::UpdateUser(r) => outcome(name_and(&r.name, || users::changes(r, cx.now_ms)), |(status, limits)| {
            prop_assert!(status.is_some() || !limits.is_empty());
            prop_assert!(matches!(status, None | Some(model::UserStatus::Active | model::UserStatus::Disabled)));
            Ok(())
        }),
        Public::DeleteUser(DeleteUserRequest { name })
        | Public::ResetTraffic(ResetTrafficRequest { name })
        | Public::RotateToken(RotateTokenRequest { name }) => outcome(users::check_name("name", name), accepted),
        Public::AddMember(r) => outcome(cluster::check_add(r), |()| {
            prop_assert!(r.id != 0);
            Ok(())
        }),
        Public::CreateJoinToken(r) => outcome(join_tokens::token_request(r), |(_, ttl, uses)| {
            prop_assert!(ttl <= Duration::from_secs(30 * 86_400) && (1..=1000).contains(&uses));
            Ok(())
        }),
        Public::Join(r) => outcome(join_tokens::join_token(r), |token| {
            prop_assert!(r.node_id != 0 && !token.secret.is_empty());
            sign(cx, &r.csr_pem, r.node_id)
        }),
        Public::RenewCertificate(r) => sign(cx, &r.csr_pem, 7),
        Public::ListNodes(ListNodesRequest { consistency }) | Public::GetNode(GetNodeRequest { consistency, .. }) => {
            outcome(crate::api::consistency(*consistency), accepted)
        }
        // Ids and ids of tokens need no check before the state is read.
        Public::Status(_)
        | Public::RemoveMember(_)
        | Public::ListJoinTokens(_)
        | Public::RevokeJoinToken(_)
        | Public::CordonNode(_) => Ok(()),
    }
}

#[test]
fn fuzz_grpc_public() {
    let cx = Context { now_ms: convert::now_ms(), ca: Ca::generate("fuzz").expect("a CA") };
    vpn_fuzzkit::run("grpc_public", file!(), case(public()), |case| match decoded(&case)? {
        Some(request) => check(&request, &cx),
        None => Ok(()),
    });
}
