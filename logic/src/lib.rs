//! The logic tier: stateless, any pod serves any request.
//!
//! - [`store`]: sqlx storage (Postgres or SQLite): users, tokens, messages,
//!   inboxes with per-user sequences, device cursors; migrations.
//! - [`auth`]: argon2 password hashes and JWT bearer tokens.
//! - [`committer`]: group commit — sends queue per shard, many per
//!   transaction, with the device acknowledgements queued meanwhile (cursor
//!   updates and DELIVERED receipts, stored, then pushed like messages).
//! - [`pusher`]: committed inbox entries → route lookup → one push batch per gateway.
//! - [`service`]: [`LogicService`], the core behind both transports, which
//!   implements [`im_common::api::LogicApi`].
//! - [`grpc`]: the `Logic` gRPC service and the pooled `Gateway` client.
//! - [`rest`]: the axum REST API, documented by OpenAPI at `/openapi.json`.
//! - [`social`]: friends (per-pair keys, blocks, the c2c policy), groups with
//!   roles, group messages (write diffusion through the committer, read
//!   diffusion by group sequence), conversations, history and revoke.
//! - [`s2c`]: server push, `POST /api/v1/s2c/messages` for business servers.
//! - [`c2s`]: upstream messages to business services: checks, then
//!   [`c2s_stream`] appends them to Redis Streams, in order and once.
//! - [`metrics`]: `im_logic_*` Prometheus metrics.
//!
//! A send flows: gateway → [`LogicService::send_c2c`] → committer shard →
//! one transaction ([`store::Store::commit_batch`]) → SENT back to the sender
//! → pusher → gateways of online recipients.
#![forbid(unsafe_code)]

pub mod auth;
pub mod c2s;
pub mod c2s_stream;
pub mod cli;
pub mod committer;
pub mod group_committer;
pub mod grpc;
pub mod metrics;
pub mod pusher;
pub mod rest;
pub mod s2c;
pub mod service;
pub mod sessions;
pub mod social;
pub mod store;

pub use service::{LogicConfig, LogicService};
