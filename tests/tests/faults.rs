//! Delivery under faults: a burst of 10,000 messages between 20 users over 2
//! gateways and 2 logic processes; one part is killed or restarted in the
//! middle; clients reconnect and resend what was not acknowledged with the
//! same client message id. Then: every SENT message was received once by its
//! recipient, in sequence order, and every DELIVERED receipt came back once.
use std::time::Duration;

use im_tests::burst::Burst;
use im_tests::services::{TestPostgres, TestRedis};
use im_tests::*;

const USERS: usize = 20;
const PER_USER: usize = 500; // 20 × 500 = 10,000 messages

async fn users(cluster: &Cluster) -> anyhow::Result<Vec<TestUser>> {
    let mut out = Vec::new();
    for i in 0..USERS {
        out.push(new_user(&cluster.api(i), &unique(&format!("f{i}"))).await?);
    }
    Ok(out)
}

fn burst(cluster: &Cluster, users: Vec<TestUser>) -> Burst {
    Burst {
        users,
        endpoints: vec![cluster.tcp_endpoint(0), cluster.ws_endpoint(1)],
        per_user: PER_USER,
    }
}

fn fast_acks() -> ClusterOptions {
    ClusterOptions::with_env("IM_ACK_TIMEOUT_MS", "500")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_a_gateway() -> anyhow::Result<()> {
    let mut cluster = Cluster::start_with(fast_acks(), 2, 2).await?;
    let b = burst(&cluster, users(&cluster).await?);
    let gw = &mut cluster.gateways[0];
    let report = b
        .run(USERS * PER_USER / 3, || async {
            gw.kill9();
            Ok(())
        })
        .await?;
    assert!(report.reconnects >= USERS / 2, "{report:?}");
    eprintln!("{report:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_a_logic_process() -> anyhow::Result<()> {
    let mut cluster = Cluster::start_with(fast_acks(), 2, 2).await?;
    let b = burst(&cluster, users(&cluster).await?);
    let logic = &mut cluster.logic[1];
    let report = b
        .run(USERS * PER_USER / 3, || async {
            logic.kill9();
            tokio::time::sleep(Duration::from_millis(500)).await;
            logic.restart()?;
            Ok(())
        })
        .await?;
    eprintln!("{report:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted() -> anyhow::Result<()> {
    let mut redis = TestRedis::start().await?;
    let opts = ClusterOptions {
        redis_url: redis.url.clone(),
        ..fast_acks()
    };
    let cluster = Cluster::start_with(opts, 2, 2).await?;
    let b = burst(&cluster, users(&cluster).await?);
    let report = b
        .run(USERS * PER_USER / 3, || async {
            redis.restart().await?;
            Ok(())
        })
        .await?;
    eprintln!("{report:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restarted() -> anyhow::Result<()> {
    let mut pg = TestPostgres::start().await?;
    let opts = ClusterOptions {
        pg_base: pg.base_url.clone(),
        ..fast_acks()
    };
    let cluster = Cluster::start_with(opts, 2, 2).await?;
    let b = burst(&cluster, users(&cluster).await?);
    let report = b
        .run(USERS * PER_USER / 3, || async {
            pg.kill9();
            // Sends fail with a retryable error while it is down.
            tokio::time::sleep(Duration::from_secs(2)).await;
            pg.start_again().await?;
            Ok(())
        })
        .await?;
    eprintln!("{report:?}");
    Ok(())
}

/// A gateway that stops answering (frozen: its connections stay open and
/// the kernel takes the pushes sent to it) holds back no push to another
/// gateway's users, one-to-one or in a read-diffusion group; once it runs
/// again its user gets what was stored.
#[tokio::test]
async fn a_frozen_gateway_holds_back_no_pushes_to_another() -> anyhow::Result<()> {
    let opts = ClusterOptions::with_env("IM_GROUP_WRITE_DIFFUSION_MAX", "2");
    let cluster = Cluster::start_with(opts, 2, 1).await?;
    let api = cluster.api(0);
    let alice = new_user(&api, &unique("alice")).await?;
    let bob = new_user(&api, &unique("bob")).await?;
    let carol = new_user(&api, &unique("carol")).await?;
    let group = api
        .create_group(&alice.token, "frozen", &[bob.id, carol.id], "open")
        .await?;
    assert_eq!(group["diffusion"], "read");
    let group = group["id"].as_i64().unwrap_or_default();
    let a = online(&cluster.tcp_endpoint(0), &alice).await?;
    let b = online(&cluster.tcp_endpoint(1), &bob).await?;
    let c = online(&cluster.tcp_endpoint(0), &carol).await?;
    cluster.gateways[1].freeze()?;
    a.send_text(bob.id, "to bob, frozen").await?;
    let mut to_bob = vec![b"to bob, frozen".to_vec()];
    for k in 0..3 {
        for to_group in [false, true] {
            let text = format!("to carol #{k}, group {to_group}");
            if to_group {
                a.send_group_text(group, &text).await?;
                to_bob.push(text.clone().into_bytes());
            } else {
                a.send_text(carol.id, &text).await?;
            }
            let got = recv_n(&c, 1, Duration::from_secs(2)).await?;
            let bodies: Vec<_> = got.iter().map(|m| m.body.to_vec()).collect();
            assert_eq!(bodies, vec![text.into_bytes()], "carol's message {k}");
        }
    }
    cluster.gateways[1].thaw()?;
    let got = recv_n(&b, to_bob.len(), Duration::from_secs(10)).await?;
    let mut bodies: Vec<_> = got.iter().map(|m| m.body.to_vec()).collect();
    bodies.sort();
    to_bob.sort();
    assert_eq!(bodies, to_bob);
    Ok(())
}

/// Logins while one of two logic processes is frozen: a gateway asks the
/// other one after 5 s instead of waiting until HTTP/2 keep-alive gives up
/// on the frozen one's connection (~30 s, the SDK's own timeout).
#[tokio::test]
async fn logins_go_round_a_frozen_logic_process() -> anyhow::Result<()> {
    let cluster = Cluster::start(1, 2).await?;
    let api = cluster.api(0);
    let mut users = Vec::new();
    for i in 0..4 {
        users.push(new_user(&api, &unique(&format!("login{i}"))).await?);
    }
    cluster.logic[1].freeze()?;
    let started = std::time::Instant::now();
    let endpoint = cluster.tcp_endpoint(0);
    let logins = users
        .iter()
        .map(|u| tokio::time::timeout(Duration::from_secs(15), online(&endpoint, u)));
    for (i, login) in futures::future::join_all(logins)
        .await
        .into_iter()
        .enumerate()
    {
        login
            .map_err(|_| anyhow::anyhow!("login {i} still waiting after 15 s"))?
            .map_err(|e| anyhow::anyhow!("login {i}: {e}"))?;
    }
    eprintln!("4 logins in {:?}", started.elapsed());
    cluster.logic[1].thaw()?;
    Ok(())
}

async fn route_fields(redis_url: &str, key: &str) -> anyhow::Result<usize> {
    let client = redis::Client::open(redis_url)?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let n: usize = redis::cmd("HLEN").arg(key).query_async(&mut conn).await?;
    Ok(n)
}

#[tokio::test]
async fn gateways_reregister_sessions_after_a_redis_restart() -> anyhow::Result<()> {
    let mut redis = TestRedis::start().await?;
    let opts = ClusterOptions {
        redis_url: redis.url.clone(),
        ..ClusterOptions::default()
    };
    let cluster = Cluster::start_with(opts, 2, 1).await?;
    let api = cluster.api(0);
    let alice = new_user(&api, &unique("alice")).await?;
    let bob = new_user(&api, &unique("bob")).await?;
    let a = online(&cluster.tcp_endpoint(0), &alice).await?;
    let b = online(&cluster.tcp_endpoint(1), &bob).await?;
    let key = format!("{}route:{}", cluster.redis_prefix, bob.id);
    assert_eq!(route_fields(&redis.url, &key).await?, 1);
    redis.restart().await?;
    assert_eq!(
        route_fields(&redis.url, &key).await?,
        0,
        "Redis came back empty"
    );
    // Gateways renew every 5 s; the lapse makes them record live sessions again.
    let deadline = std::time::Instant::now() + Duration::from_secs(12);
    while route_fields(&redis.url, &key).await.unwrap_or(0) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "sessions were not re-registered"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // A push reaches bob again, without any pull.
    a.send_text(bob.id, "after the restart").await?;
    let got = recv_n(&b, 1, Duration::from_secs(5)).await?;
    assert_eq!(&got[0].body[..], b"after the restart");
    Ok(())
}

#[tokio::test]
async fn a_restarted_gateway_leaves_no_stale_routes() -> anyhow::Result<()> {
    let cluster = Cluster::start(2, 1).await?;
    let api = cluster.api(0);
    let alice = new_user(&api, &unique("alice")).await?;
    let bob = new_user(&api, &unique("bob")).await?;
    let a = online(&cluster.tcp_endpoint(1), &alice).await?;
    let b = online(&cluster.tcp_endpoint(0), &bob).await?;
    let key = format!("{}route:{}", cluster.redis_prefix, bob.id);
    let redis_url = redis_url();
    assert_eq!(route_fields(&redis_url, &key).await?, 1);
    // kill -9 gateway 0 and start it again under the same id: bob's route
    // still names it, with a connection that no longer exists.
    let mut cluster = cluster;
    cluster.gateways[0].restart()?;
    wait_http_ok(
        &format!("http://{}/readyz", cluster.gateway_http[0]),
        Duration::from_secs(30),
    )
    .await?;
    drop(b);
    assert_eq!(
        route_fields(&redis_url, &key).await?,
        1,
        "the stale route is still there"
    );
    // The first push to it finds the connection missing and clears the route.
    let sent = a.send_text(bob.id, "while you were away").await?;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while route_fields(&redis_url, &key).await? != 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "stale route not cleared"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Nothing lost: bob finds it when he comes back.
    let b = im_client::ChatClient::connect(
        &cluster.tcp_endpoint(0),
        &bob.token,
        im_client::DeviceType::Desktop,
        Some(0),
    )
    .await?;
    assert_eq!(
        recv_n(&b, 1, Duration::from_secs(5)).await?[0].msg_id,
        sent.msg_id
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_consumer_during_the_burst() -> anyhow::Result<()> {
    use bytes::Bytes;
    use im_proto::prost::Message as _;
    use tokio::io::AsyncWriteExt;

    let opts = ClusterOptions {
        env: vec![
            ("IM_ACK_TIMEOUT_MS".into(), "500".into()),
            ("IM_OUTBOUND_QUEUE".into(), "64".into()),
        ],
        ..ClusterOptions::default()
    };
    let cluster = Cluster::start_with(opts, 2, 2).await?;
    let b = burst(&cluster, users(&cluster).await?);
    let api = cluster.api(0);
    let slow = new_user(&api, &unique("slow")).await?;
    let flood = new_user(&api, &unique("flood")).await?;
    // The slow client authenticates on gateway 0 over a raw socket, then never reads.
    let mut sock = tokio::net::TcpStream::connect(&cluster.gateway_tcp[0]).await?;
    let auth = im_proto::client::AuthRequest {
        token: slow.token.clone(),
        device: im_proto::client::DeviceType::Desktop as i32,
        device_id: String::new(),
    };
    sock.write_all(
        &im_proto::Frame::request(im_proto::Command::Auth, 1, auth.encode_to_vec()).to_bytes(),
    )
    .await?;
    let flooder = online(&cluster.tcp_endpoint(1), &flood).await?;
    let gw0 = cluster.gateways[0].pid();
    let before = rss_kib(gw0);
    let report = b
        .run(USERS * PER_USER / 3, || async {
            // 48 MiB for the slow client while the burst goes on.
            let blob = Bytes::from(vec![b'x'; 32 * 1024]);
            for i in 0..1500 {
                flooder
                    .send_with_id(slow.id, &format!("big-{i}"), 1, blob.clone())
                    .await?;
            }
            Ok(())
        })
        .await?;
    let after = rss_kib(gw0);
    eprintln!("{report:?}; gateway-0 RSS {before} KiB -> {after} KiB");
    let metrics = reqwest::get(format!("http://{}/metrics", cluster.gateway_http[0]))
        .await?
        .text()
        .await?;
    let cut_off = metrics.contains("im_gateway_slow_consumer_disconnects_total 1")
        || metrics.contains("im_gateway_push_giveups_total 1");
    let lines: Vec<&str> = metrics
        .lines()
        .filter(|l| {
            l.starts_with("im_gateway_slow")
                || l.starts_with("im_gateway_push_g")
                || l.starts_with("im_gateway_conn")
        })
        .collect();
    assert!(cut_off, "the slow consumer is disconnected: {lines:?}");
    assert!(
        after < before + 32 * 1024,
        "gateway RSS grew from {before} KiB to {after} KiB"
    );
    drop(sock);
    Ok(())
}
