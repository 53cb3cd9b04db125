//! Multi-device, kickout and its policy, logout, retransmit and slow
//! consumers, against real processes.
use std::time::Duration;

use bytes::Bytes;
use im_client::{ChatClient, Connection, DeviceType, Event};
use im_proto::client::{AuthRequest, ErrorCode, KickReason};
use im_proto::prost::Message as _;
use im_proto::{Command, Frame, FrameCodec};
use im_tests::*;
use tokio::io::AsyncWriteExt;

const WAIT: Duration = Duration::from_secs(10);

async fn kicked(c: &ChatClient) -> Option<i32> {
    loop {
        match c.conn.next_event_timeout(WAIT).await {
            Ok(Some(Event::Kickout(k))) => return Some(k.reason),
            Ok(Some(_)) => continue,
            _ => return None,
        }
    }
}

#[tokio::test]
async fn devices_sync_and_a_second_login_kicks_the_first() -> anyhow::Result<()> {
    let node = SingleNode::start(&[]).await?;
    let api = node.api();
    let alice = new_user(&api, &unique("alice")).await?;
    let bob = new_user(&api, &unique("bob")).await?;
    let ep = node.tcp_endpoint();
    let desk = ChatClient::connect(&ep, &alice.token, DeviceType::Desktop, None).await?;
    let phone =
        ChatClient::connect(&node.ws_endpoint(), &alice.token, DeviceType::Mobile, None).await?;
    let b = online(&ep, &bob).await?;

    b.send_text(alice.id, "to both devices").await?;
    for dev in [&desk, &phone] {
        let got = recv_n(dev, 1, WAIT).await?;
        assert_eq!(&got[0].body[..], b"to both devices");
    }
    // Sent from the desktop: the phone gets it, the desktop is not echoed.
    desk.send_text(bob.id, "from my desktop").await?;
    let on_phone = recv_n(&phone, 1, WAIT).await?;
    assert_eq!(
        (on_phone[0].from, &on_phone[0].body[..]),
        (alice.id, &b"from my desktop"[..])
    );
    assert!(
        recv_user(&desk, Duration::from_millis(300))
            .await?
            .is_empty()
    );
    assert_eq!(recv_n(&b, 1, WAIT).await?.len(), 1);

    // Same device type again: the old desktop session is kicked with a reason.
    let desk2 = ChatClient::connect(&ep, &alice.token, DeviceType::Desktop, None).await?;
    assert_eq!(kicked(&desk).await, Some(KickReason::OtherLogin as i32));
    assert!(
        matches!(desk.conn.next_event_timeout(WAIT).await, Ok(None)),
        "then closed"
    );
    b.send_text(alice.id, "after the kick").await?;
    assert_eq!(
        &recv_n(&desk2, 1, WAIT).await?[0].body[..],
        b"after the kick"
    );
    assert_eq!(
        &recv_n(&phone, 1, WAIT).await?[0].body[..],
        b"after the kick"
    );
    Ok(())
}

#[tokio::test]
async fn reject_new_policy_refuses_a_second_login() -> anyhow::Result<()> {
    let node = SingleNode::start(&["--login-policy", "reject-new"]).await?;
    let api = node.api();
    let alice = new_user(&api, &unique("alice")).await?;
    let ep = node.tcp_endpoint();
    let first = ChatClient::connect(&ep, &alice.token, DeviceType::Desktop, None).await?;
    let err = ChatClient::connect(&ep, &alice.token, DeviceType::Desktop, None)
        .await
        .err()
        .expect("refused");
    assert_eq!(err.code(), Some(ErrorCode::Forbidden as i32), "{err}");
    // Another device type is fine, and the first session lives on.
    ChatClient::connect(&ep, &alice.token, DeviceType::Web, None).await?;
    first.conn.heartbeat().await?;
    Ok(())
}

#[tokio::test]
async fn logout_revokes_the_token_and_closes_its_sessions() -> anyhow::Result<()> {
    let cluster = Cluster::start(2, 1).await?;
    let api = cluster.api(0);
    let alice = new_user(&api, &unique("alice")).await?;
    let other_token = api.login(&alice.name, "password1").await?.token;
    let desk = ChatClient::connect(
        &cluster.tcp_endpoint(0),
        &alice.token,
        DeviceType::Desktop,
        None,
    )
    .await?;
    let phone = ChatClient::connect(
        &cluster.tcp_endpoint(1),
        &other_token,
        DeviceType::Mobile,
        None,
    )
    .await?;
    api.logout(&alice.token).await?;
    assert_eq!(kicked(&desk).await, Some(KickReason::Logout as i32));
    // The session of the other token stays.
    phone.conn.heartbeat().await?;
    let err = ChatClient::connect(
        &cluster.tcp_endpoint(0),
        &alice.token,
        DeviceType::Desktop,
        None,
    )
    .await
    .err()
    .expect("revoked");
    assert_eq!(err.code(), Some(ErrorCode::Unauthenticated as i32));
    Ok(())
}

#[tokio::test]
async fn unacknowledged_pushes_are_resent_then_the_connection_closes() -> anyhow::Result<()> {
    let node = SingleNode::start(&["--ack-timeout-ms", "200", "--push-max-tries", "3"]).await?;
    let api = node.api();
    let alice = new_user(&api, &unique("alice")).await?;
    let bob = new_user(&api, &unique("bob")).await?;
    let a = online(&node.tcp_endpoint(), &alice).await?;
    // Bob's raw connection never acknowledges.
    let raw = Connection::connect_tcp(&node.tcp).await?;
    raw.auth(&bob.token, DeviceType::Desktop).await?;
    let sent = a.send_text(bob.id, "ack me").await?;
    let mut pushes = 0;
    while let Ok(Some(ev)) = raw.next_event_timeout(Duration::from_secs(5)).await {
        if let Event::Push(ms) = ev {
            assert!(ms.iter().all(|m| m.msg_id == sent.msg_id));
            pushes += 1;
        }
    }
    assert_eq!(pushes, 3, "sent once and retried twice, then closed");
    let metrics = reqwest::get(format!("http://{}/metrics", node.http))
        .await?
        .text()
        .await?;
    assert!(
        metrics.contains("im_gateway_push_retransmits_total 2"),
        "{metrics}"
    );
    assert!(metrics.contains("im_gateway_push_giveups_total 1"));
    // Nothing lost: the message waits in the inbox.
    let b = ChatClient::connect(
        &node.tcp_endpoint(),
        &bob.token,
        DeviceType::Desktop,
        Some(0),
    )
    .await?;
    assert_eq!(recv_n(&b, 1, WAIT).await?[0].msg_id, sent.msg_id);
    Ok(())
}

#[tokio::test]
async fn a_slow_consumer_is_cut_off_with_bounded_memory() -> anyhow::Result<()> {
    let node = SingleNode::start(&["--outbound-queue", "64"]).await?;
    let api = node.api();
    let slow = new_user(&api, &unique("slow")).await?;
    let alice = new_user(&api, &unique("alice")).await?;
    let bob = new_user(&api, &unique("bob")).await?;
    let a = online(&node.tcp_endpoint(), &alice).await?;
    let b = online(&node.tcp_endpoint(), &bob).await?;

    // The slow client authenticates over a raw socket and then never reads.
    let mut sock = tokio::net::TcpStream::connect(&node.tcp).await?;
    let auth = AuthRequest {
        token: slow.token.clone(),
        device: DeviceType::Desktop as i32,
        device_id: String::new(),
    };
    sock.write_all(&Frame::request(Command::Auth, 1, auth.encode_to_vec()).to_bytes())
        .await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let pid = node.proc.pid();
    let before = rss_kib(pid);

    let blob = Bytes::from(vec![b'x'; 32 * 1024]);
    for i in 0..1500 {
        a.send_with_id(slow.id, &format!("big-{i}"), 1, blob.clone())
            .await?;
        if i % 100 == 0 {
            a.send_text(bob.id, &format!("still here {i}")).await?;
        }
    }
    let metrics = reqwest::get(format!("http://{}/metrics", node.http))
        .await?
        .text()
        .await?;
    assert!(
        metrics.contains("im_gateway_slow_consumer_disconnects_total 1"),
        "the slow consumer must be disconnected"
    );
    let after = rss_kib(pid);
    // 1500 × 32 KiB = 47 MiB went to the slow user; the gateway held at most
    // its queue (64 frames) of it.
    assert!(
        after < before + 24 * 1024,
        "RSS grew from {before} KiB to {after} KiB"
    );
    // Others were not affected.
    let got = recv_n(&b, 15, WAIT).await?;
    assert_eq!(got.len(), 15);
    let _ = FrameCodec::default();
    drop(sock);
    Ok(())
}

#[tokio::test]
async fn sending_too_fast_is_rate_limited_and_counted() -> anyhow::Result<()> {
    let node = SingleNode::start(&["--rate-limit", "5", "--rate-burst", "5"]).await?;
    let api = node.api();
    let alice = new_user(&api, &unique("alice")).await?;
    let bob = new_user(&api, &unique("bob")).await?;
    let a = online(&node.tcp_endpoint(), &alice).await?;
    let mut limited = 0;
    let mut stored = 0;
    for i in 0..20 {
        match a.send_text(bob.id, &format!("fast {i}")).await {
            Ok(_) => stored += 1,
            Err(e) => {
                assert_eq!(e.code(), Some(ErrorCode::RateLimited as i32), "{e}");
                assert!(e.is_retryable());
                limited += 1;
            }
        }
    }
    assert!(
        stored >= 5 && limited >= 10,
        "stored {stored}, limited {limited}"
    );
    let metrics = reqwest::get(format!("http://{}/metrics", node.http))
        .await?
        .text()
        .await?;
    assert!(metrics.contains(&format!("im_gateway_rate_limited_total {limited}")));
    // Heartbeats are not limited, and the connection stays up.
    a.conn.heartbeat().await?;
    Ok(())
}

/// A connection that sends nothing for the idle timeout is closed (the
/// gateway's sweep); one that heartbeats stays and keeps receiving.
#[tokio::test]
async fn silent_connections_are_closed_after_the_idle_timeout() -> anyhow::Result<()> {
    let node = SingleNode::start(&["--idle-timeout-secs", "2", "--heartbeat-secs", "1"]).await?;
    let api = node.api();
    let alice = new_user(&api, &unique("alice")).await?;
    let bob = new_user(&api, &unique("bob")).await?;
    let ep = node.tcp_endpoint();
    let silent = ChatClient::connect(&ep, &alice.token, DeviceType::Desktop, None).await?;
    let lively = ChatClient::connect(&ep, &bob.token, DeviceType::Desktop, None).await?;
    let started = tokio::time::Instant::now();
    let done = std::sync::atomic::AtomicBool::new(false);
    let beating = async {
        while !done.load(std::sync::atomic::Ordering::Relaxed) {
            lively.conn.heartbeat().await?;
            tokio::time::sleep(Duration::from_millis(400)).await;
        }
        anyhow::Ok(())
    };
    let checking = async {
        let after = loop {
            match silent.conn.next_event_timeout(Duration::from_secs(8)).await {
                Ok(Some(_)) => continue,
                Ok(None) | Err(im_client::ClientError::Closed) => break started.elapsed(),
                Err(e) => anyhow::bail!("expected a close, got {e}"),
            }
        };
        assert!(
            after >= Duration::from_millis(1500) && after < Duration::from_secs(5),
            "closed after {after:?}"
        );
        // A request on the closed connection fails at once, not at its timeout.
        let r = tokio::time::timeout(Duration::from_secs(2), silent.conn.heartbeat()).await;
        assert!(
            matches!(r, Ok(Err(im_client::ClientError::Closed))),
            "{r:?}"
        );
        // Past the idle timeout, the heartbeating connection still receives.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let a = ChatClient::connect(&ep, &alice.token, DeviceType::Desktop, None).await?;
        a.send_text(bob.id, "still there?").await?;
        let got = recv_user(&lively, Duration::from_secs(5)).await?;
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        assert_eq!(got.len(), 1);
        anyhow::Ok(())
    };
    let (beat, check) = tokio::join!(beating, checking);
    check?;
    beat
}
