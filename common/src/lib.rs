//! Pieces every binary shares.
//!
//! - [`route`]: the route table (which gateway and connection holds a user on
//!   which device type, and which gateways are alive), with an in-process
//!   implementation for single-node mode and a Redis one for cluster mode,
//!   behind one trait.
//! - [`api`]: the seams between tiers ([`api::LogicApi`], [`api::GatewayApi`])
//!   and the error type clients see.
//! - [`admin`]: `/metrics`, `/healthz` and `/readyz` as an axum router.
//! - [`telemetry`]: tracing set-up (text or JSON, level from `RUST_LOG`).
//! - [`shutdown`]: the one shutdown signal that every task listens to.
//! - [`procstat`]: CPU time of processes from `/proc`, for the benchmarks.
#![forbid(unsafe_code)]

pub mod admin;
pub mod api;
pub mod procstat;
pub mod route;
pub mod shutdown;
pub mod telemetry;

pub use route::{LiveRoute, MemoryRouteTable, RedisRouteTable, Route, RouteError, RouteTable};
