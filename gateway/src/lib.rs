//! The connection tier: holds client connections and nothing else.
//!
//! - [`tcp`] and [`ws`]: listeners; both decode the same frames and hand
//!   each connection to [`session`].
//! - [`session`]: one connection's life: AUTH under a timeout, heartbeats and
//!   idle timeout, upstream frames to logic in order, replies as they come.
//! - [`conn`]: per-connection state shared with pushes: the bounded outbound
//!   queue (full means slow consumer, closed), close signal, unacked pushes.
//! - [`gateway`]: the shared [`Gateway`]: live connections, push and kick,
//!   registration in the route table, drain on shutdown.
//! - [`grpc`]: the `Gateway` gRPC service and [`grpc::GrpcLogic`], the logic
//!   client multiplexing upstream frames over long-lived streams.
//! - [`discovery`]: the logic endpoints (re-resolved in DNS) and which one
//!   serves a user.
//! - [`window`]: the retransmit window (pure): held pushes, backoff, give-up.
//! - [`metrics`]: `im_gateway_*` Prometheus metrics.
//!
//! Frames flow: socket → codec → session → [`im_common::api::LogicApi`]; pushes
//! flow: logic → [`Gateway::push_local`] → connection queue → writer → socket.
#![forbid(unsafe_code)]

pub mod cli;
pub mod conn;
pub mod discovery;
pub mod gateway;
pub mod grpc;
pub mod io;
pub mod metrics;
pub mod ratelimit;
pub mod session;
pub mod tcp;
pub mod window;
pub mod ws;

pub use gateway::{Gateway, GatewayConfig};
