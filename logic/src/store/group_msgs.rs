//! Read diffusion: a large group's message is stored once with one per-group
//! sequence, and members pull the group by their own cursor. Nothing here
//! writes per-member rows; the write-diffusion path is `commit_batch`.
use std::collections::BTreeMap;

use im_proto::client::Message;
use sqlx::{AnyConnection, Row};

use super::messages::{NewMessage, SeqTable, first_copies, insert_entries, insert_messages};
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
        let (candidates, follows) = first_copies(items, 0..items.len());
        let new: Vec<&NewMessage> = candidates.iter().map(|&i| &items[i]).collect();
        let inserted = insert_messages(&mut tx, &new, now_ms).await?;
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
        let mut next = self
            .allocate(&mut tx, SeqTable::Groups, &counts, true)
            .await?;
        let mut rows: Vec<[Option<i64>; 3]> = Vec::with_capacity(fresh.len());
        for (i, msg_id) in fresh {
            let group = items[i].target;
            let Some(seq) = next.get_mut(&group) else {
                return Err(StoreError::Db(sqlx::Error::RowNotFound));
            };
            rows.push([Some(group), Some(*seq as i64), Some(msg_id)]);
            results[i] = Some(GroupStored {
                msg_id,
                group_seq: *seq,
                sent_at_ms: now_ms,
                duplicate: false,
            });
            *seq += 1;
        }
        insert_entries(&mut tx, "group_inbox (group_id, seq, msg_id)", &rows).await?;
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
