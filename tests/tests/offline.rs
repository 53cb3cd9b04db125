//! Offline delivery: the recipient is offline while 1,000 messages are sent;
//! it connects and pulls all 1,000 in order, no gap, no duplicate. Run on
//! SQLite (single node) and Postgres (cluster): both stores pass.
use std::time::Duration;

use im_client::{DeviceType, Endpoint, api::Api};
use im_tests::*;

async fn offline_then_pull(
    api: Api,
    sender_ep: Endpoint,
    recipient_ep: Endpoint,
) -> anyhow::Result<()> {
    let alice = new_user(&api, &unique("alice")).await?;
    let bob = new_user(&api, &unique("bob")).await?;
    let a = online(&sender_ep, &alice).await?;
    // Pipelined sends, 50 in flight at a time.
    let n = 1000;
    for chunk in (0..n).collect::<Vec<_>>().chunks(50) {
        let texts: Vec<String> = chunk.iter().map(|i| format!("m{i}")).collect();
        let sends = texts.iter().map(|t| a.send_text(bob.id, t));
        for r in futures::future::join_all(sends).await {
            r?;
        }
    }
    // Bob connects from scratch (last seq 0) and catches up by pulling pages.
    let b = im_client::ChatClient::connect(&recipient_ep, &bob.token, DeviceType::Mobile, Some(0))
        .await?;
    let got = recv_n(&b, n, Duration::from_secs(30)).await?;
    assert_eq!(got.len(), n);
    assert_contiguous(&got, 1);
    // Per-sender order: a sender's pipelined sends on one connection are stored in order.
    let bodies: Vec<String> = got
        .iter()
        .map(|m| String::from_utf8_lossy(&m.body).into())
        .collect();
    assert_eq!(bodies, (0..n).map(|i| format!("m{i}")).collect::<Vec<_>>());
    assert!(recv_user(&b, Duration::from_millis(300)).await?.is_empty());
    Ok(())
}

#[tokio::test]
async fn offline_recipient_pulls_1000_in_order_sqlite() -> anyhow::Result<()> {
    let node = SingleNode::start(&[]).await?;
    offline_then_pull(node.api(), node.tcp_endpoint(), node.tcp_endpoint()).await
}

#[tokio::test]
async fn offline_recipient_pulls_1000_in_order_postgres() -> anyhow::Result<()> {
    let cluster = Cluster::start(2, 2).await?;
    offline_then_pull(
        cluster.api(0),
        cluster.tcp_endpoint(0),
        cluster.tcp_endpoint(1),
    )
    .await
}
