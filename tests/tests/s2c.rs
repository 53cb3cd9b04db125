//! Server push (s2c): a business server sends one message to many users over
//! REST with a server API key; online users get it pushed once, offline users
//! on their next pull; a repeated client_msg_id stores nothing new; bad keys,
//! unknown users and too many recipients are refused and store nothing.
use std::time::Duration;

use im_client::{Api, ChatClient, DeviceType, Endpoint};
use im_proto::client::{ConversationType, Message};
use im_tests::extra::*;
use im_tests::*;
use serde_json::json;

/// Asserts `m` is the server push `client_msg_id` with `body`.
fn assert_s2c(m: &Message, msg_id: i64, client_msg_id: &str, body: &str) {
    assert_eq!(m.msg_id, msg_id);
    assert_eq!(m.conv_type, ConversationType::S2c as i32);
    assert_eq!(m.from, 0, "a server push has no user sender");
    assert_eq!(m.to, 0);
    assert_eq!(
        m.client_msg_id,
        format!("{TEST_API_KEY_NAME}:{client_msg_id}")
    );
    assert_eq!(String::from_utf8_lossy(&m.body), body);
}

async fn inbox_len(api: &Api, user: &TestUser) -> anyhow::Result<usize> {
    let page = api.pull(&user.token, 0, 500).await?;
    Ok(page["messages"].as_array().map(|a| a.len()).unwrap_or(0))
}

/// The whole s2c story against one REST endpoint (`s2c_http`) while users
/// register through `api` and connect to `ep`.
async fn push_to_many(api: Api, s2c_http: &str, s2c_api: Api, ep: Endpoint) -> anyhow::Result<()> {
    let mut users = Vec::new();
    for i in 0..5 {
        users.push(new_user(&api, &unique(&format!("s2c{i}"))).await?);
    }
    // Users 0 and 1 online (user 1 on two devices), 2..5 offline.
    let on0 = online(&ep, &users[0]).await?;
    let on1 = online(&ep, &users[1]).await?;
    let on1m = ChatClient::connect(&ep, &users[1].token, DeviceType::Mobile, None).await?;
    let ids: Vec<i64> = users.iter().map(|u| u.id).collect();

    let sent = s2c_api
        .s2c_send(TEST_API_KEY, &ids, "promo-1", 1, "hello from the server")
        .await?;
    assert!(!sent.duplicate);
    for c in [&on0, &on1, &on1m] {
        let mut got = recv_n(c, 1, Duration::from_secs(5)).await?;
        got.extend(c.recv(Duration::from_millis(300)).await?);
        assert_eq!(got.len(), 1, "each online device gets the push once");
        assert_s2c(&got[0], sent.msg_id, "promo-1", "hello from the server");
        assert_eq!(got[0].sent_at_ms, sent.sent_at_ms);
    }

    // The same client_msg_id again: the original acknowledgement, nothing new.
    let (status, again) = s2c_post(
        s2c_http,
        Some(TEST_API_KEY),
        &json!({"to": ids, "client_msg_id": "promo-1", "body": "hello again"}),
    )
    .await?;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["duplicate"], true);
    assert_eq!(again["msg_id"], sent.msg_id);
    assert_eq!(again["sent_at_ms"], sent.sent_at_ms);
    for c in [&on0, &on1] {
        assert!(
            c.recv(Duration::from_millis(500)).await?.is_empty(),
            "no second push"
        );
    }

    // Offline users find it on pull, once: over a connection and over REST.
    let late = ChatClient::connect(&ep, &users[2].token, DeviceType::Desktop, Some(0)).await?;
    let mut got = recv_n(&late, 1, Duration::from_secs(5)).await?;
    got.extend(late.recv(Duration::from_millis(300)).await?);
    assert_eq!(got.len(), 1);
    assert_s2c(&got[0], sent.msg_id, "promo-1", "hello from the server");
    assert_eq!(got[0].seq, 1, "the first entry of a fresh inbox");
    for u in &users[3..] {
        let page = api.pull(&u.token, 0, 100).await?;
        let msgs = page["messages"].as_array().cloned().unwrap_or_default();
        assert_eq!(msgs.len(), 1, "{page}");
        assert_eq!(msgs[0]["conv_type"], "s2c");
        assert_eq!(msgs[0]["from"], 0);
        assert_eq!(msgs[0]["body"], "hello from the server");
    }

    // Unknown user: 404, nothing stored for anyone, and the id stays unused.
    let (status, err) = s2c_post(
        s2c_http,
        Some(TEST_API_KEY),
        &json!({"to": [users[0].id, 999_999_999], "client_msg_id": "promo-2", "body": "x"}),
    )
    .await?;
    assert_eq!(status, 404, "{err}");
    assert_eq!(err["code"], "UNKNOWN_USER");
    assert_eq!(inbox_len(&api, &users[0]).await?, 1);
    assert!(on0.recv(Duration::from_millis(300)).await?.is_empty());
    let retry = s2c_api
        .s2c_send(TEST_API_KEY, &[users[0].id], "promo-2", 1, "second")
        .await?;
    assert!(
        !retry.duplicate,
        "the refused push stored nothing under its id"
    );
    let got = recv_n(&on0, 1, Duration::from_secs(3)).await?;
    assert_eq!(got.len(), 1);
    assert_s2c(&got[0], retry.msg_id, "promo-2", "second");
    assert_eq!(
        inbox_len(&api, &users[1]).await?,
        1,
        "user 1 was not a recipient"
    );

    // Bad keys, and too many or no recipients.
    let body = json!({"to": [users[0].id], "client_msg_id": "promo-3", "body": "x"});
    for key in [None, Some("wrong-key-0123456789"), Some("")] {
        let (status, err) = s2c_post(s2c_http, key, &body).await?;
        assert_eq!(status, 401, "key {key:?}: {err}");
        assert_eq!(err["code"], "UNAUTHENTICATED");
    }
    let many: Vec<i64> = (1..=1001).collect();
    for to in [json!(many), json!([])] {
        let (status, err) = s2c_post(
            s2c_http,
            Some(TEST_API_KEY),
            &json!({"to": to, "client_msg_id": "promo-4", "body": "x"}),
        )
        .await?;
        assert_eq!(status, 400, "{err}");
        assert_eq!(err["code"], "BAD_REQUEST");
    }
    assert_eq!(
        inbox_len(&api, &users[0]).await?,
        2,
        "nothing stored by refused pushes"
    );
    Ok(())
}

#[tokio::test]
async fn s2c_single_node() -> anyhow::Result<()> {
    let keys = test_api_keys();
    let node = SingleNode::start(&["--server-api-keys", &keys]).await?;
    push_to_many(node.api(), &node.http, node.api(), node.tcp_endpoint()).await
}

#[tokio::test]
async fn s2c_cluster_key_from_env() -> anyhow::Result<()> {
    let cluster = Cluster::start(2, 1).await?;
    let keys = test_api_keys();
    // The business server talks to a logic process configured through the env.
    let (_logic, http) = start_logic_with_env(&cluster, &[("IM_SERVER_API_KEYS", &keys)]).await?;
    let s2c_api = Api::new(&format!("http://{http}"))?;
    let r = push_to_many(cluster.api(0), &http, s2c_api, cluster.ws_endpoint(1)).await;
    redis_cleanup(&cluster.redis_prefix).await?;
    r
}

#[tokio::test]
async fn s2c_without_keys_is_forbidden() -> anyhow::Result<()> {
    let node = SingleNode::start(&[]).await?;
    let user = new_user(&node.api(), &unique("nokey")).await?;
    let (status, err) = s2c_post(
        &node.http,
        Some(TEST_API_KEY),
        &json!({"to": [user.id], "client_msg_id": "m", "body": "x"}),
    )
    .await?;
    assert_eq!(status, 403, "{err}");
    assert_eq!(err["code"], "FORBIDDEN");
    assert!(
        err["message"]
            .as_str()
            .unwrap_or("")
            .contains("no server API key"),
        "{err}"
    );
    assert_eq!(inbox_len(&node.api(), &user).await?, 0);
    Ok(())
}
