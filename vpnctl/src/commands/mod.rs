//! One module per command group; each turns parsed arguments into an [`Output`](crate::Output).

pub mod cluster;
pub mod completions;
pub mod member;
pub mod node;
pub mod user;
