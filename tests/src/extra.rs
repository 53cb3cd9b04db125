//! Harness additions for the business-server tests (s2c, c2s): a logic
//! process with extra environment next to a running cluster, raw REST calls
//! that keep the HTTP status, and a Redis connection for reading streams.
use std::time::Duration;

use anyhow::Context;
use serde_json::Value;

use crate::{Cluster, Proc, bin, free_port, redis_url, wait_http_ok};

/// The server API key the tests configure, as `IM_SERVER_API_KEYS` wants it.
pub const TEST_API_KEY_NAME: &str = "biz";
pub const TEST_API_KEY: &str = "test-server-key-0123456789";

/// `name:key` for `--server-api-keys` / `IM_SERVER_API_KEYS`.
pub fn test_api_keys() -> String {
    format!("{TEST_API_KEY_NAME}:{TEST_API_KEY}")
}

/// One more `im-logic` on the cluster's database and Redis prefix, with
/// `env` added (e.g. `IM_SERVER_API_KEYS`). It has its own token secret, so
/// use it for server APIs, not for user logins. Returns it and its HTTP address.
pub async fn start_logic_with_env(
    cluster: &Cluster,
    env: &[(&str, &str)],
) -> anyhow::Result<(Proc, String)> {
    let http = format!("127.0.0.1:{}", free_port());
    let grpc = format!("127.0.0.1:{}", free_port());
    let mut all: Vec<(String, String)> = vec![
        ("IM_DATABASE_URL".into(), cluster.database_url.clone()),
        ("IM_REDIS_URL".into(), redis_url()),
        ("IM_REDIS_PREFIX".into(), cluster.redis_prefix.clone()),
        (
            "IM_JWT_SECRET".into(),
            "extra-logic-test-secret-0123456789".into(),
        ),
        ("IM_HTTP_ADDR".into(), http.clone()),
        ("IM_GRPC_ADDR".into(), grpc),
    ];
    all.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let proc = Proc::spawn("logic-extra", bin("im-logic")?, &[], &all)?;
    wait_http_ok(&format!("http://{http}/readyz"), Duration::from_secs(30)).await?;
    Ok((proc, http))
}

/// `POST /api/v1/s2c/messages` on `http` (host:port) with an optional
/// `X-Api-Key`; the HTTP status and the JSON body, whatever the status.
pub async fn s2c_post(
    http: &str,
    api_key: Option<&str>,
    body: &Value,
) -> anyhow::Result<(u16, Value)> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut req = reqwest::Client::new()
        .post(format!("http://{http}/api/v1/s2c/messages"))
        .json(body);
    if let Some(k) = api_key {
        req = req.header("X-Api-Key", k);
    }
    let resp = req.send().await.context("s2c request failed")?;
    let status = resp.status().as_u16();
    let text = resp.text().await?;
    let json = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Ok((status, json))
}

/// An async Redis connection whose replies may take `timeout` (BLOCK reads).
pub async fn redis_conn(timeout: Duration) -> anyhow::Result<redis::aio::MultiplexedConnection> {
    redis_conn_at(&redis_url(), timeout).await
}

/// [`redis_conn`] to the Redis at `url`.
async fn redis_conn_at(
    url: &str,
    timeout: Duration,
) -> anyhow::Result<redis::aio::MultiplexedConnection> {
    let config = redis::AsyncConnectionConfig::new().set_response_timeout(Some(timeout));
    Ok(redis::Client::open(url)?
        .get_multiplexed_async_connection_with_config(&config)
        .await?)
}

/// Deletes every Redis key starting with `prefix`.
pub async fn redis_cleanup(prefix: &str) -> anyhow::Result<()> {
    redis_cleanup_at(&redis_url(), prefix).await?;
    Ok(())
}

/// Deletes every key starting with `prefix` from the Redis at `url`, a
/// `SCAN` page at a time (Redis keeps serving others meanwhile); returns
/// how many it deleted.
pub async fn redis_cleanup_at(url: &str, prefix: &str) -> anyhow::Result<u64> {
    let mut conn = redis_conn_at(url, Duration::from_secs(5)).await?;
    let pattern = format!("{}*", glob_escape(prefix));
    let mut cursor: u64 = 0;
    let mut deleted = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut conn)
            .await?;
        if !keys.is_empty() {
            deleted += redis::cmd("UNLINK")
                .arg(&keys)
                .query_async::<u64>(&mut conn)
                .await?;
        }
        if next == 0 {
            return Ok(deleted);
        }
        cursor = next;
    }
}

/// `s` as a Redis glob pattern that matches only itself.
fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_prefix_cleanup_deletes_only_that_prefix() -> anyhow::Result<()> {
        // A prefix with glob characters, and a key that the unescaped
        // pattern would also match.
        let prefix = format!("{}[a]*:", crate::unique("imclean"));
        let neighbour = prefix.replace("[a]*", "a-other");
        let mut conn = redis_conn(Duration::from_secs(5)).await?;
        for i in 0..2500 {
            redis::cmd("SET")
                .arg(format!("{prefix}k{i}"))
                .arg(i)
                .query_async::<()>(&mut conn)
                .await?;
        }
        redis::cmd("SET")
            .arg(&neighbour)
            .arg(1)
            .query_async::<()>(&mut conn)
            .await?;
        let deleted = redis_cleanup_at(&redis_url(), &prefix).await?;
        assert_eq!(
            deleted, 2500,
            "every key of the prefix, over several SCAN pages"
        );
        let left: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}*", glob_escape(&prefix)))
            .query_async(&mut conn)
            .await?;
        assert!(left.is_empty(), "{left:?}");
        let kept: Option<i64> = redis::cmd("GET")
            .arg(&neighbour)
            .query_async(&mut conn)
            .await?;
        assert_eq!(kept, Some(1), "another prefix's key stays");
        redis::cmd("DEL")
            .arg(&neighbour)
            .query_async::<()>(&mut conn)
            .await?;
        Ok(())
    }
}
