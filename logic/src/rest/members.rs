//! Group membership over REST: member list with roles, invite, kick, roles,
//! mutes, and join requests of approval groups.
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::social::perms::Role;

use super::extract::{Caller, JsonBody, PathParam};
use super::{AppState, ErrorBody, RestError, counted};

#[derive(Serialize, ToSchema)]
pub struct MemberJson {
    pub user_id: i64,
    pub username: String,
    /// `owner`, `admin` or `member`.
    pub role: String,
    /// Muted until this time (ms since the epoch); 0 = not muted.
    pub muted_until_ms: i64,
    pub joined_at_ms: i64,
}

#[derive(Serialize, ToSchema)]
pub struct MemberList {
    pub members: Vec<MemberJson>,
}

#[derive(Deserialize, ToSchema)]
pub struct InviteBody {
    pub user_ids: Vec<i64>,
}

#[derive(Serialize, ToSchema)]
pub struct InviteResult {
    /// Users who were not members before.
    pub added: u64,
}

#[derive(Deserialize, ToSchema)]
pub struct RoleBody {
    /// `admin` or `member`.
    pub role: String,
}

#[derive(Deserialize, ToSchema)]
pub struct MuteBody {
    /// Mute for this many seconds; 0 unmutes.
    pub secs: u64,
}

#[derive(Serialize, ToSchema)]
pub struct MuteResult {
    /// Muted until (ms since the epoch); 0 = not muted.
    pub muted_until_ms: i64,
}

#[derive(Serialize, ToSchema)]
pub struct JoinRequestJson {
    pub user_id: i64,
    pub username: String,
    pub note: String,
    pub created_at_ms: i64,
}

#[derive(Serialize, ToSchema)]
pub struct JoinRequestList {
    pub requests: Vec<JoinRequestJson>,
}

fn no_content<T>(r: Result<T, crate::social::SocialError>) -> Result<StatusCode, RestError> {
    r.map(|_| StatusCode::NO_CONTENT).map_err(Into::into)
}

/// Members with their roles (members only).
#[utoipa::path(get, path = "/api/v1/groups/{id}/members", tag = "groups",
    security(("bearer" = [])),
    params(("id" = i64, Path, description = "the group")),
    responses((status = 200, body = MemberList),
        (status = 403, description = "NOT_MEMBER", body = ErrorBody)))]
pub async fn list_members(
    State(svc): State<AppState>,
    Caller(me): Caller,
    PathParam(id): PathParam<i64>,
) -> Result<Json<MemberList>, RestError> {
    let r = async {
        let members = svc
            .group_members(me, id)
            .await?
            .into_iter()
            .map(|m| MemberJson {
                user_id: m.user_id,
                username: m.username,
                role: Role::from_i64(m.role).name().into(),
                muted_until_ms: m.muted_until_ms,
                joined_at_ms: m.joined_at_ms,
            })
            .collect();
        Ok(Json(MemberList { members }))
    }
    .await;
    counted("group_members", r)
}

/// Invite users (any member of an open group; admins otherwise).
#[utoipa::path(post, path = "/api/v1/groups/{id}/members", tag = "groups",
    security(("bearer" = [])),
    params(("id" = i64, Path, description = "the group")),
    request_body = InviteBody,
    responses((status = 200, body = InviteResult), (status = 403, body = ErrorBody),
        (status = 404, description = "UNKNOWN_USER", body = ErrorBody)))]
pub async fn invite(
    State(svc): State<AppState>,
    Caller(me): Caller,
    PathParam(id): PathParam<i64>,
    JsonBody(b): JsonBody<InviteBody>,
) -> Result<Json<InviteResult>, RestError> {
    let r = async {
        let added = svc.invite(me, id, &b.user_ids).await?;
        Ok(Json(InviteResult { added }))
    }
    .await;
    counted("group_invite", r)
}

/// Remove a member (an admin or the owner, over a lower role).
#[utoipa::path(delete, path = "/api/v1/groups/{id}/members/{user_id}", tag = "groups",
    security(("bearer" = [])),
    params(("id" = i64, Path, description = "the group"), ("user_id" = i64, Path, description = "the member")),
    responses((status = 204, description = "kicked"), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub async fn kick(
    State(svc): State<AppState>,
    Caller(me): Caller,
    PathParam((id, user)): PathParam<(i64, i64)>,
) -> Result<StatusCode, RestError> {
    counted("group_kick", no_content(svc.kick(me, id, user).await))
}

/// Make a member an admin or a plain member (owner only).
#[utoipa::path(put, path = "/api/v1/groups/{id}/members/{user_id}/role", tag = "groups",
    security(("bearer" = [])),
    params(("id" = i64, Path, description = "the group"), ("user_id" = i64, Path, description = "the member")),
    request_body = RoleBody,
    responses((status = 204, description = "set"), (status = 400, body = ErrorBody),
        (status = 403, body = ErrorBody)))]
pub async fn set_role(
    State(svc): State<AppState>,
    Caller(me): Caller,
    PathParam((id, user)): PathParam<(i64, i64)>,
    JsonBody(b): JsonBody<RoleBody>,
) -> Result<StatusCode, RestError> {
    let r = async {
        let role = Role::parse(&b.role)
            .ok_or_else(|| RestError::bad_request("role must be admin or member"))?;
        svc.set_member_role(me, id, user, role).await?;
        Ok(StatusCode::NO_CONTENT)
    }
    .await;
    counted("group_role", r)
}

/// Mute a member for some seconds, or unmute (an admin or the owner, over a lower role).
#[utoipa::path(put, path = "/api/v1/groups/{id}/members/{user_id}/mute", tag = "groups",
    security(("bearer" = [])),
    params(("id" = i64, Path, description = "the group"), ("user_id" = i64, Path, description = "the member")),
    request_body = MuteBody,
    responses((status = 200, body = MuteResult), (status = 403, body = ErrorBody)))]
pub async fn mute_member(
    State(svc): State<AppState>,
    Caller(me): Caller,
    PathParam((id, user)): PathParam<(i64, i64)>,
    JsonBody(b): JsonBody<MuteBody>,
) -> Result<Json<MuteResult>, RestError> {
    let r = async {
        let until = svc.mute_member(me, id, user, b.secs).await?;
        Ok(Json(MuteResult {
            muted_until_ms: until,
        }))
    }
    .await;
    counted("group_mute", r)
}

/// Pending join requests (owner or admin).
#[utoipa::path(get, path = "/api/v1/groups/{id}/requests", tag = "groups",
    security(("bearer" = [])),
    params(("id" = i64, Path, description = "the group")),
    responses((status = 200, body = JoinRequestList), (status = 403, body = ErrorBody)))]
pub async fn join_requests(
    State(svc): State<AppState>,
    Caller(me): Caller,
    PathParam(id): PathParam<i64>,
) -> Result<Json<JoinRequestList>, RestError> {
    let r = async {
        let requests = svc
            .group_join_requests(me, id)
            .await?
            .into_iter()
            .map(|j| JoinRequestJson {
                user_id: j.user_id,
                username: j.username,
                note: j.note,
                created_at_ms: j.created_at_ms,
            })
            .collect();
        Ok(Json(JoinRequestList { requests }))
    }
    .await;
    counted("group_requests", r)
}

/// Approve a join request (owner or admin).
#[utoipa::path(post, path = "/api/v1/groups/{id}/requests/{user_id}/approve", tag = "groups",
    security(("bearer" = [])),
    params(("id" = i64, Path, description = "the group"), ("user_id" = i64, Path, description = "who asked")),
    responses((status = 204, description = "member now"), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub async fn approve_request(
    State(svc): State<AppState>,
    Caller(me): Caller,
    PathParam((id, user)): PathParam<(i64, i64)>,
) -> Result<StatusCode, RestError> {
    counted(
        "group_approve",
        no_content(svc.answer_join_request(me, id, user, true).await),
    )
}

/// Reject a join request (owner or admin).
#[utoipa::path(post, path = "/api/v1/groups/{id}/requests/{user_id}/reject", tag = "groups",
    security(("bearer" = [])),
    params(("id" = i64, Path, description = "the group"), ("user_id" = i64, Path, description = "who asked")),
    responses((status = 204, description = "rejected"), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub async fn reject_request(
    State(svc): State<AppState>,
    Caller(me): Caller,
    PathParam((id, user)): PathParam<(i64, i64)>,
) -> Result<StatusCode, RestError> {
    counted(
        "group_reject",
        no_content(svc.answer_join_request(me, id, user, false).await),
    )
}
