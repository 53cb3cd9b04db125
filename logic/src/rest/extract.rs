//! Extractors whose rejections are JSON errors with stable codes: a JSON
//! body, path and query parameters, and the bearer-token caller.
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use serde::de::DeserializeOwned;

use crate::auth::Claims;
use crate::metrics;
use crate::service::LogicService;

use super::{AppState, RestError};

/// A JSON request body; a bad body is a `BAD_REQUEST` JSON error.
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = RestError;

    async fn from_request(req: Request, state: &S) -> Result<Self, RestError> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(JsonBody(v)),
            Err(e) => Err(RestError::new(e.status(), "BAD_REQUEST", e.body_text())),
        }
    }
}

/// Path parameters; a bad one is a `BAD_REQUEST` JSON error.
pub struct PathParam<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for PathParam<T> {
    type Rejection = RestError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, RestError> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(v)) => Ok(PathParam(v)),
            Err(e) => Err(RestError::bad_request(e.body_text())),
        }
    }
}

/// Query parameters; a bad one is a `BAD_REQUEST` JSON error.
pub struct QueryParam<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for QueryParam<T> {
    type Rejection = RestError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, RestError> {
        match Query::<T>::from_request_parts(parts, state).await {
            Ok(Query(v)) => Ok(QueryParam(v)),
            Err(e) => Err(RestError::bad_request(e.body_text())),
        }
    }
}

/// Verifies `Authorization: Bearer <token>` (signature, expiry, revocation).
pub(crate) async fn bearer(
    svc: &LogicService,
    headers: &axum::http::HeaderMap,
) -> Result<Claims, RestError> {
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

/// The authenticated caller's user id.
pub struct Caller(pub i64);

impl FromRequestParts<AppState> for Caller {
    type Rejection = RestError;

    async fn from_request_parts(parts: &mut Parts, svc: &AppState) -> Result<Self, RestError> {
        match bearer(svc, &parts.headers).await {
            Ok(c) => Ok(Caller(c.sub)),
            Err(e) => {
                metrics::request("rest_auth", e.code);
                Err(e)
            }
        }
    }
}
