//! Conversations over REST: the caller's list, paged history (newest first)
//! and marking read. Conversation ids are `c2c:{low}:{high}` or `group:{id}`.
use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::social::conversations::ConvId;
use crate::store::history::HistoryItem;

use super::extract::{Caller, JsonBody, PathParam, QueryParam};
use super::messages::{MessageJson, message_json};
use super::{AppState, ErrorBody, RestError, counted};

/// A message in history: revoked messages keep their place, without a body.
#[derive(Serialize, ToSchema)]
pub struct HistoryMessage {
    #[serde(flatten)]
    pub message: MessageJson,
    pub revoked: bool,
}

fn history_json(i: &HistoryItem) -> HistoryMessage {
    HistoryMessage {
        message: message_json(&i.message),
        revoked: i.revoked,
    }
}

#[derive(Serialize, ToSchema)]
pub struct ConversationJson {
    /// `c2c:{low}:{high}` or `group:{id}`.
    pub id: String,
    /// `c2c` or `group`.
    pub kind: String,
    /// The other user (c2c) or the group.
    pub peer: i64,
    pub last: Option<HistoryMessage>,
    /// Messages from others after the read position.
    pub unread: i64,
    /// The last message id marked read (0: none).
    pub read_msg_id: i64,
}

#[derive(Serialize, ToSchema)]
pub struct ConversationList {
    /// Most recent activity first.
    pub conversations: Vec<ConversationJson>,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct HistoryQuery {
    /// Only messages with an id below this one (message ids grow with time);
    /// omit for the newest page.
    pub before: Option<i64>,
    /// Page size; 0 or absent means 50, capped by the server's max pull.
    #[serde(default)]
    pub limit: u32,
}

#[derive(Serialize, ToSchema)]
pub struct HistoryPage {
    /// Newest first.
    pub messages: Vec<HistoryMessage>,
    /// Pass as `before` for the next (older) page; absent on the last page.
    pub next_before: Option<i64>,
}

#[derive(Deserialize, ToSchema, Default)]
pub struct ReadBody {
    /// Read up to and including this message; absent: the newest.
    #[serde(default)]
    pub up_to_msg_id: Option<i64>,
}

#[derive(Serialize, ToSchema)]
pub struct ReadResult {
    /// The read position now stored.
    pub read_msg_id: i64,
}

fn conv_id(s: &str) -> Result<ConvId, RestError> {
    ConvId::parse(s).ok_or_else(|| {
        RestError::bad_request("conversation id must be c2c:{user}:{user} or group:{id}")
    })
}

/// The caller's conversations: peer or group, last message, unread count, read position.
#[utoipa::path(get, path = "/api/v1/conversations", tag = "conversations",
    security(("bearer" = [])),
    responses((status = 200, body = ConversationList), (status = 401, body = ErrorBody)))]
pub async fn list(
    State(svc): State<AppState>,
    Caller(me): Caller,
) -> Result<Json<ConversationList>, RestError> {
    let r = async {
        let conversations = svc
            .conversations(me)
            .await?
            .into_iter()
            .map(|c| ConversationJson {
                id: c.id.to_string(),
                kind: match c.id {
                    ConvId::C2c(..) => "c2c",
                    ConvId::Group(_) => "group",
                }
                .into(),
                peer: c.peer,
                last: c.last.as_ref().map(history_json),
                unread: c.unread,
                read_msg_id: c.read_msg_id,
            })
            .collect();
        Ok(Json(ConversationList { conversations }))
    }
    .await;
    counted("conversations", r)
}

/// History of a conversation the caller belongs to, newest first.
#[utoipa::path(get, path = "/api/v1/conversations/{conv_id}/messages", tag = "conversations",
    security(("bearer" = [])),
    params(("conv_id" = String, Path, description = "c2c:{low}:{high} or group:{id}"), HistoryQuery),
    responses((status = 200, body = HistoryPage),
        (status = 403, description = "FORBIDDEN (not your conversation) or NOT_MEMBER", body = ErrorBody)))]
pub async fn history(
    State(svc): State<AppState>,
    Caller(me): Caller,
    PathParam(id): PathParam<String>,
    QueryParam(q): QueryParam<HistoryQuery>,
) -> Result<Json<HistoryPage>, RestError> {
    let r = async {
        let conv = conv_id(&id)?;
        let items = svc.history(me, conv, q.before, q.limit).await?;
        let limit = match q.limit {
            0 => 50,
            n => n.min(svc.cfg.max_pull),
        };
        let next_before = (items.len() >= limit as usize)
            .then(|| items.last().map(|i| i.message.msg_id))
            .flatten();
        Ok(Json(HistoryPage {
            messages: items.iter().map(history_json).collect(),
            next_before,
        }))
    }
    .await;
    counted("history", r)
}

/// Mark a conversation read; one-to-one peers get a READ receipt.
#[utoipa::path(post, path = "/api/v1/conversations/{conv_id}/read", tag = "conversations",
    security(("bearer" = [])),
    params(("conv_id" = String, Path, description = "c2c:{low}:{high} or group:{id}")),
    request_body = ReadBody,
    responses((status = 200, body = ReadResult), (status = 400, body = ErrorBody),
        (status = 403, body = ErrorBody)))]
pub async fn mark_read(
    State(svc): State<AppState>,
    Caller(me): Caller,
    PathParam(id): PathParam<String>,
    JsonBody(b): JsonBody<ReadBody>,
) -> Result<Json<ReadResult>, RestError> {
    let r = async {
        let conv = conv_id(&id)?;
        let read_msg_id = svc.mark_read(me, conv, b.up_to_msg_id).await?;
        Ok(Json(ReadResult { read_msg_id }))
    }
    .await;
    counted("mark_read", r)
}
