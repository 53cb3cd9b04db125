//! Client SDK for the IM server, and the `imctl` command line built on it.
//!
//! - [`conn`]: a framed connection (TCP or WebSocket): requests matched to
//!   responses by sequence, pushes/kickout/ctrl as [`conn::Event`]s.
//! - [`tracker`]: the sequence rule (in order, no duplicates, pull on gaps)
//!   as a pure struct.
//! - [`chat`]: [`chat::ChatClient`], connect + auth + catch-up + exactly-once receive.
//! - [`api`]: the REST API (register, login, logout, lookup, send, pull).
//! - [`social`]: friends, groups, conversations, history, revoke (REST).
//! - [`group_cursor`]: per-group cursors for read-diffusion group messages.
//! - [`server_api`]: the business-server side of the REST API (s2c push).
#![forbid(unsafe_code)]

pub mod api;
pub mod chat;
pub mod conn;
pub mod group_cursor;
pub mod server_api;
pub mod social;
pub mod tracker;

pub use api::Api;
pub use chat::{ChatClient, Endpoint};
pub use conn::{ClientError, Connection, Event};
pub use im_proto::client::DeviceType;
