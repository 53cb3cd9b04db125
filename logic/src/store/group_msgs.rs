//! Read diffusion: a large group's message is stored once with one per-group
//! sequence, and members pull the group by their own cursor. Nothing here
//! writes per-member rows; the write-diffusion path is `commit_batch`.
use im_proto::client::Message;
use sqlx::Row;

use super::messages::NewMessage;
use super::{Store, StoreError};

/// The acknowledgement of a read-diffusion message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupStored {
    pub msg_id: i64,
    pub group_seq: u64,
    pub sent_at_ms: u64,
    pub duplicate: bool,
}

impl Store {
    /// Stores one group message under the next group sequence, in one
    /// transaction; idempotent on (sender, client_msg_id). `m.target` is the group.
    pub async fn commit_group_message(
        &self,
        m: &NewMessage,
        now_ms: u64,
    ) -> Result<Option<GroupStored>, StoreError> {
        let mut tx = self.begin_write().await?;
        let row = sqlx::query(
            "INSERT INTO messages (sender, client_msg_id, conv_type, target, content_type, body, sent_at_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (sender, client_msg_id) DO NOTHING RETURNING id",
        )
        .bind(m.sender)
        .bind(m.client_msg_id.as_str())
        .bind(m.conv_type as i64)
        .bind(m.target)
        .bind(i64::from(m.content_type))
        .bind(m.body.to_vec())
        .bind(now_ms as i64)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            // Stored before: the original acknowledgement (None while the first
            // transaction has not committed).
            let orig = sqlx::query(
                "SELECT m.id, g.seq, m.sent_at_ms FROM messages m \
                 JOIN group_inbox g ON g.msg_id = m.id WHERE m.sender = $1 AND m.client_msg_id = $2",
            )
            .bind(m.sender)
            .bind(m.client_msg_id.as_str())
            .fetch_optional(&mut *tx)
            .await?;
            tx.rollback().await?;
            return orig
                .map(|r| {
                    Ok(GroupStored {
                        msg_id: r.try_get(0)?,
                        group_seq: r.try_get::<i64, _>(1)? as u64,
                        sent_at_ms: r.try_get::<i64, _>(2)? as u64,
                        duplicate: true,
                    })
                })
                .transpose();
        };
        let msg_id: i64 = row.try_get(0)?;
        // The row lock on group_seq orders a group's messages by commit.
        let seq: i64 =
            sqlx::query("UPDATE group_seq SET seq = seq + 1 WHERE group_id = $1 RETURNING seq")
                .bind(m.target)
                .fetch_one(&mut *tx)
                .await?
                .try_get(0)?;
        sqlx::query("INSERT INTO group_inbox (group_id, seq, msg_id) VALUES ($1, $2, $3)")
            .bind(m.target)
            .bind(seq)
            .bind(msg_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Some(GroupStored {
            msg_id,
            group_seq: seq as u64,
            sent_at_ms: now_ms,
            duplicate: false,
        }))
    }

    /// Up to `limit` read-diffusion messages of a group after `after_seq`
    /// sent at or after `since_ms`, ascending; each has `seq` 0 and `group_seq` set.
    pub async fn pull_group(
        &self,
        group: i64,
        since_ms: i64,
        after_seq: u64,
        limit: u32,
    ) -> Result<(Vec<Message>, bool), StoreError> {
        let rows = sqlx::query(
            "SELECT g.seq, m.id, m.sender, m.conv_type, m.target, m.client_msg_id, m.content_type, m.body, m.sent_at_ms \
             FROM group_inbox g JOIN messages m ON m.id = g.msg_id \
             WHERE g.group_id = $1 AND g.seq > $2 AND m.sent_at_ms >= $3 ORDER BY g.seq LIMIT $4",
        )
        .bind(group)
        .bind(after_seq as i64)
        .bind(since_ms)
        .bind(i64::from(limit) + 1)
        .fetch_all(&self.pool)
        .await?;
        Ok(super::messages::page(&rows, limit, true)?)
    }

    /// The highest read-diffusion sequence of a group (0 when none).
    pub async fn group_max_seq(&self, group: i64) -> Result<u64, StoreError> {
        let row = sqlx::query("SELECT seq FROM group_seq WHERE group_id = $1")
            .bind(group)
            .fetch_optional(&self.pool)
            .await?;
        Ok(super::first_u64(row)?)
    }
}
