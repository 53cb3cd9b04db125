//! Big groups on a cluster (two gateways, two logic processes, Postgres,
//! Redis): a 1,000-member group uses write diffusion and a 2,000-member
//! group read diffusion (threshold 1,000). Each message reaches every online
//! member exactly once; offline members find it on pull (inbox for write
//! diffusion, group cursor for read diffusion).
use std::collections::HashSet;
use std::time::Duration;

use futures::StreamExt;
use im_client::{ChatClient, DeviceType};
use im_tests::social::*;
use im_tests::*;

const WRITE_MEMBERS: usize = 1000;
const READ_MEMBERS: usize = 2000;
/// Members 0..ONLINE are connected (half on each gateway); the rest are offline.
const ONLINE: usize = 300;
const WAIT: Duration = Duration::from_secs(90);

#[tokio::test]
async fn big_groups_reach_every_member_exactly_once() -> anyhow::Result<()> {
    let opts = ClusterOptions {
        env: vec![
            (
                "IM_GROUP_WRITE_DIFFUSION_MAX".into(),
                WRITE_MEMBERS.to_string(),
            ),
            ("IM_GROUP_MAX_MEMBERS".into(), "5000".into()),
        ],
        ..Default::default()
    };
    let cluster = Cluster::start_with(opts, 2, 2).await?;
    let api = cluster.api(0);
    let users = register_many(&api, cluster_secret(), &unique("m"), READ_MEMBERS).await?;
    let ids: Vec<i64> = users.iter().map(|u| u.id).collect();
    let owner = &users[0];

    let w = api
        .create_group(&owner.token, "thousand", &ids[1..WRITE_MEMBERS], "open")
        .await?;
    assert_eq!(w["member_count"], WRITE_MEMBERS);
    assert_eq!(w["diffusion"], "write");
    let wid = w["id"].as_i64().unwrap_or_default();
    let r = api
        .create_group(&owner.token, "two thousand", &ids[1..], "open")
        .await?;
    assert_eq!(r["member_count"], READ_MEMBERS);
    assert_eq!(r["diffusion"], "read");
    let rid = r["id"].as_i64().unwrap_or_default();

    let clients: Vec<anyhow::Result<ChatClient>> = futures::stream::iter(0..ONLINE)
        .map(|i| {
            let ep = cluster.tcp_endpoint(i);
            let token = users[i].token.clone();
            async move { Ok(ChatClient::connect(&ep, &token, DeviceType::Desktop, None).await?) }
        })
        .buffered(16)
        .collect()
        .await;
    let clients: Vec<ChatClient> = clients.into_iter().collect::<anyhow::Result<_>>()?;

    for (gid, members, read) in [(wid, WRITE_MEMBERS, false), (rid, READ_MEMBERS, true)] {
        // Three messages over the owner's connection, one over REST from an offline member.
        let mut sent = Vec::new();
        for i in 0..3 {
            let text = format!("group {gid} message {i}");
            let ack = retry(|| clients[0].send_group_text(gid, &text)).await?;
            sent.push(ack.msg_id);
        }
        let rest_sender = &users[members - 1];
        let ack = retry(|| api.send_group(&rest_sender.token, gid, "rest-1", "from rest")).await?;
        sent.push(ack["msg_id"].as_i64().unwrap_or_default());
        let all: HashSet<i64> = sent.iter().copied().collect();

        // Online: everyone gets all four, the owner's connection only the REST one.
        let got = futures::future::join_all(clients.iter().enumerate().map(|(i, c)| {
            let want = if i == 0 { 1 } else { 4 };
            async move {
                let mut ms = collect_pushes(&c.conn, want, WAIT).await?;
                ms.extend(collect_pushes(&c.conn, 1, Duration::from_millis(200)).await?);
                anyhow::Ok(ms)
            }
        }))
        .await;
        for (i, ms) in got.into_iter().enumerate() {
            let ms: Vec<_> = ms?.into_iter().filter(|m| m.to == gid).collect();
            let counts = count_by_id(&ms);
            let expected: HashSet<i64> = if i == 0 {
                HashSet::from([sent[3]])
            } else {
                all.clone()
            };
            assert_eq!(
                counts.keys().copied().collect::<HashSet<_>>(),
                expected,
                "member {i} of group {gid}"
            );
            assert!(
                counts.values().all(|n| *n == 1),
                "member {i}: duplicates {counts:?}"
            );
            if read {
                assert!(ms.iter().all(|m| m.seq == 0 && m.group_seq > 0));
            } else {
                assert!(ms.iter().all(|m| m.seq > 0 && m.group_seq == 0));
            }
        }

        // Offline: a sample finds the messages on pull.
        for u in users[ONLINE..members]
            .iter()
            .step_by(97)
            .chain([&users[members - 2]])
        {
            let ids: Vec<i64> = if read {
                let page = api.pull_group(&u.token, gid, 0, 100).await?;
                assert_eq!(page["max_seq"], 4);
                let inbox = api.pull(&u.token, 0, 500).await?;
                assert!(
                    inbox["messages"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .all(|m| m["to"] != gid),
                    "read diffusion writes no inbox rows"
                );
                page["messages"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|m| m["msg_id"].as_i64())
                    .collect()
            } else {
                api.pull(&u.token, 0, 500).await?["messages"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|m| m["to"] == gid)
                    .filter_map(|m| m["msg_id"].as_i64())
                    .collect()
            };
            assert_eq!(ids, sent, "offline member {} of group {gid}", u.name);
        }
    }
    Ok(())
}
