//! Upstream (c2s): a client's message to a named business service, checked
//! here and appended once to the Redis Stream `{prefix}c2s:{service}` by
//! [`crate::c2s_stream`]; it never touches the message store or any inbox.
//! SENT goes back only after the append returned.
use std::sync::Arc;

use im_common::api::{ApiError, ReplyFuture};
use im_proto::client::{C2sSendRequest, ErrorCode, SendResponse};
use im_proto::logic::{UpReply, up_reply};

use crate::c2s_stream::{AppendError, Upstream};
pub use crate::c2s_stream::{Appended, C2sSink, DEDUPE_TTL_SECS, STREAM_MAXLEN};
use crate::metrics;
use crate::service::{LogicService, check_client_msg_id, code_label};

/// Longest service name.
pub const MAX_SERVICE_LEN: usize = 64;

/// The stream a service consumes: `{prefix}c2s:{service}`.
pub fn stream_key(prefix: &str, service: &str) -> String {
    format!("{prefix}c2s:{service}")
}

/// The dedupe key of one (sender, client_msg_id).
pub fn dedupe_key(prefix: &str, sender: i64, client_msg_id: &str) -> String {
    format!("{prefix}c2s-dedupe:{sender}:{client_msg_id}")
}

/// A service name is 1..=64 characters of `[a-z0-9_.-]`.
pub fn validate_service(name: &str) -> Result<(), ApiError> {
    let ok = (1..=MAX_SERVICE_LEN).contains(&name.len())
        && name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'.' | b'-')
        });
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "service must be 1..={MAX_SERVICE_LEN} characters of [a-z0-9_.-]"
        )))
    }
}

fn validate(req: &C2sSendRequest, max_body: usize) -> Result<(), ApiError> {
    validate_service(&req.service)?;
    check_client_msg_id(&req.client_msg_id)?;
    if req.body.len() > max_body {
        return Err(ApiError::bad_request(format!(
            "body exceeds {max_body} bytes"
        )));
    }
    Ok(())
}

impl LogicService {
    /// Enables c2s: upstream messages go to Redis Streams through `sink`.
    /// Without it, C2S_SEND answers UNAVAILABLE ("c2s needs Redis").
    pub fn with_c2s(self: Arc<Self>, sink: C2sSink) -> Arc<Self> {
        if self.c2s.set(sink).is_err() {
            tracing::warn!("c2s sink was already set; keeping the first");
        }
        self
    }

    /// Validates and appends one upstream message; resolves after `XADD`.
    pub async fn send_c2s(
        &self,
        sender: i64,
        device: i32,
        req: C2sSendRequest,
    ) -> Result<Appended, ApiError> {
        self.enqueue_c2s(sender, device, req).await?.await
    }

    /// The upstream handler for C2S_SEND. The append is queued before this
    /// returns, so one connection's messages reach the stream in the order
    /// they were submitted; the reply future resolves once it is appended.
    pub(crate) async fn submit_c2s(
        &self,
        req_id: u64,
        sender: i64,
        device: i32,
        req: C2sSendRequest,
    ) -> ReplyFuture {
        let queued = self.enqueue_c2s(sender, device, req).await;
        Box::pin(async move {
            let r = match queued {
                Ok(fut) => fut.await,
                Err(e) => Err(e),
            };
            metrics::request("c2s_send", code_label(&r));
            match r {
                Ok(a) => UpReply {
                    req_id,
                    kind: Some(up_reply::Kind::Sent(SendResponse {
                        stream_id: a.stream_id,
                        sent_at_ms: a.sent_at_ms,
                        duplicate: a.duplicate,
                        ..Default::default()
                    })),
                    ..Default::default()
                },
                Err(e) => e.into_reply(req_id),
            }
        })
    }

    /// Validates and queues; the future yields the append's outcome.
    async fn enqueue_c2s(
        &self,
        sender: i64,
        device: i32,
        req: C2sSendRequest,
    ) -> Result<impl Future<Output = Result<Appended, ApiError>> + use<>, ApiError> {
        validate(&req, self.cfg.max_body)?;
        let sink = self.c2s.get().ok_or_else(|| ApiError {
            code: ErrorCode::Unavailable,
            message: "c2s needs Redis: this server has none (start im-server with --redis-url)"
                .into(),
            retryable: false,
        })?;
        let service = req.service;
        let msg = Upstream {
            stream_key: stream_key(sink.prefix(), &service),
            dedupe_key: dedupe_key(sink.prefix(), sender, &req.client_msg_id),
            sender,
            device,
            client_msg_id: req.client_msg_id,
            content_type: req.content_type,
            body: req.body,
            sent_at_ms: im_proto::now_ms(),
        };
        let rx = sink.submit(msg).await.map_err(unavailable)?;
        Ok(async move {
            let appended = rx.await.unwrap_or(Err(AppendError::Stopped)).map_err(|e| {
                tracing::warn!(error = %e, %service, "failed to append c2s message");
                unavailable(e)
            })?;
            if !appended.duplicate {
                metrics::MESSAGES.with_label_values(&["c2s"]).inc();
            }
            Ok(appended)
        })
    }
}

fn unavailable(_: AppendError) -> ApiError {
    ApiError::unavailable("c2s stream unavailable; retry with the same client_msg_id")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_names() {
        for ok in ["orders", "a", "bot.v2", "x_y-z.0", &"s".repeat(64)] {
            assert!(validate_service(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "Orders",
            "a b",
            "a:b",
            "é",
            &"s".repeat(65),
            "a/b",
            "{x}",
        ] {
            assert!(validate_service(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn keys_carry_the_prefix() {
        assert_eq!(stream_key("im:", "orders"), "im:c2s:orders");
        assert_eq!(dedupe_key("im:", 7, "c-1"), "im:c2s-dedupe:7:c-1");
    }

    #[test]
    fn requests_are_validated() {
        let req = |service: &str, id: &str, body: usize| C2sSendRequest {
            service: service.into(),
            client_msg_id: id.into(),
            content_type: 1,
            body: vec![0u8; body].into(),
        };
        assert!(validate(&req("svc", "id", 10), 10).is_ok());
        assert!(validate(&req("svc", "id", 11), 10).is_err());
        assert!(validate(&req("svc", "", 1), 10).is_err());
        assert!(validate(&req("svc", &"i".repeat(65), 1), 10).is_err());
        assert!(validate(&req("SVC", "id", 1), 10).is_err());
    }
}
