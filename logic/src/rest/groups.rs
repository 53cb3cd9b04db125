//! Groups over REST: create, list, info, join, quit, announcement, mute-all,
//! ownership, dismiss, and group messages (send, read-diffusion pull).
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use im_proto::client::C2gSendRequest;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::service::LogicService;
use crate::social::perms::{Diffusion, JoinPolicy, Role};
use crate::store::groups::GroupRecord;

use super::extract::{Caller, JsonBody, PathParam, QueryParam};
use super::messages::{PullPage, PullQuery, SendAck, message_json, text_type};
use super::{AppState, ErrorBody, RestError, counted};

/// A group as the caller sees it.
#[derive(Serialize, ToSchema)]
pub struct GroupJson {
    pub id: i64,
    pub name: String,
    pub owner_id: i64,
    /// `open`, `invite` or `approval`.
    pub join_policy: String,
    pub announcement: String,
    /// Only the owner and admins may send while true.
    pub muted_all: bool,
    pub member_count: i64,
    pub created_at_ms: i64,
    /// `write` (messages arrive in the inbox) or `read` (pull by group cursor).
    pub diffusion: String,
    /// The highest read-diffusion sequence of the group.
    pub max_group_seq: u64,
    /// The caller's role: `owner`, `admin` or `member`.
    pub my_role: String,
}

pub(crate) async fn group_json(
    svc: &LogicService,
    g: GroupRecord,
    role: Role,
) -> Result<GroupJson, RestError> {
    let max_group_seq = svc.store.group_max_seq(g.id).await?;
    let diffusion = Diffusion::of(
        g.member_count.max(0) as usize,
        svc.cfg.social.write_diffusion_max,
    );
    Ok(GroupJson {
        id: g.id,
        name: g.name,
        owner_id: g.owner_id,
        join_policy: JoinPolicy::from_i64(g.join_policy).name().into(),
        announcement: g.announcement,
        muted_all: g.muted_all,
        member_count: g.member_count,
        created_at_ms: g.created_at_ms,
        diffusion: diffusion.name().into(),
        max_group_seq,
        my_role: role.name().into(),
    })
}

#[derive(Deserialize, ToSchema)]
pub struct CreateGroup {
    /// 1-64 bytes, no control characters.
    pub name: String,
    /// Initial members besides the caller (who becomes the owner).
    #[serde(default)]
    pub members: Vec<i64>,
    /// `open` (default), `invite` or `approval`.
    #[serde(default)]
    pub join_policy: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct GroupList {
    pub groups: Vec<GroupJson>,
}

#[derive(Deserialize, ToSchema)]
pub struct JoinBody {
    /// Shown to admins of approval groups.
    #[serde(default)]
    pub note: String,
}

#[derive(Serialize, ToSchema)]
pub struct JoinResult {
    /// `joined`, or `requested` (an admin must approve).
    pub status: String,
}

#[derive(Deserialize, ToSchema)]
pub struct AnnouncementBody {
    pub text: String,
}

#[derive(Deserialize, ToSchema)]
pub struct MuteAllBody {
    pub muted: bool,
}

#[derive(Deserialize, ToSchema)]
pub struct TransferBody {
    /// The member who becomes the owner (the old owner becomes an admin).
    pub user_id: i64,
}

#[derive(Deserialize, ToSchema)]
pub struct GroupSendBody {
    /// 1-64 bytes without control characters, unique per sender: makes the send idempotent.
    pub client_msg_id: String,
    #[serde(default = "text_type")]
    pub content_type: u32,
    pub body: String,
}

fn no_content<T>(r: Result<T, crate::social::SocialError>) -> Result<StatusCode, RestError> {
    r.map(|_| StatusCode::NO_CONTENT).map_err(Into::into)
}

/// Create a group; the caller is its owner.
#[utoipa::path(post, path = "/api/v1/groups", tag = "groups", security(("bearer" = [])),
    request_body = CreateGroup,
    responses((status = 201, body = GroupJson), (status = 400, body = ErrorBody),
        (status = 403, description = "too many members", body = ErrorBody),
        (status = 404, description = "UNKNOWN_USER", body = ErrorBody)))]
pub async fn create_group(
    State(svc): State<AppState>,
    Caller(me): Caller,
    JsonBody(b): JsonBody<CreateGroup>,
) -> Result<(StatusCode, Json<GroupJson>), RestError> {
    let r = async {
        let policy = match b.join_policy.as_deref() {
            None => JoinPolicy::Open,
            Some(p) => JoinPolicy::parse(p).ok_or_else(|| {
                RestError::bad_request("join_policy must be open, invite or approval")
            })?,
        };
        let g = svc.create_group(me, &b.name, &b.members, policy).await?;
        Ok((
            StatusCode::CREATED,
            Json(group_json(&svc, g, Role::Owner).await?),
        ))
    }
    .await;
    counted("group_create", r)
}

/// The groups the caller belongs to.
#[utoipa::path(get, path = "/api/v1/groups", tag = "groups", security(("bearer" = [])),
    responses((status = 200, body = GroupList)))]
pub async fn my_groups(
    State(svc): State<AppState>,
    Caller(me): Caller,
) -> Result<Json<GroupList>, RestError> {
    let r = async {
        let mut groups = Vec::new();
        for (g, role) in svc.my_groups(me).await? {
            groups.push(group_json(&svc, g, role).await?);
        }
        Ok(Json(GroupList { groups }))
    }
    .await;
    counted("group_list", r)
}

/// Group info (members only).
#[utoipa::path(get, path = "/api/v1/groups/{id}", tag = "groups", security(("bearer" = [])),
    params(("id" = i64, Path, description = "the group")),
    responses((status = 200, body = GroupJson),
        (status = 403, description = "NOT_MEMBER", body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub async fn group_info(
    State(svc): State<AppState>,
    Caller(me): Caller,
    PathParam(id): PathParam<i64>,
) -> Result<Json<GroupJson>, RestError> {
    let r = async {
        let (g, m) = svc.group_info(me, id).await?;
        Ok(Json(group_json(&svc, g, Role::from_i64(m.role)).await?))
    }
    .await;
    counted("group_info", r)
}

/// Dismiss a group (owner only): every member is removed.
#[utoipa::path(delete, path = "/api/v1/groups/{id}", tag = "groups", security(("bearer" = [])),
    params(("id" = i64, Path, description = "the group")),
    responses((status = 204, description = "dismissed"), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub async fn dismiss_group(
    State(svc): State<AppState>,
    Caller(me): Caller,
    PathParam(id): PathParam<i64>,
) -> Result<StatusCode, RestError> {
    counted("group_dismiss", no_content(svc.dismiss_group(me, id).await))
}

/// Join: open groups at once, approval groups by request; invitation-only groups refuse.
#[utoipa::path(post, path = "/api/v1/groups/{id}/join", tag = "groups", security(("bearer" = [])),
    params(("id" = i64, Path, description = "the group")),
    request_body = JoinBody,
    responses((status = 200, body = JoinResult),
        (status = 403, description = "invitation only, or the group is full", body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub async fn join_group(
    State(svc): State<AppState>,
    Caller(me): Caller,
    PathParam(id): PathParam<i64>,
    JsonBody(b): JsonBody<JoinBody>,
) -> Result<Json<JoinResult>, RestError> {
    let r = async {
        let status = match svc.join_group(me, id, &b.note).await? {
            crate::social::groups::JoinOutcome::Joined => "joined",
            crate::social::groups::JoinOutcome::Requested => "requested",
        };
        Ok(Json(JoinResult {
            status: status.into(),
        }))
    }
    .await;
    counted("group_join", r)
}

/// Leave a group (the owner must transfer or dismiss first).
#[utoipa::path(post, path = "/api/v1/groups/{id}/quit", tag = "groups", security(("bearer" = [])),
    params(("id" = i64, Path, description = "the group")),
    responses((status = 204, description = "left"), (status = 403, body = ErrorBody)))]
pub async fn quit_group(
    State(svc): State<AppState>,
    Caller(me): Caller,
    PathParam(id): PathParam<i64>,
) -> Result<StatusCode, RestError> {
    counted("group_quit", no_content(svc.quit_group(me, id).await))
}

/// Set the announcement (owner or admin).
#[utoipa::path(put, path = "/api/v1/groups/{id}/announcement", tag = "groups",
    security(("bearer" = [])),
    params(("id" = i64, Path, description = "the group")),
    request_body = AnnouncementBody,
    responses((status = 204, description = "set"), (status = 403, body = ErrorBody)))]
pub async fn set_announcement(
    State(svc): State<AppState>,
    Caller(me): Caller,
    PathParam(id): PathParam<i64>,
    JsonBody(b): JsonBody<AnnouncementBody>,
) -> Result<StatusCode, RestError> {
    counted(
        "group_announcement",
        no_content(svc.set_announcement(me, id, &b.text).await),
    )
}

/// Mute or unmute the whole group (owner or admin); admins may still send.
#[utoipa::path(put, path = "/api/v1/groups/{id}/mute", tag = "groups", security(("bearer" = [])),
    params(("id" = i64, Path, description = "the group")),
    request_body = MuteAllBody,
    responses((status = 204, description = "set"), (status = 403, body = ErrorBody)))]
pub async fn mute_all(
    State(svc): State<AppState>,
    Caller(me): Caller,
    PathParam(id): PathParam<i64>,
    JsonBody(b): JsonBody<MuteAllBody>,
) -> Result<StatusCode, RestError> {
    counted(
        "group_mute_all",
        no_content(svc.mute_all(me, id, b.muted).await),
    )
}

/// Transfer ownership to another member (owner only).
#[utoipa::path(put, path = "/api/v1/groups/{id}/owner", tag = "groups", security(("bearer" = [])),
    params(("id" = i64, Path, description = "the group")),
    request_body = TransferBody,
    responses((status = 204, description = "transferred"), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub async fn transfer(
    State(svc): State<AppState>,
    Caller(me): Caller,
    PathParam(id): PathParam<i64>,
    JsonBody(b): JsonBody<TransferBody>,
) -> Result<StatusCode, RestError> {
    counted(
        "group_transfer",
        no_content(svc.transfer_group(me, id, b.user_id).await),
    )
}

/// Send a message to a group (members who are not muted).
#[utoipa::path(post, path = "/api/v1/groups/{id}/messages", tag = "groups",
    security(("bearer" = [])),
    params(("id" = i64, Path, description = "the group")),
    request_body = GroupSendBody,
    responses((status = 200, body = SendAck),
        (status = 403, description = "NOT_MEMBER or MUTED", body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub async fn send_group(
    State(svc): State<AppState>,
    Caller(me): Caller,
    PathParam(id): PathParam<i64>,
    JsonBody(b): JsonBody<GroupSendBody>,
) -> Result<Json<SendAck>, RestError> {
    let r = async {
        let req = C2gSendRequest {
            group_id: id,
            client_msg_id: b.client_msg_id,
            content_type: b.content_type,
            body: b.body.into_bytes(),
        };
        let stored = svc.group_send(me, req, None).await?.await?;
        Ok(Json(SendAck::from(stored)))
    }
    .await;
    counted("c2g_send", r)
}

/// Pull a read-diffusion group's messages after the caller's group cursor
/// (members only; each message has `seq` 0 and `group_seq` set).
#[utoipa::path(get, path = "/api/v1/groups/{id}/messages", tag = "groups",
    security(("bearer" = [])),
    params(("id" = i64, Path, description = "the group"), PullQuery),
    responses((status = 200, body = PullPage),
        (status = 403, description = "NOT_MEMBER", body = ErrorBody)))]
pub async fn pull_group(
    State(svc): State<AppState>,
    Caller(me): Caller,
    PathParam(id): PathParam<i64>,
    QueryParam(q): QueryParam<PullQuery>,
) -> Result<Json<PullPage>, RestError> {
    let r = async {
        let page = svc.pull_group(me, id, q.after_seq, q.limit).await?;
        Ok(Json(PullPage {
            messages: page.messages.iter().map(message_json).collect(),
            has_more: page.has_more,
            max_seq: page.max_seq,
        }))
    }
    .await;
    counted("group_pull", r)
}
