//! Device acknowledgements: cursors move forward and DELIVERED receipts are
//! stored and sent, all in one transaction, each (message, device) once.
use std::collections::BTreeMap;

use im_proto::client::{ConversationType, DeviceType, Receipt, ReceiptKind, SystemContentType};
use im_proto::prost::Message as _;
use sqlx::{AnyConnection, Row};

use super::messages::{Delivery, NewMessage};
use super::sql::{self, MAX_ROWS_PER_INSERT};
use super::{Store, StoreError};

/// A device's cumulative acknowledgement: it holds everything up to `seq`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceAck {
    pub user: i64,
    pub device: i32,
    pub seq: u64,
}

/// Client message ids of DELIVERED receipts start with this; the reader's
/// own inbox gets no copy of them.
pub const DELIVERED_PREFIX: &str = "dlv:";

/// First content type reserved for server-generated messages.
pub const SYSTEM_CONTENT_TYPES: i64 = 0xF000;

impl Store {
    /// Applies acknowledgements: advances each device cursor (never back,
    /// never past the user's newest message) and, for the one-to-one messages
    /// from others it newly covers, records DELIVERED receipts and stores one
    /// receipt message per original sender. Returns the deliveries to push.
    pub async fn commit_acks(
        &self,
        acks: &[DeviceAck],
        now_ms: u64,
    ) -> Result<Vec<Delivery>, StoreError> {
        let mut tx = self.begin_write().await?;
        let mut receipts = Vec::new();
        for ack in acks {
            receipts.extend(self.apply_ack(&mut tx, *ack, now_ms).await?);
        }
        let outcome = self.commit_batch_in(&mut tx, &receipts, now_ms).await?;
        tx.commit().await?;
        Ok(outcome.deliveries)
    }

    async fn apply_ack(
        &self,
        tx: &mut AnyConnection,
        ack: DeviceAck,
        now_ms: u64,
    ) -> Result<Vec<NewMessage>, StoreError> {
        let (user, device) = (ack.user, i64::from(ack.device));
        let max: i64 = sqlx::query("SELECT seq FROM user_seq WHERE user_id = $1")
            .bind(user)
            .fetch_optional(&mut *tx)
            .await?
            .map(|r| r.try_get(0))
            .transpose()?
            .unwrap_or(0);
        let old: i64 =
            sqlx::query("SELECT acked_seq FROM device_cursors WHERE user_id = $1 AND device = $2")
                .bind(user)
                .bind(device)
                .fetch_optional(&mut *tx)
                .await?
                .map(|r| r.try_get(0))
                .transpose()?
                .unwrap_or(0);
        let Some((old, seq)) = ack_range(old, ack.seq, max) else {
            return Ok(Vec::new());
        };
        let rows = sqlx::query(
            "SELECT m.id, m.sender FROM inbox i JOIN messages m ON m.id = i.msg_id \
             WHERE i.user_id = $1 AND i.seq > $2 AND i.seq <= $3 AND m.sender <> $1 \
             AND m.conv_type = $4 AND m.content_type < $5 ORDER BY i.seq",
        )
        .bind(user)
        .bind(old)
        .bind(seq)
        .bind(ConversationType::C2c as i64)
        .bind(SYSTEM_CONTENT_TYPES)
        .fetch_all(&mut *tx)
        .await?;
        let mut newly: Vec<(i64, i64)> = Vec::new();
        for chunk in rows.chunks(MAX_ROWS_PER_INSERT) {
            let q = format!(
                "INSERT INTO receipts (msg_id, user_id, device, kind, at_ms) VALUES {} \
                 ON CONFLICT DO NOTHING RETURNING msg_id",
                sql::values(chunk.len(), 5)
            );
            let mut query = sqlx::query(sqlx::AssertSqlSafe(q));
            let mut sender_of = std::collections::HashMap::new();
            for r in chunk {
                let (msg_id, sender): (i64, i64) = (r.try_get(0)?, r.try_get(1)?);
                sender_of.insert(msg_id, sender);
                query = query
                    .bind(msg_id)
                    .bind(user)
                    .bind(device)
                    .bind(ReceiptKind::Delivered as i64)
                    .bind(now_ms as i64);
            }
            for row in query.fetch_all(&mut *tx).await? {
                let msg_id: i64 = row.try_get(0)?;
                if let Some(s) = sender_of.get(&msg_id) {
                    newly.push((msg_id, *s));
                }
            }
        }
        sqlx::query(
            "INSERT INTO device_cursors (user_id, device, acked_seq, updated_at_ms) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (user_id, device) DO UPDATE SET acked_seq = excluded.acked_seq, \
             updated_at_ms = excluded.updated_at_ms WHERE device_cursors.acked_seq < excluded.acked_seq",
        )
        .bind(user)
        .bind(device)
        .bind(seq)
        .bind(now_ms as i64)
        .execute(&mut *tx)
        .await?;
        Ok(receipt_messages(user, ack.device, newly))
    }
}

/// The part of the inbox an acknowledgement newly covers: `(old, new]`, with
/// the ack clamped to the newest message; `None` when it covers nothing new.
pub fn ack_range(old: i64, ack: u64, max: i64) -> Option<(i64, i64)> {
    let new = (ack.min(i64::MAX as u64) as i64).min(max);
    (new > old).then_some((old, new))
}

/// One DELIVERED receipt message per original sender for the messages
/// `reader`'s `device` newly holds (`(msg_id, sender)` pairs).
pub fn receipt_messages(reader: i64, device: i32, newly: Vec<(i64, i64)>) -> Vec<NewMessage> {
    let mut senders: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
    for (msg_id, sender) in newly {
        senders.entry(sender).or_default().push(msg_id);
    }
    senders
        .into_iter()
        .map(|(sender, mut msg_ids)| {
            msg_ids.sort_unstable();
            msg_ids.dedup();
            let (first, last) = (msg_ids[0], msg_ids[msg_ids.len() - 1]);
            let body = Receipt {
                kind: ReceiptKind::Delivered as i32,
                reader,
                device: DeviceType::try_from(device).unwrap_or_default() as i32,
                msg_ids,
                up_to_msg_id: 0,
            };
            NewMessage {
                sender: reader,
                // Receipt sets of one device are disjoint, so (first, last) is unique.
                client_msg_id: format!("{DELIVERED_PREFIX}{device}:{first}:{last}"),
                conv_type: ConversationType::C2c,
                target: sender,
                content_type: SystemContentType::Receipt as u32,
                body: body.encode_to_vec().into(),
                recipients: vec![sender],
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ack_ranges() {
        assert_eq!(ack_range(0, 5, 10), Some((0, 5)));
        assert_eq!(ack_range(3, 50, 10), Some((3, 10)), "clamped to the newest");
        assert_eq!(ack_range(5, 5, 10), None, "nothing new");
        assert_eq!(ack_range(7, 5, 10), None, "never back");
        assert_eq!(ack_range(0, u64::MAX, 4), Some((0, 4)));
    }

    #[test]
    fn one_receipt_per_sender_with_a_unique_id() {
        let msgs = receipt_messages(9, 2, vec![(30, 1), (10, 1), (20, 2), (10, 1)]);
        assert_eq!(msgs.len(), 2);
        let to1 = &msgs[0];
        assert_eq!(
            (to1.sender, to1.target, to1.recipients.clone()),
            (9, 1, vec![1])
        );
        assert_eq!(to1.client_msg_id, "dlv:2:10:30");
        let r = Receipt::decode(to1.body.clone()).unwrap();
        assert_eq!(r.msg_ids, vec![10, 30]);
        assert_eq!(r.kind, ReceiptKind::Delivered as i32);
        assert_eq!(r.device, DeviceType::Desktop as i32);
        assert_eq!(msgs[1].client_msg_id, "dlv:2:20:20");
        assert!(receipt_messages(9, 2, Vec::new()).is_empty());
    }
}
