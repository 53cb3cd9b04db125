//! Large messages between gateway and logic, over gRPC whose default limit
//! is 4 MiB a message: a write-diffusion group message of ~60 KB to 100
//! members on one gateway (one copy per member: ~6 MB of pushes), and a
//! single message near a raised max body.
use std::time::Duration;

use bytes::Bytes;
use im_client::{ChatClient, DeviceType};
use im_tests::social::*;
use im_tests::*;

#[tokio::test]
async fn a_large_group_message_is_pushed_to_every_member() -> anyhow::Result<()> {
    let cluster = Cluster::start(1, 1).await?;
    let api = cluster.api(0);
    let users = register_many(&api, cluster_secret(), &unique("big"), 100).await?;
    let ids: Vec<i64> = users.iter().map(|u| u.id).collect();
    let g = api
        .create_group(&users[0].token, "big bodies", &ids[1..], "open")
        .await?;
    assert_eq!(g["diffusion"], "write");
    let gid = g["id"].as_i64().unwrap_or_default();
    let ep = cluster.tcp_endpoint(0);
    let mut members = Vec::new();
    for u in &users {
        members.push(ChatClient::connect(&ep, &u.token, DeviceType::Desktop, None).await?);
    }
    let body = Bytes::from(vec![b'x'; 60_000]);
    members[0]
        .send_group_with_id(gid, "big-1", 1, body.clone())
        .await?;
    for (i, m) in members.iter().enumerate().skip(1) {
        let mut got = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while got.is_empty() && tokio::time::Instant::now() < deadline {
            got.extend(m.recv(Duration::from_millis(200)).await?);
        }
        assert_eq!(got.len(), 1, "member {i} got {} messages", got.len());
        assert_eq!(got[0].body.len(), body.len());
    }
    Ok(())
}

/// With a max body raised to 8 MiB, a 5 MiB message goes client → gateway
/// → logic and back out in gRPC messages over tonic's 4 MiB default: the
/// send is answered SENT and the recipient gets it pushed and pulled.
#[tokio::test]
async fn a_message_near_a_raised_max_body_goes_through() -> anyhow::Result<()> {
    let opts = ClusterOptions::with_env("IM_MAX_BODY", 8 << 20);
    let cluster = Cluster::start_with(opts, 1, 1).await?;
    let api = cluster.api(0);
    let alice = new_user(&api, &unique("alice")).await?;
    let bob = new_user(&api, &unique("bob")).await?;
    let a = online(&cluster.tcp_endpoint(0), &alice).await?;
    let b = online(&cluster.tcp_endpoint(0), &bob).await?;
    let body = Bytes::from(vec![b'y'; 5 << 20]);
    a.send_with_id(bob.id, "huge-1", 1, body.clone()).await?;
    let got = recv_n(&b, 1, Duration::from_secs(10)).await?;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].body.len(), body.len());
    // And a pull of it (bob's phone, from the start) comes back too.
    let ep = cluster.tcp_endpoint(0);
    let phone = ChatClient::connect(&ep, &bob.token, DeviceType::Mobile, Some(0)).await?;
    let pulled = recv_n(&phone, 1, Duration::from_secs(10)).await?;
    assert_eq!(pulled[0].body.len(), body.len());
    Ok(())
}
