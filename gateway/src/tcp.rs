//! The TCP listener: accepts under the connection limit, frames with the
//! codec, and hands each connection to the session.
use std::sync::Arc;

use im_proto::FrameCodec;
use tokio::net::TcpListener;

use crate::gateway::Gateway;
use crate::io::{FrameReader, FrameWriter};
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
        let gw = gw.clone();
        tokio::spawn(async move {
            let codec = FrameCodec::new(gw.cfg.max_body);
            let (r, w) = stream.into_split();
            let frames = FrameReader::new(r, codec);
            session::run(gw, frames, FrameWriter::new(w), peer.to_string()).await;
            drop(permit);
        });
    }
}
