//! One-to-one messages over REST: send, pull the inbox, revoke.
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use im_proto::client::{C2cSendRequest, Message};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::extract::{Caller, JsonBody, PathParam, QueryParam};
use super::{AppState, ErrorBody, RestError, counted};

/// A message as JSON; `body` is the UTF-8 text (lossy for binary bodies).
#[derive(Debug, Serialize, ToSchema)]
pub struct MessageJson {
    pub msg_id: i64,
    /// Sequence in the caller's inbox (0 for read-diffusion group messages).
    pub seq: u64,
    /// Sequence in the group (read-diffusion group messages only, else 0).
    pub group_seq: u64,
    /// `c2c`, `c2g`, `s2c` or `unspecified`.
    pub conv_type: String,
    pub from: i64,
    /// User id (c2c) or group id (c2g).
    pub to: i64,
    pub client_msg_id: String,
    pub content_type: u32,
    pub body: String,
    pub sent_at_ms: u64,
}

/// A message as JSON.
pub fn message_json(m: &Message) -> MessageJson {
    MessageJson {
        msg_id: m.msg_id,
        seq: m.seq,
        group_seq: m.group_seq,
        conv_type: m
            .conv_type()
            .as_str_name()
            .trim_start_matches("CONVERSATION_TYPE_")
            .to_lowercase(),
        from: m.from,
        to: m.to,
        client_msg_id: m.client_msg_id.clone(),
        content_type: m.content_type,
        body: String::from_utf8_lossy(&m.body).into_owned(),
        sent_at_ms: m.sent_at_ms,
    }
}

/// One page of messages in ascending sequence.
#[derive(Serialize, ToSchema)]
pub struct PullPage {
    pub messages: Vec<MessageJson>,
    pub has_more: bool,
    /// The highest sequence right now (inbox, or group for a group pull).
    pub max_seq: u64,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PullQuery {
    /// Messages with a sequence above this one.
    #[serde(default)]
    pub after_seq: u64,
    /// Page size; 0 means 100, capped by the server's max pull.
    #[serde(default)]
    pub limit: u32,
}

/// The acknowledgement of a stored message (receipt SENT).
#[derive(Serialize, ToSchema)]
pub struct SendAck {
    pub msg_id: i64,
    /// The sender's inbox sequence (group sequence for read-diffusion groups).
    pub seq: u64,
    pub sent_at_ms: u64,
    /// true when this acknowledges an earlier send with the same client_msg_id.
    pub duplicate: bool,
}

impl From<crate::store::Stored> for SendAck {
    fn from(s: crate::store::Stored) -> Self {
        SendAck {
            msg_id: s.msg_id,
            seq: s.sender_seq,
            sent_at_ms: s.sent_at_ms,
            duplicate: s.duplicate,
        }
    }
}

#[derive(Deserialize, ToSchema)]
pub struct SendBody {
    /// Recipient user id.
    pub to: i64,
    /// 1-64 bytes without control characters, unique per sender: makes the send idempotent.
    pub client_msg_id: String,
    /// Below 0xF000; default 1 (UTF-8 text).
    #[serde(default = "text_type")]
    pub content_type: u32,
    pub body: String,
}

pub(crate) fn text_type() -> u32 {
    1
}

/// One page of the caller's inbox after a sequence.
#[utoipa::path(get, path = "/api/v1/messages", tag = "messages",
    security(("bearer" = [])),
    params(PullQuery),
    responses((status = 200, body = PullPage), (status = 401, body = ErrorBody)))]
pub async fn pull(
    State(svc): State<AppState>,
    Caller(me): Caller,
    QueryParam(q): QueryParam<PullQuery>,
) -> Result<Json<PullPage>, RestError> {
    let r = async {
        let page = svc.pull(me, q.after_seq, q.limit).await?;
        Ok(Json(PullPage {
            messages: page.messages.iter().map(message_json).collect(),
            has_more: page.has_more,
            max_seq: page.max_seq,
        }))
    }
    .await;
    counted("pull", r)
}

/// Send a one-to-one message (friends only unless the server allows strangers).
#[utoipa::path(post, path = "/api/v1/messages", tag = "messages",
    security(("bearer" = [])),
    request_body = SendBody,
    responses(
        (status = 200, body = SendAck),
        (status = 400, body = ErrorBody),
        (status = 403, description = "BLOCKED or NOT_FRIENDS", body = ErrorBody),
        (status = 404, description = "UNKNOWN_USER", body = ErrorBody),
        (status = 503, description = "retry with the same client_msg_id", body = ErrorBody),
    ))]
pub async fn send(
    State(svc): State<AppState>,
    Caller(me): Caller,
    JsonBody(b): JsonBody<SendBody>,
) -> Result<Json<SendAck>, RestError> {
    let r = async {
        if b.to > 0 {
            // The same check send_c2c makes, for its precise REST code.
            svc.check_c2c(me, b.to, b.content_type).await?;
        }
        let req = C2cSendRequest {
            to: b.to,
            client_msg_id: b.client_msg_id,
            content_type: b.content_type,
            body: b.body.into_bytes().into(),
        };
        let stored = svc.send_c2c(me, req, None).await?.await?;
        Ok(Json(SendAck::from(stored)))
    }
    .await;
    counted("c2c_send", r)
}

/// Revoke one of the caller's own messages within the revoke window.
#[utoipa::path(post, path = "/api/v1/messages/{msg_id}/revoke", tag = "messages",
    security(("bearer" = [])),
    params(("msg_id" = i64, Path, description = "the message to revoke")),
    responses(
        (status = 204, description = "revoked; recipients get a revoke notice"),
        (status = 403, description = "FORBIDDEN (not the sender) or REVOKE_EXPIRED", body = ErrorBody),
        (status = 404, description = "NOT_FOUND", body = ErrorBody),
    ))]
pub async fn revoke(
    State(svc): State<AppState>,
    Caller(me): Caller,
    PathParam(msg_id): PathParam<i64>,
) -> Result<StatusCode, RestError> {
    let r = async {
        svc.revoke(me, msg_id).await?;
        Ok(StatusCode::NO_CONTENT)
    }
    .await;
    counted("revoke", r)
}
