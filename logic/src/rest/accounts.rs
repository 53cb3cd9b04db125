//! Accounts and tokens: register, login, logout, user lookup.
use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::auth;
use crate::store::StoreError;

use super::extract::{Caller, JsonBody, PathParam, QueryParam, bearer};
use super::{AppState, ErrorBody, RestError, counted};

#[derive(Deserialize, ToSchema)]
pub struct Credentials {
    /// 3-32 characters of letters, digits, `_`, `.`, `-`.
    pub username: String,
    /// 6-128 bytes.
    pub password: String,
}

/// A user id and name.
#[derive(Serialize, ToSchema)]
pub struct UserJson {
    pub user_id: i64,
    pub username: String,
}

#[derive(Serialize, ToSchema)]
pub struct LoginResponse {
    /// Bearer token for REST and for the AUTH frame.
    pub token: String,
    pub user_id: i64,
    /// Seconds since the Unix epoch.
    pub expires_at: u64,
}

fn validate_credentials(c: &Credentials) -> Result<(), RestError> {
    let ok_name = (3..=32).contains(&c.username.len())
        && c.username
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '_' | '.' | '-'));
    if !ok_name {
        return Err(RestError::bad_request(
            "username must be 3-32 characters of letters, digits, '_', '.', '-'",
        ));
    }
    if !(6..=128).contains(&c.password.len()) {
        return Err(RestError::bad_request("password must be 6-128 bytes"));
    }
    Ok(())
}

fn internal(message: impl Into<String>) -> RestError {
    RestError::new(StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL", message)
}

/// Create an account.
#[utoipa::path(post, path = "/api/v1/register", tag = "accounts",
    request_body = Credentials,
    responses(
        (status = 201, description = "registered", body = UserJson),
        (status = 400, description = "bad username or password", body = ErrorBody),
        (status = 409, description = "USERNAME_TAKEN", body = ErrorBody),
    ))]
pub async fn register(
    State(svc): State<AppState>,
    JsonBody(c): JsonBody<Credentials>,
) -> Result<(StatusCode, Json<UserJson>), RestError> {
    let r = async {
        validate_credentials(&c)?;
        let password = c.password.clone();
        let hash = tokio::task::spawn_blocking(move || auth::hash_password(&password))
            .await
            .map_err(|_| internal("hashing failed"))?
            .map_err(|e| internal(e.to_string()))?;
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
            Json(UserJson {
                user_id: id,
                username: c.username,
            }),
        ))
    }
    .await;
    counted("register", r)
}

/// Log in: a bearer token.
#[utoipa::path(post, path = "/api/v1/login", tag = "accounts",
    request_body = Credentials,
    responses(
        (status = 200, description = "logged in", body = LoginResponse),
        (status = 401, description = "BAD_CREDENTIALS", body = ErrorBody),
    ))]
pub async fn login(
    State(svc): State<AppState>,
    JsonBody(c): JsonBody<Credentials>,
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
            .map_err(|e| internal(e.to_string()))?;
        Ok(Json(LoginResponse {
            token,
            user_id: user.id,
            expires_at: claims.exp,
        }))
    }
    .await;
    counted("login", r)
}

/// Revoke the presented token.
#[utoipa::path(post, path = "/api/v1/logout", tag = "accounts",
    security(("bearer" = [])),
    responses(
        (status = 204, description = "token revoked"),
        (status = 401, description = "UNAUTHENTICATED", body = ErrorBody),
    ))]
pub async fn logout(
    State(svc): State<AppState>,
    headers: HeaderMap,
) -> Result<StatusCode, RestError> {
    let r = async {
        let claims = bearer(&svc, &headers).await?;
        svc.logout(&claims).await?;
        Ok(StatusCode::NO_CONTENT)
    }
    .await;
    counted("logout", r)
}

fn no_such_user() -> RestError {
    RestError::new(StatusCode::NOT_FOUND, "UNKNOWN_USER", "no such user")
}

/// Look a user up by name.
#[utoipa::path(get, path = "/api/v1/users/{username}", tag = "accounts",
    security(("bearer" = [])),
    params(("username" = String, Path, description = "the user's name")),
    responses(
        (status = 200, body = UserJson),
        (status = 404, description = "UNKNOWN_USER", body = ErrorBody),
    ))]
pub async fn user_by_name(
    State(svc): State<AppState>,
    Caller(_me): Caller,
    PathParam(username): PathParam<String>,
) -> Result<Json<UserJson>, RestError> {
    let r = async {
        let user = svc
            .store
            .user_by_name(&username)
            .await?
            .ok_or_else(no_such_user)?;
        Ok(Json(UserJson {
            user_id: user.id,
            username: user.username,
        }))
    }
    .await;
    counted("user_by_name", r)
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct IdQuery {
    /// The user id.
    id: i64,
}

/// Look a user up by id.
#[utoipa::path(get, path = "/api/v1/users", tag = "accounts",
    security(("bearer" = [])),
    params(IdQuery),
    responses(
        (status = 200, body = UserJson),
        (status = 404, description = "UNKNOWN_USER", body = ErrorBody),
    ))]
pub async fn user_by_id(
    State(svc): State<AppState>,
    Caller(_me): Caller,
    QueryParam(q): QueryParam<IdQuery>,
) -> Result<Json<UserJson>, RestError> {
    let r = async {
        let name = svc
            .store
            .username_of(q.id)
            .await?
            .ok_or_else(no_such_user)?;
        Ok(Json(UserJson {
            user_id: q.id,
            username: name,
        }))
    }
    .await;
    counted("user_by_id", r)
}
