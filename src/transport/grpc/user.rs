//! UserService: proto ⇄ `service::users`. Signing in and out sets the
//! session cookie as `set-cookie` response metadata, which gRPC-Web and
//! REST hand to the browser as the HTTP header.

use std::net::SocketAddr;

use axum::extract::ConnectInfo;
use tonic::{Request, Response, Status, metadata::MetadataValue};

use super::{actor, parse_id, tenant::plan_to_proto, tenant::status_to_proto, timestamp};
use crate::{
    app::AppState,
    domain::user::{Role, UserStatus},
    error::ApiError,
    proto::v1,
    service::users::{Link, SessionView, SignedIn, UserChange},
    storage::users::UserRow,
    transport::auth::session_token,
};

#[derive(Clone)]
pub struct UserApi {
    pub state: AppState,
}

fn role_to_proto(role: Role) -> v1::UserRole {
    match role {
        Role::SuperAdmin => v1::UserRole::SuperAdmin,
        Role::Admin => v1::UserRole::Admin,
        Role::Owner => v1::UserRole::Owner,
        Role::Developer => v1::UserRole::Developer,
        Role::Viewer => v1::UserRole::Viewer,
    }
}

fn role_from_proto(role: i32) -> Result<Option<Role>, ApiError> {
    Ok(match v1::UserRole::try_from(role) {
        Ok(v1::UserRole::Unspecified) => None,
        Ok(v1::UserRole::SuperAdmin) => Some(Role::SuperAdmin),
        Ok(v1::UserRole::Admin) => Some(Role::Admin),
        Ok(v1::UserRole::Owner) => Some(Role::Owner),
        Ok(v1::UserRole::Developer) => Some(Role::Developer),
        Ok(v1::UserRole::Viewer) => Some(Role::Viewer),
        Err(_) => return Err(ApiError::bad_field("role", "is not a known role")),
    })
}

fn user_to_proto(u: &UserRow) -> v1::User {
    v1::User {
        id: u.id.to_string(),
        email: u.email.clone(),
        role: role_to_proto(u.role).into(),
        tenant_id: u.tenant_id.map(|id| id.to_string()),
        status: match u.status {
            UserStatus::Invited => v1::UserStatus::Invited,
            UserStatus::Active => v1::UserStatus::Active,
            UserStatus::Deactivated => v1::UserStatus::Deactivated,
        }
        .into(),
        created_at: Some(timestamp(u.created_at)),
        updated_at: Some(timestamp(u.updated_at)),
        last_login_at: u.last_login_at.map(timestamp),
    }
}

fn session_to_proto(view: &SessionView) -> v1::SessionInfo {
    v1::SessionInfo {
        kind: if view.user.is_some() {
            "session"
        } else {
            "key"
        }
        .into(),
        user: view.user.as_ref().map(user_to_proto),
        tenant: view.tenant.as_ref().map(|t| v1::SessionTenant {
            id: t.id.to_string(),
            name: t.name.clone(),
            slug: t.slug.clone(),
            plan: plan_to_proto(&t.plan),
            status: status_to_proto(&t.status),
            time_zone: t.time_zone.clone(),
        }),
        csrf_token: view.csrf_token.clone(),
        expires_at: view.expires_at.map(timestamp),
    }
}

fn link_to_proto(link: Link) -> v1::CreatePasswordResetResponse {
    v1::CreatePasswordResetResponse {
        kind: link.kind.into(),
        url: link.url,
        expires_at: Some(timestamp(link.expires_at)),
    }
}

/// A response that sets (or clears) the session cookie.
fn with_cookie<T>(message: T, cookie: &str) -> Result<Response<T>, Status> {
    let mut response = Response::new(message);
    let value = MetadataValue::try_from(cookie).map_err(ApiError::internal)?;
    response.metadata_mut().insert("set-cookie", value);
    Ok(response)
}

fn signed_in(signed: SignedIn) -> Result<Response<v1::SessionInfo>, Status> {
    with_cookie(session_to_proto(&signed.view), &signed.set_cookie)
}

/// Signing in (and redeeming a link) only from a page of this origin or
/// from a non-browser client: a browser's `Sec-Fetch-Site` other than
/// `same-origin` or `none` means another site made the request (a form
/// that would sign the victim in to the attacker's account).
fn same_origin_only<T>(request: &Request<T>) -> Result<(), ApiError> {
    match request
        .metadata()
        .get("sec-fetch-site")
        .and_then(|v| v.to_str().ok())
    {
        None | Some("same-origin" | "none") => Ok(()),
        Some(_) => Err(ApiError::permission_denied(
            "sign in from the Backoffice's own pages: cross-site requests are refused",
        )),
    }
}

fn optional_id(field: &str, raw: &str) -> Result<Option<uuid::Uuid>, ApiError> {
    (!raw.is_empty()).then(|| parse_id(field, raw)).transpose()
}

#[tonic::async_trait]
impl v1::user_service_server::UserService for UserApi {
    async fn login(
        &self,
        request: Request<v1::LoginRequest>,
    ) -> Result<Response<v1::SessionInfo>, Status> {
        same_origin_only(&request)?;
        let address = request
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip());
        let r = request.into_inner();
        signed_in(
            self.state
                .users
                .login(&r.email, &r.password, address)
                .await?,
        )
    }

    async fn logout(
        &self,
        request: Request<v1::LogoutRequest>,
    ) -> Result<Response<v1::LogoutResponse>, Status> {
        let actor = actor(&request)?;
        let cookie = self.state.users.logout(&actor).await?;
        with_cookie(v1::LogoutResponse {}, &cookie)
    }

    async fn get_session(
        &self,
        request: Request<v1::GetSessionRequest>,
    ) -> Result<Response<v1::SessionInfo>, Status> {
        let actor = actor(&request)?;
        let token = session_token(request.metadata().as_ref());
        let view = self.state.users.whoami(&actor, token).await?;
        Ok(Response::new(session_to_proto(&view)))
    }

    async fn accept_invite(
        &self,
        request: Request<v1::AcceptInviteRequest>,
    ) -> Result<Response<v1::SessionInfo>, Status> {
        same_origin_only(&request)?;
        let r = request.into_inner();
        signed_in(
            self.state
                .users
                .accept_invite(&r.token, &r.password)
                .await?,
        )
    }

    async fn reset_password(
        &self,
        request: Request<v1::ResetPasswordRequest>,
    ) -> Result<Response<v1::SessionInfo>, Status> {
        same_origin_only(&request)?;
        let r = request.into_inner();
        signed_in(
            self.state
                .users
                .reset_password(&r.token, &r.password)
                .await?,
        )
    }

    async fn create_user(
        &self,
        request: Request<v1::CreateUserRequest>,
    ) -> Result<Response<v1::CreateUserResponse>, Status> {
        let actor = actor(&request)?;
        let r = request.into_inner();
        let (user, link) = self
            .state
            .users
            .create(
                &actor,
                &r.email,
                role_from_proto(r.role)?,
                optional_id("tenantId", &r.tenant_id)?,
            )
            .await?;
        Ok(Response::new(v1::CreateUserResponse {
            user: Some(user_to_proto(&user)),
            invite_url: link.url,
            invite_expires_at: Some(timestamp(link.expires_at)),
        }))
    }

    async fn list_users(
        &self,
        request: Request<v1::ListUsersRequest>,
    ) -> Result<Response<v1::ListUsersResponse>, Status> {
        let actor = actor(&request)?;
        let r = request.into_inner();
        let page = self
            .state
            .users
            .list(
                &actor,
                optional_id("tenantId", &r.tenant_id)?,
                r.platform_only,
                (r.limit != 0).then_some(r.limit.max(0) as u64),
                Some(r.cursor.as_str()),
            )
            .await?;
        Ok(Response::new(v1::ListUsersResponse {
            data: page.data.iter().map(user_to_proto).collect(),
            next_cursor: page.next_cursor,
        }))
    }

    async fn get_user(
        &self,
        request: Request<v1::GetUserRequest>,
    ) -> Result<Response<v1::User>, Status> {
        let actor = actor(&request)?;
        let id = parse_id("id", &request.get_ref().id)?;
        Ok(Response::new(user_to_proto(
            &self.state.users.get(&actor, id).await?,
        )))
    }

    async fn update_user(
        &self,
        request: Request<v1::UpdateUserRequest>,
    ) -> Result<Response<v1::User>, Status> {
        let actor = actor(&request)?;
        let r = request.into_inner();
        let id = parse_id("id", &r.id)?;
        let role = match r.role {
            Some(role) => Some(
                role_from_proto(role)?
                    .ok_or_else(|| ApiError::bad_field("role", "is not a known role"))?,
            ),
            None => None,
        };
        let change = UserChange {
            role,
            active: r.active,
        };
        Ok(Response::new(user_to_proto(
            &self.state.users.update(&actor, id, change).await?,
        )))
    }

    async fn delete_user(
        &self,
        request: Request<v1::DeleteUserRequest>,
    ) -> Result<Response<v1::DeleteUserResponse>, Status> {
        let actor = actor(&request)?;
        let id = parse_id("id", &request.get_ref().id)?;
        self.state.users.delete(&actor, id).await?;
        Ok(Response::new(v1::DeleteUserResponse {}))
    }

    async fn create_password_reset(
        &self,
        request: Request<v1::CreatePasswordResetRequest>,
    ) -> Result<Response<v1::CreatePasswordResetResponse>, Status> {
        let actor = actor(&request)?;
        let id = parse_id("id", &request.get_ref().id)?;
        Ok(Response::new(link_to_proto(
            self.state.users.password_link(&actor, id).await?,
        )))
    }
}
