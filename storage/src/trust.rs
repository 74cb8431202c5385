//! What the cluster keeps to let new nodes in, as SwarmKit does: join
//! tokens (only a hash of each secret, with its role, expiry and uses left)
//! and every node id that was ever issued a certificate through one, so an
//! id is never issued twice, even after its node was removed.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::command::{CommandResponse, Refusal};
use crate::state::State;
use crate::types::NodeId;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trust {
    /// By token id (the public half of a token).
    #[serde(default)]
    pub join_tokens: BTreeMap<String, JoinToken>,
    #[serde(default)]
    pub issued_node_ids: BTreeSet<NodeId>,
}

impl Trust {
    /// Whether token `id` with this secret may be redeemed at `at_ms`: known,
    /// the same secret, not expired, a use left.
    pub fn admits(&self, id: &str, secret_sha256: &str, at_ms: i64) -> bool {
        self.join_tokens
            .get(id)
            .is_some_and(|t| t.secret_sha256 == secret_sha256 && t.expires_at_ms > at_ms && t.uses_left > 0)
    }
}

/// The role a joining node's certificate gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JoinRole {
    Controlplane,
    Dataplane,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinToken {
    pub id: String,
    /// SHA-256 of the token's secret, hex: the secret itself is never stored.
    pub secret_sha256: String,
    pub role: JoinRole,
    pub created_at_ms: i64,
    pub expires_at_ms: i64,
    pub uses_left: u32,
}

/// The trust commands (see `Command`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TrustCommand {
    CreateJoinToken(JoinToken),
    RevokeJoinToken {
        id: String,
    },
    /// Spends one use of a token for node `node`, whose certificate the
    /// proposer signs only after this applied.
    RedeemJoinToken {
        id: String,
        secret_sha256: String,
        node: NodeId,
        at_ms: i64,
    },
}

pub fn apply(state: &mut State, cmd: &TrustCommand) -> CommandResponse {
    let trust = &mut state.trust;
    match cmd {
        TrustCommand::CreateJoinToken(token) => {
            trust.join_tokens.insert(token.id.clone(), token.clone());
            CommandResponse::JoinToken(token.clone())
        }
        TrustCommand::RevokeJoinToken { id } => match trust.join_tokens.remove(id) {
            Some(token) => CommandResponse::JoinToken(token),
            None => CommandResponse::Refused(Refusal::JoinTokenNotFound(id.clone())),
        },
        TrustCommand::RedeemJoinToken { id, secret_sha256, node, at_ms } => {
            // One answer for every way a token fails: which one says nothing
            // useful to an honest node and something to a guesser.
            if !trust.admits(id, secret_sha256, *at_ms) {
                return CommandResponse::Refused(Refusal::JoinTokenRefused);
            }
            let in_use = trust.issued_node_ids.contains(node)
                || state.members.contains_key(node)
                || state.dataplane_nodes.contains_key(node)
                || state.last_membership.membership().get_node(node).is_some();
            if in_use {
                return CommandResponse::Refused(Refusal::NodeIdTaken(*node));
            }
            let Some(token) = state.trust.join_tokens.get_mut(id) else {
                return CommandResponse::Refused(Refusal::JoinTokenRefused);
            };
            token.uses_left -= 1;
            let role = token.role;
            state.trust.issued_node_ids.insert(*node);
            CommandResponse::JoinTokenRedeemed(role)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(uses: u32) -> JoinToken {
        JoinToken {
            id: "t1".into(),
            secret_sha256: "aa".into(),
            role: JoinRole::Dataplane,
            created_at_ms: 0,
            expires_at_ms: 1_000,
            uses_left: uses,
        }
    }

    fn redeem(state: &mut State, secret: &str, node: NodeId, at_ms: i64) -> CommandResponse {
        let cmd = TrustCommand::RedeemJoinToken { id: "t1".into(), secret_sha256: secret.into(), node, at_ms };
        apply(state, &cmd)
    }

    #[test]
    fn a_token_lets_in_as_many_new_ids_as_it_has_uses_before_it_expires() {
        let mut state = State::default();
        apply(&mut state, &TrustCommand::CreateJoinToken(token(2)));
        assert_eq!(
            redeem(&mut state, "bb", 7, 10),
            CommandResponse::Refused(Refusal::JoinTokenRefused),
            "wrong secret"
        );
        assert_eq!(redeem(&mut state, "aa", 7, 10), CommandResponse::JoinTokenRedeemed(JoinRole::Dataplane));
        assert_eq!(redeem(&mut state, "aa", 7, 20), CommandResponse::Refused(Refusal::NodeIdTaken(7)), "never twice");
        assert_eq!(redeem(&mut state, "aa", 8, 1_000), CommandResponse::Refused(Refusal::JoinTokenRefused), "expired");
        assert_eq!(redeem(&mut state, "aa", 8, 30), CommandResponse::JoinTokenRedeemed(JoinRole::Dataplane));
        assert_eq!(redeem(&mut state, "aa", 9, 40), CommandResponse::Refused(Refusal::JoinTokenRefused), "used up");
        assert_eq!(state.trust.issued_node_ids, BTreeSet::from([7, 8]));
    }

    #[test]
    fn a_revoked_token_lets_nobody_in() {
        let mut state = State::default();
        apply(&mut state, &TrustCommand::CreateJoinToken(token(5)));
        assert!(matches!(
            apply(&mut state, &TrustCommand::RevokeJoinToken { id: "t1".into() }),
            CommandResponse::JoinToken(_)
        ));
        assert_eq!(redeem(&mut state, "aa", 7, 10), CommandResponse::Refused(Refusal::JoinTokenRefused));
        let again = apply(&mut state, &TrustCommand::RevokeJoinToken { id: "t1".into() });
        assert_eq!(again, CommandResponse::Refused(Refusal::JoinTokenNotFound("t1".into())));
    }
}
