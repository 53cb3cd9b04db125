//! The two seams between the tiers, as traits: gateways call [`LogicApi`],
//! logic calls [`GatewayApi`]. Single-node mode implements them in process,
//! cluster mode over gRPC; neither side knows which it has.
use std::future::Future;
use std::pin::Pin;

use async_trait::async_trait;
use im_proto::client::{Error as ErrorBody, ErrorCode};
use im_proto::logic::{
    AuthReply, AuthRequest, KickReply, KickRequest, PushBatch, PushReply, UpReply, UpRequest,
};

/// Metadata key carrying the protocol error code of a failed gRPC call.
pub const ERROR_CODE_KEY: &str = "im-error-code";

/// An error with a protocol error code, safe to show to a client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    pub retryable: bool,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            code,
            message: message.into(),
            retryable: false,
        }
    }

    /// A transient failure: the client retries with the same client message id.
    pub fn unavailable(message: impl Into<String>) -> Self {
        ApiError {
            code: ErrorCode::Unavailable,
            message: message.into(),
            retryable: true,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::BadRequest, message)
    }

    pub fn to_body(&self) -> ErrorBody {
        ErrorBody {
            code: self.code as u32,
            message: self.message.clone(),
            retryable: self.retryable,
        }
    }

    /// The error carried by a non-zero [`UpReply`].
    pub fn from_reply(reply: &UpReply) -> Option<ApiError> {
        (reply.code != 0).then(|| ApiError {
            code: ErrorCode::try_from(reply.code as i32).unwrap_or(ErrorCode::Internal),
            message: reply.message.clone(),
            retryable: reply.retryable,
        })
    }

    /// As a gRPC status; the protocol code travels in metadata.
    pub fn to_status(&self) -> tonic::Status {
        let mut s = match self.code {
            ErrorCode::Unauthenticated | ErrorCode::TokenExpired => {
                tonic::Status::unauthenticated(&self.message)
            }
            ErrorCode::Unavailable => tonic::Status::unavailable(&self.message),
            ErrorCode::BadRequest => tonic::Status::invalid_argument(&self.message),
            _ => tonic::Status::internal(&self.message),
        };
        if let Ok(v) = (self.code as i32).to_string().parse() {
            s.metadata_mut().insert(ERROR_CODE_KEY, v);
        }
        s
    }

    /// The error behind a gRPC status; transport failures are retryable.
    pub fn from_status(s: &tonic::Status) -> ApiError {
        let code = s
            .metadata()
            .get(ERROR_CODE_KEY)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<i32>().ok())
            .and_then(|c| ErrorCode::try_from(c).ok());
        match code {
            Some(ErrorCode::Unavailable) | None => ApiError::unavailable(s.message().to_string()),
            Some(code) => ApiError::new(code, s.message().to_string()),
        }
    }

    /// An [`UpReply`] carrying this error.
    pub fn into_reply(self, req_id: u64) -> UpReply {
        UpReply {
            req_id,
            code: self.code as u32,
            message: self.message,
            retryable: self.retryable,
            kind: None,
        }
    }
}

/// The reply to one upstream request, resolved once logic has handled it.
pub type ReplyFuture = Pin<Box<dyn Future<Output = UpReply> + Send + 'static>>;

/// What a gateway needs from the logic tier.
#[async_trait]
pub trait LogicApi: Send + Sync + 'static {
    async fn auth(&self, req: AuthRequest) -> Result<AuthReply, ApiError>;
    /// Enqueues `req`; requests submitted one after another by the same
    /// connection are handled in that order. Awaiting the returned future
    /// gives the reply.
    async fn submit(&self, req: UpRequest) -> ReplyFuture;
}

/// What the logic tier needs from gateways; `gate_addr` names the gateway.
#[async_trait]
pub trait GatewayApi: Send + Sync + 'static {
    async fn push(&self, gate_addr: &str, batch: PushBatch) -> Result<PushReply, ApiError>;
    async fn kick(&self, gate_addr: &str, req: KickRequest) -> Result<KickReply, ApiError>;
}

/// A ready reply future.
/// The largest gRPC message between gateway and logic for a given max
/// body: one client message with room to spare, a pull page (~1 MiB of
/// bodies plus one message) or a push call (~1 MiB, or one message alone);
/// never below tonic's default of 4 MiB. Over the limit a streamed message
/// breaks the whole upstream stream, and every connection's requests in it.
pub fn grpc_message_limit(max_body: usize) -> usize {
    (4 << 20).max(2 * max_body + (1 << 20) + (64 << 10))
}

pub fn ready_reply(reply: UpReply) -> ReplyFuture {
    Box::pin(std::future::ready(reply))
}
