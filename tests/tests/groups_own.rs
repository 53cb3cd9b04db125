//! A member's own read-diffusion group messages are not handed back to the
//! connection that sent them, even though it pulls them back to fill the
//! gaps they leave in its group cursor.
use std::time::Duration;

use im_client::{ChatClient, DeviceType};
use im_tests::social::*;
use im_tests::*;

#[tokio::test]
async fn own_group_messages_are_not_handed_back() -> anyhow::Result<()> {
    // Every group uses read diffusion.
    let node = SingleNode::start(&["--group-write-diffusion-max", "1"]).await?;
    let api = node.api();
    let users = register_many(&api, &node.jwt_secret, &unique("g"), 3).await?;
    let ids: Vec<i64> = users.iter().map(|u| u.id).collect();
    let g = api
        .create_group(&users[0].token, "own", &ids[1..], "open")
        .await?;
    assert_eq!(g["diffusion"], "read");
    let gid = g["id"].as_i64().unwrap_or_default();
    let ep = node.tcp_endpoint();
    let a = ChatClient::connect(&ep, &users[0].token, DeviceType::Desktop, None).await?;
    let b = ChatClient::connect(&ep, &users[1].token, DeviceType::Desktop, None).await?;
    a.set_group_cursor(gid, 0);
    // Interleaved senders: each of a's messages is a gap a pulls to fill.
    for i in 0..10 {
        a.send_group_text(gid, &format!("a{i}")).await?;
        b.send_group_text(gid, &format!("b{i}")).await?;
    }
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while got.len() < 10 && tokio::time::Instant::now() < deadline {
        got.extend(a.recv(Duration::from_millis(200)).await?);
    }
    got.extend(a.recv(Duration::from_millis(300)).await?);
    let texts: Vec<String> = got
        .iter()
        .map(|m| String::from_utf8_lossy(&m.body).into_owned())
        .collect();
    let want: Vec<String> = (0..10).map(|i| format!("b{i}")).collect();
    assert_eq!(
        texts, want,
        "a gets b's messages, in order, and none of its own"
    );
    Ok(())
}
