//! One client connection from accept to close, whatever the transport: auth
//! handshake under a timeout, then frames in order, replies as logic answers.
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::stream::FuturesOrdered;
use futures::{Sink, SinkExt, Stream, StreamExt};
use im_common::api::{ApiError, ReplyFuture};
use im_common::route::Route;
use im_proto::client::{
    Ack, AuthRequest, AuthResponse, C2cSendRequest, C2gSendRequest, C2sSendRequest, DeviceType,
    ErrorCode, GroupPullRequest, Heartbeat, PullRequest,
};
use im_proto::logic::{self, UpReply, UpRequest, up_reply, up_request};
use im_proto::prost::Message as _;
use im_proto::{Command, Frame, FrameError};

use crate::conn::{ConnHandle, Identity};
use crate::gateway::Gateway;
use crate::metrics;
use crate::ratelimit::TokenBucket;

type Pending = Pin<Box<dyn Future<Output = (u16, u32, UpReply)> + Send>>;

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

/// Drives a connection: `frames` is the decoded input, `sink` takes encoded frames.
pub async fn run<S, K, E>(gw: Arc<Gateway>, mut frames: S, sink: K, peer: String)
where
    S: Stream<Item = Result<Frame, FrameError>> + Unpin + Send,
    K: Sink<Bytes, Error = E> + Unpin + Send + 'static,
    E: std::fmt::Display + Send + 'static,
{
    metrics::ACCEPTED.inc();
    let conn_id = gw.next_conn_id();
    let handle = Arc::new(ConnHandle::new(
        conn_id,
        gw.cfg.outbound_queue,
        gw.cfg.retransmit,
    ));
    let reader = async {
        // Boxed: its state lives on the heap only during the handshake, so
        // the long-lived session future stays small.
        let authed = Box::pin(authenticate(&gw, &handle, &mut frames)).await;
        // The identity lives in the handle only (no second copy of its
        // strings per connection).
        if let Some(identity) = authed.and_then(|()| handle.identity()) {
            metrics::CONNECTIONS.inc();
            tracing::debug!(conn = conn_id, user = identity.user_id, %peer, "authenticated");
            serve(&gw, &handle, identity, &mut frames).await;
            metrics::CONNECTIONS.dec();
            gw.conns.remove(&conn_id);
            if let Err(e) = gw
                .routes
                .remove_route(identity.user_id, &identity.route)
                .await
            {
                tracing::warn!(error = %e, "failed to remove route");
            }
        } else {
            gw.conns.remove(&conn_id);
        }
        handle.close();
    };
    // Reader and writer share the connection's one task (no second task
    // and join handle per connection); the writer ends after the close.
    tokio::join!(reader, write_loop(sink, handle.clone()));
    tracing::debug!(conn = conn_id, %peer, "closed");
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
        route: Route {
            device: req.device,
            gate_id: gw.cfg.gate_id.clone(),
            conn_id: handle.conn_id,
        },
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

/// The authenticated loop: frames in, replies out in request order.
async fn serve<S>(gw: &Gateway, handle: &ConnHandle, id: &Identity, frames: &mut S)
where
    S: Stream<Item = Result<Frame, FrameError>> + Unpin + Send,
{
    let mut inflight: FuturesOrdered<Pending> = FuturesOrdered::new();
    let mut bucket = TokenBucket::new(
        gw.cfg.rate_limit,
        gw.cfg.rate_burst,
        std::time::Instant::now(),
    );
    // Idle connections are closed by the gateway's sweep (`run_idle_sweep`).
    loop {
        tokio::select! {
            _ = handle.close_token().cancelled() => break,
            Some((command, seq, reply)) = inflight.next(), if !inflight.is_empty() => {
                // A connection waiting on its own requests is not idle.
                handle.touch();
                if handle.send(reply_frame(command, seq, reply)).is_err() {
                    break;
                }
            }
            next = frames.next(), if inflight.len() < gw.cfg.max_inflight => {
                let frame = match next {
                    None => break,
                    Some(Err(e)) => {
                        // The stream cannot be resynchronised after a bad header.
                        let _ = handle.send(error_frame(0, 0, &frame_error(&e)));
                        break;
                    }
                    Some(Ok(f)) => f,
                };
                handle.touch();
                metrics::frame("in", frame.command);
                // Boxed for the same reason: only while a frame is handled.
                match Box::pin(handle_frame(gw, handle, id, frame, &mut bucket)).await {
                    Step::Reply(bytes) => {
                        if handle.send(bytes).is_err() {
                            break;
                        }
                    }
                    Step::Pending(p) => inflight.push_back(p),
                    Step::None => {}
                    Step::Close => break,
                }
            }
        }
    }
}

enum Step {
    Reply(Bytes),
    Pending(Pending),
    None,
    Close,
}

async fn handle_frame(
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
            handle.ack(ack.seq);
            if !handle.ack_advances(ack.seq) {
                // Nothing new for the device cursor (a repeat, or an ACK
                // after group messages, which live outside the inbox).
                return Step::None;
            }
            // Logic advances the device cursor and sends DELIVERED receipts;
            // nothing to answer, so the reply is not awaited.
            let up = UpRequest {
                req_id: 0,
                user_id: id.user_id,
                device: id.route.device,
                gate_id: gw.cfg.gate_id.clone(),
                conn_id: handle.conn_id,
                kind: Some(up_request::Kind::Ack(ack)),
            };
            drop(gw.logic.submit(up).await);
            return Step::None;
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
    let up = UpRequest {
        req_id: 0,
        user_id: id.user_id,
        device: id.route.device,
        gate_id: gw.cfg.gate_id.clone(),
        conn_id: handle.conn_id,
        kind: Some(kind),
    };
    let fut: ReplyFuture = gw.logic.submit(up).await;
    Step::Pending(Box::pin(async move { (cmd, seq, fut.await) }))
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

/// Writes queued frames, batching whatever is ready into one flush. On close
/// (kick, drain, slow consumer) it stops waiting on a client that does not
/// read, then spends at most two seconds writing what is left (a kickout, say).
/// Between bursts it holds no buffer.
async fn write_loop<K, E>(mut sink: K, handle: Arc<ConnHandle>)
where
    K: Sink<Bytes, Error = E> + Unpin,
    E: std::fmt::Display,
{
    let close = handle.close_token().clone();
    let mut pending: VecDeque<Bytes> = VecDeque::new();
    loop {
        tokio::select! {
            biased;
            _ = handle.outbox().recv_into(&mut pending) => {}
            _ = close.cancelled() => break,
        }
        let write = async {
            while let Some(b) = pending.pop_front() {
                sink.feed(b).await?;
            }
            sink.flush().await
        };
        tokio::select! {
            r = write => if r.is_err() {
                close.cancel();
                handle.outbox().close_and_take();
                return;
            },
            _ = close.cancelled() => break,
        }
        pending = VecDeque::new();
    }
    let rest = handle.outbox().close_and_take();
    let finish = async {
        for b in pending.into_iter().chain(rest) {
            sink.feed(b).await?;
        }
        sink.flush().await?;
        sink.close().await
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), finish).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gateway::GatewayConfig;
    use crate::io::{FrameReader, FrameWriter};
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

    /// What an idle connection keeps in its one task, beside the socket and
    /// its handle: the per-connection budget (2 KiB in all) depends on it
    /// staying small.
    #[tokio::test]
    async fn connection_tasks_stay_small() {
        let gw = Gateway::new(
            GatewayConfig::new("g", "local"),
            Arc::new(NoLogic),
            Arc::new(MemoryRouteTable::new()),
            CancellationToken::new(),
            Readiness::default(),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap());
        let (client, accepted) = tokio::join!(client, listener.accept());
        let (r, w) = accepted.unwrap().0.into_split();
        let codec = im_proto::FrameCodec::new(1024);
        let session = run(
            gw.clone(),
            FrameReader::new(r, codec),
            FrameWriter::new(w),
            "p".into(),
        );
        drop(client);
        let size = std::mem::size_of_val(&session);
        assert!(size <= 1536, "connection future is {size} bytes");
    }
}
