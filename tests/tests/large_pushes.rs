//! Pushes of large messages between logic and a gateway: a write-diffusion
//! group message of ~60 KB to 100 members on one gateway is one push call
//! of ~6 MB (one copy per member, each with its own sequence). Every
//! member gets it pushed, not only on its next pull.
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
