//! The TCP listener: accepts under the connection limit, frames with the
//! codec, and hands each connection to the session.
use std::sync::Arc;

use im_proto::FrameCodec;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::OwnedSemaphorePermit;

use crate::gateway::Gateway;
use crate::io::FrameIo;
use crate::session;

pub async fn serve(gw: Arc<Gateway>, listener: TcpListener) {
    loop {
        let permit = tokio::select! {
            p = gw.conn_limit.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = gw.shutdown.cancelled() => break,
        };
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: back off rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = gw.shutdown.cancelled() => break,
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(connection(gw.clone(), stream, peer.to_string(), permit));
    }
}

/// The task of one accepted connection (what an idle connection costs,
/// besides its handle and socket: see `connection_tasks_stay_small`).
pub(crate) fn connection(
    gw: Arc<Gateway>,
    stream: TcpStream,
    peer: String,
    permit: OwnedSemaphorePermit,
) -> impl Future<Output = ()> + Send {
    let io = FrameIo::new(stream, FrameCodec::new(gw.cfg.max_body));
    session::run(gw, io, peer, permit)
}
