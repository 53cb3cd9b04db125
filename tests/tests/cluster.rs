//! Cluster mode: 2 gateways + 2 logic processes on Redis + Postgres; users on
//! different gateways; every message arrives once, in sequence order.
use std::collections::HashMap;
use std::time::Duration;

use im_tests::*;

#[tokio::test]
async fn users_on_different_gateways_talk() -> anyhow::Result<()> {
    let cluster = Cluster::start(2, 2).await?;
    let api = cluster.api(0);
    let mut users = Vec::new();
    for i in 0..6 {
        users.push(new_user(&cluster.api(i), &unique(&format!("u{i}"))).await?);
    }
    // Even users on gateway 0 (TCP), odd users on gateway 1 (WebSocket).
    let mut clients = Vec::new();
    for (i, u) in users.iter().enumerate() {
        let ep = if i % 2 == 0 {
            cluster.tcp_endpoint(0)
        } else {
            cluster.ws_endpoint(1)
        };
        clients.push(online(&ep, u).await?);
    }
    // Each user sends 30 messages to each user on the other gateway.
    let per_pair = 30;
    let mut expected: HashMap<i64, Vec<String>> = HashMap::new();
    let mut sends = Vec::new();
    for (i, c) in clients.iter().enumerate() {
        let targets: Vec<i64> = users
            .iter()
            .enumerate()
            .filter(|(j, _)| j % 2 != i % 2)
            .map(|(_, u)| u.id)
            .collect();
        let from = users[i].id;
        for t in &targets {
            for k in 0..per_pair {
                expected
                    .entry(*t)
                    .or_default()
                    .push(format!("{from}->{t} #{k}"));
            }
        }
        sends.push(async move {
            for k in 0..per_pair {
                for t in &targets {
                    c.send_text(*t, &format!("{from}->{t} #{k}")).await?;
                }
            }
            anyhow::Ok(())
        });
    }
    for r in futures::future::join_all(sends).await {
        r?;
    }
    for (i, c) in clients.iter().enumerate() {
        let want = &expected[&users[i].id];
        let got = recv_n(c, want.len(), Duration::from_secs(20)).await?;
        assert_eq!(
            got.len(),
            want.len(),
            "user {i} got {} of {}",
            got.len(),
            want.len()
        );
        // Sequence order, no duplicates.
        assert!(
            got.windows(2).all(|w| w[0].seq < w[1].seq),
            "out of order at user {i}"
        );
        // Per sender, the order of sending is kept.
        let mut by_sender: HashMap<i64, Vec<String>> = HashMap::new();
        for m in &got {
            by_sender
                .entry(m.from)
                .or_default()
                .push(String::from_utf8_lossy(&m.body).into());
        }
        let mut want_by_sender: HashMap<i64, Vec<String>> = HashMap::new();
        for w in want {
            let from: i64 = w.split("->").next().unwrap().parse().unwrap();
            want_by_sender.entry(from).or_default().push(w.clone());
        }
        assert_eq!(by_sender, want_by_sender);
        assert!(
            recv_user(c, Duration::from_millis(300)).await?.is_empty(),
            "no extra deliveries"
        );
    }
    // The REST API of either logic process sees the same inbox.
    let page = cluster.api(1).pull(&users[0].token, 0, 500).await?;
    let n = page["messages"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| m["content_type"].as_u64().is_some_and(|c| c < 0xF000))
        .count();
    assert_eq!(
        n,
        expected[&users[0].id].len() + 3 * per_pair,
        "received + sent"
    );
    drop(api);
    Ok(())
}

/// A gateway waits for no answer to an ACK, and logic sends none when the
/// request says so (10,000 fewer replies a second at 5,000 msg/s); a
/// request without the flag (an older gateway) is still answered.
#[tokio::test]
async fn logic_answers_every_request_but_fire_and_forget_acks() -> anyhow::Result<()> {
    use im_proto::client::{Ack, DeviceType, PullRequest};
    use im_proto::logic::logic_client::LogicClient;
    use im_proto::logic::{UpRequest, up_request::Kind};
    use tokio_stream::StreamExt;
    use tokio_stream::wrappers::ReceiverStream;

    let cluster = Cluster::start(0, 1).await?;
    let user = new_user(&cluster.api(0), &unique("acker")).await?;
    let mut logic = LogicClient::connect(cluster.logic_grpc[0].clone()).await?;
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    let mut replies = logic.upstream(ReceiverStream::new(rx)).await?.into_inner();
    let base = UpRequest {
        user_id: user.id,
        device: DeviceType::Desktop as i32,
        gate_id: "gw-test".into(),
        conn_id: 1,
        ..UpRequest::default()
    };
    let ack = Some(Kind::Ack(Ack { seq: 0 }));
    tx.send(UpRequest {
        req_id: 1,
        no_reply: true,
        kind: ack.clone(),
        ..base.clone()
    })
    .await?;
    tx.send(UpRequest {
        req_id: 2,
        kind: ack,
        ..base.clone()
    })
    .await?;
    tx.send(UpRequest {
        req_id: 3,
        kind: Some(Kind::Pull(PullRequest {
            after_seq: 0,
            limit: 10,
        })),
        ..base
    })
    .await?;
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let reply = tokio::time::timeout(Duration::from_secs(10), replies.next())
            .await?
            .expect("stream open")?;
        assert_eq!(reply.code, 0, "{reply:?}");
        seen.push(reply.req_id);
    }
    // A late answer to the first would come now (it was ready first).
    let late = tokio::time::timeout(Duration::from_millis(300), replies.next()).await;
    assert!(late.is_err(), "unexpected reply {late:?}");
    seen.sort_unstable();
    assert_eq!(seen, [2, 3]);
    Ok(())
}

/// A gateway given two logic addresses streams to both and says so.
#[tokio::test]
async fn the_gateway_reports_the_logic_endpoints_it_uses() -> anyhow::Result<()> {
    let cluster = Cluster::start(1, 2).await?;
    let metrics = reqwest::get(format!("http://{}/metrics", cluster.gateway_http[0]))
        .await?
        .text()
        .await?;
    assert!(
        metrics.lines().any(|l| l == "im_gateway_logic_endpoints 2"),
        "{metrics}"
    );
    Ok(())
}

/// A gateway or logic process whose gRPC port is taken exits at start,
/// saying so: both used to bind inside the server task, report ready and
/// (the gateway) register itself, and every push to that gateway failed.
#[tokio::test]
async fn a_taken_grpc_port_fails_the_start() -> anyhow::Result<()> {
    let cluster = Cluster::start(0, 1).await?;
    let taken = std::net::TcpListener::bind("127.0.0.1:0")?;
    let taken_addr = taken.local_addr()?.to_string();
    for (name, extra) in [
        (
            "im-gateway",
            vec![
                ("IM_TCP_ADDR", local_addr()),
                ("IM_LOGIC_ADDRS", cluster.logic_grpc.join(",")),
            ],
        ),
        ("im-logic", vec![]),
    ] {
        let run = tokio::process::Command::new(bin(name)?)
            .env("IM_DATABASE_URL", &cluster.database_url)
            .env("IM_REDIS_URL", redis_url())
            .env("IM_REDIS_PREFIX", &cluster.redis_prefix)
            .env("IM_JWT_SECRET", "taken-port-test-secret-0123456789")
            .env("IM_HTTP_ADDR", local_addr())
            .env("IM_GRPC_ADDR", &taken_addr)
            .envs(extra)
            .env("RUST_LOG", "warn")
            .kill_on_drop(true)
            .output();
        let out = tokio::time::timeout(Duration::from_secs(20), run)
            .await
            .map_err(|_| anyhow::anyhow!("{name} kept running with its gRPC port taken"))??;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{name}: {stderr}");
        assert!(
            stderr.contains(&format!("failed to bind {taken_addr}")),
            "{name}: {stderr}"
        );
    }
    drop(taken);
    Ok(())
}

/// The harness starts a server again on fresh ports when one it picked was
/// taken before the server bound it (the server exits at start).
#[tokio::test]
async fn a_server_whose_port_was_taken_is_started_again_on_fresh_ports() -> anyhow::Result<()> {
    let taken = std::net::TcpListener::bind("127.0.0.1:0")?;
    let taken_addr = taken.local_addr()?.to_string();
    let dir = tempfile::tempdir()?;
    let mut tcp_addrs = Vec::new();
    let (mut proc, tcp) = spawn_ready(
        "im-server",
        bin("im-server")?,
        Duration::from_secs(30),
        || {
            let tcp = if tcp_addrs.is_empty() {
                taken_addr.clone()
            } else {
                local_addr()
            };
            tcp_addrs.push(tcp.clone());
            let launch = single_launch(
                dir.path(),
                &tcp,
                &local_addr(),
                "retry-test-secret-0123456789",
                &[],
                &[],
            );
            (launch, tcp)
        },
    )
    .await?;
    assert_eq!(tcp_addrs.len(), 2, "{tcp_addrs:?}");
    assert_ne!(tcp, taken_addr);
    assert!(proc.is_running());
    drop(taken);
    Ok(())
}
