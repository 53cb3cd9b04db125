//! Idempotence: a send repeated with the same client message id returns the
//! same server id and sequence, and the recipient sees it once.
use std::time::Duration;

use bytes::Bytes;
use im_client::Endpoint;
use im_tests::*;

async fn resend_is_stored_once(api: im_client::Api, ep: Endpoint) -> anyhow::Result<()> {
    let alice = new_user(&api, &unique("alice")).await?;
    let bob = new_user(&api, &unique("bob")).await?;
    let a = online(&ep, &alice).await?;
    let b = online(&ep, &bob).await?;
    let first = a
        .send_with_id(bob.id, "same-id", 1, Bytes::from_static(b"once"))
        .await?;
    assert!(!first.duplicate);
    // Again on the same connection, and from a second connection (a retry after reconnect).
    let again = a
        .send_with_id(bob.id, "same-id", 1, Bytes::from_static(b"once"))
        .await?;
    let a2 = im_client::ChatClient::connect(&ep, &alice.token, im_client::DeviceType::Mobile, None)
        .await?;
    let third = a2
        .conn
        .send_c2c(im_proto::client::C2cSendRequest {
            to: bob.id,
            client_msg_id: "same-id".into(),
            content_type: 1,
            body: Bytes::from_static(b"once"),
        })
        .await?;
    for r in [&again, &third] {
        assert!(r.duplicate);
        assert_eq!(
            (r.msg_id, r.seq, r.sent_at_ms),
            (first.msg_id, first.seq, first.sent_at_ms)
        );
    }
    let got = recv_n(&b, 2, Duration::from_secs(2)).await?;
    assert_eq!(got.len(), 1, "the recipient sees the message once");
    assert_eq!(got[0].msg_id, first.msg_id);
    // And the store holds it once.
    let page = api.pull(&bob.token, 0, 100).await?;
    assert_eq!(page["messages"].as_array().map(|a| a.len()), Some(1));
    Ok(())
}

#[tokio::test]
async fn resend_with_same_client_msg_id_single_node() -> anyhow::Result<()> {
    let node = SingleNode::start(&[]).await?;
    resend_is_stored_once(node.api(), node.tcp_endpoint()).await
}

#[tokio::test]
async fn resend_with_same_client_msg_id_cluster() -> anyhow::Result<()> {
    let cluster = Cluster::start(1, 1).await?;
    resend_is_stored_once(cluster.api(0), cluster.tcp_endpoint(0)).await
}
