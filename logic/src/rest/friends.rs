//! Friends over REST: requests (with a note), accept or reject, the friend
//! list, per-pair keys, deleting friends, blocking and unblocking.
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::store::social::FriendRequest;

use super::extract::{Caller, JsonBody, PathParam};
use super::{AppState, ErrorBody, RestError, counted};

#[derive(Serialize, ToSchema)]
pub struct FriendRequestJson {
    pub id: i64,
    pub from: i64,
    pub to: i64,
    pub note: String,
    pub created_at_ms: i64,
}

impl From<FriendRequest> for FriendRequestJson {
    fn from(r: FriendRequest) -> Self {
        FriendRequestJson {
            id: r.id,
            from: r.from_user,
            to: r.to_user,
            note: r.note,
            created_at_ms: r.created_at_ms,
        }
    }
}

/// Pending requests to and from the caller.
#[derive(Serialize, ToSchema)]
pub struct FriendRequests {
    pub incoming: Vec<FriendRequestJson>,
    pub outgoing: Vec<FriendRequestJson>,
}

#[derive(Deserialize, ToSchema)]
pub struct NewFriendRequest {
    /// The user to befriend.
    pub to: i64,
    /// Shown to the recipient; at most 512 bytes, no control characters but line breaks and tabs.
    #[serde(default)]
    pub note: String,
}

#[derive(Serialize, ToSchema)]
pub struct RequestOutcomeJson {
    pub request_id: i64,
    /// `pending`, or `accepted` when the other side had asked first.
    pub status: String,
}

/// An accepted request: the new friend and the pair's key.
#[derive(Serialize, ToSchema)]
pub struct PairKeyJson {
    pub user_id: i64,
    /// 32 random bytes as hex, the same for both friends.
    pub key: String,
}

#[derive(Serialize, ToSchema)]
pub struct FriendJson {
    pub user_id: i64,
    pub username: String,
    pub since_ms: i64,
}

#[derive(Serialize, ToSchema)]
pub struct FriendList {
    pub friends: Vec<FriendJson>,
}

#[derive(Serialize, ToSchema)]
pub struct BlockList {
    /// User ids the caller blocked, ascending.
    pub blocked: Vec<i64>,
}

/// The caller's friends.
#[utoipa::path(get, path = "/api/v1/friends", tag = "friends", security(("bearer" = [])),
    responses((status = 200, body = FriendList), (status = 401, body = ErrorBody)))]
pub async fn list_friends(
    State(svc): State<AppState>,
    Caller(me): Caller,
) -> Result<Json<FriendList>, RestError> {
    let r = async {
        let friends = svc
            .friends(me)
            .await?
            .into_iter()
            .map(|f| FriendJson {
                user_id: f.user_id,
                username: f.username,
                since_ms: f.since_ms,
            })
            .collect();
        Ok(Json(FriendList { friends }))
    }
    .await;
    counted("friends_list", r)
}

/// End a friendship (both sides).
#[utoipa::path(delete, path = "/api/v1/friends/{user_id}", tag = "friends", security(("bearer" = [])),
    params(("user_id" = i64, Path, description = "the friend")),
    responses((status = 204, description = "deleted"), (status = 404, body = ErrorBody)))]
pub async fn delete_friend(
    State(svc): State<AppState>,
    Caller(me): Caller,
    PathParam(other): PathParam<i64>,
) -> Result<StatusCode, RestError> {
    let r = async {
        svc.delete_friend(me, other).await?;
        Ok(StatusCode::NO_CONTENT)
    }
    .await;
    counted("friends_delete", r)
}

/// The per-pair key shared with a friend.
#[utoipa::path(get, path = "/api/v1/friends/{user_id}/key", tag = "friends", security(("bearer" = [])),
    params(("user_id" = i64, Path, description = "the friend")),
    responses((status = 200, body = PairKeyJson), (status = 404, description = "not a friend", body = ErrorBody)))]
pub async fn pair_key(
    State(svc): State<AppState>,
    Caller(me): Caller,
    PathParam(other): PathParam<i64>,
) -> Result<Json<PairKeyJson>, RestError> {
    let r = async {
        let key = svc.friend_key(me, other).await?;
        Ok(Json(PairKeyJson {
            user_id: other,
            key,
        }))
    }
    .await;
    counted("friends_key", r)
}

/// Pending friend requests to and from the caller.
#[utoipa::path(get, path = "/api/v1/friends/requests", tag = "friends", security(("bearer" = [])),
    responses((status = 200, body = FriendRequests)))]
pub async fn list_requests(
    State(svc): State<AppState>,
    Caller(me): Caller,
) -> Result<Json<FriendRequests>, RestError> {
    let r = async {
        let (incoming, outgoing) = svc.friend_requests(me).await?;
        Ok(Json(FriendRequests {
            incoming: incoming.into_iter().map(Into::into).collect(),
            outgoing: outgoing.into_iter().map(Into::into).collect(),
        }))
    }
    .await;
    counted("friend_requests", r)
}

/// Ask a user to be friends.
#[utoipa::path(post, path = "/api/v1/friends/requests", tag = "friends", security(("bearer" = [])),
    request_body = NewFriendRequest,
    responses(
        (status = 201, body = RequestOutcomeJson),
        (status = 403, description = "BLOCKED", body = ErrorBody),
        (status = 404, description = "UNKNOWN_USER", body = ErrorBody),
        (status = 409, description = "already friends", body = ErrorBody),
    ))]
pub async fn send_request(
    State(svc): State<AppState>,
    Caller(me): Caller,
    JsonBody(b): JsonBody<NewFriendRequest>,
) -> Result<(StatusCode, Json<RequestOutcomeJson>), RestError> {
    let r = async {
        let o = svc.send_friend_request(me, b.to, &b.note).await?;
        Ok((
            StatusCode::CREATED,
            Json(RequestOutcomeJson {
                request_id: o.request_id,
                status: if o.accepted { "accepted" } else { "pending" }.into(),
            }),
        ))
    }
    .await;
    counted("friend_request_send", r)
}

/// Accept a friend request addressed to the caller.
#[utoipa::path(post, path = "/api/v1/friends/requests/{id}/accept", tag = "friends",
    security(("bearer" = [])),
    params(("id" = i64, Path, description = "the request")),
    responses(
        (status = 200, description = "friends now; the pair's key", body = PairKeyJson),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
    ))]
pub async fn accept_request(
    State(svc): State<AppState>,
    Caller(me): Caller,
    PathParam(id): PathParam<i64>,
) -> Result<Json<PairKeyJson>, RestError> {
    let r = async {
        let (user_id, key) = svc
            .answer_friend_request(me, id, true)
            .await?
            .ok_or_else(|| RestError::bad_request("request was not accepted"))?;
        Ok(Json(PairKeyJson { user_id, key }))
    }
    .await;
    counted("friend_request_accept", r)
}

/// Reject a friend request addressed to the caller.
#[utoipa::path(post, path = "/api/v1/friends/requests/{id}/reject", tag = "friends",
    security(("bearer" = [])),
    params(("id" = i64, Path, description = "the request")),
    responses((status = 204, description = "rejected"), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn reject_request(
    State(svc): State<AppState>,
    Caller(me): Caller,
    PathParam(id): PathParam<i64>,
) -> Result<StatusCode, RestError> {
    let r = async {
        svc.answer_friend_request(me, id, false).await?;
        Ok(StatusCode::NO_CONTENT)
    }
    .await;
    counted("friend_request_reject", r)
}

/// The users the caller blocked.
#[utoipa::path(get, path = "/api/v1/blocks", tag = "friends", security(("bearer" = [])),
    responses((status = 200, body = BlockList)))]
pub async fn list_blocks(
    State(svc): State<AppState>,
    Caller(me): Caller,
) -> Result<Json<BlockList>, RestError> {
    let r = async {
        Ok(Json(BlockList {
            blocked: svc.blocked_users(me).await?,
        }))
    }
    .await;
    counted("blocks_list", r)
}

/// Block a user: their messages and friend requests to the caller are refused.
#[utoipa::path(put, path = "/api/v1/blocks/{user_id}", tag = "friends", security(("bearer" = [])),
    params(("user_id" = i64, Path, description = "the user to block")),
    responses((status = 204, description = "blocked"), (status = 404, body = ErrorBody)))]
pub async fn block(
    State(svc): State<AppState>,
    Caller(me): Caller,
    PathParam(other): PathParam<i64>,
) -> Result<StatusCode, RestError> {
    let r = async {
        svc.block_user(me, other).await?;
        Ok(StatusCode::NO_CONTENT)
    }
    .await;
    counted("block", r)
}

/// Unblock a user.
#[utoipa::path(delete, path = "/api/v1/blocks/{user_id}", tag = "friends", security(("bearer" = [])),
    params(("user_id" = i64, Path, description = "the blocked user")),
    responses((status = 204, description = "unblocked"), (status = 404, body = ErrorBody)))]
pub async fn unblock(
    State(svc): State<AppState>,
    Caller(me): Caller,
    PathParam(other): PathParam<i64>,
) -> Result<StatusCode, RestError> {
    let r = async {
        svc.unblock_user(me, other).await?;
        Ok(StatusCode::NO_CONTENT)
    }
    .await;
    counted("unblock", r)
}
