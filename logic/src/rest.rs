//! REST API for apps and business servers (axum): accounts, tokens, sending
//! and syncing. Handlers translate; rules live in the service and store.
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use im_common::api::ApiError;
use im_proto::client::{C2cSendRequest, ErrorCode, Message};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::auth::{self, Claims};
use crate::metrics;
use crate::service::LogicService;
use crate::store::StoreError;

/// A JSON error: `{"code": "USERNAME_TAKEN", "message": "..."}` with an HTTP status.
#[derive(Debug)]
pub struct RestError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl RestError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        RestError {
            status,
            code,
            message: message.into(),
        }
    }
}

impl IntoResponse for RestError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(json!({"code": self.code, "message": self.message})),
        )
            .into_response()
    }
}

impl From<ApiError> for RestError {
    fn from(e: ApiError) -> Self {
        let status = match e.code {
            ErrorCode::Unauthenticated | ErrorCode::TokenExpired => StatusCode::UNAUTHORIZED,
            ErrorCode::BadRequest => StatusCode::BAD_REQUEST,
            ErrorCode::UnknownUser => StatusCode::NOT_FOUND,
            ErrorCode::Forbidden => StatusCode::FORBIDDEN,
            ErrorCode::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let code = e.code.as_str_name().trim_start_matches("ERROR_CODE_");
        // as_str_name is 'static, so is the trimmed slice.
        RestError::new(status, code, e.message)
    }
}

impl From<StoreError> for RestError {
    fn from(e: StoreError) -> Self {
        tracing::warn!(error = %e, "storage error in REST handler");
        RestError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "UNAVAILABLE",
            "storage unavailable; retry",
        )
    }
}

type AppState = Arc<LogicService>;

/// The REST routes under `/api/v1`.
pub fn router(svc: Arc<LogicService>) -> Router {
    let limit = svc.cfg.max_body * 2 + 4096;
    Router::new()
        .route("/api/v1/register", post(register))
        .route("/api/v1/login", post(login))
        .route("/api/v1/logout", post(logout))
        .route("/api/v1/users", get(user_by_id))
        .route("/api/v1/users/{username}", get(user_by_name))
        .route("/api/v1/messages", get(pull).post(send))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(svc)
}

#[derive(Deserialize)]
struct Credentials {
    username: String,
    password: String,
}

fn validate_credentials(c: &Credentials) -> Result<(), RestError> {
    let ok_name = (3..=32).contains(&c.username.len())
        && c.username
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '_' | '.' | '-'));
    if !ok_name {
        return Err(RestError::new(
            StatusCode::BAD_REQUEST,
            "BAD_REQUEST",
            "username must be 3-32 characters of letters, digits, '_', '.', '-'",
        ));
    }
    if !(6..=128).contains(&c.password.len()) {
        return Err(RestError::new(
            StatusCode::BAD_REQUEST,
            "BAD_REQUEST",
            "password must be 6-128 bytes",
        ));
    }
    Ok(())
}

fn counted<T>(api: &str, r: Result<T, RestError>) -> Result<T, RestError> {
    metrics::request(api, r.as_ref().map(|_| "ok").unwrap_or_else(|e| e.code));
    r
}

async fn register(
    State(svc): State<AppState>,
    Json(c): Json<Credentials>,
) -> Result<(StatusCode, Json<serde_json::Value>), RestError> {
    let r = async {
        validate_credentials(&c)?;
        let password = c.password.clone();
        let hash = tokio::task::spawn_blocking(move || auth::hash_password(&password))
            .await
            .map_err(|_| {
                RestError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "INTERNAL",
                    "hashing failed",
                )
            })?
            .map_err(|e| {
                RestError::new(StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL", e.to_string())
            })?;
        let id = svc
            .store
            .create_user(&c.username, &hash, im_proto::now_ms() as i64)
            .await
            .map_err(|e| match e {
                StoreError::UsernameTaken => {
                    RestError::new(StatusCode::CONFLICT, "USERNAME_TAKEN", "username is taken")
                }
                e => e.into(),
            })?;
        Ok((
            StatusCode::CREATED,
            Json(json!({"user_id": id, "username": c.username})),
        ))
    }
    .await;
    counted("register", r)
}

#[derive(Serialize)]
struct LoginResponse {
    token: String,
    user_id: i64,
    expires_at: u64,
}

async fn login(
    State(svc): State<AppState>,
    Json(c): Json<Credentials>,
) -> Result<Json<LoginResponse>, RestError> {
    let r = async {
        let bad = || {
            RestError::new(
                StatusCode::UNAUTHORIZED,
                "BAD_CREDENTIALS",
                "wrong username or password",
            )
        };
        let user = svc.store.user_by_name(&c.username).await?.ok_or_else(bad)?;
        let hash = user.password_hash.clone();
        let password = c.password;
        let ok = tokio::task::spawn_blocking(move || auth::verify_password(&password, &hash))
            .await
            .unwrap_or(false);
        if !ok {
            return Err(bad());
        }
        let (token, claims) = svc
            .tokens
            .issue(user.id, im_proto::now_ms() / 1000)
            .map_err(|e| {
                RestError::new(StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL", e.to_string())
            })?;
        Ok(Json(LoginResponse {
            token,
            user_id: user.id,
            expires_at: claims.exp,
        }))
    }
    .await;
    counted("login", r)
}

async fn bearer(svc: &LogicService, headers: &HeaderMap) -> Result<Claims, RestError> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| {
            RestError::new(
                StatusCode::UNAUTHORIZED,
                "UNAUTHENTICATED",
                "missing bearer token",
            )
        })?;
    Ok(svc.verify_token(token).await?)
}

async fn logout(State(svc): State<AppState>, headers: HeaderMap) -> Result<StatusCode, RestError> {
    let r = async {
        let claims = bearer(&svc, &headers).await?;
        svc.store
            .revoke_token(&claims.jti, claims.exp as i64 * 1000)
            .await?;
        Ok(StatusCode::NO_CONTENT)
    }
    .await;
    counted("logout", r)
}

async fn user_by_name(
    State(svc): State<AppState>,
    headers: HeaderMap,
    Path(username): Path<String>,
) -> Result<Json<serde_json::Value>, RestError> {
    let r = async {
        bearer(&svc, &headers).await?;
        let user =
            svc.store.user_by_name(&username).await?.ok_or_else(|| {
                RestError::new(StatusCode::NOT_FOUND, "UNKNOWN_USER", "no such user")
            })?;
        Ok(Json(json!({"user_id": user.id, "username": user.username})))
    }
    .await;
    counted("user_by_name", r)
}

#[derive(Deserialize)]
struct IdQuery {
    id: i64,
}

async fn user_by_id(
    State(svc): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<IdQuery>,
) -> Result<Json<serde_json::Value>, RestError> {
    let r = async {
        bearer(&svc, &headers).await?;
        let name =
            svc.store.username_of(q.id).await?.ok_or_else(|| {
                RestError::new(StatusCode::NOT_FOUND, "UNKNOWN_USER", "no such user")
            })?;
        Ok(Json(json!({"user_id": q.id, "username": name})))
    }
    .await;
    counted("user_by_id", r)
}

#[derive(Deserialize)]
struct PullQuery {
    #[serde(default)]
    after_seq: u64,
    #[serde(default)]
    limit: u32,
}

/// A message as JSON; `body` is the UTF-8 text (lossy for binary bodies).
pub fn message_json(m: &Message) -> serde_json::Value {
    json!({
        "msg_id": m.msg_id,
        "seq": m.seq,
        "conv_type": m.conv_type().as_str_name().trim_start_matches("CONVERSATION_TYPE_").to_lowercase(),
        "from": m.from,
        "to": m.to,
        "client_msg_id": m.client_msg_id,
        "content_type": m.content_type,
        "body": String::from_utf8_lossy(&m.body),
        "sent_at_ms": m.sent_at_ms,
    })
}

async fn pull(
    State(svc): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<PullQuery>,
) -> Result<Json<serde_json::Value>, RestError> {
    let r = async {
        let claims = bearer(&svc, &headers).await?;
        let page = svc.pull(claims.sub, q.after_seq, q.limit).await?;
        Ok(Json(json!({
            "messages": page.messages.iter().map(message_json).collect::<Vec<_>>(),
            "has_more": page.has_more,
            "max_seq": page.max_seq,
        })))
    }
    .await;
    counted("pull", r)
}

#[derive(Deserialize)]
struct SendBody {
    to: i64,
    client_msg_id: String,
    #[serde(default = "text_type")]
    content_type: u32,
    body: String,
}

fn text_type() -> u32 {
    1
}

async fn send(
    State(svc): State<AppState>,
    headers: HeaderMap,
    Json(b): Json<SendBody>,
) -> Result<Json<serde_json::Value>, RestError> {
    let r = async {
        let claims = bearer(&svc, &headers).await?;
        let req = C2cSendRequest {
            to: b.to,
            client_msg_id: b.client_msg_id,
            content_type: b.content_type,
            body: b.body.into_bytes().into(),
        };
        let stored = svc.send_c2c(claims.sub, req, None).await?.await?;
        Ok(Json(json!({
            "msg_id": stored.msg_id,
            "seq": stored.sender_seq,
            "sent_at_ms": stored.sent_at_ms,
            "duplicate": stored.duplicate,
        })))
    }
    .await;
    counted("c2c_send", r)
}
