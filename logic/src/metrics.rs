//! The logic tier's Prometheus metrics (names are a contract: see architecture.md).
use std::sync::LazyLock;

use prometheus::{
    Counter, Histogram, IntCounter, IntCounterVec, IntGauge, exponential_buckets, register_counter,
    register_histogram, register_int_counter, register_int_counter_vec, register_int_gauge,
};

// Registration fails only on a duplicate name, a start-up invariant.
pub static MESSAGES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "im_logic_messages_total",
        "Messages stored, by kind (c2c, c2g, s2c, c2s, receipt)",
        &["kind"]
    )
    .expect("register im_logic_messages_total")
});

pub static STORE_LATENCY: LazyLock<Histogram> = LazyLock::new(|| {
    register_histogram!(
        "im_logic_store_latency_seconds",
        "Time to commit one message batch",
        exponential_buckets(0.0002, 2.0, 16).expect("buckets")
    )
    .expect("register im_logic_store_latency_seconds")
});

pub static STORE_WAIT: LazyLock<Histogram> = LazyLock::new(|| {
    register_histogram!(
        "im_logic_store_wait_seconds",
        "Time from a message reaching a store writer to its commit: the queue before \
         the writer plus its batch",
        exponential_buckets(0.0002, 2.0, 16).expect("buckets")
    )
    .expect("register im_logic_store_wait_seconds")
});

pub static STORE_BUSY: LazyLock<Counter> = LazyLock::new(|| {
    register_counter!(
        "im_logic_store_busy_seconds_total",
        "Time the store writers spent in transactions; its rate over \
         im_logic_store_writers is their utilisation"
    )
    .expect("register im_logic_store_busy_seconds_total")
});

pub static STORE_WRITERS: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "im_logic_store_writers",
        "Store writers (group-commit shards) in this process"
    )
    .expect("register im_logic_store_writers")
});

pub static STORE_BATCH: LazyLock<Histogram> = LazyLock::new(|| {
    register_histogram!(
        "im_logic_store_batch_messages",
        "Messages per committed batch (group commit)",
        exponential_buckets(1.0, 2.0, 12).expect("buckets")
    )
    .expect("register im_logic_store_batch_messages")
});

pub static ACKS_QUEUED: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "im_logic_acks_queued",
        "Devices whose acknowledgement waits for a store writer's next transaction \
         (one per device: a later ack replaces the queued one)"
    )
    .expect("register im_logic_acks_queued")
});

pub static ACKS_DROPPED: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "im_logic_acks_dropped_total",
        "Acknowledgements dropped because a store writer's ack channel was full \
         (their receipts wait for the device's next ack)"
    )
    .expect("register im_logic_acks_dropped_total")
});

pub static FANOUT: LazyLock<Histogram> = LazyLock::new(|| {
    register_histogram!(
        "im_logic_fanout_recipients",
        "Inbox entries written per stored message",
        exponential_buckets(1.0, 2.0, 16).expect("buckets")
    )
    .expect("register im_logic_fanout_recipients")
});

pub static REQUESTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "im_logic_requests_total",
        "Requests handled, by api and result code",
        &["api", "code"]
    )
    .expect("register im_logic_requests_total")
});

pub static PUSH_TIME: LazyLock<Histogram> = LazyLock::new(|| {
    register_histogram!(
        "im_logic_push_seconds",
        "Time from a stored batch reaching the pusher to its gateway's answer: the queue \
         before the pusher, the route lookup, the gateway's lane and the push itself",
        exponential_buckets(0.0002, 2.0, 16).expect("buckets")
    )
    .expect("register im_logic_push_seconds")
});

pub static PUSH_FAILURES: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "im_logic_push_failures_total",
        "Push batches a gateway did not accept (the messages wait in the inbox)"
    )
    .expect("register im_logic_push_failures_total")
});

/// Counts one request.
pub fn request(api: &str, code: &str) {
    REQUESTS.with_label_values(&[api, code]).inc();
}

/// Registers every metric now, so `/metrics` lists them (at zero) from the start.
pub fn init() {
    LazyLock::force(&MESSAGES);
    LazyLock::force(&STORE_LATENCY);
    LazyLock::force(&STORE_WAIT);
    LazyLock::force(&STORE_BUSY);
    LazyLock::force(&STORE_WRITERS);
    LazyLock::force(&STORE_BATCH);
    LazyLock::force(&ACKS_QUEUED);
    LazyLock::force(&ACKS_DROPPED);
    LazyLock::force(&FANOUT);
    LazyLock::force(&REQUESTS);
    LazyLock::force(&PUSH_FAILURES);
}
