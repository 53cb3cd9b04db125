//! Gateway drain on SIGTERM: not ready, gone from the route table, every
//! client told to reconnect (CTRL RECONNECT), then the process exits.
use std::time::Duration;

use im_client::Event;
use im_proto::client::CtrlType;
use im_tests::*;

#[tokio::test]
async fn gateway_drains_on_sigterm() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(2, 1).await?;
    let api = cluster.api(0);
    let mut clients = Vec::new();
    for i in 0..5 {
        let u = new_user(&api, &unique(&format!("d{i}"))).await?;
        clients.push(online(&cluster.tcp_endpoint(0), &u).await?);
    }
    let redis = redis::Client::open(redis_url())?;
    let mut conn = redis.get_multiplexed_async_connection().await?;
    let gate_key = format!("{}gate:gw-0", cluster.redis_prefix);
    let registered: Option<String> = redis::cmd("GET")
        .arg(&gate_key)
        .query_async(&mut conn)
        .await?;
    assert!(registered.is_some());

    cluster.gateways[0].terminate()?;
    for c in &clients {
        let mut told = false;
        while let Ok(Some(ev)) = c.conn.next_event_timeout(Duration::from_secs(5)).await {
            if let Event::Ctrl(ctrl) = ev {
                assert_eq!(ctrl.r#type, CtrlType::Reconnect as i32);
                told = true;
            }
        }
        assert!(told, "every client is told to reconnect");
        assert!(c.conn.is_closed());
    }
    let registered: Option<String> = redis::cmd("GET")
        .arg(&gate_key)
        .query_async(&mut conn)
        .await?;
    assert!(registered.is_none(), "the gateway left the route table");
    assert!(
        cluster.gateways[0].wait_exit(Duration::from_secs(15)).await,
        "the gateway exits after draining"
    );
    // The other gateway is unaffected.
    let u = new_user(&api, &unique("after")).await?;
    online(&cluster.tcp_endpoint(1), &u)
        .await?
        .conn
        .heartbeat()
        .await?;
    Ok(())
}
