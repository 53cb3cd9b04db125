//! A bare connection for the connection-count scenarios: bind a source
//! address in 127.0.0.0/8, connect, AUTH, then hold the framed stream. No
//! tasks or queues beyond the stream itself, so one process holds many.
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use im_proto::client::{AuthRequest, DeviceType, Error as ErrorBody};
use im_proto::prost::Message as _;
use im_proto::{Command, Frame, FrameCodec};
use tokio::net::{TcpSocket, TcpStream};
use tokio_util::codec::Framed;

pub type RawConn = Framed<TcpStream, FrameCodec>;

/// Why a connection did not authenticate, short enough to tally.
#[derive(Debug, thiserror::Error)]
pub enum RawError {
    #[error("connect: {0}")]
    Connect(std::io::ErrorKind),
    #[error("auth refused: {0}")]
    Refused(String),
    #[error("timed out")]
    Timeout,
    #[error("closed before the auth response")]
    Closed,
}

/// Connects from `src` (any port) to `dst` and authenticates.
pub async fn connect_auth(
    src: Option<IpAddr>,
    dst: SocketAddr,
    token: &str,
    device: DeviceType,
    within: Duration,
) -> Result<RawConn, RawError> {
    tokio::time::timeout(within, connect_auth_inner(src, dst, token, device))
        .await
        .map_err(|_| RawError::Timeout)?
}

async fn connect_auth_inner(
    src: Option<IpAddr>,
    dst: SocketAddr,
    token: &str,
    device: DeviceType,
) -> Result<RawConn, RawError> {
    let socket = TcpSocket::new_v4().map_err(|e| RawError::Connect(e.kind()))?;
    if let Some(ip) = src {
        socket
            .bind(SocketAddr::new(ip, 0))
            .map_err(|e| RawError::Connect(e.kind()))?;
    }
    let stream = socket
        .connect(dst)
        .await
        .map_err(|e| RawError::Connect(e.kind()))?;
    let _ = stream.set_nodelay(true);
    let mut framed = Framed::new(stream, FrameCodec::new(16 * 1024 * 1024));
    let body = AuthRequest {
        token: token.to_string(),
        device: device as i32,
        device_id: String::new(),
    };
    framed
        .send(Frame::request(Command::Auth, 1, body.encode_to_vec()))
        .await
        .map_err(|_| RawError::Closed)?;
    while let Some(frame) = framed.next().await {
        let Ok(frame) = frame else {
            return Err(RawError::Closed);
        };
        if !frame.flags.is_response() {
            continue; // a push may come before the auth response
        }
        if frame.flags.is_error() {
            let e = ErrorBody::decode(frame.body).unwrap_or_default();
            return Err(RawError::Refused(format!("{} {}", e.code, e.message)));
        }
        if frame.seq == 1 {
            return Ok(framed);
        }
    }
    Err(RawError::Closed)
}

/// Holds a connection: heartbeats every `every`, reads and drops whatever
/// arrives; returns when the server closes it.
pub async fn hold(mut conn: RawConn, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    let mut seq: u32 = 2;
    loop {
        tokio::select! {
            f = conn.next() => match f {
                Some(Ok(_)) => {}
                _ => return,
            },
            _ = tick.tick() => {
                seq = seq.wrapping_add(1).max(2);
                if conn.send(Frame::request(Command::Heartbeat, seq, Vec::new())).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// The i-th source address: 127.0.0.2, .3, … — `per_ip` connections each.
pub fn source_ip(i: usize, per_ip: usize) -> IpAddr {
    let k = 2 + (i / per_ip.max(1));
    let k = k.min(250 * 250);
    IpAddr::from([127, 0, (k / 250) as u8, (k % 250) as u8 + 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_ips_spread_in_loopback() {
        assert_eq!(source_ip(0, 10), IpAddr::from([127, 0, 0, 3]));
        assert_eq!(source_ip(9, 10), IpAddr::from([127, 0, 0, 3]));
        assert_eq!(source_ip(10, 10), IpAddr::from([127, 0, 0, 4]));
        assert!(matches!(source_ip(1_000_000, 1), IpAddr::V4(v) if v.is_loopback()));
    }
}
