//! Friend requests, friendships (with their per-pair keys) and blocks: rows
//! in and out. Who may do what is decided in `crate::social`, not here.
use std::collections::HashSet;

use sqlx::Row;
use sqlx::any::AnyRow;

use super::sql;
use super::{Store, StoreError};

pub const REQUEST_PENDING: i64 = 0;
pub const REQUEST_ACCEPTED: i64 = 1;
pub const REQUEST_REJECTED: i64 = 2;

/// A friend request as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FriendRequest {
    pub id: i64,
    pub from_user: i64,
    pub to_user: i64,
    pub note: String,
    pub status: i64,
    pub created_at_ms: i64,
}

/// One side of a friendship.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Friend {
    pub user_id: i64,
    pub username: String,
    pub since_ms: i64,
}

fn request_from_row(r: &AnyRow) -> Result<FriendRequest, sqlx::Error> {
    Ok(FriendRequest {
        id: r.try_get(0)?,
        from_user: r.try_get(1)?,
        to_user: r.try_get(2)?,
        note: r.try_get(3)?,
        status: r.try_get(4)?,
        created_at_ms: r.try_get(5)?,
    })
}

const REQUEST_COLS: &str = "id, from_user, to_user, note, status, created_at_ms";

impl Store {
    /// Which of `ids` are registered users.
    pub async fn existing_users(&self, ids: &[i64]) -> Result<HashSet<i64>, StoreError> {
        let mut found = HashSet::new();
        for chunk in ids.chunks(sql::rows_for(self.backend(), 1)) {
            let q = format!(
                "SELECT id FROM users WHERE id IN ({})",
                sql::list(chunk.len(), 1)
            );
            let mut query = sqlx::query(sqlx::AssertSqlSafe(q));
            for id in chunk {
                query = query.bind(*id);
            }
            for row in query.fetch_all(&self.pool).await? {
                found.insert(row.try_get::<i64, _>(0)?);
            }
        }
        Ok(found)
    }

    /// The pending request from `from` to `to`, if any.
    pub async fn pending_request_between(
        &self,
        from: i64,
        to: i64,
    ) -> Result<Option<FriendRequest>, StoreError> {
        let q = format!(
            "SELECT {REQUEST_COLS} FROM friend_requests \
             WHERE from_user = $1 AND to_user = $2 AND status = $3 ORDER BY id LIMIT 1"
        );
        let row = sqlx::query(sqlx::AssertSqlSafe(q))
            .bind(from)
            .bind(to)
            .bind(REQUEST_PENDING)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.as_ref().map(request_from_row).transpose()?)
    }

    pub async fn insert_friend_request(
        &self,
        from: i64,
        to: i64,
        note: &str,
        now_ms: i64,
    ) -> Result<i64, StoreError> {
        let row = sqlx::query(
            "INSERT INTO friend_requests (from_user, to_user, note, status, created_at_ms, updated_at_ms) \
             VALUES ($1, $2, $3, $4, $5, $5) RETURNING id",
        )
        .bind(from)
        .bind(to)
        .bind(note)
        .bind(REQUEST_PENDING)
        .bind(now_ms)
        .fetch_one(&self.pool)
        .await?;
        Ok(row.try_get(0)?)
    }

    pub async fn friend_request(&self, id: i64) -> Result<Option<FriendRequest>, StoreError> {
        let q = format!("SELECT {REQUEST_COLS} FROM friend_requests WHERE id = $1");
        let row = sqlx::query(sqlx::AssertSqlSafe(q))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.as_ref().map(request_from_row).transpose()?)
    }

    /// Pending requests to (`incoming`) or from `user`.
    pub async fn pending_requests(
        &self,
        user: i64,
        incoming: bool,
    ) -> Result<Vec<FriendRequest>, StoreError> {
        let col = if incoming { "to_user" } else { "from_user" };
        let q = format!(
            "SELECT {REQUEST_COLS} FROM friend_requests WHERE {col} = $1 AND status = $2 ORDER BY id"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(q))
            .bind(user)
            .bind(REQUEST_PENDING)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows
            .iter()
            .map(request_from_row)
            .collect::<Result<_, _>>()?)
    }

    /// Sets a pending request's status; false when it was no longer pending.
    pub async fn close_request(
        &self,
        id: i64,
        status: i64,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let r = sqlx::query(
            "UPDATE friend_requests SET status = $1, updated_at_ms = $2 WHERE id = $3 AND status = $4",
        )
        .bind(status)
        .bind(now_ms)
        .bind(id)
        .bind(REQUEST_PENDING)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() > 0)
    }

    /// Makes `a` and `b` friends with `key` (both rows in one transaction),
    /// and closes every pending request between them as accepted.
    pub async fn befriend(&self, a: i64, b: i64, key: &str, now_ms: i64) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        for (x, y) in [(a, b), (b, a)] {
            sqlx::query(
                "INSERT INTO friends (user_id, friend_id, pair_key, created_at_ms) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (user_id, friend_id) DO NOTHING",
            )
            .bind(x)
            .bind(y)
            .bind(key)
            .bind(now_ms)
            .execute(&mut *tx)
            .await?;
        }
        sqlx::query(
            "UPDATE friend_requests SET status = $1, updated_at_ms = $2 WHERE status = $3 AND \
             ((from_user = $4 AND to_user = $5) OR (from_user = $5 AND to_user = $4))",
        )
        .bind(REQUEST_ACCEPTED)
        .bind(now_ms)
        .bind(REQUEST_PENDING)
        .bind(a)
        .bind(b)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn are_friends(&self, a: i64, b: i64) -> Result<bool, StoreError> {
        Ok(self.pair_key(a, b).await?.is_some())
    }

    /// The per-pair key of a friendship, if `a` and `b` are friends.
    pub async fn pair_key(&self, a: i64, b: i64) -> Result<Option<String>, StoreError> {
        let row = sqlx::query("SELECT pair_key FROM friends WHERE user_id = $1 AND friend_id = $2")
            .bind(a)
            .bind(b)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.try_get(0)).transpose()?)
    }

    pub async fn friends_of(&self, user: i64) -> Result<Vec<Friend>, StoreError> {
        let rows = sqlx::query(
            "SELECT f.friend_id, u.username, f.created_at_ms FROM friends f \
             JOIN users u ON u.id = f.friend_id WHERE f.user_id = $1 ORDER BY f.friend_id",
        )
        .bind(user)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(Friend {
                    user_id: r.try_get(0)?,
                    username: r.try_get(1)?,
                    since_ms: r.try_get(2)?,
                })
            })
            .collect()
    }

    /// Ends a friendship on both sides; false when there was none.
    pub async fn unfriend(&self, a: i64, b: i64) -> Result<bool, StoreError> {
        let r = sqlx::query(
            "DELETE FROM friends WHERE (user_id = $1 AND friend_id = $2) OR (user_id = $2 AND friend_id = $1)",
        )
        .bind(a)
        .bind(b)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() > 0)
    }

    pub async fn block(&self, user: i64, blocked: i64, now_ms: i64) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO blocks (user_id, blocked_id, created_at_ms) VALUES ($1, $2, $3) \
             ON CONFLICT (user_id, blocked_id) DO NOTHING",
        )
        .bind(user)
        .bind(blocked)
        .bind(now_ms)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn unblock(&self, user: i64, blocked: i64) -> Result<bool, StoreError> {
        let r = sqlx::query("DELETE FROM blocks WHERE user_id = $1 AND blocked_id = $2")
            .bind(user)
            .bind(blocked)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() > 0)
    }

    /// Whether `user` blocked `other`.
    pub async fn has_blocked(&self, user: i64, other: i64) -> Result<bool, StoreError> {
        let row = sqlx::query("SELECT 1 FROM blocks WHERE user_id = $1 AND blocked_id = $2")
            .bind(user)
            .bind(other)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.is_some())
    }

    /// The users `user` blocked, ascending.
    pub async fn blocked_by(&self, user: i64) -> Result<Vec<i64>, StoreError> {
        let rows =
            sqlx::query("SELECT blocked_id FROM blocks WHERE user_id = $1 ORDER BY blocked_id")
                .bind(user)
                .fetch_all(&self.pool)
                .await?;
        rows.iter().map(|r| Ok(r.try_get::<i64, _>(0)?)).collect()
    }
}
