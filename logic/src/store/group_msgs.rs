//! Read diffusion: a large group's message is stored once with one per-group
//! sequence, and members pull the group by their own cursor. Nothing here
//! writes per-member rows; the write-diffusion path is `commit_batch`.
use std::collections::{BTreeMap, HashMap};

use im_proto::client::Message;
use sqlx::{AnyConnection, Row};

use super::messages::{NewMessage, SeqTable};
use super::sql::{self, MAX_ROWS_PER_INSERT};
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
        let mut out = self
            .commit_group_batch(std::slice::from_ref(m), now_ms)
            .await?;
        Ok(out.pop().flatten())
    }

    /// Stores read-diffusion messages (each `target` a group) in one
    /// transaction: each group's new messages get consecutive group
    /// sequences in batch order. Idempotent on (sender, client_msg_id): a
    /// repeat gets the original acknowledgement, or `None` while the first
    /// copy's transaction has not committed.
    pub async fn commit_group_batch(
        &self,
        items: &[NewMessage],
        now_ms: u64,
    ) -> Result<Vec<Option<GroupStored>>, StoreError> {
        let mut tx = self.begin_write().await?;
        let mut results: Vec<Option<GroupStored>> = vec![None; items.len()];
        let mut first: HashMap<(i64, &str), usize> = HashMap::new();
        let mut follows: Vec<(usize, usize)> = Vec::new();
        let mut candidates: Vec<usize> = Vec::new();
        for (i, m) in items.iter().enumerate() {
            match first.get(&(m.sender, m.client_msg_id.as_str())) {
                Some(&j) => follows.push((i, j)),
                None => {
                    first.insert((m.sender, m.client_msg_id.as_str()), i);
                    candidates.push(i);
                }
            }
        }
        let mut inserted: HashMap<(i64, String), i64> = HashMap::new();
        for chunk in candidates.chunks(MAX_ROWS_PER_INSERT) {
            let q = format!(
                "INSERT INTO messages (sender, client_msg_id, conv_type, target, content_type, body, sent_at_ms) \
                 VALUES {} ON CONFLICT (sender, client_msg_id) DO NOTHING RETURNING id, sender, client_msg_id",
                sql::values(chunk.len(), 7)
            );
            let mut query = sqlx::query(sqlx::AssertSqlSafe(q));
            for &i in chunk {
                let m = &items[i];
                query = query
                    .bind(m.sender)
                    .bind(m.client_msg_id.as_str())
                    .bind(m.conv_type as i64)
                    .bind(m.target)
                    .bind(i64::from(m.content_type))
                    .bind(m.body.to_vec())
                    .bind(now_ms as i64);
            }
            for row in query.fetch_all(&mut *tx).await? {
                inserted.insert((row.try_get(1)?, row.try_get(2)?), row.try_get(0)?);
            }
        }
        let mut fresh: Vec<(usize, i64)> = Vec::new();
        let mut counts: BTreeMap<i64, i64> = BTreeMap::new();
        for &i in &candidates {
            let m = &items[i];
            match inserted.get(&(m.sender, m.client_msg_id.clone())) {
                Some(&id) => {
                    fresh.push((i, id));
                    *counts.entry(m.target).or_default() += 1;
                }
                None => results[i] = self.original_group_ack(&mut tx, m).await?,
            }
        }
        // The row lock on group_seq orders a group's batches by commit.
        let mut next = self.allocate(&mut tx, SeqTable::Groups, &counts).await?;
        let mut rows: Vec<(i64, i64, i64)> = Vec::with_capacity(fresh.len());
        for (i, msg_id) in fresh {
            let group = items[i].target;
            let Some(seq) = next.get_mut(&group) else {
                return Err(StoreError::Db(sqlx::Error::RowNotFound));
            };
            rows.push((group, *seq as i64, msg_id));
            results[i] = Some(GroupStored {
                msg_id,
                group_seq: *seq,
                sent_at_ms: now_ms,
                duplicate: false,
            });
            *seq += 1;
        }
        for chunk in rows.chunks(MAX_ROWS_PER_INSERT) {
            let q = format!(
                "INSERT INTO group_inbox (group_id, seq, msg_id) VALUES {}",
                sql::values(chunk.len(), 3)
            );
            let mut query = sqlx::query(sqlx::AssertSqlSafe(q));
            for (g, seq, id) in chunk {
                query = query.bind(*g).bind(*seq).bind(*id);
            }
            query.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        for (i, j) in follows {
            results[i] = results[j].map(|s| GroupStored {
                duplicate: true,
                ..s
            });
        }
        Ok(results)
    }

    async fn original_group_ack(
        &self,
        tx: &mut AnyConnection,
        m: &NewMessage,
    ) -> Result<Option<GroupStored>, StoreError> {
        let orig = sqlx::query(
            "SELECT m.id, g.seq, m.sent_at_ms FROM messages m \
             JOIN group_inbox g ON g.msg_id = m.id WHERE m.sender = $1 AND m.client_msg_id = $2",
        )
        .bind(m.sender)
        .bind(m.client_msg_id.as_str())
        .fetch_optional(&mut *tx)
        .await?;
        orig.map(|r| {
            Ok(GroupStored {
                msg_id: r.try_get(0)?,
                group_seq: r.try_get::<i64, _>(1)? as u64,
                sent_at_ms: r.try_get::<i64, _>(2)? as u64,
                duplicate: true,
            })
        })
        .transpose()
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
