//! One client connection from accept to close, whatever the transport: auth
//! handshake under a timeout, then frames in order, replies as logic answers.
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use std::time::Duration;
use tokio::sync::OwnedSemaphorePermit;

use bytes::Bytes;
use futures::stream::FuturesOrdered;
use futures::{Sink, SinkExt, Stream, StreamExt};
use im_common::api::{ApiError, ReplyFuture};
use im_proto::client::{
    Ack, AuthRequest, AuthResponse, C2cSendRequest, C2gSendRequest, C2sSendRequest, DeviceType,
    ErrorCode, GroupPullRequest, Heartbeat, PullRequest,
};
use im_proto::logic::{self, UpReply, UpRequest, up_reply, up_request};
use im_proto::prost::Message as _;
use im_proto::{Command, Frame, FrameError};

use crate::conn::{AckOutcome, ConnHandle, Identity};
use crate::gateway::Gateway;
use crate::metrics;
use crate::ratelimit::TokenBucket;

/// A request logic has: its command, seq, when its frame was read, and the reply.
type Pending = Pin<Box<dyn Future<Output = (ReplyTo, UpReply)> + Send>>;

/// Where a reply goes (the request's command and seq) and when the request
/// was read (for `im_gateway_request_seconds`).
type ReplyTo = (u16, u32, std::time::Instant);

/// A [`LogicApi`] whose reply futures run as tasks of their own.
///
/// A session polls its in-flight replies only between frames, and may wait
/// in `submit` (a full store queue) meanwhile. In-process logic (the single
/// node) returns reply futures that do the work themselves, e.g. a PULL that
/// holds a pooled store connection while it runs: left unpolled behind a
/// waiting `submit`, such futures can hold every connection the store queue
/// needs to drain, and the node stalls. Spawned, they finish regardless. (The
/// gRPC path needs none of this: logic runs the work, the gateway's reply
/// future only waits for the answer.)
pub struct DetachedReplies(pub Arc<dyn im_common::api::LogicApi>);

#[async_trait::async_trait]
impl im_common::api::LogicApi for DetachedReplies {
    async fn auth(&self, req: logic::AuthRequest) -> Result<logic::AuthReply, ApiError> {
        self.0.auth(req).await
    }

    async fn submit(&self, req: UpRequest) -> ReplyFuture {
        let req_id = req.req_id;
        let task = tokio::spawn(self.0.submit(req).await);
        Box::pin(async move {
            task.await.unwrap_or_else(|e| {
                ApiError::new(ErrorCode::Internal, format!("request failed: {e}"))
                    .into_reply(req_id)
            })
        })
    }
}

/// The error frame for `err`, in answer to (`command`, `seq`).
pub fn error_frame(command: u16, seq: u32, err: &ApiError) -> Bytes {
    metrics::PROTOCOL_ERRORS
        .with_label_values(&[err.code.as_str_name()])
        .inc();
    Frame::error(command, seq, err.to_body().encode_to_vec()).to_bytes()
}

fn frame_error(e: &FrameError) -> ApiError {
    match e {
        FrameError::TooLarge { .. } => ApiError::new(ErrorCode::FrameTooLarge, e.to_string()),
        _ => ApiError::new(ErrorCode::BadFrame, e.to_string()),
    }
}

/// Drives a connection: `io` yields decoded frames and takes encoded ones.
///
/// The handshake and the close are boxed (their state lives on the heap only
/// while they run); in between the connection is the [`Serve`] state machine,
/// which is all an idle connection keeps besides its handle and socket.
///
/// `permit` is the connection's place under the gateway's connection limit,
/// given back when the connection ends. A plain `fn` returning an `async
/// move` block: an `async fn` would keep its arguments twice in the task.
#[allow(clippy::manual_async_fn)]
pub fn run<T, E>(
    gw: Arc<Gateway>,
    mut io: T,
    peer: String,
    permit: OwnedSemaphorePermit,
) -> impl Future<Output = ()> + Send
where
    T: Stream<Item = Result<Frame, FrameError>> + Sink<Bytes, Error = E> + Unpin + Send + 'static,
    E: std::fmt::Display + Send + 'static,
{
    async move {
        metrics::ACCEPTED.inc();
        let conn_id = gw.next_conn_id();
        let handle = Arc::new(ConnHandle::new(
            conn_id,
            gw.cfg.outbound_queue,
            gw.retransmit.clone(),
        ));
        let authed = Box::pin(authenticate(&gw, &handle, &mut io)).await;
        // The identity lives in the handle only (no second copy of its
        // strings per connection).
        if let Some(identity) = authed.and_then(|()| handle.identity()) {
            metrics::CONNECTIONS.inc();
            tracing::debug!(conn = conn_id, user = identity.user_id, %peer, "authenticated");
            let unwritten = Serve::new(&gw, &handle, identity, &mut io).await;
            // The cursor catches up with what the device acknowledged.
            gw.forward_deferred_ack(&handle);
            metrics::CONNECTIONS.dec();
            gw.conns.remove(&conn_id);
            handle.close();
            let cleanup = async {
                let Some((user_id, route)) = handle.route(&gw.cfg.gate_id) else {
                    return;
                };
                if let Err(e) = gw.routes.remove_route(user_id, &route).await {
                    tracing::warn!(error = %e, "failed to remove route");
                }
            };
            Box::pin(async { tokio::join!(finish(&mut io, &handle, unwritten), cleanup) }).await;
        } else {
            gw.conns.remove(&conn_id);
            handle.close();
            Box::pin(finish(&mut io, &handle, VecDeque::new())).await;
        }
        tracing::debug!(conn = conn_id, %peer, "closed");
        drop(permit);
    }
}

/// Waits for AUTH and records the identity in the handle; on any failure
/// sends an error frame and returns `None`.
async fn authenticate<S>(gw: &Gateway, handle: &Arc<ConnHandle>, frames: &mut S) -> Option<()>
where
    S: Stream<Item = Result<Frame, FrameError>> + Unpin + Send,
{
    let first = tokio::select! {
        r = tokio::time::timeout(gw.cfg.auth_timeout, frames.next()) => r,
        _ = gw.shutdown.cancelled() => return None,
    };
    let frame = match first {
        Err(_) => {
            let e = ApiError::new(
                ErrorCode::AuthTimeout,
                "no AUTH frame within the auth timeout",
            );
            let _ = handle.send(error_frame(Command::Auth as u16, 0, &e));
            return None;
        }
        Ok(None) => return None,
        Ok(Some(Err(e))) => {
            let _ = handle.send(error_frame(0, 0, &frame_error(&e)));
            return None;
        }
        Ok(Some(Ok(f))) => f,
    };
    metrics::frame("in", frame.command);
    let refuse = |e: ApiError| {
        let _ = handle.send(error_frame(frame.command, frame.seq, &e));
        None
    };
    if frame.command() != Some(Command::Auth) {
        return refuse(ApiError::new(
            ErrorCode::Unauthenticated,
            "the first frame must be AUTH",
        ));
    }
    let Ok(req) = AuthRequest::decode(frame.body.clone()) else {
        return refuse(ApiError::new(
            ErrorCode::BadFrame,
            "AUTH body is not an AuthRequest",
        ));
    };
    if !matches!(DeviceType::try_from(req.device), Ok(d) if d != DeviceType::Unspecified) {
        return refuse(ApiError::bad_request("AUTH needs a known device type"));
    }
    // Registered before logic records the route, so no push can miss it.
    gw.conns.insert(handle.conn_id, handle.clone());
    let reply = gw
        .logic
        .auth(logic::AuthRequest {
            token: req.token,
            device: req.device,
            device_id: req.device_id,
            gate_id: gw.cfg.gate_id.clone(),
            conn_id: handle.conn_id,
        })
        .await;
    let reply = match reply {
        Ok(r) => r,
        Err(e) => return refuse(e),
    };
    let identity = Identity {
        user_id: reply.user_id,
        device: req.device,
        session_id: reply.session_id.clone(),
    };
    handle.set_identity(identity);
    let body = AuthResponse {
        user_id: reply.user_id,
        max_seq: reply.max_seq,
        server_time_ms: im_proto::now_ms(),
        heartbeat_secs: gw.cfg.heartbeat_interval.as_secs() as u32,
    };
    let _ = handle.send(Frame::response(frame.command, frame.seq, body.encode_to_vec()).to_bytes());
    Some(())
}

enum Step {
    Reply(Bytes),
    /// Hand to logic; answer (command, seq) with its reply, or nothing (ACK).
    Submit(Option<(u16, u32)>, UpRequest),
    None,
    Close,
}

type Submitting<'a> = Pin<Box<dyn Future<Output = ReplyFuture> + Send + 'a>>;

/// The authenticated connection as one explicit state machine: frames in,
/// requests to logic, replies out in request order, queued frames written.
/// It holds references and empty queues only, so an idle connection's task
/// is a few hundred bytes (an `async` loop with `select!` keeps the state of
/// every branch's future, over a kilobyte). Each part registers the task's
/// waker where it waits: the socket (read and write), the outbox and close
/// flag, logic's futures.
struct Serve<'a, T> {
    gw: &'a Gateway,
    handle: &'a ConnHandle,
    id: &'a Identity,
    io: &'a mut T,
    bucket: TokenBucket,
    /// Frames taken from the outbox that the sink has not accepted yet.
    out: VecDeque<Bytes>,
    unflushed: bool,
    /// The request being handed to logic; no frame is read meanwhile.
    submitting: Option<(Option<ReplyTo>, Submitting<'a>)>,
    /// Requests logic has, answered in request order; `None` (no
    /// allocation, one pointer) while there are none.
    inflight: Option<Box<FuturesOrdered<Pending>>>,
}

impl<'a, T, E> Serve<'a, T>
where
    T: Stream<Item = Result<Frame, FrameError>> + Sink<Bytes, Error = E> + Unpin,
{
    fn new(gw: &'a Gateway, handle: &'a ConnHandle, id: &'a Identity, io: &'a mut T) -> Self {
        Serve {
            gw,
            handle,
            id,
            io,
            bucket: TokenBucket::new(
                gw.cfg.rate_limit,
                gw.cfg.rate_burst,
                std::time::Instant::now(),
            ),
            out: VecDeque::new(),
            unflushed: false,
            submitting: None,
            inflight: None,
        }
    }

    fn inflight(&self) -> usize {
        self.inflight.as_ref().map_or(0, |f| f.len())
    }

    /// Queues `bytes`; false when the connection cannot take it (closing).
    fn send(&self, bytes: Bytes) -> bool {
        self.handle.send(bytes).is_ok()
    }

    /// Replies logic has finished, in request order. `Ready(false)`: stop.
    fn poll_replies(&mut self, cx: &mut Context<'_>) -> Poll<bool> {
        let Some(inflight) = self.inflight.as_mut() else {
            return Poll::Pending;
        };
        let mut any = false;
        while let Poll::Ready(next) = inflight.poll_next_unpin(cx) {
            let Some(((command, seq, read_at), reply)) = next else {
                self.inflight = None;
                break;
            };
            metrics::request(command, read_at);
            // A connection waiting on its own requests is not idle.
            self.handle.touch();
            if let Some(up_reply::Kind::Pulled(p)) = &reply.kind {
                self.handle.note_pulled(&p.messages);
            }
            if self.handle.send(reply_frame(command, seq, reply)).is_err() {
                return Poll::Ready(false);
            }
            any = true;
        }
        if any {
            Poll::Ready(true)
        } else {
            Poll::Pending
        }
    }

    /// The request being handed to logic.
    fn poll_submitting(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let Some((reply_to, fut)) = self.submitting.as_mut() else {
            return Poll::Pending;
        };
        let reply = ready!(fut.as_mut().poll(cx));
        // An ACK's reply is not awaited: there is nothing to answer.
        if let Some(to) = *reply_to {
            self.inflight
                .get_or_insert_with(Box::default)
                .push_back(Box::pin(async move { (to, reply.await) }));
        }
        self.submitting = None;
        Poll::Ready(())
    }

    /// The next frame in, while logic takes more. `Ready(false)`: stop.
    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<bool> {
        if self.submitting.is_some() || self.inflight() >= self.gw.cfg.max_inflight {
            return Poll::Pending;
        }
        let frame = match ready!(self.io.poll_next_unpin(cx)) {
            None => return Poll::Ready(false),
            Some(Err(e)) => {
                // The stream cannot be resynchronised after a bad header.
                let _ = self.handle.send(error_frame(0, 0, &frame_error(&e)));
                return Poll::Ready(false);
            }
            Some(Ok(f)) => f,
        };
        self.handle.touch();
        let read_at = std::time::Instant::now();
        metrics::frame("in", frame.command);
        Poll::Ready(
            match step(self.gw, self.handle, self.id, frame, &mut self.bucket) {
                Step::Reply(bytes) => self.send(bytes),
                Step::Submit(reply_to, up) => {
                    let gw: &'a Gateway = self.gw;
                    let reply_to = reply_to.map(|(c, s)| (c, s, read_at));
                    self.submitting = Some((reply_to, gw.logic.submit(up)));
                    true
                }
                Step::None => true,
                Step::Close => false,
            },
        )
    }

    /// Writes what is queued, batching whatever is ready into one flush.
    /// `Ready(Err)`: the socket failed. Between bursts it holds no buffer.
    fn poll_write(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), E>> {
        loop {
            while !self.out.is_empty() {
                ready!(self.io.poll_ready_unpin(cx))?;
                let frame = self.out.pop_front().expect("not empty");
                self.io.start_send_unpin(frame)?;
                self.unflushed = true;
            }
            if self.unflushed {
                ready!(self.io.poll_flush_unpin(cx))?;
                self.unflushed = false;
            }
            self.out = VecDeque::new();
            ready!(self.handle.outbox().poll_take(cx, &mut self.out));
        }
    }
}

impl<T, E> Future for Serve<'_, T>
where
    T: Stream<Item = Result<Frame, FrameError>> + Sink<Bytes, Error = E> + Unpin,
    E: std::fmt::Display,
{
    /// Frames taken from the outbox but not written.
    type Output = VecDeque<Bytes>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        loop {
            if this.handle.poll_closed(cx) {
                return Poll::Ready(std::mem::take(&mut this.out));
            }
            let mut busy = false;
            match this.poll_replies(cx) {
                Poll::Ready(true) => busy = true,
                Poll::Ready(false) => break,
                Poll::Pending => {}
            }
            if this.poll_submitting(cx).is_ready() {
                busy = true;
            }
            match this.poll_frame(cx) {
                Poll::Ready(true) => busy = true,
                Poll::Ready(false) => break,
                Poll::Pending => {}
            }
            if let Poll::Ready(Err(e)) = this.poll_write(cx) {
                tracing::debug!(conn = this.handle.conn_id, error = %e, "write failed");
                this.handle.outbox().close_and_take();
                return Poll::Ready(VecDeque::new());
            }
            if !busy {
                return Poll::Pending;
            }
        }
        Poll::Ready(std::mem::take(&mut this.out))
    }
}

/// What a frame asks for, decided without waiting.
fn step(
    gw: &Gateway,
    handle: &ConnHandle,
    id: &Identity,
    frame: Frame,
    bucket: &mut TokenBucket,
) -> Step {
    let (cmd, seq) = (frame.command, frame.seq);
    if frame.flags.is_response() {
        return Step::None;
    }
    let limited = matches!(
        frame.command(),
        Some(Command::C2cSend)
            | Some(Command::C2gSend)
            | Some(Command::C2sSend)
            | Some(Command::Pull)
            | Some(Command::GroupPull)
    );
    if limited && !bucket.try_take(std::time::Instant::now()) {
        metrics::RATE_LIMITED.inc();
        let mut e = ApiError::new(
            ErrorCode::RateLimited,
            "sending too fast; slow down and retry",
        );
        e.retryable = true;
        return Step::Reply(error_frame(cmd, seq, &e));
    }
    let bad_body = |what: &str| {
        Step::Reply(error_frame(
            cmd,
            seq,
            &ApiError::new(ErrorCode::BadFrame, format!("body is not a {what}")),
        ))
    };
    let kind = match frame.command() {
        Some(Command::Heartbeat) => {
            let body = Heartbeat {
                server_time_ms: im_proto::now_ms(),
            };
            return Step::Reply(Frame::response(cmd, seq, body.encode_to_vec()).to_bytes());
        }
        Some(Command::Ack) => {
            let Ok(ack) = Ack::decode(frame.body) else {
                return bad_body("Ack");
            };
            let outcome = handle.on_ack(ack.seq);
            metrics::ack(outcome.index());
            return match outcome {
                // Logic advances the device cursor and sends DELIVERED
                // receipts; nothing to answer, so the reply is not awaited.
                AckOutcome::Forward => {
                    Step::Submit(None, up_request(gw, handle, id, up_request::Kind::Ack(ack)))
                }
                // Forwarded by the retransmit tick or the connection's end,
                // unless a later ACK covers it first.
                AckOutcome::Deferred => {
                    gw.hold(handle);
                    Step::None
                }
                // Nothing new for the device cursor (a repeat, or an ACK
                // after group messages, which live outside the inbox).
                AckOutcome::Repeat => Step::None,
            };
        }
        Some(Command::Logout) => {
            let _ = handle.send(Frame::response(cmd, seq, Bytes::new()).to_bytes());
            return Step::Close;
        }
        Some(Command::C2cSend) => match C2cSendRequest::decode(frame.body) {
            Ok(r) => up_request::Kind::C2c(r),
            Err(_) => return bad_body("C2cSendRequest"),
        },
        Some(Command::C2gSend) => match C2gSendRequest::decode(frame.body) {
            Ok(r) => up_request::Kind::C2g(r),
            Err(_) => return bad_body("C2gSendRequest"),
        },
        Some(Command::GroupPull) => match GroupPullRequest::decode(frame.body) {
            Ok(r) => up_request::Kind::GroupPull(r),
            Err(_) => return bad_body("GroupPullRequest"),
        },
        Some(Command::C2sSend) => match C2sSendRequest::decode(frame.body) {
            Ok(r) => up_request::Kind::C2s(r),
            Err(_) => return bad_body("C2sSendRequest"),
        },
        Some(Command::Pull) => match PullRequest::decode(frame.body) {
            Ok(r) => up_request::Kind::Pull(r),
            Err(_) => return bad_body("PullRequest"),
        },
        Some(Command::Auth) => {
            return Step::Reply(error_frame(
                cmd,
                seq,
                &ApiError::bad_request("already authenticated"),
            ));
        }
        Some(Command::Push) | Some(Command::Kickout) | Some(Command::Ctrl) | None => {
            return Step::Reply(error_frame(
                cmd,
                seq,
                &ApiError::new(
                    ErrorCode::UnknownCommand,
                    format!("command {cmd:#06x} is not accepted from clients"),
                ),
            ));
        }
    };
    Step::Submit(Some((cmd, seq)), up_request(gw, handle, id, kind))
}

pub(crate) fn up_request(
    gw: &Gateway,
    handle: &ConnHandle,
    id: &Identity,
    kind: up_request::Kind,
) -> UpRequest {
    UpRequest {
        req_id: 0,
        user_id: id.user_id,
        device: id.device,
        gate_id: gw.cfg.gate_id.clone(),
        conn_id: handle.conn_id,
        // Only an ACK is fire-and-forget (see `Step::Submit(None, ..)`).
        no_reply: matches!(kind, up_request::Kind::Ack(_)),
        kind: Some(kind),
    }
}

fn reply_frame(command: u16, seq: u32, reply: UpReply) -> Bytes {
    if let Some(e) = ApiError::from_reply(&reply) {
        return error_frame(command, seq, &e);
    }
    let body = match reply.kind {
        Some(up_reply::Kind::Sent(s)) => s.encode_to_vec(),
        Some(up_reply::Kind::Pulled(p)) => p.encode_to_vec(),
        None => Vec::new(),
    };
    metrics::frame("out", command);
    Frame::response(command, seq, body).to_bytes()
}

/// After the close: writes what is left (a kickout, say) within two seconds,
/// then closes the sink; a client that does not read is not waited on longer.
async fn finish<K, E>(sink: &mut K, handle: &ConnHandle, unwritten: VecDeque<Bytes>)
where
    K: Sink<Bytes, Error = E> + Unpin,
{
    let rest = handle.outbox().close_and_take();
    let write = async {
        for b in unwritten.into_iter().chain(rest) {
            sink.feed(b).await?;
        }
        sink.flush().await?;
        sink.close().await
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), write).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gateway::GatewayConfig;
    use async_trait::async_trait;
    use im_common::admin::Readiness;
    use im_common::route::MemoryRouteTable;
    use im_common::shutdown::CancellationToken;

    struct NoLogic;

    #[async_trait]
    impl im_common::api::LogicApi for NoLogic {
        async fn auth(&self, _: logic::AuthRequest) -> Result<logic::AuthReply, ApiError> {
            Err(ApiError::unavailable("test"))
        }
        async fn submit(&self, _: UpRequest) -> ReplyFuture {
            im_common::api::ready_reply(UpReply::default())
        }
    }

    /// Counts how far its reply futures got, to see whether they run unpolled.
    struct CountingLogic(Arc<std::sync::atomic::AtomicUsize>);

    #[async_trait]
    impl im_common::api::LogicApi for CountingLogic {
        async fn auth(&self, _: logic::AuthRequest) -> Result<logic::AuthReply, ApiError> {
            Err(ApiError::unavailable("test"))
        }
        async fn submit(&self, _: UpRequest) -> ReplyFuture {
            let done = self.0.clone();
            Box::pin(async move {
                tokio::task::yield_now().await;
                done.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                UpReply::default()
            })
        }
    }

    #[tokio::test]
    async fn detached_replies_finish_without_being_polled() {
        use im_common::api::LogicApi;
        let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let logic = DetachedReplies(Arc::new(CountingLogic(done.clone())));
        let reply = logic.submit(UpRequest::default()).await;
        // Not polled: the work still completes on its own task.
        tokio::time::timeout(Duration::from_secs(5), async {
            while done.load(std::sync::atomic::Ordering::SeqCst) == 0 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
        .await
        .expect("the reply future ran unpolled");
        assert_eq!(reply.await, UpReply::default());
        // Undetached, an unpolled reply future does nothing.
        let plain = CountingLogic(done.clone());
        let _unpolled = plain.submit(UpRequest::default()).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(done.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    /// A gateway on `logic` and one TCP connection it accepted: the
    /// client's end, and the connection's task (not yet running).
    async fn one_connection(
        logic: Arc<dyn im_common::api::LogicApi>,
    ) -> (tokio::net::TcpStream, impl Future<Output = ()> + Send) {
        let gw = Gateway::new(
            GatewayConfig::new("g", "local"),
            logic,
            Arc::new(MemoryRouteTable::new()),
            CancellationToken::new(),
            Readiness::default(),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap());
        let (client, accepted) = tokio::join!(client, listener.accept());
        let permit = Arc::new(tokio::sync::Semaphore::new(1))
            .acquire_owned()
            .await
            .unwrap();
        let task = crate::tcp::connection(gw, accepted.unwrap().0, "p".into(), permit);
        (client.unwrap(), task)
    }

    /// Answers AUTH for user 7 and every request 150 ms later.
    struct SlowLogic;

    #[async_trait]
    impl im_common::api::LogicApi for SlowLogic {
        async fn auth(&self, _: logic::AuthRequest) -> Result<logic::AuthReply, ApiError> {
            Ok(logic::AuthReply {
                user_id: 7,
                ..Default::default()
            })
        }
        async fn submit(&self, _: UpRequest) -> ReplyFuture {
            Box::pin(async {
                tokio::time::sleep(Duration::from_millis(150)).await;
                UpReply::default()
            })
        }
    }

    /// `im_gateway_request_seconds` runs from the request's frame to its
    /// reply, so it holds the time logic took to answer.
    #[tokio::test]
    async fn a_requests_time_holds_logics_answer() {
        use crate::io::FrameIo;
        use im_proto::FrameCodec;
        let (client, task) = one_connection(Arc::new(SlowLogic)).await;
        tokio::spawn(task);
        let mut client = FrameIo::new(client, FrameCodec::new(1 << 16));
        let auth = AuthRequest {
            token: "t".into(),
            device: DeviceType::Desktop as i32,
            device_id: "d".into(),
        };
        client
            .send(Frame::request(Command::Auth, 1, auth.encode_to_vec()).to_bytes())
            .await
            .unwrap();
        assert_eq!(client.next().await.unwrap().unwrap().seq, 1);
        let sends = metrics::REQUEST_SECONDS.with_label_values(&["c2c_send"]);
        let before = (sends.get_sample_count(), sends.get_sample_sum());
        let send = C2cSendRequest {
            to: 8,
            client_msg_id: "c-1".into(),
            content_type: 1,
            body: b"hi".to_vec().into(),
        };
        client
            .send(Frame::request(Command::C2cSend, 2, send.encode_to_vec()).to_bytes())
            .await
            .unwrap();
        let reply = client.next().await.unwrap().unwrap();
        assert_eq!((reply.command(), reply.seq), (Some(Command::C2cSend), 2));
        // This test alone sends C2C_SEND through a gateway in this binary.
        assert_eq!(sends.get_sample_count() - before.0, 1);
        let took = sends.get_sample_sum() - before.1;
        assert!((0.15..5.0).contains(&took), "observed {took} s");
    }

    /// What an idle connection keeps in its one task, beside the socket and
    /// its handle: the per-connection budget (2 KiB in all) depends on it
    /// staying small.
    #[tokio::test]
    async fn connection_tasks_stay_small() {
        let (client, task) = one_connection(Arc::new(NoLogic)).await;
        drop(client);
        let size = std::mem::size_of_val(&task);
        // tokio adds ~110 bytes and rounds the task to 128: at most 400
        // keeps an idle connection's task in 512.
        assert!(size <= 400, "connection task future is {size} bytes");
    }
}
