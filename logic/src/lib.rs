//! The logic tier: stateless, any pod serves any request.
//!
//! - [`store`]: sqlx storage (Postgres or SQLite): users, tokens, messages,
//!   inboxes with per-user sequences, device cursors; migrations.
//! - [`auth`]: argon2 password hashes and JWT bearer tokens.
//! - [`committer`]: group commit — sends queue per shard, many per transaction.
//! - [`pusher`]: committed inbox entries → route lookup → one push batch per gateway.
//! - [`service`]: [`LogicService`], the core behind both transports, which
//!   implements [`im_common::api::LogicApi`].
//! - [`grpc`]: the `Logic` gRPC service and the pooled `Gateway` client.
//! - [`rest`]: the axum REST API.
//! - [`metrics`]: `im_logic_*` Prometheus metrics.
//!
//! A send flows: gateway → [`LogicService::send_c2c`] → committer shard →
//! one transaction ([`store::Store::commit_batch`]) → SENT back to the sender
//! → pusher → gateways of online recipients.
#![forbid(unsafe_code)]

pub mod auth;
pub mod cli;
pub mod committer;
pub mod grpc;
pub mod metrics;
pub mod pusher;
pub mod rest;
pub mod service;
pub mod store;

pub use service::{LogicConfig, LogicService};
