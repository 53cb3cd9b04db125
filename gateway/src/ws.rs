//! WebSocket transport: one binary message carries exactly one frame.
use std::sync::Arc;

use axum::Router;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use futures::{SinkExt, StreamExt, future};
use im_proto::{Frame, FrameError, HEADER_LEN};

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
        .on_upgrade(move |socket| async move {
            run(gw, socket, peer.to_string()).await;
            drop(permit);
        })
}

async fn run(gw: Arc<Gateway>, socket: WebSocket, peer: String) {
    let max = gw.cfg.max_body;
    let (sink, stream) = socket.split();
    let frames = stream
        .take_while(|m| future::ready(!matches!(m, Ok(Message::Close(_)))))
        .filter_map(move |m| {
            future::ready(match m {
                Ok(Message::Binary(b)) => Some(Frame::decode_exact(&b, max)),
                Ok(Message::Text(_)) => Some(Err(FrameError::Io(
                    "text messages are not frames; send binary".into(),
                ))),
                Ok(_) => None,
                Err(e) => Some(Err(FrameError::Io(e.to_string()))),
            })
        });
    let sink = sink
        .with(|b: Bytes| future::ready(Ok::<_, axum::Error>(Message::Binary(b))))
        .sink_map_err(|e| e.to_string());
    session::run(gw, Box::pin(frames), Box::pin(sink), peer).await;
}
