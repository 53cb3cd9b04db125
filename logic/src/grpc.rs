//! gRPC transport of the logic tier: the `Logic` service for gateways and a
//! pooled `Gateway` client for pushes. Translation only; decisions live in
//! [`crate::service`].
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use futures::{Stream, StreamExt};
use im_common::api::{ApiError, GatewayApi, LogicApi};
use im_proto::logic::gateway_client::GatewayClient;
use im_proto::logic::logic_server::Logic;
use im_proto::logic::{
    AuthReply, AuthRequest, KickReply, KickRequest, PushBatch, PushReply, UpReply, UpRequest,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status, Streaming};

use crate::service::LogicService;

/// The `Logic` gRPC service.
pub struct LogicGrpc {
    svc: Arc<LogicService>,
}

impl LogicGrpc {
    pub fn new(svc: Arc<LogicService>) -> Self {
        LogicGrpc { svc }
    }
}

type ReplyStream = Pin<Box<dyn Stream<Item = Result<UpReply, Status>> + Send>>;

#[async_trait]
impl Logic for LogicGrpc {
    async fn auth(&self, req: Request<AuthRequest>) -> Result<Response<AuthReply>, Status> {
        self.svc
            .auth(req.into_inner())
            .await
            .map(Response::new)
            .map_err(|e| e.to_status())
    }

    type UpstreamStream = ReplyStream;

    async fn upstream(
        &self,
        req: Request<Streaming<UpRequest>>,
    ) -> Result<Response<Self::UpstreamStream>, Status> {
        let mut inbound = req.into_inner();
        let (tx, rx) = mpsc::channel::<Result<UpReply, Status>>(4096);
        let svc = self.svc.clone();
        tokio::spawn(async move {
            // Requests are submitted in stream order (which keeps each
            // connection's sends in order); replies go back as they complete.
            while let Some(Ok(up)) = inbound.next().await {
                let no_reply = up.no_reply;
                let fut = svc.submit(up).await;
                // An ACK: taken when submitted; the gateway waits for nothing.
                if no_reply {
                    continue;
                }
                let tx = tx.clone();
                tokio::spawn(async move {
                    let _ = tx.send(Ok(fut.await)).await;
                });
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// How long a push or kick call to a gateway may take: a gateway that
/// stops answering fails its calls (the messages stay in the inbox)
/// instead of holding its lane of the pusher for good. A push call queues
/// at most ~1 MiB on the gateway's connections; it takes milliseconds.
const CALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// gRPC clients to gateways, one lazily connected channel per address.
#[derive(Default)]
pub struct GatewayPool {
    // Held only to clone a client out; never across an await.
    clients: Mutex<HashMap<String, GatewayClient<Channel>>>,
}

impl GatewayPool {
    pub fn new() -> Self {
        Self::default()
    }

    fn client(&self, addr: &str) -> Result<GatewayClient<Channel>, ApiError> {
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = clients.get(addr) {
            return Ok(c.clone());
        }
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| ApiError::unavailable(format!("bad gateway address {addr}: {e}")))?
            .connect_timeout(std::time::Duration::from_secs(2))
            .timeout(CALL_TIMEOUT)
            .http2_keep_alive_interval(std::time::Duration::from_secs(10))
            .keep_alive_timeout(std::time::Duration::from_secs(5))
            .tcp_nodelay(true);
        let client = GatewayClient::new(endpoint.connect_lazy());
        clients.insert(addr.to_string(), client.clone());
        Ok(client)
    }
}

#[async_trait]
impl GatewayApi for GatewayPool {
    async fn push(&self, gate_addr: &str, batch: PushBatch) -> Result<PushReply, ApiError> {
        let mut c = self.client(gate_addr)?;
        c.push(batch)
            .await
            .map(Response::into_inner)
            .map_err(|s| ApiError::from_status(&s))
    }

    async fn kick(&self, gate_addr: &str, req: KickRequest) -> Result<KickReply, ApiError> {
        let mut c = self.client(gate_addr)?;
        c.kick(req)
            .await
            .map(Response::into_inner)
            .map_err(|s| ApiError::from_status(&s))
    }
}
