//! Server push (s2c): `POST /api/v1/s2c/messages` lets a business server,
//! authenticated by a server API key, send one message to up to 1000 users.
//! It stores through the committer like c2c; it never writes storage itself.
//!
//! The message is stored once with `conv_type = S2C`, sender 0 (no user),
//! target 0, and `client_msg_id = "{key name}:{client_msg_id}"`, so two
//! business servers never collide; each recipient gets one inbox entry.
//! `GET /api/v1/s2c/users/{username}` resolves a username with the same key.
use std::collections::BTreeSet;
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use im_common::api::ApiError;
use im_proto::client::{ConversationType, ErrorCode};
use serde::Deserialize;
use serde_json::{Value, json};
use sqlx::Row;

use crate::metrics;
use crate::rest::RestError;
use crate::service::{LogicService, check_client_msg_id};
use crate::store::{NewMessage, SendPolicy, Stored};

/// Most recipients of one server push.
pub const MAX_S2C_RECIPIENTS: usize = 1000;
/// The sender id of server pushes: no user has it.
pub const S2C_SENDER: i64 = 0;
/// Header carrying the server API key.
pub const API_KEY_HEADER: &str = "x-api-key";
/// Shortest accepted server API key.
pub const MIN_KEY_LEN: usize = 16;

/// Named server API keys (`--server-api-keys name:key,...`).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ApiKeys(Vec<(String, String)>);

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.0.iter().map(|(n, _)| n.as_str()).collect();
        f.debug_tuple("ApiKeys").field(&names).finish()
    }
}

impl ApiKeys {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The name of the key equal to `presented`. Every configured key is
    /// compared in full, in constant time, whatever matches.
    pub fn name_of(&self, presented: &str) -> Option<&str> {
        let mut found = None;
        for (name, key) in &self.0 {
            if constant_time_eq(key.as_bytes(), presented.as_bytes()) {
                found = Some(name.as_str());
            }
        }
        found
    }
}

/// Parses `name:key` pairs separated by commas ("" means none). Names are
/// 1..=32 characters of `[A-Za-z0-9_.-]`, keys at least 16 bytes.
pub fn parse_api_keys(s: &str) -> Result<ApiKeys, String> {
    let mut keys: Vec<(String, String)> = Vec::new();
    for pair in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((name, key)) = pair.split_once(':') else {
            return Err("each server API key must be written name:key".into());
        };
        let ok_name = (1..=32).contains(&name.len())
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
        if !ok_name {
            return Err(format!(
                "server API key name {name:?} must be 1-32 characters of letters, digits, '_', '.', '-'"
            ));
        }
        if key.len() < MIN_KEY_LEN {
            return Err(format!(
                "server API key {name:?} must be at least {MIN_KEY_LEN} bytes"
            ));
        }
        if keys.iter().any(|(n, _)| n == name) {
            return Err(format!("server API key name {name:?} appears twice"));
        }
        keys.push((name.to_string(), key.to_string()));
    }
    Ok(ApiKeys(keys))
}

/// Compares without an early exit on the first differing byte.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = (a.len() ^ b.len()) as u64;
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= u64::from(x ^ y);
    }
    std::hint::black_box(diff) == 0
}

/// A server push request.
#[derive(Debug, Deserialize)]
pub struct S2cBody {
    pub to: Vec<i64>,
    pub client_msg_id: String,
    #[serde(default = "text_type")]
    pub content_type: u32,
    pub body: String,
}

fn text_type() -> u32 {
    1
}

/// Checks a push and builds the message to store (recipients sorted, distinct).
pub fn build_s2c_message(
    key_name: &str,
    b: S2cBody,
    max_body: usize,
) -> Result<NewMessage, ApiError> {
    if b.to.is_empty() || b.to.len() > MAX_S2C_RECIPIENTS {
        return Err(ApiError::bad_request(format!(
            "`to` must list 1..={MAX_S2C_RECIPIENTS} user ids"
        )));
    }
    if b.to.iter().any(|u| *u <= 0) {
        return Err(ApiError::bad_request("user ids in `to` must be > 0"));
    }
    check_client_msg_id(&b.client_msg_id)?;
    if b.body.len() > max_body {
        return Err(ApiError::bad_request(format!(
            "body exceeds {max_body} bytes"
        )));
    }
    let recipients: Vec<i64> =
        b.to.into_iter()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
    Ok(NewMessage {
        sender: S2C_SENDER,
        client_msg_id: format!("{key_name}:{}", b.client_msg_id),
        conv_type: ConversationType::S2c,
        target: 0,
        content_type: b.content_type,
        body: b.body.into_bytes().into(),
        recipients,
        policy: SendPolicy::Unchecked,
    })
}

impl LogicService {
    /// Stores one server push through the committer; resolves once durable.
    /// A repeated (key name, client_msg_id) returns the original with
    /// `duplicate = true` and stores nothing.
    pub async fn send_s2c(&self, msg: NewMessage) -> Result<Stored, ApiError> {
        if let Some(s) = self.stored_s2c(&msg.client_msg_id).await? {
            return Ok(s);
        }
        let client_msg_id = msg.client_msg_id.clone();
        let rx = self.committer.submit(msg, None).await?;
        let r = rx
            .await
            .unwrap_or_else(|_| Err(ApiError::unavailable("store is shutting down")));
        match r {
            // A concurrent push with the same id won the insert: its commit is the answer.
            Err(e) if e.code == ErrorCode::Unavailable => {
                match self.stored_s2c(&client_msg_id).await? {
                    Some(s) => Ok(s),
                    None => Err(e),
                }
            }
            r => r,
        }
    }

    /// The acknowledgement of an already stored server push.
    async fn stored_s2c(&self, client_msg_id: &str) -> Result<Option<Stored>, ApiError> {
        let row = sqlx::query(
            "SELECT id, sent_at_ms FROM messages WHERE sender = $1 AND client_msg_id = $2",
        )
        .bind(S2C_SENDER)
        .bind(client_msg_id)
        .fetch_optional(self.store.pool())
        .await
        .map_err(|e| ApiError::unavailable(format!("failed to read messages: {e}")))?;
        row.map(|r| {
            Ok(Stored {
                msg_id: r.try_get(0)?,
                sender_seq: 0,
                sent_at_ms: r.try_get::<i64, _>(1)? as u64,
                duplicate: true,
            })
        })
        .transpose()
        .map_err(|e: sqlx::Error| ApiError::unavailable(format!("failed to read messages: {e}")))
    }
}

/// `POST /api/v1/s2c/messages`.
pub fn router(svc: Arc<LogicService>) -> Router {
    // Room for 1000 ids plus a full body, JSON-escaped.
    let limit = svc.cfg.max_body * 2 + 64 * 1024;
    Router::new()
        .route("/api/v1/s2c/messages", post(send))
        .route("/api/v1/s2c/users/{username}", get(user_by_name))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(svc)
}

fn authenticate<'a>(svc: &'a LogicService, headers: &HeaderMap) -> Result<&'a str, ApiError> {
    let keys = &svc.cfg.server_api_keys;
    if keys.is_empty() {
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            "server push is disabled: no server API key is configured (--server-api-keys)",
        ));
    }
    let presented = headers
        .get(API_KEY_HEADER)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| ApiError::new(ErrorCode::Unauthenticated, "missing X-Api-Key header"))?;
    keys.name_of(presented)
        .ok_or_else(|| ApiError::new(ErrorCode::Unauthenticated, "invalid server API key"))
}

async fn send(
    State(svc): State<Arc<LogicService>>,
    headers: HeaderMap,
    Json(b): Json<S2cBody>,
) -> Result<(StatusCode, Json<Value>), RestError> {
    let r = async {
        let name = authenticate(&svc, &headers)?;
        let msg = build_s2c_message(name, b, svc.cfg.max_body)?;
        svc.send_s2c(msg).await
    }
    .await;
    metrics::request("s2c_send", crate::service::code_label(&r));
    let stored = r?;
    let status = if stored.duplicate {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((
        status,
        Json(json!({
            "msg_id": stored.msg_id,
            "sent_at_ms": stored.sent_at_ms,
            "duplicate": stored.duplicate,
        })),
    ))
}

/// `GET /api/v1/s2c/users/{username}`: a user id for a business server.
async fn user_by_name(
    State(svc): State<Arc<LogicService>>,
    headers: HeaderMap,
    Path(username): Path<String>,
) -> Result<Json<Value>, RestError> {
    let r = async {
        authenticate(&svc, &headers)?;
        let user = svc
            .store
            .user_by_name(&username)
            .await
            .map_err(|e| ApiError::unavailable(format!("failed to look up user: {e}")))?;
        user.map(|u| json!({"user_id": u.id, "username": u.username}))
            .ok_or_else(|| ApiError::new(ErrorCode::UnknownUser, "no such user"))
    }
    .await;
    metrics::request("s2c_user_by_name", crate::service::code_label(&r));
    Ok(Json(r?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_named_keys() {
        let k = parse_api_keys("crm:0123456789abcdef, billing:fedcba9876543210").unwrap();
        assert_eq!(k.name_of("0123456789abcdef"), Some("crm"));
        assert_eq!(k.name_of("fedcba9876543210"), Some("billing"));
        assert_eq!(k.name_of("0123456789abcde"), None);
        assert_eq!(k.name_of(""), None);
        assert!(parse_api_keys("").unwrap().is_empty());
        assert!(format!("{k:?}").contains("crm") && !format!("{k:?}").contains("0123"));
    }

    #[test]
    fn refuses_bad_keys() {
        for bad in [
            "nokey",
            "crm:short",
            ":0123456789abcdef",
            "a b:0123456789abcdef",
            "crm:0123456789abcdef,crm:0123456789abcdeg",
        ] {
            assert!(parse_api_keys(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn constant_time_eq_is_eq() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
        assert!(constant_time_eq(b"", b""));
    }

    fn body(to: Vec<i64>) -> S2cBody {
        S2cBody {
            to,
            client_msg_id: "m1".into(),
            content_type: 1,
            body: "hi".into(),
        }
    }

    #[test]
    fn builds_one_message_for_distinct_recipients() {
        let m = build_s2c_message("crm", body(vec![3, 1, 3, 2]), 100).unwrap();
        assert_eq!(m.recipients, vec![1, 2, 3]);
        assert_eq!(m.sender, S2C_SENDER);
        assert_eq!(m.target, 0);
        assert_eq!(m.client_msg_id, "crm:m1");
        assert_eq!(m.conv_type, ConversationType::S2c);
    }

    #[test]
    fn refuses_bad_pushes() {
        assert!(build_s2c_message("k", body(vec![]), 100).is_err());
        assert!(build_s2c_message("k", body(vec![0]), 100).is_err());
        assert!(build_s2c_message("k", body((1..=1001).collect()), 100).is_err());
        assert!(build_s2c_message("k", body((1..=1000).collect()), 100).is_ok());
        assert!(build_s2c_message("k", body(vec![1]), 1).is_err());
    }
}
