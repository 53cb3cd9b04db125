//! The logic tier's core: token checks and routes on auth, upstream frames
//! (send, pull, ack) into the committer and store. Transport-free: gRPC and
//! the single-node gateway both call it through [`LogicApi`].
use std::sync::Arc;

use async_trait::async_trait;
use im_common::api::{ApiError, GatewayApi, LogicApi, ReplyFuture, ready_reply};
use im_common::route::{Route, RouteTable};
use im_proto::client::{
    C2cSendRequest, ConversationType, ErrorCode, KickReason, Kickout, PullResponse, SendResponse,
};
use im_proto::logic::{
    AuthReply, AuthRequest, KickRequest, UpReply, UpRequest, up_reply, up_request,
};

use crate::auth::{AuthError, Claims, TokenKeys};
use crate::committer::{Committer, CommitterConfig};
use crate::group_committer::GroupCommitter;
use crate::metrics;
use crate::pusher::{Origin, Pusher};
use crate::store::receipts::DeviceAck;
use crate::store::{NewMessage, SendPolicy, Store, Stored};

/// Limits and tunables of the logic tier.
#[derive(Debug, Clone)]
pub struct LogicConfig {
    pub max_body: usize,
    pub max_pull: u32,
    pub committer: CommitterConfig,
    pub login_policy: LoginPolicy,
    /// Keys of the server push API (s2c); none disables it.
    pub server_api_keys: crate::s2c::ApiKeys,
    /// Friends, groups, diffusion and revoke policies.
    pub social: crate::social::SocialConfig,
}

pub const MAX_CLIENT_MSG_ID: usize = 64;

/// What is wrong with text a user gave, if anything: outside `min..=max`
/// bytes, or a control character (`multiline` text may hold line breaks and
/// tabs). Postgres refuses NUL in text; the statement it fails may store a
/// whole batch, and every other message in that batch would fail with it.
pub fn text_problem(
    what: &str,
    text: &str,
    min: usize,
    max: usize,
    multiline: bool,
) -> Option<String> {
    if text.len() < min || text.len() > max {
        return Some(if min > 0 {
            format!("{what} must be {min}-{max} bytes")
        } else {
            format!("{what} must be at most {max} bytes")
        });
    }
    let layout = |c: char| multiline && matches!(c, '\n' | '\r' | '\t');
    text.chars()
        .any(|c| c.is_control() && !layout(c))
        .then(|| format!("{what} must not contain control characters"))
}

/// A client message id: 1 to [`MAX_CLIENT_MSG_ID`] bytes, no control characters.
pub fn check_client_msg_id(id: &str) -> Result<(), ApiError> {
    match text_problem("client_msg_id", id, 1, MAX_CLIENT_MSG_ID, false) {
        Some(why) => Err(ApiError::bad_request(why)),
        None => Ok(()),
    }
}

/// What a second login of a user on the same device type does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LoginPolicy {
    /// The new session wins; the old one gets a KICKOUT frame and is closed.
    #[default]
    KickPrevious,
    /// The new session is refused while the old one is online.
    RejectNew,
}

pub struct LogicService {
    pub(crate) store: Store,
    pub(crate) tokens: TokenKeys,
    pub(crate) routes: Arc<dyn RouteTable>,
    pub(crate) gateways: Arc<dyn GatewayApi>,
    pub(crate) committer: Committer,
    pub(crate) group_committer: GroupCommitter,
    pub(crate) cfg: LogicConfig,
    /// Where c2s messages go (Redis Streams); unset without Redis.
    pub(crate) c2s: std::sync::OnceLock<crate::c2s::C2sSink>,
}

impl LogicService {
    pub fn new(
        store: Store,
        tokens: TokenKeys,
        routes: Arc<dyn RouteTable>,
        gateways: Arc<dyn GatewayApi>,
        cfg: LogicConfig,
    ) -> Arc<LogicService> {
        metrics::init();
        let pusher = Pusher::start(routes.clone(), gateways.clone());
        let committer = Committer::start(store.clone(), pusher, cfg.committer);
        let group_committer = GroupCommitter::start(
            store.clone(),
            routes.clone(),
            gateways.clone(),
            cfg.committer,
        );
        Arc::new(LogicService {
            store,
            tokens,
            routes,
            gateways,
            committer,
            group_committer,
            cfg,
            c2s: std::sync::OnceLock::new(),
        })
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Verifies a bearer token, including revocation.
    pub async fn verify_token(&self, token: &str) -> Result<Claims, ApiError> {
        let claims = self.tokens.verify(token).map_err(|e| match e {
            AuthError::Expired => ApiError::new(ErrorCode::TokenExpired, "token has expired"),
            _ => ApiError::new(ErrorCode::Unauthenticated, "invalid token"),
        })?;
        match self.store.is_revoked(&claims.jti).await {
            Ok(false) => Ok(claims),
            Ok(true) => Err(ApiError::new(
                ErrorCode::Unauthenticated,
                "token was revoked",
            )),
            Err(e) => Err(ApiError::unavailable(format!("failed to check token: {e}"))),
        }
    }

    /// Validates and stores a one-to-one message; resolves once it is durable.
    pub async fn send_c2c(
        &self,
        sender: i64,
        req: C2cSendRequest,
        origin: Option<Origin>,
    ) -> Result<impl Future<Output = Result<Stored, ApiError>> + use<>, ApiError> {
        if req.to <= 0 {
            return Err(ApiError::bad_request("recipient `to` is required"));
        }
        // Blocks and friendships are checked in the commit batch, against
        // the state the message is stored in (one query per batch).
        crate::social::perms::client_content_type(req.content_type)?;
        check_client_msg_id(&req.client_msg_id)?;
        if req.body.len() > self.cfg.max_body {
            return Err(ApiError::bad_request(format!(
                "body exceeds {} bytes",
                self.cfg.max_body
            )));
        }
        let msg = NewMessage {
            sender,
            client_msg_id: req.client_msg_id,
            conv_type: ConversationType::C2c,
            target: req.to,
            content_type: req.content_type,
            body: req.body,
            recipients: vec![req.to],
            policy: SendPolicy::C2c {
                friends_only: self.cfg.social.friends_only,
            },
        };
        let rx = self.committer.submit(msg, origin).await?;
        Ok(async move {
            rx.await
                .unwrap_or_else(|_| Err(ApiError::unavailable("store is shutting down")))
        })
    }

    /// One page of a user's inbox after `after_seq`.
    pub async fn pull(
        &self,
        user: i64,
        after_seq: u64,
        limit: u32,
    ) -> Result<PullResponse, ApiError> {
        pull_page(&self.store, self.cfg.max_pull, user, after_seq, limit).await
    }
}

async fn pull_page(
    store: &Store,
    max_pull: u32,
    user: i64,
    after_seq: u64,
    limit: u32,
) -> Result<PullResponse, ApiError> {
    let limit = match limit {
        0 => 100,
        n => n.min(max_pull),
    };
    let unavailable =
        |e: crate::store::StoreError| ApiError::unavailable(format!("failed to read inbox: {e}"));
    let (messages, has_more) = store
        .pull(user, after_seq, limit)
        .await
        .map_err(unavailable)?;
    let max_seq = store.max_seq(user).await.map_err(unavailable)?;
    Ok(PullResponse {
        messages,
        has_more,
        max_seq,
    })
}

async fn kick_replaced(routes: &dyn RouteTable, gateways: &dyn GatewayApi, old: Route) {
    let addr = match routes.gate_addr(&old.gate_id).await {
        Ok(Some(a)) => a,
        Ok(None) => return,
        Err(e) => {
            tracing::warn!(error = %e, "failed to find gateway of replaced session");
            return;
        }
    };
    let req = KickRequest {
        conn_id: old.conn_id,
        kickout: Some(Kickout {
            reason: KickReason::OtherLogin as i32,
            message: "logged in on another device of the same type".into(),
        }),
        session_id: String::new(),
    };
    if let Err(e) = gateways.kick(&addr, req).await {
        tracing::warn!(error = %e, gateway = %addr, "failed to kick replaced session");
    }
}

#[async_trait]
impl LogicApi for LogicService {
    async fn auth(&self, req: AuthRequest) -> Result<AuthReply, ApiError> {
        let result = async {
            let claims = self.verify_token(&req.token).await?;
            let route = Route {
                device: req.device,
                gate_id: req.gate_id.clone(),
                conn_id: req.conn_id,
            };
            if self.cfg.login_policy == LoginPolicy::RejectNew {
                self.refuse_second_login(claims.sub, &route).await?;
            }
            let old = self
                .routes
                .set_route(claims.sub, &route)
                .await
                .map_err(|e| ApiError::unavailable(e.to_string()))?;
            if let Some(old) = old.filter(|o| *o != route) {
                let (routes, gateways) = (self.routes.clone(), self.gateways.clone());
                tokio::spawn(async move {
                    kick_replaced(routes.as_ref(), gateways.as_ref(), old).await
                });
            }
            let max_seq = self
                .store
                .max_seq(claims.sub)
                .await
                .map_err(|e| ApiError::unavailable(e.to_string()))?;
            Ok(AuthReply {
                user_id: claims.sub,
                max_seq,
                session_id: claims.jti,
            })
        }
        .await;
        metrics::request("auth", code_label(&result));
        result
    }

    async fn submit(&self, req: UpRequest) -> ReplyFuture {
        let req_id = req.req_id;
        let origin = Origin {
            gate_id: req.gate_id.clone(),
            conn_id: req.conn_id,
        };
        match req.kind {
            Some(up_request::Kind::C2c(c2c)) => {
                match self.send_c2c(req.user_id, c2c, Some(origin)).await {
                    Ok(fut) => Box::pin(async move {
                        let r = fut.await;
                        metrics::request("c2c_send", code_label(&r));
                        match r {
                            Ok(s) => ok_reply(req_id, up_reply::Kind::Sent(send_response(s))),
                            Err(e) => e.into_reply(req_id),
                        }
                    }),
                    Err(e) => {
                        metrics::request("c2c_send", code_label::<()>(&Err(e.clone())));
                        ready_reply(e.into_reply(req_id))
                    }
                }
            }
            Some(up_request::Kind::GroupPull(p)) => {
                self.submit_group_pull(req_id, req.user_id, p).await
            }
            Some(up_request::Kind::C2s(c2s)) => {
                self.submit_c2s(req_id, req.user_id, req.device, c2s).await
            }
            Some(up_request::Kind::Pull(p)) => {
                let (store, max_pull) = (self.store.clone(), self.cfg.max_pull);
                Box::pin(async move {
                    let r = pull_page(&store, max_pull, req.user_id, p.after_seq, p.limit).await;
                    metrics::request("pull", code_label(&r));
                    match r {
                        Ok(p) => ok_reply(req_id, up_reply::Kind::Pulled(p)),
                        Err(e) => e.into_reply(req_id),
                    }
                })
            }
            Some(up_request::Kind::Ack(a)) => {
                self.committer.ack(DeviceAck {
                    user: req.user_id,
                    device: req.device,
                    seq: a.seq,
                });
                metrics::request("ack", "ok");
                ready_reply(UpReply {
                    req_id,
                    ..Default::default()
                })
            }
            Some(up_request::Kind::C2g(c2g)) => {
                match self.send_c2g(req.user_id, c2g, Some(origin)).await {
                    Ok(fut) => Box::pin(async move {
                        let r = fut.await;
                        metrics::request("c2g_send", code_label(&r));
                        match r {
                            Ok(s) => ok_reply(req_id, up_reply::Kind::Sent(send_response(s))),
                            Err(e) => e.into_reply(req_id),
                        }
                    }),
                    Err(e) => {
                        metrics::request("c2g_send", code_label::<()>(&Err(e.clone())));
                        ready_reply(e.into_reply(req_id))
                    }
                }
            }
            None => ready_reply(ApiError::bad_request("empty upstream request").into_reply(req_id)),
        }
    }
}

pub fn send_response(s: Stored) -> SendResponse {
    SendResponse {
        msg_id: s.msg_id,
        seq: s.sender_seq,
        sent_at_ms: s.sent_at_ms,
        duplicate: s.duplicate,
        stream_id: String::new(),
    }
}

fn ok_reply(req_id: u64, kind: up_reply::Kind) -> UpReply {
    UpReply {
        req_id,
        kind: Some(kind),
        ..Default::default()
    }
}

/// A metric label for a result.
pub fn code_label<T>(r: &Result<T, ApiError>) -> &'static str {
    match r {
        Ok(_) => "ok",
        Err(e) => e.code.as_str_name(),
    }
}
