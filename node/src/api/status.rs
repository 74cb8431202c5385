//! Maps the node's errors to gRPC statuses. Server-side faults are logged
//! louder than the caller's mistakes.

use tonic::{Code, Status};
use vpn_storage::command::Refusal;

use crate::error::Error;

/// Metadata key naming the leader's address on UNAVAILABLE, so a client can go there.
pub const LEADER_ADDR_HEADER: &str = "x-vpn-leader-addr";

impl From<Error> for Status {
    fn from(e: Error) -> Self {
        let code = match &e {
            Error::InvalidArgument { .. } | Error::InvalidFlag { .. } | Error::MissingFlag(_) => Code::InvalidArgument,
            Error::AlreadyExists(_) => Code::AlreadyExists,
            Error::NotFound(_) => Code::NotFound,
            Error::FailedPrecondition(_) | Error::Identity(_) => Code::FailedPrecondition,
            Error::Unavailable { .. } | Error::Join { .. } => Code::Unavailable,
            Error::Unauthenticated(_) => Code::Unauthenticated,
            Error::PermissionDenied(_) => Code::PermissionDenied,
            Error::ResourceExhausted(_) => Code::ResourceExhausted,
            Error::Internal(_)
            | Error::ConfigFile { .. }
            | Error::Storage(_)
            | Error::DataDir { .. }
            | Error::Bind { .. }
            | Error::Runtime(_)
            | Error::TrafficJournal(_) => Code::Internal,
        };
        match code {
            Code::Internal => tracing::error!("request failed: {e}"),
            Code::Unavailable => tracing::info!("request unavailable: {e}"),
            _ => tracing::debug!("request refused: {e}"),
        }
        let mut status = Status::new(code, e.to_string());
        if let Error::Unavailable { leader_addr: Some(addr), .. } = &e {
            if let Ok(value) = addr.parse() {
                status.metadata_mut().insert(LEADER_ADDR_HEADER, value);
            }
        }
        status
    }
}

impl From<Refusal> for Error {
    fn from(r: Refusal) -> Self {
        match r {
            Refusal::UserExists(_) => Error::AlreadyExists(r.to_string()),
            Refusal::UserNotFound(_) => Error::NotFound(r.to_string()),
            Refusal::IncarnationConflict { .. }
            | Refusal::NotADataplaneNode(_)
            | Refusal::StillExpired { .. }
            | Refusal::StillLimited { .. } => Error::FailedPrecondition(r.to_string()),
            Refusal::JoinTokenNotFound(_) => Error::NotFound(r.to_string()),
            Refusal::JoinTokenRefused => Error::Unauthenticated(r.to_string()),
            Refusal::NodeIdTaken(_) | Refusal::RoleExists(_) | Refusal::ApiTokenExists(_) | Refusal::TokenInUse(_) => {
                Error::AlreadyExists(r.to_string())
            }
            Refusal::RoleNotFound(_) | Refusal::ApiTokenNotFound(_) | Refusal::NotBound { .. } => {
                Error::NotFound(r.to_string())
            }
            Refusal::BuiltinRole(_) | Refusal::RoleInUse { .. } | Refusal::BreakGlass => {
                Error::FailedPrecondition(r.to_string())
            }
        }
    }
}
