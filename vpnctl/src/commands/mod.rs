//! One module per command group; each turns parsed arguments into an [`Output`](crate::Output).
//! The `user` group is split in three files so each stays readable in one sitting; access
//! control is `token`, `role`, `session`, `audit`, `whoami` and `login` (with `logout`).

pub mod audit;
pub mod cluster;
pub mod completions;
pub mod context;
pub mod join_token;
pub mod login;
pub mod member;
pub mod node;
pub mod pki;
pub mod role;
pub mod session;
pub mod token;
pub mod user;
pub mod user_limits;
pub mod user_links;
pub mod whoami;
