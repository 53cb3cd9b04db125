//! The gateway's Prometheus metrics (names are a contract: see architecture.md).
use std::sync::LazyLock;

use im_proto::Command;
use prometheus::{
    Histogram, HistogramVec, IntCounter, IntCounterVec, IntGauge, exponential_buckets,
    register_histogram_vec, register_int_counter, register_int_counter_vec, register_int_gauge,
};

// Registration fails only on a duplicate name, a start-up invariant.
pub static CONNECTIONS: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "im_gateway_connections",
        "Current authenticated connections"
    )
    .expect("register im_gateway_connections")
});

pub static LOGIC_ENDPOINTS: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "im_gateway_logic_endpoints",
        "Logic endpoints the gateway sends to (what its logic addresses resolve to)"
    )
    .expect("register im_gateway_logic_endpoints")
});

pub static ACCEPTED: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "im_gateway_connections_accepted_total",
        "Connections accepted (TCP and WebSocket), authenticated or not"
    )
    .expect("register im_gateway_connections_accepted_total")
});

pub static FRAMES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "im_gateway_frames_total",
        "Frames by direction (in, out) and command",
        &["direction", "command"]
    )
    .expect("register im_gateway_frames_total")
});

/// By `receipt`: `wanted` for pushes holding a one-to-one message from
/// another user, whose ACK stores a DELIVERED receipt and which a client
/// ACKs at once, and `none` for the others (receipts, group messages, the
/// user's own), whose ACK a client may debounce, by up to a second
/// (docs/protocol.md §5.5): mixed in, those would read as slow pushes.
pub static PUSH_LATENCY: LazyLock<HistogramVec> = LazyLock::new(|| {
    register_histogram_vec!(
        "im_gateway_push_latency_seconds",
        "From a push reaching the gateway to the device acknowledging it, by whether its ACK stores a receipt (wanted, none)",
        &["receipt"],
        exponential_buckets(0.0005, 2.0, 16).expect("buckets")
    )
    .expect("register im_gateway_push_latency_seconds")
});

/// Observes a settled push's time to its ACK (see [`PUSH_LATENCY`]).
pub fn push_latency(latency: std::time::Duration, wants_receipt: bool) {
    static BY_RECEIPT: LazyLock<[Histogram; 2]> =
        LazyLock::new(|| ["none", "wanted"].map(|r| PUSH_LATENCY.with_label_values(&[r])));
    BY_RECEIPT[usize::from(wants_receipt)].observe(latency.as_secs_f64());
}

/// A request's time in the gateway and behind it, by command: from its
/// frame being read to its reply queued for the device. For a send that
/// is the hand-over to logic, the store's group commit and the way back.
pub static REQUEST_SECONDS: LazyLock<HistogramVec> = LazyLock::new(|| {
    register_histogram_vec!(
        "im_gateway_request_seconds",
        "From a request frame read to its reply queued for the device, by command",
        &["command"],
        exponential_buckets(0.0002, 2.0, 16).expect("buckets")
    )
    .expect("register im_gateway_request_seconds")
});

/// ACK frames by what the gateway did with them (see [`ack`]): `forwarded` to logic at
/// once, `deferred` (they settle only pushes that want no receipt, and go
/// to logic later, covered by the next forwarded one or the flush), or
/// `repeat` (nothing new).
pub static ACKS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "im_gateway_acks_total",
        "ACK frames from devices by outcome (forwarded, deferred, repeat)",
        &["outcome"]
    )
    .expect("register im_gateway_acks_total")
});

pub static KICKED: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!("im_gateway_kicked_total", "Sessions kicked out")
        .expect("register im_gateway_kicked_total")
});

pub static SLOW_CONSUMERS: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "im_gateway_slow_consumer_disconnects_total",
        "Connections closed because their outbound queue was full"
    )
    .expect("register im_gateway_slow_consumer_disconnects_total")
});

pub static IDLE_CLOSED: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "im_gateway_idle_disconnects_total",
        "Connections closed because they sent nothing (not even a heartbeat) for the idle timeout"
    )
    .expect("register im_gateway_idle_disconnects_total")
});

pub static RETRANSMITS: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "im_gateway_push_retransmits_total",
        "Push frames sent again because the device did not acknowledge them in time"
    )
    .expect("register im_gateway_push_retransmits_total")
});

pub static RETRANSMIT_GIVEUPS: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "im_gateway_push_giveups_total",
        "Connections closed because a push stayed unacknowledged after every retry"
    )
    .expect("register im_gateway_push_giveups_total")
});

pub static RATE_LIMITED: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "im_gateway_rate_limited_total",
        "Upstream frames refused by the per-connection rate limit"
    )
    .expect("register im_gateway_rate_limited_total")
});

pub static PROTOCOL_ERRORS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "im_gateway_protocol_errors_total",
        "Error frames sent to clients, by error code",
        &["code"]
    )
    .expect("register im_gateway_protocol_errors_total")
});

/// Counts an ACK frame by its outcome, one of [`ACK_OUTCOMES`] (the
/// counters are resolved once: an ACK comes with every push).
pub fn ack(outcome: usize) {
    static BY_OUTCOME: LazyLock<[IntCounter; 3]> =
        LazyLock::new(|| ACK_OUTCOMES.map(|o| ACKS.with_label_values(&[o])));
    BY_OUTCOME[outcome].inc();
}

/// The `outcome` labels of `im_gateway_acks_total`.
pub const ACK_OUTCOMES: [&str; 3] = ["forwarded", "deferred", "repeat"];

pub fn frame(direction: &str, command: u16) {
    FRAMES
        .with_label_values(&[direction, command_name(command)])
        .inc();
}

/// Observes a request's time (see [`REQUEST_SECONDS`]); the sends' label is
/// resolved once, they are most of the requests.
pub fn request(command: u16, since: std::time::Instant) {
    static C2C: LazyLock<Histogram> =
        LazyLock::new(|| REQUEST_SECONDS.with_label_values(&[Command::C2cSend.name()]));
    let secs = since.elapsed().as_secs_f64();
    if command == Command::C2cSend as u16 {
        C2C.observe(secs);
    } else {
        REQUEST_SECONDS
            .with_label_values(&[command_name(command)])
            .observe(secs);
    }
}

fn command_name(command: u16) -> &'static str {
    Command::from_code(command)
        .map(|c| c.name())
        .unwrap_or("unknown")
}

/// Registers every metric now, so `/metrics` lists them (at zero) from the start.
pub fn init() {
    LazyLock::force(&CONNECTIONS);
    LazyLock::force(&ACCEPTED);
    LazyLock::force(&FRAMES);
    for o in ACK_OUTCOMES {
        ACKS.with_label_values(&[o]);
    }
    for r in ["wanted", "none"] {
        PUSH_LATENCY.with_label_values(&[r]);
    }
    REQUEST_SECONDS.with_label_values(&[Command::C2cSend.name()]);
    LazyLock::force(&KICKED);
    LazyLock::force(&SLOW_CONSUMERS);
    LazyLock::force(&IDLE_CLOSED);
    LazyLock::force(&PROTOCOL_ERRORS);
    LazyLock::force(&RETRANSMITS);
    LazyLock::force(&RETRANSMIT_GIVEUPS);
    LazyLock::force(&RATE_LIMITED);
}
