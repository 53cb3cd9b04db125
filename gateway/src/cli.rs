//! Command-line and environment configuration of the gateway, shared by
//! `im-gateway` and `im-server`.
use std::time::Duration;

use clap::Args;

use crate::gateway::GatewayConfig;
use crate::window::RetransmitConfig;

#[derive(Debug, Clone, Args)]
pub struct GatewayArgs {
    /// Client TCP listener.
    #[arg(long, env = "IM_TCP_ADDR", default_value = "0.0.0.0:7000")]
    pub tcp_addr: std::net::SocketAddr,
    /// Accept queue of the client listeners (the kernel caps it at
    /// `net.core.somaxconn`): room for a reconnect storm's SYNs.
    #[arg(long, env = "IM_LISTEN_BACKLOG", default_value_t = 4096)]
    pub listen_backlog: u32,
    /// Largest frame body in bytes (also the largest message body).
    #[arg(long, env = "IM_MAX_BODY", default_value_t = 64 * 1024)]
    pub max_body: usize,
    /// Seconds a new connection has to send AUTH.
    #[arg(long, env = "IM_AUTH_TIMEOUT_SECS", default_value_t = 10)]
    pub auth_timeout_secs: u64,
    /// Heartbeat interval advertised to clients, in seconds.
    #[arg(long, env = "IM_HEARTBEAT_SECS", default_value_t = 30)]
    pub heartbeat_secs: u64,
    /// Seconds of silence after which a connection is closed (> heartbeat).
    #[arg(long, env = "IM_IDLE_TIMEOUT_SECS", default_value_t = 90)]
    pub idle_timeout_secs: u64,
    /// Frames queued per connection before it is closed as a slow consumer.
    #[arg(long, env = "IM_OUTBOUND_QUEUE", default_value_t = 1024)]
    pub outbound_queue: usize,
    /// Most concurrent connections.
    #[arg(long, env = "IM_MAX_CONNECTIONS", default_value_t = 100_000)]
    pub max_connections: usize,
    /// Requests one connection may have in flight.
    #[arg(long, env = "IM_MAX_INFLIGHT", default_value_t = 64)]
    pub max_inflight: usize,
    /// Milliseconds to wait for a push acknowledgement before sending it
    /// again (doubling on each retry).
    #[arg(long, env = "IM_ACK_TIMEOUT_MS", default_value_t = 3000)]
    pub ack_timeout_ms: u64,
    /// Sends of one unacknowledged push before the connection is closed.
    #[arg(long, env = "IM_PUSH_MAX_TRIES", default_value_t = 4)]
    pub push_max_tries: u32,
    /// Upstream frames per second one connection may send (0 = unlimited).
    #[arg(long, env = "IM_RATE_LIMIT", default_value_t = 200)]
    pub rate_limit: u32,
    /// Frames one connection may send in a burst above the rate.
    #[arg(long, env = "IM_RATE_BURST", default_value_t = 400)]
    pub rate_burst: u32,
    /// Seconds over which clients are told to reconnect on shutdown.
    #[arg(long, env = "IM_DRAIN_SECS", default_value_t = 10)]
    pub drain_secs: u64,
}

impl GatewayArgs {
    pub fn config(&self, gate_id: &str, advertise_addr: &str) -> Result<GatewayConfig, String> {
        if self.idle_timeout_secs <= self.heartbeat_secs {
            return Err("--idle-timeout-secs must be greater than --heartbeat-secs".into());
        }
        if self.max_body == 0 || self.max_body > 16 * 1024 * 1024 {
            return Err("--max-body must be between 1 byte and 16 MiB".into());
        }
        let mut cfg = GatewayConfig::new(gate_id, advertise_addr);
        cfg.max_body = self.max_body;
        cfg.auth_timeout = Duration::from_secs(self.auth_timeout_secs.max(1));
        cfg.heartbeat_interval = Duration::from_secs(self.heartbeat_secs.max(1));
        cfg.idle_timeout = Duration::from_secs(self.idle_timeout_secs);
        cfg.outbound_queue = self.outbound_queue.max(1);
        cfg.max_connections = self.max_connections.max(1);
        cfg.max_inflight = self.max_inflight.max(1);
        cfg.drain_window = Duration::from_secs(self.drain_secs);
        cfg.retransmit = RetransmitConfig {
            ack_timeout: Duration::from_millis(self.ack_timeout_ms.max(10)),
            max_backoff: Duration::from_millis(self.ack_timeout_ms.max(10) * 8),
            max_tries: self.push_max_tries.max(1),
            capacity: cfg.outbound_queue,
        };
        cfg.rate_limit = self.rate_limit;
        cfg.rate_burst = self.rate_burst.max(1);
        Ok(cfg)
    }
}
