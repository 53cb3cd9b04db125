//! Command-line and environment configuration of the logic tier, shared by
//! `im-logic` and `im-server`.
use clap::Args;

use crate::auth::TokenKeys;
use crate::committer::CommitterConfig;
use crate::service::LogicConfig;

#[derive(Debug, Clone, Args)]
pub struct LogicArgs {
    /// Seconds a login token stays valid.
    #[arg(long, env = "IM_TOKEN_TTL_SECS", default_value_t = 7 * 24 * 3600)]
    pub token_ttl_secs: u64,
    /// Database connections in the pool.
    #[arg(long, env = "IM_DB_MAX_CONNECTIONS", default_value_t = 16)]
    pub db_max_connections: u32,
    /// Parallel group-commit writers (forced to 1 on SQLite).
    #[arg(long, env = "IM_STORE_SHARDS", default_value_t = 4)]
    pub store_shards: usize,
    /// Most messages committed in one transaction.
    #[arg(long, env = "IM_STORE_MAX_BATCH", default_value_t = 256)]
    pub store_max_batch: usize,
    /// Most messages one pull returns.
    #[arg(long, env = "IM_MAX_PULL", default_value_t = 500)]
    pub max_pull: u32,
}

impl LogicArgs {
    pub fn config(&self, max_body: usize, sqlite: bool) -> LogicConfig {
        LogicConfig {
            max_body,
            max_pull: self.max_pull.max(1),
            committer: CommitterConfig {
                shards: if sqlite { 1 } else { self.store_shards.max(1) },
                max_batch: self.store_max_batch.max(1),
                queue: 4096,
            },
        }
    }

    /// Token keys from a shared secret; refuses short secrets.
    pub fn token_keys(&self, secret: &str) -> Result<TokenKeys, String> {
        if secret.len() < 16 {
            return Err("the JWT secret must be at least 16 bytes".into());
        }
        Ok(TokenKeys::new(
            secret.as_bytes(),
            self.token_ttl_secs.max(60),
        ))
    }
}
