//! Upstream (c2s): a client sends to a named service; logic appends each
//! message once to the service's Redis Stream and answers SENT with the
//! stream id. A business server consumes it with a consumer group and XACK.
use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use im_client::ChatClient;
use im_proto::client::{C2sSendRequest, DeviceType, ErrorCode, SendResponse};
use im_tests::extra::*;
use im_tests::*;
use redis::streams::{StreamId, StreamReadReply};

fn req(service: &str, id: &str, body: &str) -> C2sSendRequest {
    C2sSendRequest {
        service: service.into(),
        client_msg_id: id.into(),
        content_type: 7,
        body: Bytes::from(body.to_string()),
    }
}

async fn xlen(conn: &mut redis::aio::MultiplexedConnection, key: &str) -> anyhow::Result<u64> {
    Ok(redis::cmd("XLEN").arg(key).query_async(conn).await?)
}

/// Reads up to `n` new entries as consumer `c` of group `g` within `within`,
/// acknowledging each.
async fn consume(
    conn: &mut redis::aio::MultiplexedConnection,
    key: &str,
    n: usize,
    within: Duration,
) -> anyhow::Result<Vec<StreamId>> {
    let deadline = Instant::now() + within;
    let mut got = Vec::new();
    while got.len() < n && Instant::now() < deadline {
        let reply: Option<StreamReadReply> = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg("g")
            .arg("c")
            .arg("COUNT")
            .arg(100)
            .arg("BLOCK")
            .arg(200)
            .arg("STREAMS")
            .arg(key)
            .arg(">")
            .query_async(conn)
            .await?;
        for e in reply.into_iter().flat_map(|r| r.keys).flat_map(|k| k.ids) {
            let acked: u64 = redis::cmd("XACK")
                .arg(key)
                .arg("g")
                .arg(&e.id)
                .query_async(conn)
                .await?;
            assert_eq!(acked, 1, "entry {} acknowledged once", e.id);
            got.push(e);
        }
    }
    Ok(got)
}

fn field(e: &StreamId, k: &str) -> String {
    e.get::<String>(k)
        .unwrap_or_else(|| panic!("entry {} lacks {k}", e.id))
}

#[tokio::test]
async fn c2s_cluster_appends_each_message_once() -> anyhow::Result<()> {
    let cluster = Cluster::start(1, 1).await?;
    let r = c2s_story(&cluster).await;
    redis_cleanup(&cluster.redis_prefix).await?;
    r
}

async fn c2s_story(cluster: &Cluster) -> anyhow::Result<()> {
    let api = cluster.api(0);
    let alice = new_user(&api, &unique("c2s")).await?;
    let client = online(&cluster.tcp_endpoint(0), &alice).await?;
    let service = unique("orders");
    let key = format!("{}c2s:{service}", cluster.redis_prefix);
    let mut redis = redis_conn(Duration::from_secs(5)).await?;
    redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&key)
        .arg("g")
        .arg("0")
        .arg("MKSTREAM")
        .query_async::<()>(&mut redis)
        .await?;

    // Pipelined: all in flight at once on one connection; the stream keeps send order.
    let n = 40;
    let sends = (0..n).map(|i| {
        client
            .conn
            .send_c2s(req(&service, &format!("c-{i}"), &format!("order #{i}")))
    });
    let mut acks: Vec<SendResponse> = Vec::new();
    for r in futures::future::join_all(sends).await {
        let r = r?;
        assert!(!r.duplicate);
        assert!(!r.stream_id.is_empty());
        assert_eq!((r.msg_id, r.seq), (0, 0), "nothing goes to an inbox");
        acks.push(r);
    }
    assert_eq!(
        xlen(&mut redis, &key).await?,
        n as u64,
        "SENT means appended"
    );

    // A resend returns the same stream id and appends nothing.
    let again = client
        .conn
        .send_c2s(req(&service, "c-10", "order #10 again"))
        .await?;
    assert!(again.duplicate);
    assert_eq!(again.stream_id, acks[10].stream_id);
    assert_eq!(again.sent_at_ms, acks[10].sent_at_ms);
    // From another device of the same user too: idempotency is per sender.
    let other = ChatClient::connect(
        &cluster.tcp_endpoint(0),
        &alice.token,
        DeviceType::Mobile,
        None,
    )
    .await?;
    let third = other.conn.send_c2s(req(&service, "c-10", "x")).await?;
    assert!(third.duplicate);
    assert_eq!(third.stream_id, acks[10].stream_id);
    assert_eq!(xlen(&mut redis, &key).await?, n as u64);

    // The business server sees every message once, in order, with its fields.
    let entries = consume(&mut redis, &key, n, Duration::from_secs(10)).await?;
    assert_eq!(entries.len(), n);
    for (i, (e, ack)) in entries.iter().zip(&acks).enumerate() {
        assert_eq!(e.id, ack.stream_id, "entry {i} in send order");
        assert_eq!(field(e, "from"), alice.id.to_string());
        assert_eq!(field(e, "device"), (DeviceType::Desktop as i32).to_string());
        assert_eq!(field(e, "client_msg_id"), format!("c-{i}"));
        assert_eq!(field(e, "content_type"), "7");
        assert_eq!(field(e, "body"), format!("order #{i}"));
        assert_eq!(field(e, "sent_at_ms"), ack.sent_at_ms.to_string());
    }
    let more = consume(&mut redis, &key, 1, Duration::from_millis(300)).await;
    assert!(more?.is_empty(), "nothing more in the stream");
    // XPENDING summary: [count, smallest id, greatest id, per-consumer counts].
    let pending: Vec<redis::Value> = redis::cmd("XPENDING")
        .arg(&key)
        .arg("g")
        .query_async(&mut redis)
        .await?;
    assert_eq!(
        pending.first(),
        Some(&redis::Value::Int(0)),
        "everything acknowledged"
    );

    // Distinct senders never collide on a client_msg_id.
    let bob = new_user(&api, &unique("c2sb")).await?;
    let b = online(&cluster.tcp_endpoint(0), &bob).await?;
    let from_bob = b.conn.send_c2s(req(&service, "c-10", "bob's")).await?;
    assert!(!from_bob.duplicate);
    assert_ne!(from_bob.stream_id, acks[10].stream_id);

    // Bad service names are refused and append nothing.
    let before = xlen(&mut redis, &key).await?;
    for bad in ["", "Orders", "a b", "x:y", &"s".repeat(65)] {
        let err = client
            .conn
            .send_c2s(req(bad, &format!("bad-{}", bad.len()), "x"))
            .await
            .expect_err("bad service name");
        assert_eq!(
            err.code(),
            Some(ErrorCode::BadRequest as i32),
            "{bad:?}: {err}"
        );
    }
    assert_eq!(xlen(&mut redis, &key).await?, before);
    Ok(())
}

#[tokio::test]
async fn c2s_single_node_needs_redis() -> anyhow::Result<()> {
    let node = SingleNode::start(&[]).await?;
    let user = new_user(&node.api(), &unique("c2sn")).await?;
    let c = online(&node.tcp_endpoint(), &user).await?;
    let err = c
        .conn
        .send_c2s(req("orders", "c-1", "x"))
        .await
        .expect_err("no Redis");
    assert_eq!(err.code(), Some(ErrorCode::Unavailable as i32), "{err}");
    assert!(err.to_string().contains("c2s needs Redis"), "{err}");
    Ok(())
}

#[tokio::test]
async fn c2s_single_node_with_redis_url() -> anyhow::Result<()> {
    let prefix = format!("{}:", unique("imtest"));
    let url = redis_url();
    let node = SingleNode::start(&["--redis-url", &url, "--redis-prefix", &prefix]).await?;
    let user = new_user(&node.api(), &unique("c2sr")).await?;
    let c = online(&node.ws_endpoint(), &user).await?;
    let mut seen: HashMap<String, String> = HashMap::new();
    for i in 0..3 {
        let r = c
            .conn
            .send_c2s(req("bot.v2", &format!("m{i}"), &format!("hi {i}")))
            .await?;
        seen.insert(r.stream_id, format!("hi {i}"));
    }
    let mut redis = redis_conn(Duration::from_secs(5)).await?;
    let key = format!("{prefix}c2s:bot.v2");
    let range: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(&key)
        .arg("-")
        .arg("+")
        .query_async(&mut redis)
        .await?;
    let got: HashMap<String, String> = range
        .ids
        .iter()
        .map(|e| (e.id.clone(), field(e, "body")))
        .collect();
    redis_cleanup(&prefix).await?;
    assert_eq!(got, seen);
    Ok(())
}
