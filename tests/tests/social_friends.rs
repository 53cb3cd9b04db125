//! Friends end to end (single node, friends-only policy): requests with a
//! note, accept and reject, the per-pair key, lists, delete, block and
//! unblock; strangers and blocked senders are refused over REST and frames.
use std::time::Duration;

use im_proto::client::ErrorCode;
use im_tests::social::*;
use im_tests::*;

#[tokio::test]
async fn friends_over_rest_and_a_connected_client() -> anyhow::Result<()> {
    let node = SingleNode::start(&["--c2c-policy", "friends"]).await?;
    let api = node.api();
    let alice = new_user(&api, &unique("alice")).await?;
    let bob = new_user(&api, &unique("bob")).await?;
    let carol = new_user(&api, &unique("carol")).await?;
    let a = online(&node.tcp_endpoint(), &alice).await?;
    let b = online(&node.tcp_endpoint(), &bob).await?;

    // Strangers may not message each other under the friends-only policy.
    assert_refused(
        api.send(&alice.token, bob.id, "s-1", "hi").await,
        403,
        "NOT_FRIENDS",
    );
    assert_frame_refused(
        a.send_text(bob.id, "hi").await,
        ErrorCode::Forbidden,
        "friends",
    );

    // A request with a note, seen by both sides; bob accepts.
    let req = api
        .send_friend_request(&alice.token, bob.id, "from the conference")
        .await?;
    assert_eq!(req["status"], "pending");
    let pending = api.friend_requests(&bob.token).await?;
    assert_eq!(pending["incoming"][0]["from"], alice.id);
    assert_eq!(pending["incoming"][0]["note"], "from the conference");
    let mine = api.friend_requests(&alice.token).await?;
    assert_eq!(mine["outgoing"][0]["to"], bob.id);
    // Only the recipient answers.
    let id = req["request_id"].as_i64().unwrap_or_default();
    assert_refused(
        api.accept_friend_request(&alice.token, id).await,
        403,
        "FORBIDDEN",
    );
    let key = api.accept_friend_request(&bob.token, id).await?;
    assert_eq!(key.len(), 64, "32 random bytes as hex");
    assert_eq!(api.friend_key(&alice.token, bob.id).await?, key);
    assert_eq!(api.friend_key(&bob.token, alice.id).await?, key);
    assert_refused(
        api.accept_friend_request(&bob.token, id).await,
        409,
        "CONFLICT",
    );
    assert_eq!(
        api.friends(&alice.token).await?["friends"][0]["user_id"],
        bob.id
    );
    assert_eq!(
        api.friends(&bob.token).await?["friends"][0]["user_id"],
        alice.id
    );
    assert!(
        api.friend_requests(&bob.token).await?["incoming"]
            .as_array()
            .is_some_and(|v| v.is_empty())
    );

    // Friends chat over the connection and over REST.
    retry(|| a.send_text(bob.id, "now we are friends")).await?;
    retry(|| api.send(&bob.token, alice.id, "r-1", "indeed")).await?;
    let at_b = recv_user_messages(&b, 2, Duration::from_secs(10)).await?;
    assert_eq!(texts_from(&at_b, alice.id), vec!["now we are friends"]);
    let at_a = recv_user_messages(&a, 1, Duration::from_secs(10)).await?;
    assert_eq!(texts_from(&at_a, bob.id), vec!["indeed"]);

    // A rejected request leaves no friendship; a different pair gets its own key.
    let r = api.send_friend_request(&carol.token, alice.id, "").await?;
    api.reject_friend_request(&alice.token, r["request_id"].as_i64().unwrap_or_default())
        .await?;
    assert_refused(
        api.friend_key(&carol.token, alice.id).await,
        404,
        "NOT_FOUND",
    );
    let key2 = befriend(&api, &carol, &bob).await?;
    assert_ne!(key2, key);

    // Blocking refuses messages and requests from the blocked user, with a clear error.
    api.block(&bob.token, alice.id).await?;
    assert_eq!(api.blocks(&bob.token).await?["blocked"][0], alice.id);
    assert_refused(
        api.send(&alice.token, bob.id, "s-2", "hello?").await,
        403,
        "BLOCKED",
    );
    assert_frame_refused(
        a.send_text(bob.id, "hello?").await,
        ErrorCode::Forbidden,
        "blocked",
    );
    // Bob may still write to alice; unblocking lets alice answer.
    retry(|| api.send(&bob.token, alice.id, "r-2", "sorry")).await?;
    api.unblock(&bob.token, alice.id).await?;
    assert_refused(api.unblock(&bob.token, alice.id).await, 404, "NOT_FOUND");
    retry(|| a.send_text(bob.id, "welcome back")).await?;
    // Bob's connection also gets copies of what he sent over REST.
    let at_b = recv_user_messages(&b, 2, Duration::from_secs(10)).await?;
    assert_eq!(texts_from(&at_b, alice.id), vec!["welcome back"]);

    // Deleting the friend ends the friendship on both sides.
    api.delete_friend(&alice.token, bob.id).await?;
    assert!(
        api.friends(&bob.token).await?["friends"]
            .as_array()
            .is_some_and(|v| v.iter().all(|f| f["user_id"] != alice.id))
    );
    assert_refused(api.friend_key(&bob.token, alice.id).await, 404, "NOT_FOUND");
    assert_refused(
        api.send(&bob.token, alice.id, "r-3", "?").await,
        403,
        "NOT_FRIENDS",
    );

    // Asking back accepts a pending request at once.
    let first = api.send_friend_request(&alice.token, carol.id, "").await?;
    let back = api.send_friend_request(&carol.token, alice.id, "").await?;
    assert_eq!(back["status"], "accepted");
    assert_eq!(back["request_id"], first["request_id"]);
    assert_eq!(api.friend_key(&alice.token, carol.id).await?.len(), 64);
    Ok(())
}

#[tokio::test]
async fn strangers_may_chat_when_the_policy_allows_but_blocks_still_refuse() -> anyhow::Result<()> {
    let node = SingleNode::start(&["--c2c-policy", "anyone"]).await?;
    let api = node.api();
    let alice = new_user(&api, &unique("alice")).await?;
    let bob = new_user(&api, &unique("bob")).await?;
    retry(|| api.send(&alice.token, bob.id, "s-1", "hi stranger")).await?;
    api.block(&bob.token, alice.id).await?;
    assert_refused(
        api.send(&alice.token, bob.id, "s-2", "hi again").await,
        403,
        "BLOCKED",
    );
    assert_refused(
        api.send(&alice.token, 999_999, "s-3", "nobody").await,
        404,
        "UNKNOWN_USER",
    );
    // Content types from 0xF000 are the server's own.
    let raw = reqwest::Client::new()
        .post(format!("http://{}/api/v1/messages", node.http))
        .bearer_auth(&bob.token)
        .json(&serde_json::json!({"to": alice.id, "client_msg_id": "x", "content_type": 61442, "body": ""}))
        .send()
        .await?;
    assert_eq!(raw.status().as_u16(), 400);
    Ok(())
}
