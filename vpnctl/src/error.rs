//! The one error type of the CLI and its mapping to exit codes.
//!
//! Scripts branch on the exit code, operators read the message: every variant says what went
//! wrong and, where we know, what to do about it.

use std::process::ExitCode;

use tonic::{Code, Status};

/// Exit code for bad input (local validation, clap usage errors, INVALID_ARGUMENT).
pub const EXIT_BAD_INPUT: u8 = 2;
/// Exit code for NOT_FOUND and ALREADY_EXISTS.
pub const EXIT_NOT_FOUND_OR_EXISTS: u8 = 3;
/// Exit code when no node could answer in time.
pub const EXIT_UNAVAILABLE: u8 = 4;
/// Exit code for a missing, invalid or expired credential (UNAUTHENTICATED).
pub const EXIT_UNAUTHENTICATED: u8 = 5;
/// Exit code for a credential without the permission (PERMISSION_DENIED).
pub const EXIT_PERMISSION_DENIED: u8 = 6;
/// Exit code for everything else.
pub const EXIT_OTHER: u8 = 1;

/// Everything that can make `vpnctl` fail.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The command line was wrong, or the server said the request was (INVALID_ARGUMENT).
    #[error("{0}")]
    InvalidInput(String),
    /// The named object does not exist (NOT_FOUND).
    #[error("{0}")]
    NotFound(String),
    /// The object to create exists already (ALREADY_EXISTS).
    #[error("{0}")]
    AlreadyExists(String),
    /// No endpoint answered before the deadline (connect errors, UNAVAILABLE).
    #[error("{}", unavailable_message(tried, last))]
    Unavailable {
        /// The endpoints tried, in the order first tried.
        tried: Vec<String>,
        /// The last error seen.
        last: String,
    },
    /// The server gave up waiting (DEADLINE_EXCEEDED); the change may still be applied.
    #[error(
        "the cluster did not finish in time: {0}; the change may still be applied, check \
         before retrying, or raise --timeout"
    )]
    Timeout(String),
    /// No credential, or one the cluster does not accept (UNAUTHENTICATED): missing, unknown,
    /// expired or revoked.
    #[error(
        "UNAUTHENTICATED: {0}; give a valid --token (or VPNCTL_TOKEN) or --cert/--key, log in \
         again with `vpnctl login`, or pick a context that has a credential with `vpnctl context use`"
    )]
    Unauthenticated(String),
    /// `vpnctl login` refused: by the cluster (UNAUTHENTICATED: a wrong password, an invalid ID
    /// token) or at the OIDC provider (denied, or the code expired). The reason alone: the
    /// credential hints of [`CliError::Unauthenticated`] do not apply to a login.
    #[error("UNAUTHENTICATED: {0}")]
    LoginRefused(String),
    /// The OIDC provider of `vpnctl login --oidc` could not be reached, or failed (HTTP 5xx).
    #[error("the OIDC provider is unavailable: {0}")]
    ProviderUnavailable(String),
    /// The OIDC provider answered, but not as the device flow needs (no device endpoint, an
    /// unknown client, no ID token): its configuration needs a look.
    #[error("the OIDC provider: {0}")]
    Provider(String),
    /// The credential is good but its roles lack the permission (PERMISSION_DENIED); the
    /// server's message names the permission.
    #[error(
        "PERMISSION_DENIED: {0}; `vpnctl whoami` shows your roles and permissions; an admin \
         can grant a role with `vpnctl role bind ROLE --user NAME`"
    )]
    PermissionDenied(String),
    /// Any other gRPC status (FAILED_PRECONDITION, INTERNAL, ...).
    #[error("{}: {message}", code_name(*code))]
    Server {
        /// The status code, named in the message.
        code: Code,
        /// The server's own explanation.
        message: String,
    },
    /// Writing the result failed (other than a closed pipe, which is not an error).
    #[error("cannot write output: {0}")]
    Output(#[from] std::io::Error),
}

impl CliError {
    /// Maps a non-retryable gRPC status to an error, keeping the server's message.
    pub fn from_status(status: &Status) -> Self {
        let message = if status.message().is_empty() {
            "the server gave no details".to_string()
        } else {
            status.message().to_string()
        };
        match status.code() {
            Code::InvalidArgument => Self::InvalidInput(format!("the server refused: {message}")),
            Code::NotFound => Self::NotFound(message),
            Code::AlreadyExists => Self::AlreadyExists(message),
            Code::Unavailable => Self::Unavailable { tried: Vec::new(), last: message },
            Code::DeadlineExceeded => Self::Timeout(message),
            Code::Unauthenticated => Self::Unauthenticated(message),
            Code::PermissionDenied => Self::PermissionDenied(message),
            code => Self::Server { code, message },
        }
    }

    /// The process exit code for this error (see the crate docs for the table).
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::InvalidInput(_) => EXIT_BAD_INPUT,
            Self::NotFound(_) | Self::AlreadyExists(_) => EXIT_NOT_FOUND_OR_EXISTS,
            Self::Unavailable { .. } | Self::Timeout(_) | Self::ProviderUnavailable(_) => EXIT_UNAVAILABLE,
            Self::Unauthenticated(_) | Self::LoginRefused(_) => EXIT_UNAUTHENTICATED,
            Self::PermissionDenied(_) => EXIT_PERMISSION_DENIED,
            Self::Server { .. } | Self::Provider(_) | Self::Output(_) => EXIT_OTHER,
        }
    }
}

impl From<&CliError> for ExitCode {
    fn from(err: &CliError) -> Self {
        ExitCode::from(err.exit_code())
    }
}

fn unavailable_message(tried: &[String], last: &str) -> String {
    let hint = "check that vpnd runs and --endpoints is right";
    if tried.is_empty() {
        format!("cluster unavailable: {last}; {hint}")
    } else {
        format!("cluster unavailable: tried {}: {last}; {hint}", tried.join(", "))
    }
}

/// Upper-case names as operators see them in server logs and gRPC docs.
fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exit_for(code: Code) -> u8 {
        CliError::from_status(&Status::new(code, "msg")).exit_code()
    }

    #[test]
    fn status_codes_map_to_the_contracts_exit_codes() {
        assert_eq!(exit_for(Code::InvalidArgument), 2);
        assert_eq!(exit_for(Code::NotFound), 3);
        assert_eq!(exit_for(Code::AlreadyExists), 3);
        assert_eq!(exit_for(Code::Unavailable), 4);
        assert_eq!(exit_for(Code::DeadlineExceeded), 4);
        assert_eq!(exit_for(Code::Unauthenticated), 5);
        assert_eq!(exit_for(Code::PermissionDenied), 6);
        for code in [Code::FailedPrecondition, Code::Internal, Code::Unknown, Code::Aborted, Code::Unimplemented] {
            assert_eq!(exit_for(code), 1, "{code:?}");
        }
    }

    #[test]
    fn local_errors_have_their_own_exit_codes() {
        assert_eq!(CliError::InvalidInput("x".into()).exit_code(), 2);
        let io = std::io::Error::other("disk full");
        assert_eq!(CliError::Output(io).exit_code(), 1);
        assert_eq!(CliError::LoginRefused("x".into()).exit_code(), 5);
        assert_eq!(CliError::ProviderUnavailable("x".into()).exit_code(), 4);
        assert_eq!(CliError::Provider("x".into()).exit_code(), 1);
    }

    #[test]
    fn messages_keep_the_servers_words_and_name_the_code() {
        let err = CliError::from_status(&Status::failed_precondition("node 3 is the leader"));
        assert_eq!(err.to_string(), "FAILED_PRECONDITION: node 3 is the leader");
        let err = CliError::from_status(&Status::invalid_argument("name: too long"));
        assert_eq!(err.to_string(), "the server refused: name: too long");
        let err = CliError::from_status(&Status::internal(""));
        assert_eq!(err.to_string(), "INTERNAL: the server gave no details");
    }

    #[test]
    fn refused_credentials_say_what_to_do() {
        let err = CliError::from_status(&Status::unauthenticated("token expired at 2026-01-01T00:00:00Z"));
        let text = err.to_string();
        assert!(text.starts_with("UNAUTHENTICATED: token expired at 2026-01-01T00:00:00Z; "), "{text}");
        for hint in ["--token", "--cert/--key", "`vpnctl login`", "`vpnctl context use`"] {
            assert!(text.contains(hint), "{hint}: {text}");
        }
        let err = CliError::from_status(&Status::permission_denied("needs users.write"));
        let text = err.to_string();
        assert!(text.starts_with("PERMISSION_DENIED: needs users.write; "), "{text}");
        assert!(text.contains("`vpnctl whoami`") && text.contains("`vpnctl role bind"), "{text}");
    }

    #[test]
    fn unavailable_lists_the_endpoints_tried() {
        let err = CliError::Unavailable { tried: vec!["a:1".into(), "b:2".into()], last: "connection refused".into() };
        assert_eq!(
            err.to_string(),
            "cluster unavailable: tried a:1, b:2: connection refused; \
             check that vpnd runs and --endpoints is right"
        );
    }
}
