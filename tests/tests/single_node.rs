//! Single node (`im-server`, SQLite, in-process routes): two users chat both
//! ways over TCP and over WebSocket.
use std::time::Duration;

use im_client::Endpoint;
use im_tests::*;

async fn chat_both_ways(node: &SingleNode, ep_a: Endpoint, ep_b: Endpoint) -> anyhow::Result<()> {
    let api = node.api();
    let alice = new_user(&api, &unique("alice")).await?;
    let bob = new_user(&api, &unique("bob")).await?;
    let a = online(&ep_a, &alice).await?;
    let b = online(&ep_b, &bob).await?;
    for i in 0..20 {
        a.send_text(bob.id, &format!("a->b {i}")).await?;
        b.send_text(alice.id, &format!("b->a {i}")).await?;
    }
    let at_b = recv_n(&b, 20, Duration::from_secs(10)).await?;
    let at_a = recv_n(&a, 20, Duration::from_secs(10)).await?;
    let texts = |v: &[im_proto::client::Message]| {
        v.iter()
            .map(|m| String::from_utf8_lossy(&m.body).to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        texts(&at_b),
        (0..20).map(|i| format!("a->b {i}")).collect::<Vec<_>>()
    );
    assert_eq!(
        texts(&at_a),
        (0..20).map(|i| format!("b->a {i}")).collect::<Vec<_>>()
    );
    assert!(at_b.iter().all(|m| m.from == alice.id && m.to == bob.id));
    // Bob's inbox interleaves what he got and what he sent: 40 entries, seq 1..=40.
    let mut seqs: Vec<u64> = at_b.iter().map(|m| m.seq).collect();
    seqs.sort_unstable();
    seqs.dedup();
    assert_eq!(seqs.len(), 20);
    assert!(
        recv_user(&b, Duration::from_millis(300)).await?.is_empty(),
        "no extra deliveries"
    );
    Ok(())
}

#[tokio::test]
async fn two_users_chat_over_tcp() -> anyhow::Result<()> {
    let node = SingleNode::start(&[]).await?;
    chat_both_ways(&node, node.tcp_endpoint(), node.tcp_endpoint()).await
}

#[tokio::test]
async fn two_users_chat_over_websocket() -> anyhow::Result<()> {
    let node = SingleNode::start(&[]).await?;
    chat_both_ways(&node, node.ws_endpoint(), node.ws_endpoint()).await
}

#[tokio::test]
async fn tcp_and_websocket_users_talk_to_each_other() -> anyhow::Result<()> {
    let node = SingleNode::start(&[]).await?;
    chat_both_ways(&node, node.tcp_endpoint(), node.ws_endpoint()).await
}

#[tokio::test]
async fn health_metrics_and_logout() -> anyhow::Result<()> {
    let node = SingleNode::start(&[]).await?;
    let api = node.api();
    let u = new_user(&api, &unique("carol")).await?;
    let c = online(&node.tcp_endpoint(), &u).await?;
    c.conn.heartbeat().await?;
    // Three messages through the store writer, each counted once as it waited.
    for i in 0..3 {
        c.send_text(u.id, &format!("note to self {i}")).await?;
    }
    let metrics = reqwest::get(format!("http://{}/metrics", node.http))
        .await?
        .text()
        .await?;
    for name in [
        "im_gateway_connections 1",
        "im_gateway_connections_accepted_total",
        "im_gateway_frames_total",
        "im_logic_requests_total",
        "im_logic_store_wait_seconds_count 3",
        "im_logic_store_writers 1",
        "im_logic_acks_queued",
        "im_logic_acks_dropped_total 0",
    ] {
        assert!(metrics.contains(name), "missing {name} in /metrics");
    }
    let build = format!(
        "im_build_info{{binary=\"im-server\",commit=\"{}\",version=\"{}\"}} 1",
        built_commit(),
        env!("CARGO_PKG_VERSION")
    );
    assert!(
        metrics.lines().any(|l| l == build),
        "missing {build} in /metrics"
    );
    let busy: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("im_logic_store_busy_seconds_total "))
        .expect("im_logic_store_busy_seconds_total")
        .parse()?;
    assert!(busy > 0.0, "the writer stored three messages in no time");
    // Logout revokes the token: a new connection with it is refused.
    api.logout(&u.token).await?;
    let err = online(&node.tcp_endpoint(), &u)
        .await
        .err()
        .expect("revoked token must fail");
    assert!(err.to_string().contains("revoked"), "{err}");
    Ok(())
}
