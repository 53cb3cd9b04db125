//! A framed connection to a gateway over TCP or WebSocket: requests matched
//! to responses by sequence, server-initiated frames delivered as events.
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use im_proto::client::{
    Ack, AuthRequest, AuthResponse, C2cSendRequest, C2gSendRequest, C2sSendRequest, Ctrl,
    DeviceType, Error as ErrorBody, GroupPullRequest, Heartbeat, Kickout, Message, PullRequest,
    PullResponse, Push, SendResponse,
};
use im_proto::prost::Message as _;
use im_proto::{Command, Frame, FrameCodec, FrameError, HEADER_LEN};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_util::codec::{FramedRead, FramedWrite};

/// A WebSocket to `url`, with `TCP_NODELAY` as on the TCP path:
/// tokio-tungstenite's `connect_async` leaves Nagle's algorithm on, and a
/// frame written while the one before it is unacknowledged then waits for
/// the gateway's (delayed) acknowledgement.
async fn open_ws(
    url: &str,
) -> Result<
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>,
    ClientError,
> {
    let (ws, _) = tokio_tungstenite::connect_async_with_config(url, None, true)
        .await
        .map_err(|e| ClientError::Connect(format!("{url}: {e}")))?;
    Ok(ws)
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("failed to connect: {0}")]
    Connect(String),
    #[error("connection closed")]
    Closed,
    #[error("timed out waiting for a response")]
    Timeout,
    #[error("server error {code}: {message}")]
    Server {
        code: i32,
        message: String,
        retryable: bool,
    },
    #[error("bad response body: {0}")]
    Decode(#[from] im_proto::prost::DecodeError),
    #[error("http error: {0}")]
    Http(String),
}

impl ClientError {
    pub fn is_retryable(&self) -> bool {
        match self {
            ClientError::Server { retryable, .. } => *retryable,
            ClientError::Closed | ClientError::Timeout | ClientError::Connect(_) => true,
            _ => false,
        }
    }

    /// The protocol error code of a server error.
    pub fn code(&self) -> Option<i32> {
        match self {
            ClientError::Server { code, .. } => Some(*code),
            _ => None,
        }
    }
}

/// Something the server sent on its own.
#[derive(Debug, Clone)]
pub enum Event {
    Push(Vec<Message>),
    Kickout(Kickout),
    Ctrl(Ctrl),
    /// An error frame that answered no request (a bad frame, an auth timeout).
    Error(ErrorBody),
}

type Pending = Arc<Mutex<HashMap<u32, oneshot::Sender<Frame>>>>;

pub struct Connection {
    out: mpsc::Sender<Bytes>,
    pending: Pending,
    next_seq: AtomicU32,
    events: tokio::sync::Mutex<mpsc::Receiver<Event>>,
    timeout: Duration,
    closed: Arc<AtomicBool>,
}

/// Largest frame body accepted from the server (pull pages are capped well below).
const MAX_BODY: usize = 64 * 1024 * 1024;

impl Connection {
    pub async fn connect_tcp(addr: &str) -> Result<Connection, ClientError> {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| ClientError::Connect(format!("{addr}: {e}")))?;
        let _ = stream.set_nodelay(true);
        let (r, w) = stream.into_split();
        let frames = FramedRead::new(r, FrameCodec::new(MAX_BODY));
        let sink = FramedWrite::new(w, FrameCodec::new(MAX_BODY));
        Ok(Self::spawn(frames, sink))
    }

    /// `url` like `ws://127.0.0.1:8080/ws`.
    pub async fn connect_ws(url: &str) -> Result<Connection, ClientError> {
        let (sink, stream) = open_ws(url).await?.split();
        let frames = stream.filter_map(|m| async move {
            match m {
                Ok(WsMessage::Binary(b)) => Some(Frame::decode_exact(&b, MAX_BODY)),
                Ok(WsMessage::Close(_)) | Err(_) => Some(Err(FrameError::Truncated)),
                Ok(_) => None,
            }
        });
        let sink = sink.with(|b: Bytes| async move {
            Ok::<_, tokio_tungstenite::tungstenite::Error>(WsMessage::Binary(b))
        });
        Ok(Self::spawn(Box::pin(frames), Box::pin(sink)))
    }

    fn spawn<S, K>(mut frames: S, mut sink: K) -> Connection
    where
        S: futures::Stream<Item = Result<Frame, FrameError>> + Unpin + Send + 'static,
        K: futures::Sink<Bytes> + Unpin + Send + 'static,
    {
        let (out, mut out_rx) = mpsc::channel::<Bytes>(1024);
        let (ev_tx, ev_rx) = mpsc::channel::<Event>(65536);
        let pending: Pending = Arc::default();
        tokio::spawn(async move {
            while let Some(b) = out_rx.recv().await {
                if sink.feed(b).await.is_err() {
                    return;
                }
                while let Ok(b) = out_rx.try_recv() {
                    if sink.feed(b).await.is_err() {
                        return;
                    }
                }
                if sink.flush().await.is_err() {
                    return;
                }
            }
            let _ = sink.close().await;
        });
        let p = pending.clone();
        let closed = Arc::new(AtomicBool::new(false));
        let closed_flag = closed.clone();
        tokio::spawn(async move {
            while let Some(Ok(frame)) = frames.next().await {
                if frame.flags.is_response() && frame.seq != 0 {
                    let waiter = p
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(&frame.seq);
                    if let Some(w) = waiter {
                        let _ = w.send(frame);
                    }
                    continue;
                }
                let event = match frame.command() {
                    _ if frame.flags.is_error() => {
                        ErrorBody::decode(frame.body).ok().map(Event::Error)
                    }
                    Some(Command::Push) => Push::decode(frame.body)
                        .ok()
                        .map(|p| Event::Push(p.messages)),
                    Some(Command::Kickout) => Kickout::decode(frame.body).ok().map(Event::Kickout),
                    Some(Command::Ctrl) => Ctrl::decode(frame.body).ok().map(Event::Ctrl),
                    _ => None,
                };
                if let Some(e) = event
                    && ev_tx.send(e).await.is_err()
                {
                    break;
                }
            }
            // Fail every waiting request.
            closed_flag.store(true, Ordering::SeqCst);
            p.lock().unwrap_or_else(|e| e.into_inner()).clear();
        });
        Connection {
            out,
            pending,
            next_seq: AtomicU32::new(1),
            events: tokio::sync::Mutex::new(ev_rx),
            timeout: Duration::from_secs(30),
            closed,
        }
    }

    /// Sends raw bytes (for testing how the server treats bad input).
    pub async fn send_raw(&self, bytes: Bytes) -> Result<(), ClientError> {
        self.out.send(bytes).await.map_err(|_| ClientError::Closed)
    }

    /// Sends a request and waits for its response body.
    pub async fn request(&self, cmd: Command, body: Vec<u8>) -> Result<Bytes, ClientError> {
        self.request_code(cmd as u16, Bytes::from(body)).await
    }

    /// Like [`Self::request`] with a raw command code (unknown codes included).
    pub async fn request_code(&self, cmd: u16, body: Bytes) -> Result<Bytes, ClientError> {
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed).max(1);
        let (tx, rx) = oneshot::channel();
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(seq, tx);
        // The reader marks the connection closed before it fails the waiting
        // requests: a request registered after that sees the mark here.
        if self.closed.load(Ordering::SeqCst) {
            self.pending
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&seq);
            return Err(ClientError::Closed);
        }
        let mut frame = Frame::request(Command::Heartbeat, seq, body);
        frame.command = cmd;
        self.send_raw(frame.to_bytes()).await?;
        let frame = match tokio::time::timeout(self.timeout, rx).await {
            Ok(Ok(f)) => f,
            Ok(Err(_)) => return Err(ClientError::Closed),
            Err(_) => {
                self.pending
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&seq);
                return Err(ClientError::Timeout);
            }
        };
        if frame.flags.is_error() {
            let e = ErrorBody::decode(frame.body)?;
            return Err(ClientError::Server {
                code: e.code as i32,
                message: e.message,
                retryable: e.retryable,
            });
        }
        Ok(frame.body)
    }

    pub async fn auth(&self, token: &str, device: DeviceType) -> Result<AuthResponse, ClientError> {
        let body = AuthRequest {
            token: token.to_string(),
            device: device as i32,
            device_id: String::new(),
        };
        Ok(AuthResponse::decode(
            self.request(Command::Auth, body.encode_to_vec()).await?,
        )?)
    }

    pub async fn send_c2c(&self, req: C2cSendRequest) -> Result<SendResponse, ClientError> {
        Ok(SendResponse::decode(
            self.request(Command::C2cSend, req.encode_to_vec()).await?,
        )?)
    }

    /// One page of a read-diffusion group after `after_seq` (GROUP_PULL).
    pub async fn group_pull(
        &self,
        group_id: i64,
        after_seq: u64,
        limit: u32,
    ) -> Result<PullResponse, ClientError> {
        let body = GroupPullRequest {
            group_id,
            after_seq,
            limit,
        };
        Ok(PullResponse::decode(
            self.request(Command::GroupPull, body.encode_to_vec())
                .await?,
        )?)
    }

    /// Sends a group message (C2G_SEND).
    pub async fn send_c2g(&self, req: C2gSendRequest) -> Result<SendResponse, ClientError> {
        Ok(SendResponse::decode(
            self.request(Command::C2gSend, req.encode_to_vec()).await?,
        )?)
    }

    /// Sends an upstream message to a business service (C2S_SEND); the
    /// response carries the Redis Stream entry id in `stream_id`.
    pub async fn send_c2s(&self, req: C2sSendRequest) -> Result<SendResponse, ClientError> {
        Ok(SendResponse::decode(
            self.request(Command::C2sSend, req.encode_to_vec()).await?,
        )?)
    }

    pub async fn pull(&self, after_seq: u64, limit: u32) -> Result<PullResponse, ClientError> {
        let body = PullRequest { after_seq, limit };
        Ok(PullResponse::decode(
            self.request(Command::Pull, body.encode_to_vec()).await?,
        )?)
    }

    pub async fn heartbeat(&self) -> Result<Heartbeat, ClientError> {
        Ok(Heartbeat::decode(
            self.request(Command::Heartbeat, Vec::new()).await?,
        )?)
    }

    /// Cumulative acknowledgement: this device has everything up to `seq`.
    pub async fn ack(&self, seq: u64) -> Result<(), ClientError> {
        let seq32 = self.next_seq.fetch_add(1, Ordering::Relaxed).max(1);
        self.send_raw(Frame::request(Command::Ack, seq32, Ack { seq }.encode_to_vec()).to_bytes())
            .await
    }

    /// The next server-initiated event, or `None` once the connection closed.
    pub async fn next_event(&self) -> Option<Event> {
        self.events.lock().await.recv().await
    }

    /// Like [`Self::next_event`] with a deadline.
    pub async fn next_event_timeout(&self, d: Duration) -> Result<Option<Event>, ClientError> {
        tokio::time::timeout(d, self.next_event())
            .await
            .map_err(|_| ClientError::Timeout)
    }

    /// Whether the server closed the connection.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst) || self.out.is_closed()
    }
}

/// Bytes of a frame header claiming `len` body bytes (for bad-input tests).
pub fn raw_header(command: u16, seq: u32, len: u32) -> Bytes {
    let mut f = Frame::request(Command::Heartbeat, seq, Bytes::new())
        .to_bytes()
        .to_vec();
    f[4..6].copy_from_slice(&command.to_be_bytes());
    f[12..16].copy_from_slice(&len.to_be_bytes());
    debug_assert_eq!(f.len(), HEADER_LEN);
    Bytes::from(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn websockets_send_without_nagle() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (socket, _) = listener.accept().await.unwrap();
            tokio_tungstenite::accept_async(socket).await.unwrap()
        });
        let ws = open_ws(&format!("ws://{addr}/ws")).await.unwrap();
        let tokio_tungstenite::MaybeTlsStream::Plain(tcp) = ws.get_ref() else {
            panic!("a plain ws:// connection");
        };
        assert!(tcp.nodelay().unwrap());
        drop(server.await.unwrap());
    }
}
