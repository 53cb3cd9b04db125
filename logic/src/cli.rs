//! Command-line and environment configuration of the logic tier, shared by
//! `im-logic` and `im-server`.
use clap::Args;

use crate::auth::TokenKeys;
use crate::committer::CommitterConfig;
use crate::service::{LogicConfig, LoginPolicy};

#[derive(Debug, Clone, Args)]
pub struct LogicArgs {
    /// Seconds a login token stays valid.
    #[arg(long, env = "IM_TOKEN_TTL_SECS", default_value_t = 7 * 24 * 3600)]
    pub token_ttl_secs: u64,
    /// Database connections in the pool.
    #[arg(long, env = "IM_DB_MAX_CONNECTIONS", default_value_t = 16)]
    pub db_max_connections: u32,
    /// Parallel group-commit writers (forced to 1 on SQLite). One writer
    /// gives the lowest latency; more raise one process's peak throughput
    /// (see docs/benchmarks.md). Add logic processes to scale out.
    #[arg(long, env = "IM_STORE_SHARDS", default_value_t = 1)]
    pub store_shards: usize,
    /// Most messages committed in one transaction.
    #[arg(long, env = "IM_STORE_MAX_BATCH", default_value_t = 256)]
    pub store_max_batch: usize,
    /// Store DELIVERED receipts inline in the recipient's inbox entry, with
    /// no `messages` row (Postgres; migration 0009). Turn on only once no
    /// logic process from before 0009 runs: their pulls skip such entries.
    #[arg(long, env = "IM_INLINE_RECEIPTS", default_value_t = false, action = clap::ArgAction::Set)]
    pub inline_receipts: bool,
    /// Most messages one pull returns.
    #[arg(long, env = "IM_MAX_PULL", default_value_t = 500)]
    pub max_pull: u32,
    /// A second login on the same device type: kick-previous or reject-new.
    #[arg(long, env = "IM_LOGIN_POLICY", value_enum, default_value_t = LoginPolicy::KickPrevious)]
    pub login_policy: LoginPolicy,
    /// Server API keys for the s2c REST API, comma-separated `name:key`
    /// pairs (keys ≥ 16 bytes); none disables server push.
    #[arg(long, env = "IM_SERVER_API_KEYS", default_value = "", hide_env_values = true,
          hide_default_value = true, value_parser = crate::s2c::parse_api_keys)]
    pub server_api_keys: crate::s2c::ApiKeys,
    /// Who may send one-to-one messages: `friends` (only friends) or `anyone`.
    /// A blocked sender is refused either way.
    #[arg(long, env = "IM_C2C_POLICY", default_value = "friends", value_parser = ["friends", "anyone"])]
    pub c2c_policy: String,
    /// Groups with at most this many members use write diffusion (one inbox
    /// entry per member); larger groups use read diffusion (pull by group cursor).
    #[arg(long, env = "IM_GROUP_WRITE_DIFFUSION_MAX", default_value_t = 500)]
    pub group_write_diffusion_max: usize,
    /// Most members a group may have.
    #[arg(long, env = "IM_GROUP_MAX_MEMBERS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u32).range(2..))]
    pub group_max_members: u32,
    /// Seconds after sending during which the sender may revoke a message.
    #[arg(long, env = "IM_REVOKE_WINDOW_SECS", default_value_t = 120)]
    pub revoke_window_secs: u64,
}

impl LogicArgs {
    pub fn config(&self, max_body: usize, sqlite: bool) -> LogicConfig {
        LogicConfig {
            max_body,
            max_pull: self.max_pull.max(1),
            login_policy: self.login_policy,
            committer: CommitterConfig {
                shards: if sqlite { 1 } else { self.store_shards.max(1) },
                max_batch: self.store_max_batch.max(1),
                queue: 4096,
            },
            server_api_keys: self.server_api_keys.clone(),
            social: crate::social::SocialConfig {
                friends_only: self.c2c_policy != "anyone",
                write_diffusion_max: self.group_write_diffusion_max,
                max_group_members: self.group_max_members as usize,
                revoke_window_ms: self.revoke_window_secs.saturating_mul(1000),
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
