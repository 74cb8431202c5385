//! The `Users` service.

use std::sync::Arc;

use tonic::{Request, Response, Status};
use vpn_proto::v1::users_client::UsersClient;
use vpn_proto::v1::users_server::Users;
use vpn_proto::v1::{
    CreateUserRequest, DeleteUserRequest, DeleteUserResponse, GetUserRequest, ListUsersRequest, ListUsersResponse,
    ReadConsistency, UpdateUserRequest, User,
};
use vpn_storage::command::{Command, CommandResponse};
use vpn_storage::model::{self, validate_user_name};

use super::{convert, forward};
use crate::error::Error;
use crate::node::{Node, Route};

const DEFAULT_PAGE_SIZE: usize = 100;
const MAX_PAGE_SIZE: usize = 1000;

pub struct UsersApi {
    pub node: Arc<Node>,
}

fn check_name(field: &'static str, name: &str) -> Result<(), Error> {
    validate_user_name(name).map_err(|e| Error::InvalidArgument { field, detail: e.to_string() })
}

impl UsersApi {
    async fn read_barrier(&self, consistency: i32) -> Result<(), Error> {
        match ReadConsistency::try_from(consistency) {
            Ok(ReadConsistency::Linearizable) => self.node.linearizable_barrier().await,
            Ok(ReadConsistency::Local) => Ok(()),
            Err(_) => Err(Error::InvalidArgument {
                field: "consistency",
                detail: format!("unknown value {consistency}: use LINEARIZABLE (0) or LOCAL (1)"),
            }),
        }
    }

    /// Proposes `cmd` here and expects a user back.
    async fn write_user(&self, cmd: Command) -> Result<Response<User>, Status> {
        match self.node.propose(cmd).await? {
            CommandResponse::User(u) => Ok(Response::new(convert::user(&u))),
            CommandResponse::Refused(r) => Err(Error::from(r).into()),
            other => Err(Error::Internal(format!("unexpected apply result {other:?}")).into()),
        }
    }
}

#[tonic::async_trait]
impl Users for UsersApi {
    async fn create_user(&self, req: Request<CreateUserRequest>) -> Result<Response<User>, Status> {
        check_name("name", &req.get_ref().name)?;
        if let Route::Leader(ch) = self.node.route_write(forward::was_forwarded(&req))? {
            let fwd = forward::to_leader(&self.node, "CreateUser", req.into_inner());
            return UsersClient::new(ch).create_user(fwd).await;
        }
        let name = req.into_inner().name;
        if self.node.state.read(|s| s.users.contains_key(&name)) {
            return Err(Error::AlreadyExists(format!("user {name:?} already exists")).into());
        }
        // Ids and keys are made here, before the log: every replica applies the same bytes.
        self.write_user(Command::CreateUser(model::User::new(name, convert::now_ms()))).await
    }

    async fn get_user(&self, req: Request<GetUserRequest>) -> Result<Response<User>, Status> {
        let req = req.into_inner();
        check_name("name", &req.name)?;
        self.read_barrier(req.consistency).await?;
        self.node
            .state
            .read(|s| s.users.get(&req.name).map(convert::user))
            .map(Response::new)
            .ok_or_else(|| Error::NotFound(format!("user {:?} not found", req.name)).into())
    }

    async fn list_users(&self, req: Request<ListUsersRequest>) -> Result<Response<ListUsersResponse>, Status> {
        let req = req.into_inner();
        let after = match req.page_token.as_str() {
            "" => None,
            token => {
                check_name("page_token", token)?;
                Some(token)
            }
        };
        let page_size = match req.page_size as usize {
            0 => DEFAULT_PAGE_SIZE,
            n => n.min(MAX_PAGE_SIZE),
        };
        self.read_barrier(req.consistency).await?;
        // One more than asked tells whether another page follows.
        let mut users = self.node.state.read(|s| s.users_after(after, page_size + 1));
        let next_page_token = if users.len() > page_size {
            users.truncate(page_size);
            users.last().map(|u| u.name.clone()).unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(ListUsersResponse { users: users.iter().map(convert::user).collect(), next_page_token }))
    }

    async fn update_user(&self, req: Request<UpdateUserRequest>) -> Result<Response<User>, Status> {
        check_name("name", &req.get_ref().name)?;
        let status = match req.get_ref().status {
            None => {
                return Err(
                    Error::InvalidArgument { field: "status", detail: "nothing to update: set status".into() }.into()
                )
            }
            Some(raw) => convert::status_from_wire(raw).ok_or(Error::InvalidArgument {
                field: "status",
                detail: format!("{raw} is not a status: use ACTIVE or DISABLED"),
            })?,
        };
        if let Route::Leader(ch) = self.node.route_write(forward::was_forwarded(&req))? {
            let fwd = forward::to_leader(&self.node, "UpdateUser", req.into_inner());
            return UsersClient::new(ch).update_user(fwd).await;
        }
        self.write_user(Command::UpdateUser { name: req.into_inner().name, status: Some(status) }).await
    }

    async fn delete_user(&self, req: Request<DeleteUserRequest>) -> Result<Response<DeleteUserResponse>, Status> {
        check_name("name", &req.get_ref().name)?;
        if let Route::Leader(ch) = self.node.route_write(forward::was_forwarded(&req))? {
            let fwd = forward::to_leader(&self.node, "DeleteUser", req.into_inner());
            return UsersClient::new(ch).delete_user(fwd).await;
        }
        match self.node.propose(Command::DeleteUser { name: req.into_inner().name }).await? {
            CommandResponse::Deleted => Ok(Response::new(DeleteUserResponse {})),
            CommandResponse::Refused(r) => Err(Error::from(r).into()),
            other => Err(Error::Internal(format!("unexpected apply result {other:?}")).into()),
        }
    }
}
