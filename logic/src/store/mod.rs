//! Storage through sqlx on Postgres (cluster) or SQLite (single node), one set
//! of queries for both; it stores and reads, and decides nothing about routing.
//!
//! Queries use `$N` placeholders, which both backends accept, through sqlx's
//! `Any` driver; migrations live in `migrations/{postgres,sqlite}`. The one
//! exception is a Postgres writer's batch statement ([`pg_batch`]), which
//! binds arrays and so runs on a `PgConnection` of the writer's own.
use std::sync::Arc;
use std::time::Duration;

use sqlx::any::{AnyPoolOptions, install_default_drivers};
use sqlx::migrate::MigrateDatabase;
use sqlx::{Any, AnyPool, ConnectOptions, Connection, Executor, Row};

pub mod group_msgs;
pub mod groups;
pub mod history;
pub mod messages;
pub mod pg_batch;
pub mod receipts;
pub mod social;
mod sql;

pub use messages::{BatchOutcome, Delivery, NewMessage, SendPolicy, SendResult, Stored};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Postgres,
    Sqlite,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("unsupported database url (expected postgres:// or sqlite:)")]
    UnsupportedUrl,
    #[error("username is taken")]
    UsernameTaken,
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("failed to run migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

/// The advisory lock (a key of its own) that Postgres migrations run under.
const MIGRATION_LOCK: i64 = 0x696d_6d69_6772_6174; // "immigrat"
/// How often a process waiting to migrate asks for [`MIGRATION_LOCK`].
const MIGRATION_POLL: Duration = Duration::from_millis(100);

/// The indexes that migrations build concurrently, each with the statement
/// that drops it. A concurrent build that fails (its process killed, say)
/// leaves the index behind, invalid: never used, yet still kept up by
/// every insert, and kept by the migration's `IF NOT EXISTS` when it runs
/// again.
const BUILT_CONCURRENTLY: [(&str, &str); 1] = [(
    "inbox_own_msg",
    "DROP INDEX CONCURRENTLY IF EXISTS inbox_own_msg",
)];

/// Drops the invalid leftovers of failed concurrent builds
/// ([`BUILT_CONCURRENTLY`]), so that their migration builds them again.
/// Called under [`MIGRATION_LOCK`]: no other migration is building one.
async fn drop_invalid_indexes(conn: &mut sqlx::AnyConnection) -> Result<(), StoreError> {
    for (name, drop) in BUILT_CONCURRENTLY {
        let invalid: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid \
             WHERE c.relname = $1 AND c.relnamespace = current_schema()::regnamespace \
             AND NOT i.indisvalid)",
        )
        .bind(name)
        .fetch_one(&mut *conn)
        .await?;
        if invalid {
            tracing::warn!(
                index = name,
                "dropping an index that a failed concurrent build left invalid; its migration builds it again"
            );
            conn.execute(drop).await?;
        }
    }
    Ok(())
}

/// A pool plus which backend it talks to.
#[derive(Clone, Debug)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    /// SQLite has one writer: writers of this process queue here, in
    /// order, instead of in SQLite's busy handler, which sleeps and retries
    /// (up to 100 ms a time) and collapses under many concurrent writers.
    writer: Arc<tokio::sync::Mutex<()>>,
    /// Whether the Postgres writer's batch statement stores DELIVERED
    /// receipts inline in their inbox entry, without a `messages` row
    /// (migration 0009, [`pg_batch::INLINE_BATCH_SQL`]). Off by default:
    /// the pulls of a logic process from before 0009 skip such entries
    /// (docs/operations.md).
    inline_receipts: bool,
}

/// A write transaction; on SQLite it also holds the process's writer turn.
/// Derefs to the connection, like a transaction does.
pub struct WriteTx<'c> {
    tx: sqlx::Transaction<'c, Any>,
    _turn: Option<tokio::sync::OwnedMutexGuard<()>>,
}

/// The connections a writer loop (a committer shard) keeps between its
/// transactions. A connection taken from the pool is pinged first, which is
/// one more round trip before every transaction; a kept one is not. After a
/// failed transaction it is closed, and the next transaction takes a fresh
/// one.
#[derive(Default)]
pub struct WriterConn {
    /// Transactions of several statements (SQLite's batches, Postgres
    /// batches beyond [`pg_batch`]'s limits).
    pooled: Option<sqlx::pool::PoolConnection<Any>>,
    /// A store writer's ([`WriterConn::for_writer`]).
    writer: bool,
    /// Postgres batches ([`pg_batch`]): a connection of the writer's own,
    /// opened outside the pool by the task that uses it, so its socket
    /// belongs to that task's runtime (a committer's own thread) and each
    /// reply wakes that thread directly instead of waiting for a busy
    /// shared runtime to poll for it.
    pg: Option<sqlx::PgConnection>,
}

impl WriterConn {
    /// The connections of a store writer, kept for as long as it runs. Its
    /// statements' plans last as long (a prepared statement's generic plan
    /// is made again only after an `ANALYZE` of its tables), so on Postgres
    /// its pooled connection prices sequential scans out, as its own
    /// connection does (see [`pg_batch::connect`]: a plan made while the
    /// tables were small, or seen empty by `ANALYZE`, would otherwise scan
    /// them whole for good), and is closed rather than handed back to the
    /// pool with that setting.
    pub fn for_writer() -> WriterConn {
        WriterConn {
            writer: true,
            ..WriterConn::default()
        }
    }

    /// Closes the kept connections (after an error they may be broken).
    pub fn discard(&mut self) {
        if let Some(mut conn) = self.pooled.take() {
            conn.close_on_drop();
        }
        self.pg = None;
    }
}

impl WriteTx<'_> {
    pub async fn commit(self) -> Result<(), sqlx::Error> {
        self.tx.commit().await
    }

    pub async fn rollback(self) -> Result<(), sqlx::Error> {
        self.tx.rollback().await
    }
}

impl std::ops::Deref for WriteTx<'_> {
    type Target = sqlx::AnyConnection;

    fn deref(&self) -> &Self::Target {
        &self.tx
    }
}

impl std::ops::DerefMut for WriteTx<'_> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.tx
    }
}

/// A user row as login needs it.
#[derive(Debug, Clone)]
pub struct UserRecord {
    pub id: i64,
    pub username: String,
    pub password_hash: String,
}

impl Store {
    /// Connects (creating the database or SQLite file when missing).
    pub async fn connect(url: &str, max_connections: u32) -> Result<Store, StoreError> {
        install_default_drivers();
        let backend = backend_of(url)?;
        if !Any::database_exists(url).await.unwrap_or(false) {
            Any::create_database(url).await?;
        }
        let mut options = AnyPoolOptions::new()
            .max_connections(max_connections.max(1))
            .acquire_timeout(Duration::from_secs(5));
        if backend == Backend::Sqlite {
            options = options.after_connect(|conn, _meta| {
                Box::pin(async move {
                    // WAL lets readers run beside the one writer; FULL makes every
                    // acknowledged commit survive a crash of the process or machine.
                    conn.execute(
                        "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; \
                         PRAGMA busy_timeout=10000; PRAGMA foreign_keys=ON;",
                    )
                    .await?;
                    Ok(())
                })
            });
        }
        let pool = options.connect(&with_statement_cache(url, backend)).await?;
        Ok(Store {
            pool,
            backend,
            writer: Arc::new(tokio::sync::Mutex::new(())),
            inline_receipts: false,
        })
    }

    /// Stores DELIVERED receipts inline in their inbox entry (see the
    /// field); pulls read both forms whatever this says.
    pub fn with_inline_receipts(mut self, on: bool) -> Store {
        self.inline_receipts = on;
        self
    }

    /// The Postgres writer's batch statement ([`pg_batch`]).
    pub fn batch_statement(&self) -> &'static str {
        if self.inline_receipts {
            pg_batch::INLINE_BATCH_SQL
        } else {
            pg_batch::BATCH_SQL
        }
    }

    /// Begins a transaction that will write. On SQLite it takes the write
    /// lock up front (`BEGIN IMMEDIATE`): a deferred transaction that reads
    /// first and then writes fails with SQLITE_BUSY instead of waiting when
    /// another writer (a committer shard beside a REST write, say) got there first.
    pub async fn begin_write(&self) -> Result<WriteTx<'static>, sqlx::Error> {
        match self.backend {
            Backend::Sqlite => {
                let turn = self.writer.clone().lock_owned().await;
                Ok(WriteTx {
                    tx: self.pool.begin_with("BEGIN IMMEDIATE").await?,
                    _turn: Some(turn),
                })
            }
            Backend::Postgres => Ok(WriteTx {
                tx: self.pool.begin().await?,
                _turn: None,
            }),
        }
    }

    /// [`Self::begin_write`] on the writer's kept connection (taken from
    /// the pool when it has none).
    pub async fn begin_write_on<'c>(
        &self,
        held: &'c mut WriterConn,
    ) -> Result<WriteTx<'c>, sqlx::Error> {
        let turn = match self.backend {
            Backend::Sqlite => Some(self.writer.clone().lock_owned().await),
            Backend::Postgres => None,
        };
        let conn: &mut sqlx::AnyConnection = match &mut held.pooled {
            Some(conn) => conn,
            empty => {
                let mut conn = self.pool.acquire().await?;
                if held.writer && self.backend == Backend::Postgres {
                    conn.close_on_drop();
                    sqlx::query("SET enable_seqscan = off")
                        .execute(&mut *conn)
                        .await?;
                }
                empty.insert(conn)
            }
        };
        let tx = match self.backend {
            Backend::Sqlite => sqlx::Connection::begin_with(conn, "BEGIN IMMEDIATE").await?,
            Backend::Postgres => sqlx::Connection::begin(conn).await?,
        };
        Ok(WriteTx { tx, _turn: turn })
    }

    /// Runs `work` in a write transaction on the writer's kept connection
    /// and commits; a failure closes the connection (it may be broken).
    pub(crate) async fn write_on<T>(
        &self,
        held: &mut WriterConn,
        work: impl AsyncFnOnce(&mut sqlx::AnyConnection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let result = async {
            let mut tx = self.begin_write_on(held).await?;
            let out = work(&mut tx).await?;
            tx.commit().await?;
            Ok(out)
        }
        .await;
        if result.is_err() {
            held.discard();
        }
        result
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Runs the migrations. On Postgres, processes starting together take
    /// turns through a lock of their own ([`MIGRATION_LOCK`]), asked for
    /// again every [`MIGRATION_POLL`] rather than waited on as sqlx waits
    /// for its own: a process waiting for a lock does so inside a statement,
    /// and a concurrent index build (migration 0010), run by the holder,
    /// waits for every statement older than it to end: the two would
    /// deadlock. Before migrating, the holder drops what a failed
    /// concurrent build left behind ([`drop_invalid_indexes`]).
    ///
    /// On both backends, migrations that this build does not know (a newer
    /// build applied them) are let be, so that a logic image rolled back
    /// (or an older pod restarting during a roll) still starts: every
    /// migration so far only adds tables, nullable or defaulted columns
    /// and indexes, or drops indexes. A migration this build knows whose
    /// text changed still fails the start.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        match self.backend {
            Backend::Postgres => {
                // A connection of its own, outside the pool: it holds the
                // lock (the session's) while the migrations run on the pool.
                let mut lock = self.pool.connect_options().connect().await?;
                let migrated = async {
                    let mut waiting_since = None;
                    while !sqlx::query_scalar::<_, bool>("SELECT pg_try_advisory_lock($1)")
                        .bind(MIGRATION_LOCK)
                        .fetch_one(&mut lock)
                        .await?
                    {
                        if waiting_since.is_none() {
                            tracing::info!("another process is migrating the database; waiting");
                            waiting_since = Some(std::time::Instant::now());
                        }
                        tokio::time::sleep(MIGRATION_POLL).await;
                    }
                    if let Some(since) = waiting_since {
                        tracing::info!(
                            waited_ms = since.elapsed().as_millis() as u64,
                            "the other process's migration is done"
                        );
                    }
                    drop_invalid_indexes(&mut lock).await?;
                    let mut migrator = sqlx::migrate!("./migrations/postgres");
                    migrator.set_locking(false).set_ignore_missing(true);
                    migrator.run(&self.pool).await?;
                    Ok::<_, StoreError>(())
                }
                .await;
                // Closing the session releases the lock, however that ended.
                let _ = lock.close().await;
                migrated?;
            }
            Backend::Sqlite => {
                let mut migrator = sqlx::migrate!("./migrations/sqlite");
                migrator.set_ignore_missing(true);
                migrator.run(&self.pool).await?;
            }
        }
        Ok(())
    }

    pub async fn create_user(
        &self,
        username: &str,
        password_hash: &str,
        now_ms: i64,
    ) -> Result<i64, StoreError> {
        let mut tx = self.begin_write().await?;
        let row = sqlx::query(
            "INSERT INTO users (username, password_hash, created_at_ms) VALUES ($1, $2, $3) RETURNING id",
        )
        .bind(username)
        .bind(password_hash)
        .bind(now_ms)
        .fetch_one(&mut *tx)
        .await
        .map_err(|e| match e.as_database_error() {
            Some(d) if d.is_unique_violation() => StoreError::UsernameTaken,
            _ => StoreError::Db(e),
        })?;
        let id: i64 = row.try_get(0)?;
        sqlx::query("INSERT INTO user_seq (user_id, seq) VALUES ($1, 0)")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(id)
    }

    pub async fn user_by_name(&self, username: &str) -> Result<Option<UserRecord>, StoreError> {
        let row = sqlx::query("SELECT id, username, password_hash FROM users WHERE username = $1")
            .bind(username)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| {
            Ok(UserRecord {
                id: r.try_get(0)?,
                username: r.try_get(1)?,
                password_hash: r.try_get(2)?,
            })
        })
        .transpose()
    }

    pub async fn username_of(&self, id: i64) -> Result<Option<String>, StoreError> {
        let row = sqlx::query("SELECT username FROM users WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.try_get(0)).transpose()?)
    }

    pub async fn revoke_token(&self, jti: &str, expires_at_ms: i64) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO revoked_tokens (jti, expires_at_ms) VALUES ($1, $2) ON CONFLICT (jti) DO NOTHING",
        )
        .bind(jti)
        .bind(expires_at_ms)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn is_revoked(&self, jti: &str) -> Result<bool, StoreError> {
        let row = sqlx::query("SELECT 1 FROM revoked_tokens WHERE jti = $1")
            .bind(jti)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.is_some())
    }

    /// Highest sequence in a user's inbox (0 for a new or unknown user).
    pub async fn max_seq(&self, user: i64) -> Result<u64, StoreError> {
        let row = sqlx::query("SELECT seq FROM user_seq WHERE user_id = $1")
            .bind(user)
            .fetch_optional(&self.pool)
            .await?;
        Ok(first_u64(row)?)
    }

    pub async fn cursor(&self, user: i64, device: i64) -> Result<u64, StoreError> {
        let row =
            sqlx::query("SELECT acked_seq FROM device_cursors WHERE user_id = $1 AND device = $2")
                .bind(user)
                .bind(device)
                .fetch_optional(&self.pool)
                .await?;
        Ok(first_u64(row)?)
    }
}

/// The first column of an optional row as a u64 (0 when there is no row).
pub(crate) fn first_u64(row: Option<sqlx::any::AnyRow>) -> Result<u64, sqlx::Error> {
    Ok(row
        .map(|r| r.try_get::<i64, _>(0))
        .transpose()?
        .unwrap_or(0) as u64)
}

/// Prepared statements kept per connection (sqlx's default is 100). Batch
/// statements come in a few padded sizes each (see `sql::padded_ids`);
/// together they need more than the default, or they are evicted and parsed
/// again all the time. A URL that sets its own capacity keeps it.
const STATEMENT_CACHE: usize = 512;

fn with_statement_cache(url: &str, backend: Backend) -> String {
    if backend != Backend::Postgres || url.contains("statement-cache-capacity") {
        return url.to_string();
    }
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}statement-cache-capacity={STATEMENT_CACHE}")
}

fn backend_of(url: &str) -> Result<Backend, StoreError> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Backend::Postgres)
    } else if url.starts_with("sqlite:") {
        Ok(Backend::Sqlite)
    } else {
        Err(StoreError::UnsupportedUrl)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_urls_get_a_bigger_statement_cache_unless_set() {
        let pg = |u| with_statement_cache(u, Backend::Postgres);
        assert_eq!(
            pg("postgres://h/db"),
            "postgres://h/db?statement-cache-capacity=512"
        );
        assert_eq!(
            pg("postgres://h/db?sslmode=disable"),
            "postgres://h/db?sslmode=disable&statement-cache-capacity=512"
        );
        assert_eq!(
            pg("postgres://h/db?statement-cache-capacity=7"),
            "postgres://h/db?statement-cache-capacity=7"
        );
        assert_eq!(
            with_statement_cache("sqlite://x.db", Backend::Sqlite),
            "sqlite://x.db"
        );
    }
}
