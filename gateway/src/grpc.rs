//! gRPC transport of the gateway: the `Gateway` service logic pushes to, and
//! a `Logic` client that multiplexes every connection's upstream frames over
//! one long-lived stream per logic endpoint.
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use futures::stream::BoxStream;
use im_common::api::{ApiError, LogicApi, ReplyFuture, ready_reply};
use im_common::shutdown::CancellationToken;
use im_proto::logic::gateway_server::Gateway as GatewayService;
use im_proto::logic::logic_client::LogicClient;
use im_proto::logic::{
    AuthReply, AuthRequest, KickReply, KickRequest, PushBatch, PushReply, UpReply, UpRequest,
};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status, Streaming};

use crate::discovery::{self, Resolver, Sticky, Target};
use crate::gateway::Gateway;

/// The `Gateway` gRPC service.
pub struct GatewayGrpc {
    gw: Arc<Gateway>,
    /// Ends the open push streams, so that the server can stop: each
    /// stream lasts as long as the logic process that opened it.
    stop: CancellationToken,
}

impl GatewayGrpc {
    pub fn new(gw: Arc<Gateway>, stop: CancellationToken) -> GatewayGrpc {
        GatewayGrpc { gw, stop }
    }
}

#[async_trait]
impl GatewayService for GatewayGrpc {
    async fn push(&self, req: Request<PushBatch>) -> Result<Response<PushReply>, Status> {
        Ok(Response::new(self.gw.push_local(req.into_inner())))
    }

    type PushStreamStream = BoxStream<'static, Result<PushReply, Status>>;

    /// Each batch pushed as [`GatewayService::push`] pushes it, answered
    /// in order, in the task that serves the stream.
    async fn push_stream(
        &self,
        req: Request<Streaming<PushBatch>>,
    ) -> Result<Response<Self::PushStreamStream>, Status> {
        let gw = self.gw.clone();
        let replies = req
            .into_inner()
            .map(move |batch| batch.map(|b| gw.push_local(b)))
            .take_until(self.stop.clone().cancelled_owned());
        Ok(Response::new(replies.boxed()))
    }

    async fn kick(&self, req: Request<KickRequest>) -> Result<Response<KickReply>, Status> {
        Ok(Response::new(self.gw.kick_local(req.into_inner())))
    }
}

type PendingMap = Arc<Mutex<HashMap<u64, oneshot::Sender<UpReply>>>>;

/// One open `Upstream` stream.
struct UpStream {
    tx: mpsc::Sender<UpRequest>,
    pending: PendingMap,
    alive: AtomicBool,
}

/// One logic address and the stream to it.
pub struct LogicEndpoint {
    addr: String,
    key: u64,
    client: LogicClient<Channel>,
    // Replaced when the stream breaks; a tokio mutex because opening awaits.
    stream: tokio::sync::Mutex<Option<Arc<UpStream>>>,
}

impl LogicEndpoint {
    fn new(addr: &str, max_message: usize) -> Result<LogicEndpoint, ApiError> {
        let endpoint = Endpoint::from_shared(addr.to_string())
            .map_err(|e| ApiError::bad_request(format!("bad logic address {addr}: {e}")))?
            .connect_timeout(Duration::from_secs(2))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10));
        Ok(LogicEndpoint {
            addr: addr.to_string(),
            key: discovery::endpoint_key(addr),
            client: LogicClient::new(endpoint.connect_lazy())
                .max_decoding_message_size(max_message)
                .max_encoding_message_size(max_message),
            stream: tokio::sync::Mutex::new(None),
        })
    }
}

/// [`LogicApi`] over gRPC, to every endpoint the configured addresses
/// resolve to (see [`crate::discovery`]). A user's requests go to the
/// endpoint that ranks first for them (while it is up), and stay on it
/// while any is in flight, which keeps each connection's sends in order.
pub struct GrpcLogic {
    targets: Vec<Target>,
    resolver: Resolver,
    endpoints: RwLock<Arc<Vec<Arc<LogicEndpoint>>>>,
    sticky: Sticky<LogicEndpoint>,
    next_req: AtomicU64,
    round_robin: AtomicUsize,
    /// Largest gRPC message either way ([`im_common::api::grpc_message_limit`]).
    max_message: usize,
    /// How long a login waits for one endpoint ([`AUTH_CALL_TIMEOUT`]).
    auth_timeout: Duration,
}

/// How long a login waits for one logic endpoint before it asks the next:
/// an endpoint that stops answering (a frozen process, a connection cut
/// without a reset) would otherwise hold every login sent its way until
/// HTTP/2 keep-alive gives up on its connection (~30 s, the SDK's whole
/// request timeout). Well above a login's time under a reconnect storm
/// (10,000 clients took 2.1 s in all, docs/benchmarks.md), so a busy
/// endpoint is not asked twice. A login is safe to ask again: it verifies
/// the token and records the connection's route, the same either way.
pub const AUTH_CALL_TIMEOUT: Duration = Duration::from_secs(5);

impl GrpcLogic {
    /// A client of `addrs` as given ([`GrpcLogic::refresh`] resolves them),
    /// exchanging gRPC messages of up to `max_message` bytes
    /// ([`im_common::api::grpc_message_limit`]).
    pub fn new(addrs: &[String], max_message: usize) -> Result<GrpcLogic, ApiError> {
        GrpcLogic::with_resolver(addrs, discovery::dns_resolver(), max_message)
    }

    pub fn with_resolver(
        addrs: &[String],
        resolver: Resolver,
        max_message: usize,
    ) -> Result<GrpcLogic, ApiError> {
        let targets = addrs
            .iter()
            .map(|a| Target::parse(a))
            .collect::<Result<Vec<_>, _>>()?;
        let endpoints = addrs
            .iter()
            .map(|a| LogicEndpoint::new(a, max_message).map(Arc::new))
            .collect::<Result<Vec<_>, _>>()?;
        if endpoints.is_empty() {
            return Err(ApiError::bad_request(
                "at least one logic address is needed",
            ));
        }
        crate::metrics::LOGIC_ENDPOINTS.set(endpoints.len() as i64);
        Ok(GrpcLogic {
            targets,
            resolver,
            endpoints: RwLock::new(Arc::new(endpoints)),
            sticky: Sticky::default(),
            next_req: AtomicU64::new(1),
            round_robin: AtomicUsize::new(0),
            max_message,
            auth_timeout: AUTH_CALL_TIMEOUT,
        })
    }

    /// The endpoints in use now.
    pub fn endpoints(&self) -> Vec<String> {
        self.snapshot().iter().map(|e| e.addr.clone()).collect()
    }

    fn snapshot(&self) -> Arc<Vec<Arc<LogicEndpoint>>> {
        self.endpoints
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Resolves the configured addresses again and uses what they resolve
    /// to now (keeping the streams of endpoints still there); keeps the
    /// current endpoints when nothing resolves. Returns whether they changed.
    pub async fn refresh(&self) -> bool {
        let Some(found) = discovery::resolve_all(&self.targets, &self.resolver).await else {
            return false;
        };
        let current = self.snapshot();
        if current.iter().map(|e| &e.addr).eq(found.iter()) {
            return false;
        }
        let next: Vec<Arc<LogicEndpoint>> = found
            .iter()
            .filter_map(|a| match current.iter().find(|e| &e.addr == a) {
                Some(e) => Some(e.clone()),
                None => LogicEndpoint::new(a, self.max_message).map(Arc::new).ok(),
            })
            .collect();
        if next.is_empty() {
            return false;
        }
        tracing::info!(endpoints = ?found, "logic endpoints changed");
        crate::metrics::LOGIC_ENDPOINTS.set(next.len() as i64);
        *self.endpoints.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(next);
        true
    }

    /// Re-resolves every `every` until the client is dropped.
    pub fn spawn_discovery(self: &Arc<Self>, every: Duration) -> tokio::task::JoinHandle<()> {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(logic) = weak.upgrade() else { return };
                logic.refresh().await;
            }
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

    /// Endpoints to try for a user, preferred first: the one its requests
    /// in flight went to (even if no longer resolved: it still answers
    /// them), then by rank.
    fn order(&self, user: i64) -> Vec<Arc<LogicEndpoint>> {
        let mut eps: Vec<Arc<LogicEndpoint>> = self.snapshot().as_ref().clone();
        discovery::rank(user, &mut eps, |e| e.key);
        if let Some(held) = self.sticky.get(user) {
            eps.retain(|e| !Arc::ptr_eq(e, &held));
            eps.insert(0, held);
        }
        eps
    }
}

#[async_trait]
impl LogicApi for GrpcLogic {
    async fn auth(&self, req: AuthRequest) -> Result<AuthReply, ApiError> {
        let eps = self.snapshot();
        let start = self.round_robin.fetch_add(1, Ordering::Relaxed);
        let mut last = ApiError::unavailable("no logic endpoint reachable");
        for i in 0..eps.len() {
            let ep = &eps[(start + i) % eps.len()];
            let mut client = ep.client.clone();
            match tokio::time::timeout(self.auth_timeout, client.auth(req.clone())).await {
                Err(_) => {
                    tracing::warn!(logic = %ep.addr, "logic did not answer a login in time; asking the next");
                    last = ApiError::unavailable("logic did not answer in time; retry");
                }
                Ok(Ok(r)) => return Ok(r.into_inner()),
                Ok(Err(s)) => {
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
        let user = req.user_id;
        if req.no_reply {
            return self.send_only(req).await;
        }
        for ep in self.order(user) {
            let stream = match self.stream(&ep).await {
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
            let in_flight = self.sticky.hold(user, &ep);
            return Box::pin(async move {
                let _in_flight = in_flight;
                rx.await.unwrap_or_else(|_| {
                    ApiError::unavailable("lost the logic connection; retry").into_reply(req_id)
                })
            });
        }
        ready_reply(last.into_reply(req_id))
    }
}

impl GrpcLogic {
    /// Sends a request logic answers nothing to (an ACK): no waiter, and it
    /// does not keep the user on an endpoint (acks are cumulative, so their
    /// order against sends does not matter).
    async fn send_only(&self, req: UpRequest) -> ReplyFuture {
        let req_id = req.req_id;
        let mut last = ApiError::unavailable("no logic endpoint reachable");
        for ep in self.order(req.user_id) {
            match self.stream(&ep).await {
                Ok(s) if s.alive.load(Ordering::SeqCst) && s.tx.send(req.clone()).await.is_ok() => {
                    return ready_reply(UpReply {
                        req_id,
                        ..UpReply::default()
                    });
                }
                Ok(_) => last = ApiError::unavailable("logic stream closed"),
                Err(e) => last = e,
            }
        }
        ready_reply(last.into_reply(req_id))
    }
}

#[cfg(test)]
mod tests {
    //! The logic client against two real gRPC servers standing in for logic
    //! pods: each records which users' requests it got and can hold its
    //! replies back.
    use std::net::SocketAddr;

    use im_proto::logic::logic_server::{Logic, LogicServer};
    use tokio::sync::watch;
    use tokio_stream::wrappers::TcpListenerStream;
    use tonic::Streaming;

    use super::*;

    #[derive(Clone)]
    struct FakeLogic {
        seen: Arc<Mutex<Vec<i64>>>,
        // Replies wait while this is true.
        hold: watch::Receiver<bool>,
    }

    #[async_trait]
    impl Logic for FakeLogic {
        async fn auth(&self, req: Request<AuthRequest>) -> Result<Response<AuthReply>, Status> {
            let conn = req.into_inner().conn_id as i64;
            self.seen.lock().unwrap().push(conn);
            let _ = self.hold.clone().wait_for(|held| !held).await;
            Ok(Response::new(AuthReply {
                user_id: conn,
                ..AuthReply::default()
            }))
        }

        type UpstreamStream = ReceiverStream<Result<UpReply, Status>>;

        async fn upstream(
            &self,
            req: Request<Streaming<UpRequest>>,
        ) -> Result<Response<Self::UpstreamStream>, Status> {
            let mut inbound = req.into_inner();
            let (tx, rx) = mpsc::channel(64);
            let this = self.clone();
            tokio::spawn(async move {
                while let Some(Ok(up)) = inbound.next().await {
                    this.seen.lock().unwrap().push(up.user_id);
                    let (tx, mut hold) = (tx.clone(), this.hold.clone());
                    tokio::spawn(async move {
                        let _ = hold.wait_for(|held| !held).await;
                        let _ = tx
                            .send(Ok(UpReply {
                                req_id: up.req_id,
                                ..UpReply::default()
                            }))
                            .await;
                    });
                }
            });
            Ok(Response::new(ReceiverStream::new(rx)))
        }
    }

    struct Pod {
        addr: SocketAddr,
        seen: Arc<Mutex<Vec<i64>>>,
        hold: watch::Sender<bool>,
    }

    impl Pod {
        async fn start() -> Pod {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let (hold, rx) = watch::channel(false);
            let seen = Arc::new(Mutex::new(Vec::new()));
            let svc = FakeLogic {
                seen: seen.clone(),
                hold: rx,
            };
            tokio::spawn(
                tonic::transport::Server::builder()
                    .add_service(LogicServer::new(svc))
                    .serve_with_incoming(TcpListenerStream::new(listener)),
            );
            Pod { addr, seen, hold }
        }

        fn take(&self) -> Vec<i64> {
            std::mem::take(&mut *self.seen.lock().unwrap())
        }
    }

    /// A resolver whose answer for every name the test sets.
    fn fake_dns() -> (Resolver, Arc<Mutex<Vec<SocketAddr>>>) {
        let answer: Arc<Mutex<Vec<SocketAddr>>> = Arc::default();
        let a = answer.clone();
        let resolver: Resolver = Arc::new(move |_host: String, _port: u16| {
            let now = a.lock().unwrap().clone();
            Box::pin(async move {
                if now.is_empty() {
                    Err(std::io::Error::other("NXDOMAIN"))
                } else {
                    Ok(now)
                }
            })
        });
        (resolver, answer)
    }

    /// Two pods, and a client of a name that resolves to what `dns` holds.
    async fn two_pods() -> (Pod, Pod, GrpcLogic, Arc<Mutex<Vec<SocketAddr>>>) {
        let (a, b) = (Pod::start().await, Pod::start().await);
        let (resolver, dns) = fake_dns();
        let name = "http://logic-headless.test:9000".to_string();
        let logic = GrpcLogic::with_resolver(&[name], resolver, 4 << 20).unwrap();
        (a, b, logic, dns)
    }

    fn request(user: i64) -> UpRequest {
        UpRequest {
            user_id: user,
            ..UpRequest::default()
        }
    }

    async fn send_all(logic: &GrpcLogic, users: impl Iterator<Item = i64>) {
        for u in users {
            let reply = logic.submit(request(u)).await.await;
            assert_eq!(reply.code, 0, "{reply:?}");
        }
    }

    #[tokio::test]
    async fn follows_the_pods_the_name_resolves_to() {
        let (a, b, logic, dns) = two_pods().await;
        // Nothing resolves yet: the address as given is kept.
        assert!(!logic.refresh().await);
        assert_eq!(logic.endpoints(), ["http://logic-headless.test:9000"]);

        *dns.lock().unwrap() = vec![a.addr];
        assert!(logic.refresh().await);
        send_all(&logic, 1..=200).await;
        assert_eq!(a.take().len(), 200);

        // A second pod appears: it takes part of the users, and the same
        // users again (requests are keyed by user, not spread per request).
        *dns.lock().unwrap() = vec![b.addr, a.addr];
        assert!(logic.refresh().await);
        assert!(!logic.refresh().await, "unchanged");
        send_all(&logic, 1..=200).await;
        let (on_a, on_b) = (a.take(), b.take());
        assert!(
            (60..=140).contains(&on_b.len()),
            "pod b got {} of 200",
            on_b.len()
        );
        send_all(&logic, 1..=200).await;
        assert_eq!((a.take(), b.take()), (on_a, on_b));

        // The name stops resolving (no ready pod): keep what we had.
        dns.lock().unwrap().clear();
        assert!(!logic.refresh().await);
        assert_eq!(logic.endpoints().len(), 2);

        // Pod a goes away: everyone is on b.
        *dns.lock().unwrap() = vec![b.addr];
        assert!(logic.refresh().await);
        send_all(&logic, 1..=200).await;
        assert!(a.take().is_empty());
        assert_eq!(b.take().len(), 200);
    }

    #[tokio::test]
    async fn a_login_an_endpoint_does_not_answer_goes_to_the_next() {
        let (a, b, mut logic, dns) = two_pods().await;
        *dns.lock().unwrap() = vec![a.addr, b.addr];
        assert!(logic.refresh().await);
        logic.auth_timeout = Duration::from_millis(300);
        a.hold.send_replace(true);
        let started = std::time::Instant::now();
        for conn in 1..=4u64 {
            let login = logic.auth(AuthRequest {
                conn_id: conn,
                ..AuthRequest::default()
            });
            let reply = tokio::time::timeout(Duration::from_secs(5), login)
                .await
                .expect("a login that waits on the held pod alone")
                .expect("answered by the other pod");
            assert_eq!(reply.user_id, conn as i64);
        }
        // Round robin asked a first for half of them; b answered all four.
        assert_eq!(b.take(), [1, 2, 3, 4]);
        assert_eq!(a.take().len(), 2);
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn an_ack_is_sent_without_waiting_or_holding_the_user() {
        let a = Pod::start().await;
        let logic = GrpcLogic::new(&[format!("http://{}", a.addr)], 4 << 20).unwrap();
        a.hold.send_replace(true);
        let ack = UpRequest {
            user_id: 5,
            no_reply: true,
            ..UpRequest::default()
        };
        let reply = tokio::time::timeout(Duration::from_secs(2), async {
            logic.submit(ack).await.await
        })
        .await
        .expect("answered at once, not by logic");
        assert_eq!(reply.code, 0);
        assert!(logic.sticky.is_empty());
        let eps = logic.snapshot();
        let stream = eps[0].stream.lock().await.clone().expect("stream open");
        assert!(stream.pending.lock().unwrap().is_empty(), "nobody waits");
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(a.take(), [5], "but logic got it");
    }

    #[tokio::test]
    async fn a_user_with_requests_in_flight_stays_on_their_pod() {
        let (a, b, logic, dns) = two_pods().await;
        *dns.lock().unwrap() = vec![a.addr];
        logic.refresh().await;
        // A user who will rank b first once b exists.
        let b_url = format!("http://{}", b.addr);
        let a_url = format!("http://{}", a.addr);
        let user = (1..1000)
            .find(|&u| {
                discovery::score(u, discovery::endpoint_key(&b_url))
                    > discovery::score(u, discovery::endpoint_key(&a_url))
            })
            .unwrap();

        a.hold.send_replace(true);
        let first = logic.submit(request(user)).await;
        *dns.lock().unwrap() = vec![a.addr, b.addr];
        assert!(logic.refresh().await);
        // Still in flight on a: the next one follows it there.
        let second = logic.submit(request(user)).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(a.take(), [user, user]);
        assert!(b.take().is_empty());
        a.hold.send_replace(false);
        assert_eq!(first.await.code, 0);
        assert_eq!(second.await.code, 0);
        // Answered: now it moves to b.
        send_all(&logic, [user].into_iter()).await;
        assert_eq!(b.take(), [user]);
        assert!(logic.sticky.is_empty());
    }

    #[tokio::test]
    async fn push_streams_answer_in_order_and_end_when_the_server_stops() {
        use im_proto::logic::PushItem;
        use im_proto::logic::gateway_client::GatewayClient;
        use im_proto::logic::gateway_server::GatewayServer;

        let logic = GrpcLogic::new(&["http://127.0.0.1:1".to_string()], 1 << 20).unwrap();
        let gw = Gateway::new(
            crate::gateway::GatewayConfig::new("g", "local"),
            Arc::new(logic),
            Arc::new(im_common::route::MemoryRouteTable::new()),
            CancellationToken::new(),
            im_common::admin::Readiness::default(),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(GatewayServer::new(GatewayGrpc::new(gw, stop.clone())))
                .serve_with_incoming_shutdown(TcpListenerStream::new(listener), {
                    let stop = stop.clone();
                    async move { stop.cancelled().await }
                }),
        );
        let mut client = GatewayClient::connect(format!("http://{addr}"))
            .await
            .unwrap();
        let (batches, rx) = mpsc::channel(4);
        let mut replies = client
            .push_stream(ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        // No such connections here: each answer names the batch's as missing.
        for conn in [7u64, 8, 9] {
            let item = PushItem {
                conn_ids: vec![conn, conn + 100],
                messages: Vec::new(),
            };
            batches.send(PushBatch { items: vec![item] }).await.unwrap();
            let reply = replies.message().await.unwrap().unwrap();
            assert_eq!(reply.missing_conn_ids, vec![conn, conn + 100]);
        }
        // The stream is still open; stopping ends it, and the server stops.
        stop.cancel();
        let end = tokio::time::timeout(Duration::from_secs(2), replies.message()).await;
        assert!(matches!(end, Ok(Ok(None)) | Ok(Err(_))), "{end:?}");
        tokio::time::timeout(Duration::from_secs(2), server)
            .await
            .expect("the server stopped with the stream's logic still connected")
            .unwrap()
            .unwrap();
        drop(batches);
    }
}
