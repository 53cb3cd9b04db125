//! im-bench: a load generator that drives the real servers and publishes
//! figures (see `docs/benchmarks.md`).
//!
//! A run starts the system under test ([`target`]: `im-server`, or
//! `im-gateway` ×G + `im-logic` ×L on a fresh Postgres database and Redis
//! prefix), creates users ([`provision`]), and runs one scenario
//! ([`scenario`]). Messaging scenarios go through [`drive`] and [`flow`]:
//! senders (closed loop with credits, or open loop on a schedule) and one
//! receive loop per client, which fill the exactly-once [`ledger`] and the
//! latency [`timeline`], and scrape the servers' hop histograms each
//! second ([`hops`]). Connection scenarios use bare connections
//! ([`raw`]). The outcome becomes a JSON [`report`] (with the machine from
//! [`sys`] and the servers' own [`metrics`]) and a PNG [`plot`].
#![forbid(unsafe_code)]

pub mod drive;
pub mod flow;
pub mod hops;
pub mod ledger;
pub mod metrics;
pub mod plot;
pub mod provision;
pub mod raw;
pub mod report;
pub mod run;
pub mod scenario;
pub mod sys;
pub mod target;
pub mod timeline;
