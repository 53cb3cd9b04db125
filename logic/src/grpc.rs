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

/// gRPC clients to gateways, one lazily connected channel per address,
/// each with one long-lived `PushStream` for the pushes.
pub struct GatewayPool {
    // Held only to clone a gateway out; never across an await.
    gateways: Mutex<HashMap<String, Arc<GatewayLink>>>,
    ask_again: std::time::Duration,
}

impl Default for GatewayPool {
    fn default() -> Self {
        GatewayPool {
            gateways: Mutex::default(),
            ask_again: ASK_AGAIN,
        }
    }
}

/// One gateway: its client, and the push stream to it.
struct GatewayLink {
    client: GatewayClient<Channel>,
    /// [`ASK_AGAIN`], but for tests.
    ask_again: std::time::Duration,
    // Held across a push: a gateway's pushes go one at a time (the
    // pusher's lane for it is one task), each answered before the next.
    stream: tokio::sync::Mutex<PushLink>,
}

enum PushLink {
    /// None open: the next push opens one.
    Closed,
    Open {
        batches: mpsc::Sender<PushBatch>,
        replies: Box<Streaming<PushReply>>,
    },
    /// The gateway had no `PushStream` (it predates it): unary calls
    /// until then, when it is asked again (its address may come to
    /// another, newer gateway).
    Calls(tokio::time::Instant),
}

/// How long a gateway without `PushStream` gets calls before it is asked
/// for the stream again.
const ASK_AGAIN: std::time::Duration = std::time::Duration::from_secs(60);

impl GatewayPool {
    pub fn new() -> Self {
        Self::default()
    }

    fn gateway(&self, addr: &str) -> Result<Arc<GatewayLink>, ApiError> {
        let mut gateways = self.gateways.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(g) = gateways.get(addr) {
            return Ok(g.clone());
        }
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| ApiError::unavailable(format!("bad gateway address {addr}: {e}")))?
            .connect_timeout(std::time::Duration::from_secs(2))
            .timeout(CALL_TIMEOUT)
            .http2_keep_alive_interval(std::time::Duration::from_secs(10))
            .keep_alive_timeout(std::time::Duration::from_secs(5))
            .tcp_nodelay(true);
        let link = Arc::new(GatewayLink {
            client: GatewayClient::new(endpoint.connect_lazy()),
            ask_again: self.ask_again,
            stream: tokio::sync::Mutex::new(PushLink::Closed),
        });
        gateways.insert(addr.to_string(), link.clone());
        Ok(link)
    }
}

impl GatewayLink {
    /// Pushes `batch` over the open stream, opening one if none is, and
    /// waits for its answer. A stream that fails is dropped, and the push
    /// fails as a call would (the messages stay in the inbox): no answer
    /// within [`CALL_TIMEOUT`], a broken stream, a gateway gone. A stream
    /// that had been closed before the batch went in (its connection died
    /// while idle) is replaced and the batch goes on the new one.
    async fn push(&self, mut batch: PushBatch) -> Result<PushReply, ApiError> {
        let deadline = tokio::time::Instant::now() + CALL_TIMEOUT;
        let mut link = self.stream.lock().await;
        loop {
            if matches!(*link, PushLink::Calls(until) if until <= tokio::time::Instant::now()) {
                *link = PushLink::Closed;
            }
            let fresh = matches!(*link, PushLink::Closed);
            if fresh {
                *link = self.open().await?;
            }
            let PushLink::Open { batches, replies } = &mut *link else {
                return self.call(batch).await;
            };
            let failed = match tokio::time::timeout_at(deadline, batches.send(batch)).await {
                Ok(Ok(())) => match tokio::time::timeout_at(deadline, replies.message()).await {
                    Ok(Ok(Some(reply))) => return Ok(reply),
                    Ok(Ok(None)) => ApiError::unavailable("gateway ended the push stream"),
                    Ok(Err(s)) => ApiError::from_status(&s),
                    Err(_) => ApiError::unavailable("gateway push timed out"),
                },
                Ok(Err(mpsc::error::SendError(unsent))) if !fresh => {
                    batch = unsent;
                    *link = PushLink::Closed;
                    continue;
                }
                Ok(Err(_)) => ApiError::unavailable("gateway closed the push stream"),
                Err(_) => ApiError::unavailable("gateway push timed out"),
            };
            *link = PushLink::Closed;
            return Err(failed);
        }
    }

    async fn open(&self) -> Result<PushLink, ApiError> {
        let (batches, rx) = mpsc::channel(1);
        match self
            .client
            .clone()
            .push_stream(ReceiverStream::new(rx))
            .await
        {
            Ok(replies) => Ok(PushLink::Open {
                batches,
                replies: Box::new(replies.into_inner()),
            }),
            Err(s) if s.code() == tonic::Code::Unimplemented => Ok(PushLink::Calls(
                tokio::time::Instant::now() + self.ask_again,
            )),
            Err(s) => Err(ApiError::from_status(&s)),
        }
    }

    async fn call(&self, batch: PushBatch) -> Result<PushReply, ApiError> {
        self.client
            .clone()
            .push(batch)
            .await
            .map(Response::into_inner)
            .map_err(|s| ApiError::from_status(&s))
    }
}

#[async_trait]
impl GatewayApi for GatewayPool {
    async fn push(&self, gate_addr: &str, batch: PushBatch) -> Result<PushReply, ApiError> {
        let gateway = self.gateway(gate_addr)?;
        let pushed = gateway.push(batch).await;
        if pushed.is_err() {
            // It may be gone for good (scaled in, replaced): forgotten, so
            // that gateways that come and go leave no client behind. The
            // next push to its address connects again.
            let mut gateways = self.gateways.lock().unwrap_or_else(|e| e.into_inner());
            if gateways
                .get(gate_addr)
                .is_some_and(|g| Arc::ptr_eq(g, &gateway))
            {
                gateways.remove(gate_addr);
            }
        }
        pushed
    }

    async fn kick(&self, gate_addr: &str, req: KickRequest) -> Result<KickReply, ApiError> {
        let mut c = self.gateway(gate_addr)?.client.clone();
        c.kick(req)
            .await
            .map(Response::into_inner)
            .map_err(|s| ApiError::from_status(&s))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use futures::stream::BoxStream;
    use im_proto::logic::PushItem;
    use im_proto::logic::gateway_server::{Gateway, GatewayServer};
    use tokio_stream::wrappers::TcpListenerStream;

    use super::*;

    /// A gateway that answers each push with the connections it names as
    /// missing, so that answers can be told apart.
    #[derive(Clone, Default)]
    struct Fake {
        /// `PushStream` calls, including refused ones.
        opened: Arc<AtomicUsize>,
        /// Unary `Push` calls.
        calls: Arc<AtomicUsize>,
        /// Answer `PushStream` with UNIMPLEMENTED, as a gateway from before it.
        no_stream: bool,
        /// End each stream after this many answers.
        answers: Option<usize>,
    }

    fn echo(batch: PushBatch) -> PushReply {
        let missing_conn_ids: Vec<u64> = batch.items.into_iter().flat_map(|i| i.conn_ids).collect();
        PushReply {
            missing: missing_conn_ids.len() as u32,
            missing_conn_ids,
            ..PushReply::default()
        }
    }

    #[async_trait]
    impl Gateway for Fake {
        async fn push(&self, req: Request<PushBatch>) -> Result<Response<PushReply>, Status> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            Ok(Response::new(echo(req.into_inner())))
        }

        type PushStreamStream = BoxStream<'static, Result<PushReply, Status>>;

        async fn push_stream(
            &self,
            req: Request<Streaming<PushBatch>>,
        ) -> Result<Response<Self::PushStreamStream>, Status> {
            self.opened.fetch_add(1, Ordering::SeqCst);
            if self.no_stream {
                return Err(Status::unimplemented("no PushStream here"));
            }
            let replies = req.into_inner().map(|b| b.map(echo));
            Ok(Response::new(match self.answers {
                Some(n) => replies.take(n).boxed(),
                None => replies.boxed(),
            }))
        }

        async fn kick(&self, _: Request<KickRequest>) -> Result<Response<KickReply>, Status> {
            Ok(Response::new(KickReply::default()))
        }
    }

    async fn serve(fake: Fake) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(GatewayServer::new(fake))
                .serve_with_incoming(TcpListenerStream::new(listener)),
        );
        addr
    }

    fn to_conn(conn: u64) -> PushBatch {
        PushBatch {
            items: vec![PushItem {
                conn_ids: vec![conn],
                messages: Vec::new(),
            }],
        }
    }

    async fn push(pool: &GatewayPool, addr: &str, conn: u64) -> Vec<u64> {
        pool.push(addr, to_conn(conn))
            .await
            .expect("push")
            .missing_conn_ids
    }

    #[tokio::test]
    async fn pushes_share_one_stream_and_each_gets_its_answer() {
        let fake = Fake::default();
        let addr = serve(fake.clone()).await;
        let pool = GatewayPool::new();
        for conn in 1..=20 {
            assert_eq!(push(&pool, &addr, conn).await, vec![conn]);
        }
        assert_eq!(fake.opened.load(Ordering::SeqCst), 1, "one stream");
        assert_eq!(fake.calls.load(Ordering::SeqCst), 0, "no unary calls");
    }

    #[tokio::test]
    async fn a_gateway_without_the_stream_is_pushed_to_by_calls() {
        let fake = Fake {
            no_stream: true,
            ..Fake::default()
        };
        let addr = serve(fake.clone()).await;
        let pool = GatewayPool::new();
        for conn in 1..=3 {
            assert_eq!(push(&pool, &addr, conn).await, vec![conn]);
        }
        assert_eq!(fake.opened.load(Ordering::SeqCst), 1, "asked once");
        assert_eq!(fake.calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_gateway_without_the_stream_is_asked_again_later() {
        let old = Fake {
            no_stream: true,
            ..Fake::default()
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let stop = im_common::shutdown::CancellationToken::new();
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(GatewayServer::new(old.clone()))
                .serve_with_incoming_shutdown(TcpListenerStream::new(listener), {
                    let stop = stop.clone();
                    async move { stop.cancelled().await }
                }),
        );
        let pool = GatewayPool {
            ask_again: std::time::Duration::from_millis(300),
            ..GatewayPool::default()
        };
        assert_eq!(push(&pool, &addr, 1).await, vec![1]);
        assert_eq!(push(&pool, &addr, 2).await, vec![2]);
        assert_eq!(old.opened.load(Ordering::SeqCst), 1, "asked once");
        // A newer gateway comes to the same address.
        stop.cancel();
        server.await.unwrap().unwrap();
        let new = Fake::default();
        let listener = tokio::net::TcpListener::bind(&addr).await.unwrap();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(GatewayServer::new(new.clone()))
                .serve_with_incoming(TcpListenerStream::new(listener)),
        );
        tokio::time::sleep(std::time::Duration::from_millis(400)).await;
        for conn in 3..=5 {
            assert_eq!(push(&pool, &addr, conn).await, vec![conn]);
        }
        assert_eq!(new.opened.load(Ordering::SeqCst), 1);
        assert_eq!(new.calls.load(Ordering::SeqCst), 0, "the stream, not calls");
    }

    #[tokio::test]
    async fn a_stream_the_gateway_ended_is_replaced_before_the_next_push() {
        let fake = Fake {
            answers: Some(2),
            ..Fake::default()
        };
        let addr = serve(fake.clone()).await;
        let pool = GatewayPool::new();
        for conn in 1..=2 {
            assert_eq!(push(&pool, &addr, conn).await, vec![conn]);
        }
        // The gateway has ended the stream (as one that stops does).
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        for conn in 3..=4 {
            assert_eq!(push(&pool, &addr, conn).await, vec![conn]);
        }
        assert_eq!(fake.opened.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_gateway_that_fails_a_push_is_forgotten_and_the_next_push_reconnects() {
        let fake = Fake::default();
        let pool = GatewayPool::new();
        // Nothing listens here yet.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        drop(listener);
        assert!(pool.push(&addr, to_conn(1)).await.is_err());
        assert!(pool.gateways.lock().unwrap().is_empty(), "forgotten");
        let listener = tokio::net::TcpListener::bind(&addr).await.unwrap();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(GatewayServer::new(fake.clone()))
                .serve_with_incoming(TcpListenerStream::new(listener)),
        );
        assert_eq!(push(&pool, &addr, 2).await, vec![2]);
        assert_eq!(fake.opened.load(Ordering::SeqCst), 1);
        assert_eq!(pool.gateways.lock().unwrap().len(), 1);
    }
}
