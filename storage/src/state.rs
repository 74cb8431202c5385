//! The state every replica holds after applying the log: what snapshots carry.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use crate::model::{DataplaneNode, MemberRecord, User, UserStatus};
use crate::types::{LogId, NodeId, StoredMembership};

/// The applied state. Users are keyed by name (names are unique), so listing
/// in name order is a range scan and a page token is the last name returned.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    pub last_applied: Option<LogId>,
    pub last_membership: StoredMembership,
    pub users: BTreeMap<String, User>,
    pub members: BTreeMap<NodeId, MemberRecord>,
    #[serde(default)]
    pub dataplane_nodes: BTreeMap<NodeId, DataplaneNode>,
    /// Grows with every applied change to what any data-plane node should
    /// serve (users, node offers); nodes report the generation they applied.
    #[serde(default)]
    pub generation: u64,
    /// Join tokens and the node ids issued a certificate (see `trust`).
    #[serde(default)]
    pub trust: crate::trust::Trust,
    /// Roles, bindings and API tokens (see `access`).
    #[serde(default)]
    pub access: crate::access::Access,
    /// The audit records retention keeps, oldest first.
    #[serde(default)]
    pub audit: crate::access::AuditLog,
    /// SHA-256 of each user's subscription token -> the user's name, so
    /// `/sub` finds a token in O(1) and compares digests, never the secret
    /// itself byte by byte. Derived from `users` (kept by `apply`, rebuilt
    /// by [`State::reindex_tokens`] on load), never persisted.
    #[serde(skip)]
    pub(crate) tokens: HashMap<TokenDigest, String>,
}

type TokenDigest = [u8; 32];

fn token_digest(token: &str) -> TokenDigest {
    let mut digest = [0u8; 32];
    digest.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, token.as_bytes()).as_ref());
    digest
}

impl State {
    /// Up to `limit` users with names strictly after `after`, in name order.
    pub fn users_after(&self, after: Option<&str>, limit: usize) -> Vec<User> {
        use std::ops::Bound;
        let start = match after {
            Some(name) => Bound::Excluded(name.to_owned()),
            None => Bound::Unbounded,
        };
        self.users.range((start, Bound::Unbounded)).take(limit).map(|(_, u)| u.clone()).collect()
    }

    /// The users a data-plane node serves: the active users placed on it.
    pub fn users_on(&self, node: NodeId) -> impl Iterator<Item = &User> {
        self.users.values().filter(move |u| u.status == UserStatus::Active && u.placed_on(node))
    }

    /// How many users are placed on each data-plane node (active or not).
    pub fn placement_counts(&self) -> BTreeMap<NodeId, u64> {
        let mut counts: BTreeMap<NodeId, u64> = self.dataplane_nodes.keys().map(|id| (*id, 0)).collect();
        for p in self.users.values().flat_map(|u| &u.placements) {
            *counts.entry(p.node).or_default() += 1;
        }
        counts
    }

    /// The data-plane nodes that serve `user` (the same rule as
    /// [`State::users_on`]), in node id order.
    pub fn nodes_serving<'a>(&'a self, user: &'a User) -> impl Iterator<Item = &'a DataplaneNode> {
        let active = user.status == UserStatus::Active;
        self.dataplane_nodes.values().filter(move |n| active && user.placed_on(n.id))
    }

    /// The user a subscription token belongs to: one hash lookup by the
    /// token's digest (see `tokens`).
    pub fn user_by_token(&self, token: &str) -> Option<&User> {
        if token.is_empty() {
            return None;
        }
        self.tokens.get(&token_digest(token)).and_then(|name| self.users.get(name))
    }

    /// Records that `user` holds its token; false, with nothing changed,
    /// when another user holds it (a token names one user). The check and
    /// the record share one digest: every CreateUser applied runs this.
    pub(crate) fn index_token(&mut self, user: &User) -> bool {
        if user.sub_token.is_empty() {
            return true;
        }
        match self.tokens.entry(token_digest(&user.sub_token)) {
            Entry::Occupied(held) => *held.get() == user.name,
            Entry::Vacant(free) => {
                free.insert(user.name.clone());
                true
            }
        }
    }

    /// Forgets `token` (a deleted user's, or one rotated away).
    pub(crate) fn unindex_token(&mut self, token: &str) {
        self.tokens.remove(&token_digest(token));
    }

    /// Rebuilds the token index from the users (after loading a state).
    pub fn reindex_tokens(&mut self) {
        self.tokens = self
            .users
            .values()
            .filter(|u| !u.sub_token.is_empty())
            .map(|u| (token_digest(&u.sub_token), u.name.clone()))
            .collect();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::{apply, Command};

    #[test]
    fn a_token_finds_its_user_until_rotated_or_deleted_also_after_a_reload() {
        let mut state = State::default();
        let alice = User::new("alice".into(), 0);
        let first = alice.sub_token.clone();
        apply(&mut state, &Command::CreateUser(alice));
        assert_eq!(state.user_by_token(&first).map(|u| u.name.as_str()), Some("alice"));
        assert!(state.user_by_token(&first[..first.len() - 1]).is_none(), "a prefix is not the token");

        apply(&mut state, &Command::RotateToken { name: "alice".into(), token: "t2".into() });
        assert!(state.user_by_token(&first).is_none(), "the old token is revoked");
        assert_eq!(state.user_by_token("t2").map(|u| u.name.as_str()), Some("alice"));

        let mut reloaded: State = serde_json::from_value(serde_json::to_value(&state).expect("json")).expect("state");
        assert!(reloaded.user_by_token("t2").is_none(), "the index is not persisted");
        reloaded.reindex_tokens();
        assert_eq!(reloaded, state);

        apply(&mut state, &Command::DeleteUser { name: "alice".into() });
        assert!(state.user_by_token("t2").is_none());
        assert!(state.user_by_token("").is_none());
    }

    #[test]
    fn a_token_belongs_to_one_user_so_every_replica_indexes_it_alike() {
        use crate::command::{CommandResponse, Refusal};
        let mut state = State::default();
        let mut alice = User::new("alice".into(), 0);
        alice.sub_token = "t1".into();
        let mut bob = User::new("bob".into(), 0);
        bob.sub_token = "t2".into();
        apply(&mut state, &Command::CreateUser(alice.clone()));
        apply(&mut state, &Command::CreateUser(bob.clone()));
        let before = state.clone();

        let mut carol = User::new("carol".into(), 0);
        carol.sub_token = "t1".into();
        let refused = apply(&mut state, &Command::CreateUser(carol));
        assert_eq!(refused, CommandResponse::Refused(Refusal::TokenInUse("carol".into())));
        assert!(!refused_message(&refused).contains("t1"), "the token is a secret: {refused:?}");
        let rotate = Command::RotateToken { name: "bob".into(), token: "t1".into() };
        assert_eq!(apply(&mut state, &rotate), CommandResponse::Refused(Refusal::TokenInUse("bob".into())));
        assert_eq!(state, before, "a refusal changes nothing");

        // Rotating to one's own token is no conflict; a deleted user's token is free again.
        assert!(matches!(
            apply(&mut state, &Command::RotateToken { name: "bob".into(), token: "t2".into() }),
            CommandResponse::User(_)
        ));
        apply(&mut state, &Command::DeleteUser { name: "alice".into() });
        assert!(matches!(apply(&mut state, &rotate), CommandResponse::User(_)));
        assert_eq!(state.user_by_token("t1").map(|u| u.name.as_str()), Some("bob"));
        let mut reindexed = state.clone();
        reindexed.reindex_tokens();
        assert_eq!(reindexed.tokens, state.tokens, "the index kept by apply is the one a load rebuilds");
    }

    fn refused_message(response: &crate::command::CommandResponse) -> String {
        match response {
            crate::command::CommandResponse::Refused(why) => why.to_string(),
            other => format!("{other:?}"),
        }
    }
}
