//! Bench users: rows created directly through the logic crate's `Store`
//! (one shared password hash, so 100,000 users do not cost 100,000 argon2
//! runs) and tokens issued with the servers' JWT secret — exactly what
//! `POST /register` + `POST /login` would produce, minus the hashing.
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context;
use futures::{StreamExt, TryStreamExt};
use im_logic::auth::TokenKeys;
use im_logic::store::Store;

/// A user the bench can connect as.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct BenchUser {
    pub id: i64,
    pub name: String,
    pub token: String,
}

/// Creates `n` users named `{prefix}{i}`; `done` counts progress.
pub async fn users(
    database_url: &str,
    jwt_secret: &str,
    prefix: &str,
    n: usize,
    done: &AtomicU64,
) -> anyhow::Result<Vec<BenchUser>> {
    let store = Store::connect(database_url, 8)
        .await
        .with_context(|| format!("failed to open {database_url}"))?;
    let hash = tokio::task::spawn_blocking(|| im_logic::auth::hash_password("bench-password"))
        .await?
        .map_err(|e| anyhow::anyhow!("failed to hash the bench password: {e}"))?;
    let keys = TokenKeys::new(jwt_secret.as_bytes(), 7 * 24 * 3600);
    let now_ms = im_proto::now_ms();
    let created: Vec<BenchUser> = futures::stream::iter(0..n)
        .map(|i| {
            let (store, hash, keys) = (&store, &hash, &keys);
            async move {
                let name = format!("{prefix}{i}");
                let id = store
                    .create_user(&name, hash, now_ms as i64)
                    .await
                    .with_context(|| format!("failed to create user {name}"))?;
                let (token, _) = keys
                    .issue(id, now_ms / 1000)
                    .map_err(|e| anyhow::anyhow!("failed to issue a token: {e}"))?;
                done.fetch_add(1, Ordering::Relaxed);
                Ok::<_, anyhow::Error>(BenchUser { id, name, token })
            }
        })
        .buffered(16)
        .try_collect()
        .await?;
    store.pool().close().await;
    Ok(created)
}
