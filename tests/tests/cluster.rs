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

/// Every binary says which commit it was built from: `--version`, and the
/// servers' `im_build_info` (a roll shows two builds on the dashboard). The
/// binaries are built from this checkout, so it is HEAD's commit.
#[tokio::test]
async fn every_binary_names_the_commit_it_was_built_from() -> anyhow::Result<()> {
    let commit = built_commit();
    for name in [
        "im-gateway",
        "im-logic",
        "im-server",
        "im-bench",
        "im-operator",
    ] {
        let out = std::process::Command::new(bin(name)?)
            .arg("--version")
            .output()?;
        let version = String::from_utf8(out.stdout)?;
        assert_eq!(
            version.trim(),
            format!("{name} {} ({commit})", env!("CARGO_PKG_VERSION"))
        );
    }
    let cluster = Cluster::start(1, 1).await?;
    for (binary, http) in [
        ("im-gateway", &cluster.gateway_http[0]),
        ("im-logic", &cluster.logic_http[0]),
    ] {
        let metrics = reqwest::get(format!("http://{http}/metrics"))
            .await?
            .text()
            .await?;
        let want = format!(
            "im_build_info{{binary=\"{binary}\",commit=\"{commit}\",version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        );
        assert!(metrics.lines().any(|l| l == want), "no {want} in {metrics}");
    }
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

/// A device's ACK of a DELIVERED receipt stores no receipt, only its
/// cursor: the gateway holds it (`im_gateway_acks_total{outcome="deferred"}`)
/// and sends it when the connection ends or on its retransmit tick (here
/// 15 s away). The recipient's ACKs, which store receipts, go at once, and
/// the connection's first ACK always does.
#[tokio::test]
async fn acks_that_store_no_receipt_wait_for_the_connection_to_end() -> anyhow::Result<()> {
    use im_proto::client::DeviceType;

    let opts = ClusterOptions::with_env("IM_ACK_TIMEOUT_MS", "60000");
    let cluster = Cluster::start_with(opts, 1, 1).await?;
    let db = sqlx::PgPool::connect(&cluster.database_url).await?;
    let cursor = async |user: i64| -> anyhow::Result<i64> {
        let row: Option<(i64,)> = sqlx::query_as(
            "SELECT acked_seq FROM device_cursors WHERE user_id = $1 AND device = $2",
        )
        .bind(user)
        .bind(DeviceType::Desktop as i64)
        .fetch_optional(&db)
        .await?;
        Ok(row.map_or(0, |r| r.0))
    };
    let a = new_user(&cluster.api(0), &unique("a")).await?;
    let b = new_user(&cluster.api(0), &unique("b")).await?;
    let ca = online(&cluster.tcp_endpoint(0), &a).await?;
    let cb = online(&cluster.tcp_endpoint(0), &b).await?;
    let mut receipt_seqs = Vec::new();
    for k in 0..3 {
        ca.send_text(b.id, &format!("m{k}")).await?;
        assert_eq!(recv_n(&cb, 1, Duration::from_secs(10)).await?.len(), 1);
        // A gets B's DELIVERED receipt and acknowledges it at once (the
        // SDK alone would wait `QUIET_ACK_DELAY` for a receipt).
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let got = ca.recv(Duration::from_millis(200)).await?;
            if let Some(r) = got.iter().find(|m| m.content_type == 0xF001) {
                receipt_seqs.push(r.seq as i64);
                ca.conn.ack(r.seq).await?;
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no receipt for m{k}"
            );
        }
    }
    // B's ACKs stored every receipt at once; B's cursor is at its newest.
    assert_eq!(receipt_seqs.len(), 3);
    assert_eq!(cursor(b.id).await?, 3);
    // A acknowledges the last receipt after handing it out: wait for that
    // ACK to reach the gateway (a single read raced it once).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let metrics = reqwest::get(format!("http://{}/metrics", cluster.gateway_http[0]))
            .await?
            .text()
            .await?;
        let deferred: f64 = metrics
            .lines()
            .find_map(|l| l.strip_prefix("im_gateway_acks_total{outcome=\"deferred\"} "))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        if deferred >= 2.0 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{metrics}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A's first ACK went to logic; the later ones wait.
    let last = *receipt_seqs.last().unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let held = cursor(a.id).await?;
    assert!(
        held >= receipt_seqs[0] && held < last,
        "{held} of {receipt_seqs:?}"
    );
    // The connection ends: its deferred ACK reaches logic.
    drop(ca);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while cursor(a.id).await? < last {
        assert!(
            tokio::time::Instant::now() < deadline,
            "cursor stayed behind"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(cursor(a.id).await?, last);
    Ok(())
}

/// With `IM_INLINE_RECEIPTS=true` a DELIVERED receipt has no `messages`
/// row; it reaches the sender by push, and a device pulling the sender's
/// inbox from the start gets it too, the same message.
#[tokio::test]
async fn inline_receipts_are_pushed_and_pulled() -> anyhow::Result<()> {
    use im_proto::client::DeviceType;

    let opts = ClusterOptions::with_env("IM_INLINE_RECEIPTS", "true");
    let cluster = Cluster::start_with(opts, 1, 1).await?;
    let a = new_user(&cluster.api(0), &unique("a")).await?;
    let b = new_user(&cluster.api(0), &unique("b")).await?;
    let ca = online(&cluster.tcp_endpoint(0), &a).await?;
    let cb = online(&cluster.tcp_endpoint(0), &b).await?;
    let sent = ca.send_text(b.id, "hello").await?;
    assert_eq!(recv_n(&cb, 1, Duration::from_secs(10)).await?.len(), 1);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let pushed = loop {
        let got = ca.recv(Duration::from_millis(200)).await?;
        if let Some(r) = got.into_iter().find(|m| m.content_type == 0xF001) {
            break r;
        }
        assert!(tokio::time::Instant::now() < deadline, "no receipt");
    };
    let db = sqlx::PgPool::connect(&cluster.database_url).await?;
    let (rows,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM messages WHERE id = $1")
        .bind(pushed.msg_id)
        .fetch_one(&db)
        .await?;
    assert_eq!(rows, 0, "the receipt is stored inline");
    // Another device of a's pulls everything: its message, then the receipt.
    let pulled = im_client::ChatClient::connect(
        &cluster.tcp_endpoint(0),
        &a.token,
        DeviceType::Mobile,
        Some(0),
    )
    .await?;
    let page = pulled.conn.pull(0, 10).await?;
    let seqs: Vec<u64> = page.messages.iter().map(|m| m.seq).collect();
    assert_eq!(seqs, [sent.seq, pushed.seq]);
    assert_eq!(page.messages[1], pushed);
    Ok(())
}
