//! Device acknowledgements: cursors move forward and DELIVERED receipts are
//! stored and sent, all in one transaction, each (message, device) once:
//! a cursor only moves forward, and each move's range is taken once (on
//! Postgres by an upsert that locks the cursor, see [`ack_sql`]).
use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap, VecDeque};

use im_proto::client::{ConversationType, DeviceType, Receipt, ReceiptKind, SystemContentType};
use im_proto::prost::Message as _;
use sqlx::{AnyConnection, Row};

use super::history::SYSTEM_CONTENT_MIN;
use super::messages::{BatchOutcome, Delivery, NewMessage};
use super::sql;
use super::{Store, StoreError, WriterConn};

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
        self.commit_acks_on(&mut WriterConn::default(), acks, now_ms)
            .await
    }

    /// [`Self::commit_acks`] on a writer's kept connection.
    pub async fn commit_acks_on(
        &self,
        held: &mut WriterConn,
        acks: &[DeviceAck],
        now_ms: u64,
    ) -> Result<Vec<Delivery>, StoreError> {
        let (_, outcome) = self
            .commit_with_acks_on(held, Vec::new(), acks, now_ms)
            .await?;
        Ok(outcome.deliveries)
    }

    /// Stores `items` and applies `acks` in one transaction, so that one
    /// writer's message batches and acknowledgements never wait for each
    /// other's row locks and share one commit. The receipt messages the acks
    /// produce are stored after the items: the returned messages are the
    /// items followed by those receipts, and results and deliveries index
    /// into them. On Postgres a batch of the usual size is one statement on
    /// the writer's own connection ([`super::pg_batch`]).
    pub async fn commit_with_acks_on(
        &self,
        held: &mut WriterConn,
        mut items: Vec<NewMessage>,
        acks: &[DeviceAck],
        now_ms: u64,
    ) -> Result<(Vec<NewMessage>, BatchOutcome), StoreError> {
        if self.backend() == super::Backend::Postgres && super::pg_batch::fits(&items, acks) {
            return self
                .commit_with_statement_on(held, self.batch_statement(), items, acks, now_ms)
                .await;
        }
        self.write_on(held, async |tx| {
            if !acks.is_empty() {
                let receipts = self.apply_acks(tx, acks, now_ms).await?;
                items.extend(receipts);
            }
            let outcome = self.commit_batch_in(tx, &items, now_ms).await?;
            Ok((items, outcome))
        })
        .await
    }

    /// A batch as one statement on the writer's own connection (opened if
    /// need be, dropped after a failure): [`Self::commit_with_acks_on`] on
    /// Postgres, with [`super::pg_batch::BATCH_SQL`]. The store benchmark
    /// passes a variant of it, which binds the same parameters and returns
    /// the same rows, for its paired comparisons (`IM_BENCH_AB`). Only for
    /// batches that [`super::pg_batch::fits`].
    pub async fn commit_with_statement_on(
        &self,
        held: &mut WriterConn,
        statement: &'static str,
        items: Vec<NewMessage>,
        acks: &[DeviceAck],
        now_ms: u64,
    ) -> Result<(Vec<NewMessage>, BatchOutcome), StoreError> {
        assert!(
            self.backend() == super::Backend::Postgres && super::pg_batch::fits(&items, acks),
            "a batch statement runs on Postgres, for batches that fit it"
        );
        let conn = match &mut held.pg {
            Some(conn) => conn,
            empty => empty.insert(super::pg_batch::connect(self).await?),
        };
        let result = self
            .commit_in_one_statement(conn, statement, items, acks, now_ms)
            .await;
        if result.is_err() {
            held.discard();
        }
        result
    }

    /// Every acknowledgement of a batch in one query per chunk of devices
    /// (512 on Postgres, 64 on SQLite): read sequences and cursors, move
    /// the cursors, find the newly covered messages. Returns
    /// the receipt messages to store, in the acks' order. (Postgres batches
    /// of the usual size do this inside their one statement instead,
    /// [`super::pg_batch`].)
    async fn apply_acks(
        &self,
        tx: &mut AnyConnection,
        acks: &[DeviceAck],
        now_ms: u64,
    ) -> Result<Vec<NewMessage>, StoreError> {
        let acks = newest_per_device(acks);
        let mut receipts = Vec::new();
        // SQLite's statements bind three parameters per ack and three more:
        // counted as four per ack, 64 acks (at most 195 parameters each:
        // see `sql::SQLITE_MAX_PARAMS`).
        let rows = sql::rows_for(self.backend(), 4);
        for chunk in acks.chunks(rows) {
            let mut newly = match self.backend() {
                super::Backend::Postgres => self.acks_in_one_statement(tx, chunk, now_ms).await?,
                super::Backend::Sqlite => self.acks_in_one_query(tx, chunk, now_ms).await?,
            };
            // One ack per device (above), so each entry is taken once.
            for a in chunk {
                if let Some(pairs) = newly.remove(&(a.user, i64::from(a.device))) {
                    receipts.extend(receipt_messages(a.user, a.device, pairs));
                }
            }
        }
        Ok(receipts)
    }

    /// Postgres: [`ack_sql`] does everything in one round trip.
    async fn acks_in_one_statement(
        &self,
        tx: &mut AnyConnection,
        acks: &[DeviceAck],
        now_ms: u64,
    ) -> Result<NewlyReceipted, StoreError> {
        let n = sql::padded_len(acks.len());
        let mut query = sqlx::query(sql::cached(("acks", n, 0), || ack_sql(n)));
        for a in acks {
            query = query
                .bind(a.user)
                .bind(i64::from(a.device))
                .bind(a.seq.min(i64::MAX as u64) as i64);
        }
        let rows = sql::bind_null_rows(query, acks.len(), 3)
            .bind(now_ms as i64)
            .bind(ConversationType::C2c as i64)
            .bind(i64::from(SYSTEM_CONTENT_MIN))
            .fetch_all(&mut *tx)
            .await?;
        newly_receipted(&rows)
    }

    /// SQLite (no LATERAL, no data-modifying CTEs): one query of two
    /// statements ([`sqlite_acks_sql`]) reads the covered entries that want
    /// a receipt and moves the cursors. Every query is
    /// a trip to the connection's worker thread and back (two thread
    /// switches), which cost the single node more than the statements
    /// themselves.
    async fn acks_in_one_query(
        &self,
        tx: &mut AnyConnection,
        acks: &[DeviceAck],
        now_ms: u64,
    ) -> Result<NewlyReceipted, StoreError> {
        let n = sql::padded_len(acks.len());
        let mut query = sqlx::query(sql::cached(("sqlite acks", n, 0), || sqlite_acks_sql(n)));
        for a in acks {
            query = query
                .bind(a.user)
                .bind(i64::from(a.device))
                .bind(a.seq.min(i64::MAX as u64) as i64);
        }
        let rows = sql::bind_null_rows(query, acks.len(), 3)
            .bind(ConversationType::C2c as i64)
            .bind(i64::from(SYSTEM_CONTENT_MIN))
            .bind(now_ms as i64)
            .fetch_all(&mut *tx)
            .await?;
        newly_receipted(&rows)
    }
}

/// SQLite: `acks` acknowledgements (bound as user, device, sequence, NULL
/// rows for none, then the c2c conversation type, the first system content
/// type and the time) in two statements, each over the range every ack
/// newly covers (from the device's cursor to the ack, clamped to the
/// user's newest sequence):
/// 1. the entries in those ranges that want a DELIVERED receipt, as (user,
///    device, msg_id, sender) rows: their `receipt_to` (migration 0007)
///    says so; entries written before it (NULL there) are decided from
///    their message ([`covered_sender!`]);
/// 2. the cursors, moved only forward.
///
/// The store's one writer at a time (`BEGIN IMMEDIATE`) takes each range
/// once. sqlx binds `$N` by number in every statement of a query, and the
/// second statement sees the cursors as the first read them. SQLite reads
/// each range by the inbox's primary key; Postgres does all this in
/// [`ack_sql`] (or [`super::pg_batch::BATCH_SQL`]).
pub fn sqlite_acks_sql(acks: usize) -> String {
    let (conv, content, now) = (acks * 3 + 1, acks * 3 + 2, acks * 3 + 3);
    let ranges = format!(
        "WITH a (user_id, device, ack) AS (VALUES {}), \
         r AS (SELECT a.user_id, a.device, COALESCE(c.acked_seq, 0) AS lo, \
             MIN(a.ack, s.seq) AS hi FROM a JOIN user_seq s ON s.user_id = a.user_id \
           LEFT JOIN device_cursors c ON c.user_id = a.user_id AND c.device = a.device \
           WHERE MIN(a.ack, s.seq) > COALESCE(c.acked_seq, 0))",
        sql::values(acks, 3)
    );
    format!(
        "{ranges} SELECT * FROM (SELECT r.user_id, r.device, i.msg_id, {} AS sender \
           FROM r JOIN inbox i ON i.user_id = r.user_id \
           WHERE i.seq > r.lo AND i.seq <= r.hi \
           AND (i.receipt_to IS NULL OR i.receipt_to <> 0)) WHERE sender IS NOT NULL; \
         {ranges} INSERT INTO device_cursors (user_id, device, acked_seq, updated_at_ms) \
           SELECT user_id, device, hi, ${now} FROM r WHERE true \
           ON CONFLICT (user_id, device) DO UPDATE SET acked_seq = excluded.acked_seq, \
           updated_at_ms = excluded.updated_at_ms WHERE device_cursors.acked_seq < excluded.acked_seq",
        numbered_covered_sender(conv, content)
    )
}

/// The addressee of the DELIVERED receipt for inbox entry `i` acknowledged
/// by `r.user_id`: its `receipt_to`, or for an entry written before
/// migration 0007 (NULL there) its message's sender if it is a one-to-one
/// user message from someone else (`$conv`, `$content`: the parameters of
/// the c2c type and the first system content type, bound: see
/// [`ack_sql`]). Entries with `receipt_to = 0` are left out by the caller.
/// A macro so that [`super::pg_batch::BATCH_SQL`] stays one literal.
macro_rules! covered_sender {
    ($conv:literal, $content:literal) => {
        concat!(
            "CASE WHEN i.receipt_to IS NULL THEN (",
            "SELECT m.sender FROM messages m WHERE m.id = i.msg_id AND m.sender <> r.user_id ",
            "AND m.conv_type = ",
            $conv,
            " AND m.content_type < ",
            $content,
            ") ELSE i.receipt_to END"
        )
    };
}
pub(super) use covered_sender;

/// Moves the cursors of the acks in CTE `r` (user_id, device, hi) to `hi`,
/// never back, in (user, device) order, and returns each moved cursor's
/// range as (user_id, device, lo, hi): the upsert locks the row and reads
/// where it stood (`prev_seq`, migration 0008) from its newest version,
/// so two writers acknowledging for one device take disjoint ranges.
/// `$now` is the parameter of the time. A macro so that
/// [`super::pg_batch::BATCH_SQL`] stays one literal; [`ack_sql`] uses it too.
macro_rules! move_cursors {
    ($now:literal) => {
        concat!(
            "INSERT INTO device_cursors (user_id, device, acked_seq, prev_seq, updated_at_ms) ",
            "SELECT user_id, device, hi, 0, ",
            $now,
            " FROM r ORDER BY user_id, device ",
            "ON CONFLICT (user_id, device) DO UPDATE SET prev_seq = device_cursors.acked_seq, ",
            "acked_seq = excluded.acked_seq, updated_at_ms = excluded.updated_at_ms ",
            "WHERE device_cursors.acked_seq < excluded.acked_seq ",
            "RETURNING user_id, device, prev_seq AS lo, acked_seq AS hi"
        )
    };
}
pub(super) use move_cursors;

/// [`covered_sender!`] with its parameters numbered `conv` and `content`.
fn numbered_covered_sender(conv: usize, content: usize) -> String {
    covered_sender!("$CONV", "$CONTENT")
        .replace("$CONV", &format!("${conv}"))
        .replace("$CONTENT", &format!("${content}"))
}

/// The newly receipted `(msg_id, sender)` pairs per (user, device).
type NewlyReceipted = HashMap<(i64, i64), Vec<(i64, i64)>>;

/// [`NewlyReceipted`] from (user, device, msg_id, sender) rows.
fn newly_receipted(rows: &[sqlx::any::AnyRow]) -> Result<NewlyReceipted, StoreError> {
    let mut newly = NewlyReceipted::new();
    for row in rows {
        let (user, device): (i64, i64) = (row.try_get(0)?, row.try_get(1)?);
        let (msg_id, sender): (i64, i64) = (row.try_get(2)?, row.try_get(3)?);
        newly
            .entry((user, device))
            .or_default()
            .push((msg_id, sender));
    }
    Ok(newly)
}

/// Postgres: a batch of acknowledgements in one statement. Binds `rows`
/// (user, device, ack) rows (NULL rows pad, see [`sql::padded_values`]),
/// then the time, the c2c conversation type and the first system content
/// type; returns the newly receipted (user, device, msg_id, sender) rows.
///
/// The content condition is bound, not the literal of the partial history
/// indexes ([`super::history::USER_CONTENT`]): with the literal, a plan
/// made while the tables were empty read each covered row's message
/// through a scan of such an index instead of by key, and stayed that way
/// as the tables grew (only entries written before migration 0007 read
/// their message now, see [`covered_sender!`]).
///
/// The same steps as the SQLite path, as CTEs: each ack clamped to the
/// user's newest sequence, and left out when the cursor is already there;
/// the cursors moved (never back) by an upsert in (user, device) order,
/// which locks each row and returns its previous position (`prev_seq`,
/// migration 0008) and its new one, read from the newest version of the
/// row: a device acknowledging through two logic processes at once
/// (two connections of one device type on different gateways) has its
/// ranges taken once, one after the other, where ranges read from the
/// statement's snapshot could overlap; the entries in each range that
/// want a receipt, each range read by index (`LATERAL … OFFSET 0`:
/// Postgres would rather hash-join a scan of the whole inbox once there
/// are a few dozen ranges, and `OFFSET 0` keeps the planner from
/// flattening the subquery back into a join). Acks must be one per device
/// ([`newest_per_device`]): an upsert may not touch a row twice.
pub fn ack_sql(rows: usize) -> String {
    let (now, conv, content) = (rows * 3 + 1, rows * 3 + 2, rows * 3 + 3);
    format!(
        "WITH a (user_id, device, ack) AS (VALUES {values}), \
         r AS MATERIALIZED (\
           SELECT a.user_id, a.device, LEAST(a.ack, s.seq) AS hi \
           FROM a JOIN user_seq s ON s.user_id = a.user_id \
           LEFT JOIN device_cursors c ON c.user_id = a.user_id AND c.device = a.device \
           WHERE LEAST(a.ack, s.seq) > COALESCE(c.acked_seq, 0)), \
         moved AS ({moved}) \
         SELECT r.user_id, r.device, c.id, c.sender FROM moved r CROSS JOIN LATERAL (\
           SELECT i.msg_id AS id, {sender} AS sender FROM inbox i \
           WHERE i.user_id = r.user_id AND i.seq > r.lo AND i.seq <= r.hi \
           AND (i.receipt_to IS NULL OR i.receipt_to <> 0) OFFSET 0) c \
         WHERE c.sender IS NOT NULL",
        values = sql::values(rows, 3),
        moved = move_cursors!("$NOW").replace("$NOW", &format!("${now}")),
        sender = numbered_covered_sender(conv, content)
    )
}

/// Keeps the highest ack per (user, device), in first-seen order.
pub fn newest_per_device(acks: &[DeviceAck]) -> Vec<DeviceAck> {
    let mut q = AckQueue::default();
    acks.iter().for_each(|a| q.push(*a));
    q.take(acks.len())
}

/// Acks, one per device: a device's later ack replaces its held one (acks
/// are cumulative) and keeps its place. [`newest_per_device`] folds a
/// batch with it, and the store writers queue their acks in one
/// (`committer.rs`): however far a writer is behind, its queue holds at
/// most one ack per device, each covering all its device has received.
///
/// A plain queue, with a writer behind (at 5,000 msg/s on a slow machine:
/// ~50 batches a second of ~100 messages, 32 acks each, against ~5,000
/// acks a second), filled with acks that their devices' later ones had
/// overtaken and worked through them oldest first while the newest waited
/// (in one such run 4,648 of 150,000 messages were still without their
/// DELIVERED receipt when the load generator stopped). Its channel then
/// fills (at that rate within seconds), and a full channel drops the
/// newest acks. (The other cure, taking one ack per message instead of
/// 32, 256 a full batch, left c2c-throughput 8–16 % lower in two
/// interleaved pairs.)
#[derive(Default)]
pub struct AckQueue {
    acks: VecDeque<DeviceAck>,
    /// Each queued device's place, counted from the first ack ever queued.
    at: HashMap<(i64, i32), usize>,
    /// The place of `acks[0]`.
    head: usize,
}

impl AckQueue {
    pub fn push(&mut self, a: DeviceAck) {
        match self.at.entry((a.user, a.device)) {
            Entry::Occupied(e) => {
                let held = &mut self.acks[*e.get() - self.head];
                held.seq = held.seq.max(a.seq);
            }
            Entry::Vacant(e) => {
                e.insert(self.head + self.acks.len());
                self.acks.push_back(a);
            }
        }
    }

    pub fn len(&self) -> usize {
        self.acks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.acks.is_empty()
    }

    /// The `most` oldest (all when fewer).
    pub fn take(&mut self, most: usize) -> Vec<DeviceAck> {
        let taken: Vec<DeviceAck> = self.acks.drain(..most.min(self.acks.len())).collect();
        for a in &taken {
            self.at.remove(&(a.user, a.device));
        }
        self.head += taken.len();
        taken
    }
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
            // Receipt sets of one device are disjoint, so (first, last) is unique.
            let client_msg_id = format!("{DELIVERED_PREFIX}{device}:{first}:{last}");
            receipt_message(reader, sender, client_msg_id, body.encode_to_vec().into())
        })
        .collect()
}

/// A DELIVERED receipt message from `reader` to the original `sender`
/// (the only inbox it goes to), with its encoded `Receipt` body.
pub fn receipt_message(
    reader: i64,
    sender: i64,
    client_msg_id: String,
    body: bytes::Bytes,
) -> NewMessage {
    NewMessage {
        sender: reader,
        client_msg_id,
        conv_type: ConversationType::C2c,
        target: sender,
        content_type: SystemContentType::Receipt as u32,
        body,
        recipients: vec![sender],
        policy: super::messages::SendPolicy::Unchecked,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_newest_ack_per_device() {
        let a = |user, device, seq| DeviceAck { user, device, seq };
        let batch = vec![a(1, 1, 5), a(1, 2, 3), a(1, 1, 9), a(1, 1, 7), a(2, 1, 1)];
        assert_eq!(
            newest_per_device(&batch),
            vec![a(1, 1, 9), a(1, 2, 3), a(2, 1, 1)]
        );
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
