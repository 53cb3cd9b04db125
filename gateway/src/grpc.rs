//! gRPC transport of the gateway: the `Gateway` service logic pushes to, and
//! a `Logic` client that multiplexes every connection's upstream frames over
//! one long-lived stream per logic endpoint.
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use futures::StreamExt;
use im_common::api::{ApiError, LogicApi, ReplyFuture, ready_reply};
use im_proto::logic::gateway_server::Gateway as GatewayService;
use im_proto::logic::logic_client::LogicClient;
use im_proto::logic::{
    AuthReply, AuthRequest, KickReply, KickRequest, PushBatch, PushReply, UpReply, UpRequest,
};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};

use crate::gateway::Gateway;

/// The `Gateway` gRPC service.
pub struct GatewayGrpc(pub Arc<Gateway>);

#[async_trait]
impl GatewayService for GatewayGrpc {
    async fn push(&self, req: Request<PushBatch>) -> Result<Response<PushReply>, Status> {
        Ok(Response::new(self.0.push_local(req.into_inner())))
    }

    async fn kick(&self, req: Request<KickRequest>) -> Result<Response<KickReply>, Status> {
        Ok(Response::new(self.0.kick_local(req.into_inner())))
    }
}

type PendingMap = Arc<Mutex<HashMap<u64, oneshot::Sender<UpReply>>>>;

/// One open `Upstream` stream.
struct UpStream {
    tx: mpsc::Sender<UpRequest>,
    pending: PendingMap,
    alive: AtomicBool,
}

struct LogicEndpoint {
    addr: String,
    client: LogicClient<Channel>,
    // Replaced when the stream breaks; a tokio mutex because opening awaits.
    stream: tokio::sync::Mutex<Option<Arc<UpStream>>>,
}

/// [`LogicApi`] over gRPC. A user's requests always use the same endpoint
/// (while it is up), which keeps each connection's sends in order.
pub struct GrpcLogic {
    endpoints: Vec<LogicEndpoint>,
    next_req: AtomicU64,
    round_robin: AtomicUsize,
}

impl GrpcLogic {
    pub fn new(addrs: &[String]) -> Result<GrpcLogic, ApiError> {
        let endpoints = addrs
            .iter()
            .map(|a| {
                let endpoint = Endpoint::from_shared(a.clone())
                    .map_err(|e| ApiError::bad_request(format!("bad logic address {a}: {e}")))?
                    .connect_timeout(std::time::Duration::from_secs(2))
                    .tcp_nodelay(true)
                    .http2_keep_alive_interval(std::time::Duration::from_secs(10));
                Ok(LogicEndpoint {
                    addr: a.clone(),
                    client: LogicClient::new(endpoint.connect_lazy()),
                    stream: tokio::sync::Mutex::new(None),
                })
            })
            .collect::<Result<Vec<_>, ApiError>>()?;
        if endpoints.is_empty() {
            return Err(ApiError::bad_request(
                "at least one logic address is needed",
            ));
        }
        Ok(GrpcLogic {
            endpoints,
            next_req: AtomicU64::new(1),
            round_robin: AtomicUsize::new(0),
        })
    }

    async fn stream(&self, ep: &LogicEndpoint) -> Result<Arc<UpStream>, ApiError> {
        let mut slot = ep.stream.lock().await;
        if let Some(s) = slot.as_ref().filter(|s| s.alive.load(Ordering::SeqCst)) {
            return Ok(s.clone());
        }
        let (tx, rx) = mpsc::channel::<UpRequest>(4096);
        let mut client = ep.client.clone();
        let mut replies = client
            .upstream(ReceiverStream::new(rx))
            .await
            .map_err(|s| ApiError::from_status(&s))?
            .into_inner();
        let pending: PendingMap = Arc::default();
        let stream = Arc::new(UpStream {
            tx,
            pending: pending.clone(),
            alive: AtomicBool::new(true),
        });
        let addr = ep.addr.clone();
        let weak = Arc::downgrade(&stream);
        tokio::spawn(async move {
            while let Some(r) = replies.next().await {
                match r {
                    Ok(reply) => {
                        let waiter = pending
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .remove(&reply.req_id);
                        if let Some(w) = waiter {
                            let _ = w.send(reply);
                        }
                    }
                    Err(e) => {
                        tracing::warn!(logic = %addr, error = %e, "upstream stream broke");
                        break;
                    }
                }
            }
            // Mark the stream dead (the next request reopens it), then drop
            // the waiters, which fails their requests as retryable.
            if let Some(s) = weak.upgrade() {
                s.alive.store(false, Ordering::SeqCst);
            }
            pending.lock().unwrap_or_else(|e| e.into_inner()).clear();
        });
        *slot = Some(stream.clone());
        Ok(stream)
    }

    /// Endpoints to try for a user, preferred first.
    fn order(&self, key: u64) -> impl Iterator<Item = &LogicEndpoint> {
        let n = self.endpoints.len();
        let start = (key % n as u64) as usize;
        (0..n).map(move |i| &self.endpoints[(start + i) % n])
    }
}

#[async_trait]
impl LogicApi for GrpcLogic {
    async fn auth(&self, req: AuthRequest) -> Result<AuthReply, ApiError> {
        let key = self.round_robin.fetch_add(1, Ordering::Relaxed) as u64;
        let mut last = ApiError::unavailable("no logic endpoint reachable");
        for ep in self.order(key) {
            match ep.client.clone().auth(req.clone()).await {
                Ok(r) => return Ok(r.into_inner()),
                Err(s) => {
                    let e = ApiError::from_status(&s);
                    if !e.retryable {
                        return Err(e);
                    }
                    last = e;
                }
            }
        }
        Err(last)
    }

    async fn submit(&self, mut req: UpRequest) -> ReplyFuture {
        let req_id = self.next_req.fetch_add(1, Ordering::Relaxed);
        req.req_id = req_id;
        let mut last = ApiError::unavailable("no logic endpoint reachable");
        for ep in self.order(req.user_id.unsigned_abs()) {
            let stream = match self.stream(ep).await {
                Ok(s) => s,
                Err(e) => {
                    last = e;
                    continue;
                }
            };
            let (tx, rx) = oneshot::channel();
            stream
                .pending
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(req_id, tx);
            if !stream.alive.load(Ordering::SeqCst) || stream.tx.send(req.clone()).await.is_err() {
                stream
                    .pending
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&req_id);
                last = ApiError::unavailable("logic stream closed");
                continue;
            }
            return Box::pin(async move {
                rx.await.unwrap_or_else(|_| {
                    ApiError::unavailable("lost the logic connection; retry").into_reply(req_id)
                })
            });
        }
        ready_reply(last.into_reply(req_id))
    }
}
