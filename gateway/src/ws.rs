//! WebSocket transport: one binary message carries exactly one frame.
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use axum::Router;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use futures::{Sink, SinkExt, Stream, StreamExt};
use im_proto::{Frame, FrameError, HEADER_LEN};
use tokio::sync::OwnedSemaphorePermit;

use crate::gateway::Gateway;
use crate::session;

/// `GET /ws` upgrades to a WebSocket session.
pub fn router(gw: Arc<Gateway>) -> Router {
    Router::new().route("/ws", get(upgrade)).with_state(gw)
}

async fn upgrade(
    State(gw): State<Arc<Gateway>>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    ws: WebSocketUpgrade,
) -> Response {
    let Ok(permit) = gw.conn_limit.clone().try_acquire_owned() else {
        return (StatusCode::SERVICE_UNAVAILABLE, "connection limit reached").into_response();
    };
    let max = gw.cfg.max_body;
    ws.max_message_size(HEADER_LEN + max)
        .max_frame_size(HEADER_LEN + max)
        .on_upgrade(move |socket| run(gw, socket, peer.to_string(), permit))
}

async fn run(gw: Arc<Gateway>, socket: WebSocket, peer: String, permit: OwnedSemaphorePermit) {
    let io = WsFrames {
        ws: socket,
        max_body: gw.cfg.max_body,
    };
    session::run(gw, io, peer, permit).await;
}

/// A WebSocket as frames: each binary message is one frame, each frame goes
/// out as one binary message; text is refused, a close message ends it.
struct WsFrames {
    ws: WebSocket,
    max_body: usize,
}

impl Stream for WsFrames {
    type Item = Result<Frame, FrameError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            return Poll::Ready(match ready!(this.ws.poll_next_unpin(cx)) {
                None | Some(Ok(Message::Close(_))) => None,
                Some(Ok(Message::Binary(b))) => Some(Frame::decode_exact(&b, this.max_body)),
                Some(Ok(Message::Text(_))) => Some(Err(FrameError::Io(
                    "text messages are not frames; send binary".into(),
                ))),
                // Pings and pongs: the WebSocket layer answers them.
                Some(Ok(_)) => continue,
                Some(Err(e)) => Some(Err(FrameError::Io(e.to_string()))),
            });
        }
    }
}

impl Sink<Bytes> for WsFrames {
    type Error = String;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), String>> {
        self.get_mut()
            .ws
            .poll_ready_unpin(cx)
            .map_err(|e| e.to_string())
    }

    fn start_send(self: Pin<&mut Self>, frame: Bytes) -> Result<(), String> {
        self.get_mut()
            .ws
            .start_send_unpin(Message::Binary(frame))
            .map_err(|e| e.to_string())
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), String>> {
        self.get_mut()
            .ws
            .poll_flush_unpin(cx)
            .map_err(|e| e.to_string())
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), String>> {
        self.get_mut()
            .ws
            .poll_close_unpin(cx)
            .map_err(|e| e.to_string())
    }
}
