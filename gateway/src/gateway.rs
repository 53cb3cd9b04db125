//! The gateway's shared state: live connections, push and kick into them,
//! registration in the route table, and drain on shutdown.
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use dashmap::DashMap;
use im_common::admin::Readiness;
use im_common::api::{ApiError, GatewayApi, LogicApi};
use im_common::route::RouteTable;
use im_common::shutdown::CancellationToken;
use im_proto::client::{Ctrl, CtrlType, Push};
use im_proto::logic::{KickReply, KickRequest, PushBatch, PushReply};
use im_proto::prost::Message as _;
use im_proto::{Command, Frame};
use tokio::sync::Semaphore;

use crate::conn::{ConnHandle, QueueError};
use crate::metrics;
use crate::window::RetransmitConfig;

/// Limits and identity of one gateway.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    pub gate_id: String,
    /// gRPC address logic uses to push here (`"local"` in single-node mode).
    pub advertise_addr: String,
    pub max_body: usize,
    pub auth_timeout: Duration,
    /// Advertised to clients in the AUTH response.
    pub heartbeat_interval: Duration,
    /// A connection silent for this long is closed.
    pub idle_timeout: Duration,
    /// Frames queued per connection before it counts as a slow consumer.
    pub outbound_queue: usize,
    pub max_connections: usize,
    /// Requests one connection may have in flight to logic.
    pub max_inflight: usize,
    pub registration_ttl: Duration,
    /// Window over which clients are told to reconnect elsewhere on shutdown.
    pub drain_window: Duration,
    pub retransmit: RetransmitConfig,
    /// Upstream frames per second one connection may send (0 = no limit).
    pub rate_limit: u32,
    /// Frames one connection may send at once above the rate.
    pub rate_burst: u32,
}

impl GatewayConfig {
    pub fn new(gate_id: impl Into<String>, advertise_addr: impl Into<String>) -> Self {
        GatewayConfig {
            gate_id: gate_id.into(),
            advertise_addr: advertise_addr.into(),
            max_body: im_proto::frame::DEFAULT_MAX_BODY,
            auth_timeout: Duration::from_secs(10),
            heartbeat_interval: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(90),
            outbound_queue: 1024,
            max_connections: 100_000,
            max_inflight: 64,
            registration_ttl: Duration::from_secs(15),
            drain_window: Duration::from_secs(10),
            retransmit: RetransmitConfig::default(),
            rate_limit: 200,
            rate_burst: 400,
        }
    }
}

pub struct Gateway {
    pub(crate) cfg: GatewayConfig,
    pub(crate) logic: Arc<dyn LogicApi>,
    pub(crate) routes: Arc<dyn RouteTable>,
    pub(crate) conns: DashMap<u64, Arc<ConnHandle>>,
    /// `cfg.retransmit`, shared by every connection's window.
    pub(crate) retransmit: Arc<RetransmitConfig>,
    /// Connections holding unacknowledged pushes or a deferred ACK (what
    /// the retransmit scan visits).
    held: DashMap<u64, ()>,
    next_conn: AtomicU64,
    pub(crate) conn_limit: Arc<Semaphore>,
    pub(crate) shutdown: CancellationToken,
    pub(crate) readiness: Readiness,
}

impl Gateway {
    pub fn new(
        cfg: GatewayConfig,
        logic: Arc<dyn LogicApi>,
        routes: Arc<dyn RouteTable>,
        shutdown: CancellationToken,
        readiness: Readiness,
    ) -> Arc<Gateway> {
        // Connection ids start from the boot time, so a restarted gateway
        // never reuses an id a stale route might still point at.
        let first = im_proto::now_ms() << 20;
        metrics::init();
        Arc::new(Gateway {
            conn_limit: Arc::new(Semaphore::new(cfg.max_connections)),
            retransmit: Arc::new(cfg.retransmit),
            cfg,
            logic,
            routes,
            conns: DashMap::new(),
            held: DashMap::new(),
            next_conn: AtomicU64::new(first),
            shutdown,
            readiness,
        })
    }

    pub fn config(&self) -> &GatewayConfig {
        &self.cfg
    }

    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    pub(crate) fn next_conn_id(&self) -> u64 {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    /// Queues each item's push frame (encoded once) on each of its connections.
    pub fn push_local(&self, batch: PushBatch) -> PushReply {
        let mut reply = PushReply::default();
        for item in batch.items {
            let max_seq = item.messages.iter().map(|m| m.seq).max().unwrap_or(0);
            // Senders of the messages whose acknowledgement by anyone but
            // themselves stores a DELIVERED receipt.
            let receipt_from: Vec<i64> = item
                .messages
                .iter()
                .filter(|m| im_proto::wants_delivered_receipt(m, 0))
                .map(|m| m.from)
                .collect();
            let body = Push {
                messages: item.messages,
            }
            .encode_to_vec();
            let frame = Frame::request(Command::Push, 0, body).to_bytes();
            for conn_id in item.conn_ids {
                let sent = self.conns.get(&conn_id).map(|h| {
                    let user = h.identity().map_or(0, |id| id.user_id);
                    let wants_receipt = receipt_from.iter().any(|&from| from != user);
                    h.send_push(frame.clone(), max_seq, wants_receipt)
                });
                match sent {
                    Some(Ok(())) => {
                        self.held.insert(conn_id, ());
                        reply.delivered += 1;
                        metrics::frame("out", Command::Push as u16);
                    }
                    Some(Err(QueueError::SlowConsumer)) | Some(Err(QueueError::Closed)) => {
                        reply.missing += 1
                    }
                    None => {
                        reply.missing += 1;
                        reply.missing_conn_ids.push(conn_id);
                    }
                }
            }
        }
        reply
    }

    /// Sends a kickout frame to a connection and closes it.
    pub fn kick_local(&self, req: KickRequest) -> KickReply {
        let Some(h) = self.conns.get(&req.conn_id).map(|h| h.clone()) else {
            return KickReply { found: false };
        };
        let other_session = !req.session_id.is_empty()
            && h.identity()
                .is_some_and(|id| id.session_id != req.session_id);
        if other_session {
            return KickReply { found: false };
        }
        let body = req.kickout.unwrap_or_default().encode_to_vec();
        let _ = h.send(Frame::request(Command::Kickout, 0, body).to_bytes());
        h.close();
        metrics::KICKED.inc();
        KickReply { found: true }
    }

    /// Runs `sweep` every `tick` until shutdown.
    async fn every(&self, tick: Duration, sweep: impl Fn(&Self)) {
        let mut interval = tokio::time::interval(tick);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => break,
                _ = interval.tick() => sweep(self),
            }
        }
    }

    /// Watches `handle` on the retransmit tick (it holds pushes or a
    /// deferred ACK).
    pub(crate) fn hold(&self, handle: &ConnHandle) {
        self.held.insert(handle.conn_id, ());
    }

    /// Sends the connection's deferred ACK to logic, if it still has one
    /// (fire-and-forget, like every ACK).
    pub(crate) fn forward_deferred_ack(&self, handle: &ConnHandle) {
        let (Some(id), Some(seq)) = (handle.identity(), handle.take_deferred()) else {
            return;
        };
        let up = crate::session::up_request(
            self,
            handle,
            id,
            im_proto::logic::up_request::Kind::Ack(im_proto::client::Ack { seq }),
        );
        let logic = self.logic.clone();
        tokio::spawn(async move {
            drop(logic.submit(up).await);
        });
    }

    /// Resends unacknowledged pushes and forwards deferred ACKs, until shutdown.
    pub async fn run_retransmit(self: Arc<Self>) {
        let tick = (self.cfg.retransmit.ack_timeout / 4).max(Duration::from_millis(20));
        self.every(tick, |gw| {
            let now = std::time::Instant::now();
            let ids: Vec<u64> = gw.held.iter().map(|e| *e.key()).collect();
            for id in ids {
                let still_held = match gw.conns.get(&id).map(|h| h.clone()) {
                    Some(h) => {
                        gw.forward_deferred_ack(&h);
                        // (`|`: both run; an ACK deferred meanwhile keeps it.)
                        h.retransmit(now) | h.has_deferred()
                    }
                    None => false,
                };
                if !still_held {
                    gw.held.remove(&id);
                }
            }
        })
        .await
    }

    /// Closes authenticated connections that sent nothing (not even a
    /// heartbeat) for the idle timeout; one sweep for all connections.
    pub async fn run_idle_sweep(self: Arc<Self>) {
        let tick =
            (self.cfg.idle_timeout / 8).clamp(Duration::from_millis(50), Duration::from_secs(1));
        let limit = self.cfg.idle_timeout.as_millis() as u64;
        self.every(tick, |gw| {
            for c in gw.conns.iter() {
                if c.identity().is_some() && c.idle_ms() > limit && !c.is_closed() {
                    tracing::debug!(conn = c.conn_id, "idle timeout");
                    metrics::IDLE_CLOSED.inc();
                    c.close();
                }
            }
        })
        .await
    }

    /// Keeps this gateway registered; after a lapse (expiry, Redis restart)
    /// records every live session again. Unregisters on shutdown.
    pub async fn run_registration(self: Arc<Self>) {
        let every = self.cfg.registration_ttl / 3;
        let mut first = true;
        loop {
            match self
                .routes
                .register_gate(
                    &self.cfg.gate_id,
                    &self.cfg.advertise_addr,
                    self.cfg.registration_ttl,
                )
                .await
            {
                Ok(was_present) => {
                    if !was_present && !first {
                        self.reregister_sessions().await;
                    }
                    first = false;
                }
                Err(e) => tracing::warn!(error = %e, "failed to renew gateway registration"),
            }
            tokio::select! {
                _ = self.shutdown.cancelled() => break,
                _ = tokio::time::sleep(every) => {}
            }
        }
        if let Err(e) = self.routes.unregister_gate(&self.cfg.gate_id).await {
            tracing::warn!(error = %e, "failed to unregister gateway");
        }
    }

    async fn reregister_sessions(&self) {
        let routes: Vec<_> = self
            .conns
            .iter()
            .filter_map(|h| h.route(&self.cfg.gate_id))
            .collect();
        tracing::info!(
            sessions = routes.len(),
            "registration had lapsed; recording sessions again"
        );
        if let Err(e) = self.routes.set_routes(&routes).await {
            tracing::warn!(error = %e, "failed to record sessions again");
        }
    }

    /// Drain: turn not-ready, leave the route table, ask clients to reconnect
    /// in jittered waves over the drain window, then close what is left.
    pub async fn drain(&self) {
        self.readiness.set(false);
        if let Err(e) = self.routes.unregister_gate(&self.cfg.gate_id).await {
            tracing::warn!(error = %e, "failed to unregister gateway");
        }
        let conns: Vec<Arc<ConnHandle>> = self.conns.iter().map(|h| h.clone()).collect();
        tracing::info!(connections = conns.len(), window = ?self.cfg.drain_window, "draining");
        let window = self.cfg.drain_window.as_millis() as u64;
        let mut plan: Vec<(u64, Arc<ConnHandle>)> = conns
            .into_iter()
            .map(|h| {
                (
                    if window == 0 {
                        0
                    } else {
                        rand::random_range(0..window)
                    },
                    h,
                )
            })
            .collect();
        plan.sort_by_key(|(at, _)| *at);
        let start = tokio::time::Instant::now();
        for (at, h) in plan {
            tokio::time::sleep_until(start + Duration::from_millis(at)).await;
            let body = Ctrl {
                r#type: CtrlType::Reconnect as i32,
                reconnect_addr: String::new(),
                delay_ms: rand::random_range(0..1000),
                message: "gateway is shutting down".into(),
            }
            .encode_to_vec();
            let _ = h.send(Frame::request(Command::Ctrl, 0, Bytes::from(body)).to_bytes());
            h.close();
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while !self.conns.is_empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// In single-node mode logic pushes straight into the gateway.
#[async_trait]
impl GatewayApi for Gateway {
    async fn push(&self, _gate_addr: &str, batch: PushBatch) -> Result<PushReply, ApiError> {
        Ok(self.push_local(batch))
    }

    async fn kick(&self, _gate_addr: &str, req: KickRequest) -> Result<KickReply, ApiError> {
        Ok(self.kick_local(req))
    }
}
