//! Helpers for the friends and groups end-to-end tests: befriending, many
//! users registered concurrently, tokens minted with the test secret, raw
//! push collection (no client-side de-duplication) and refusal checks.
use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures::StreamExt;
use im_client::{Api, ClientError, Connection, Event};
use im_proto::client::Message;

use crate::TestUser;

/// The JWT secret of every [`crate::Cluster`].
pub fn cluster_secret() -> &'static str {
    super::CLUSTER_SECRET
}

/// A token for `user_id` signed with `secret`, as login would issue.
pub fn mint_token(secret: &str, user_id: i64) -> anyhow::Result<String> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let claims = serde_json::json!({
        "sub": user_id,
        "jti": format!("test-{user_id}-{:08x}", rand::random::<u32>()),
        "iat": now,
        "exp": now + 3600,
    });
    Ok(jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )?)
}

/// Registers `n` users named `{prefix}{i}` (several at a time) and mints
/// their tokens instead of logging in (login would hash every password again).
pub async fn register_many(
    api: &Api,
    secret: &str,
    prefix: &str,
    n: usize,
) -> anyhow::Result<Vec<TestUser>> {
    let results: Vec<anyhow::Result<TestUser>> = futures::stream::iter(0..n)
        .map(|i| {
            let api = api.clone();
            let name = format!("{prefix}{i}");
            async move {
                let id = api.register(&name, "password1").await?;
                let token = mint_token(secret, id)?;
                Ok(TestUser { name, id, token })
            }
        })
        .buffered(8)
        .collect()
        .await;
    results.into_iter().collect()
}

/// `a` asks, `b` accepts; returns the pair's key as `b` received it.
pub async fn befriend(api: &Api, a: &TestUser, b: &TestUser) -> anyhow::Result<String> {
    let req = api.send_friend_request(&a.token, b.id, "hello").await?;
    let id = req["request_id"]
        .as_i64()
        .ok_or_else(|| anyhow::anyhow!("no request id in {req}"))?;
    Ok(api.accept_friend_request(&b.token, id).await?)
}

/// Asserts a REST call was refused with this HTTP status and stable code.
pub fn assert_refused<T: std::fmt::Debug>(r: Result<T, ClientError>, status: u16, code: &str) {
    match r {
        Ok(v) => panic!("expected {status} {code}, got success: {v:?}"),
        Err(e) => {
            let s = e.to_string();
            assert!(
                s.contains(&format!("{status} {code}:")),
                "expected {status} {code}, got: {s}"
            );
        }
    }
}

/// Asserts a frame request was refused with this protocol error code.
pub fn assert_frame_refused<T: std::fmt::Debug>(
    r: Result<T, ClientError>,
    code: im_proto::client::ErrorCode,
    says: &str,
) {
    match r {
        Ok(v) => panic!("expected {code:?}, got success: {v:?}"),
        Err(e) => {
            assert_eq!(e.code(), Some(code as i32), "{e}");
            assert!(e.to_string().contains(says), "{e} should say {says:?}");
        }
    }
}

/// Every message pushed to `conn` until `want` arrived or `within` passed,
/// as pushed (duplicates included); inbox pushes are acknowledged.
pub async fn collect_pushes(
    conn: &Connection,
    want: usize,
    within: Duration,
) -> anyhow::Result<Vec<Message>> {
    let deadline = Instant::now() + within;
    let mut got = Vec::new();
    while got.len() < want {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        match conn.next_event_timeout(left).await {
            Ok(Some(Event::Push(ms))) => {
                // Acknowledge at once so the gateway does not retransmit.
                if let Some(max) = ms.iter().map(|m| m.seq).max().filter(|s| *s > 0) {
                    conn.ack(max).await?;
                }
                got.extend(ms);
            }
            Ok(Some(_)) => {}
            Ok(None) => anyhow::bail!("connection closed"),
            Err(ClientError::Timeout) => break,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(got)
}

/// How many times each message id occurs.
pub fn count_by_id(messages: &[Message]) -> HashMap<i64, usize> {
    let mut counts = HashMap::new();
    for m in messages {
        *counts.entry(m.msg_id).or_default() += 1;
    }
    counts
}

/// Receives until `n` user messages (content types below 0xF000: not
/// receipts or revoke notices) arrived or `within` passed; returns every
/// message received, system ones included.
pub async fn recv_user_messages(
    client: &im_client::ChatClient,
    n: usize,
    within: Duration,
) -> anyhow::Result<Vec<Message>> {
    let deadline = Instant::now() + within;
    let mut got: Vec<Message> = Vec::new();
    while got.iter().filter(|m| is_user_message(m)).count() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        got.extend(client.recv(left).await?);
    }
    Ok(got)
}

/// Not a server-generated message (receipt, revoke notice).
pub fn is_user_message(m: &Message) -> bool {
    m.content_type < 0xF000
}

/// The bodies of user messages from `from`, as text.
pub fn texts_from(messages: &[Message], from: i64) -> Vec<String> {
    messages
        .iter()
        .filter(|m| m.from == from && is_user_message(m))
        .map(|m| String::from_utf8_lossy(&m.body).into_owned())
        .collect()
}

/// Receives until a message matching `pred` arrives or `within` passed;
/// returns everything received.
pub async fn recv_until(
    client: &im_client::ChatClient,
    within: Duration,
    pred: impl Fn(&Message) -> bool,
) -> anyhow::Result<Vec<Message>> {
    let deadline = Instant::now() + within;
    let mut got: Vec<Message> = Vec::new();
    while !got.iter().any(&pred) {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        got.extend(client.recv(left).await?);
    }
    Ok(got)
}

/// Runs `f` again while it fails with a retryable error (`503` over REST,
/// `UNAVAILABLE` on a connection), as clients are told to: a send is
/// retried with the same client message id.
pub async fn retry<T, F, Fut>(mut f: F) -> Result<T, ClientError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, ClientError>>,
{
    for _ in 0..10 {
        match f().await {
            Err(e) if e.is_retryable() || e.to_string().contains(" 503 ") => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            r => return r,
        }
    }
    f().await
}
