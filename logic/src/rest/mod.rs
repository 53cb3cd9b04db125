//! REST API for apps and business servers (axum), documented by OpenAPI
//! (utoipa) served at `/openapi.json`: accounts and tokens, messages,
//! friends, groups, conversations. Handlers translate; rules live in the
//! service (`crate::service`, `crate::social`) and the store.
//!
//! - [`accounts`]: register, login, logout, user lookup.
//! - [`messages`]: c2c send, inbox pull, revoke.
//! - [`friends`]: requests, friends, per-pair keys, blocks.
//! - [`groups`] and [`members`]: group lifecycle, membership, group messages.
//! - [`conversations`]: conversation list, history, mark read.
//! - [`extract`]: JSON-error extractors (body, path, query, bearer caller).
//! - [`server_api`]: OpenAPI entries of the server push routes (`crate::s2c`).
use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use im_common::api::ApiError;
use im_proto::client::ErrorCode;
use serde::Serialize;
use utoipa::openapi::OpenApi;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::metrics;
use crate::service::LogicService;
use crate::social::SocialError;
use crate::store::StoreError;

pub mod accounts;
pub mod conversations;
pub mod extract;
pub mod friends;
pub mod groups;
pub mod members;
pub mod messages;
pub mod server_api;

pub use messages::message_json;

/// The body of every error: a stable code and a human message.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// Stable, upper-case: `BAD_REQUEST`, `UNAUTHENTICATED`, `NOT_FRIENDS`, …
    pub code: String,
    pub message: String,
}

/// A JSON error: `{"code": "USERNAME_TAKEN", "message": "..."}` with an HTTP status.
#[derive(Debug)]
pub struct RestError {
    pub(crate) status: StatusCode,
    pub(crate) code: &'static str,
    pub(crate) message: String,
}

impl RestError {
    pub(crate) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        RestError {
            status,
            code,
            message: message.into(),
        }
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "BAD_REQUEST", message)
    }
}

impl IntoResponse for RestError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            code: self.code.to_string(),
            message: self.message,
        };
        (self.status, axum::Json(body)).into_response()
    }
}

fn status_of(code: ErrorCode) -> StatusCode {
    match code {
        ErrorCode::Unauthenticated | ErrorCode::TokenExpired => StatusCode::UNAUTHORIZED,
        ErrorCode::BadRequest => StatusCode::BAD_REQUEST,
        ErrorCode::UnknownUser => StatusCode::NOT_FOUND,
        ErrorCode::Forbidden => StatusCode::FORBIDDEN,
        ErrorCode::RateLimited => StatusCode::TOO_MANY_REQUESTS,
        ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl From<ApiError> for RestError {
    fn from(e: ApiError) -> Self {
        // as_str_name is 'static, so is the trimmed slice.
        let code = e.code.as_str_name().trim_start_matches("ERROR_CODE_");
        RestError::new(status_of(e.code), code, e.message)
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

impl From<SocialError> for RestError {
    fn from(e: SocialError) -> Self {
        let status = match &e {
            SocialError::BadRequest(_) => StatusCode::BAD_REQUEST,
            SocialError::UnknownUser(_) | SocialError::NotFound(_) => StatusCode::NOT_FOUND,
            SocialError::Blocked
            | SocialError::NotFriends
            | SocialError::NotMember
            | SocialError::Forbidden(_)
            | SocialError::Muted
            | SocialError::RevokeExpired => StatusCode::FORBIDDEN,
            SocialError::Conflict(_) => StatusCode::CONFLICT,
            SocialError::Store(_) => return e.to_api().into(),
            SocialError::Api(a) => return a.clone().into(),
        };
        RestError::new(status, e.code(), e.to_string())
    }
}

pub(crate) type AppState = Arc<LogicService>;

/// Records the outcome of one REST call under `api`.
pub(crate) fn counted<T>(api: &str, r: Result<T, RestError>) -> Result<T, RestError> {
    metrics::request(api, r.as_ref().map(|_| "ok").unwrap_or_else(|e| e.code));
    r
}

/// The bearer-token security scheme every authenticated route uses.
struct BearerScheme;

impl Modify for BearerScheme {
    fn modify(&self, openapi: &mut OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}

/// Every documented route, as an OpenAPI router (state still open).
fn api_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(accounts::register))
        .routes(routes!(accounts::login))
        .routes(routes!(accounts::logout))
        .routes(routes!(accounts::user_by_id))
        .routes(routes!(accounts::user_by_name))
        .routes(routes!(messages::pull, messages::send))
        .routes(routes!(messages::revoke))
        .routes(routes!(friends::list_friends))
        .routes(routes!(friends::delete_friend))
        .routes(routes!(friends::pair_key))
        .routes(routes!(friends::list_requests, friends::send_request))
        .routes(routes!(friends::accept_request))
        .routes(routes!(friends::reject_request))
        .routes(routes!(friends::list_blocks))
        .routes(routes!(friends::block, friends::unblock))
        .routes(routes!(groups::create_group, groups::my_groups))
        .routes(routes!(groups::group_info, groups::dismiss_group))
        .routes(routes!(groups::join_group))
        .routes(routes!(groups::quit_group))
        .routes(routes!(groups::set_announcement))
        .routes(routes!(groups::mute_all))
        .routes(routes!(groups::transfer))
        .routes(routes!(groups::send_group, groups::pull_group))
        .routes(routes!(members::list_members, members::invite))
        .routes(routes!(members::kick))
        .routes(routes!(members::set_role))
        .routes(routes!(members::mute_member))
        .routes(routes!(members::join_requests))
        .routes(routes!(members::approve_request))
        .routes(routes!(members::reject_request))
        .routes(routes!(conversations::list))
        .routes(routes!(conversations::history))
        .routes(routes!(conversations::mark_read))
}

/// The OpenAPI document of the REST API (what `/openapi.json` serves).
pub fn openapi() -> OpenApi {
    let mut doc = api_router().into_openapi();
    doc.info.title = "im REST API".into();
    doc.info.version = env!("CARGO_PKG_VERSION").into();
    doc.info.description =
        Some("Accounts, messages, friends, groups and conversations; see docs/protocol.md.".into());
    BearerScheme.modify(&mut doc);
    server_api::add_server_api(&mut doc);
    doc
}

/// The REST routes under `/api/v1`, plus `/openapi.json`.
pub fn router(svc: Arc<LogicService>) -> Router {
    let limit = svc.cfg.max_body * 2 + 4096;
    let (router, _) = api_router().split_for_parts();
    let doc = Arc::new(openapi());
    router
        .route(
            "/openapi.json",
            get(move || {
                let doc = doc.clone();
                async move { axum::Json(doc.as_ref().clone()) }
            }),
        )
        .layer(DefaultBodyLimit::max(limit))
        .with_state(svc)
}
