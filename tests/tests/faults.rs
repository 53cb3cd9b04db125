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
    ClusterOptions {
        env: vec![("IM_ACK_TIMEOUT_MS".into(), "500".into())],
        ..ClusterOptions::default()
    }
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
