//! Postgres: a writer's whole batch (its acknowledgements, the DELIVERED
//! receipts they produce, and its messages) in one statement, which runs
//! as its own transaction: one round trip to the database per batch.
//! Batches beyond [`fits`] take the multi-statement path
//! ([`Store::commit_batch_in`] after the acks), as SQLite's all do.
//!
//! The same steps as that path, as CTEs over array parameters (the `Any`
//! driver binds no arrays, so the writer keeps a `PgConnection` of its
//! own). On this machine a round trip costs ~0.1 ms with the machine idle
//! and more under load (`pgbench`: `BEGIN`, four `SELECT 1`, `COMMIT` took
//! 0.55 ms one after the other and 0.11 ms pipelined); the six of a
//! multi-statement batch were most of a writer's fixed cost per batch
//! (1.3 ms at 1,000 msg/s, of which Postgres executed ~0.3). One statement
//! took it to ~0.95 ms and the latency at that rate from p50 3.1–3.6 to
//! 2.2–2.7 ms; at 5,000 msg/s, where the writer's Postgres backend is short
//! of CPU, not of round trips, it changed nothing, and at full batches it
//! costs Postgres more CPU per message (docs/benchmarks.md).
use std::collections::HashMap;

use im_common::api::ApiError;
use im_proto::client::{
    ConversationType, DeviceType, ErrorCode, Receipt, ReceiptKind, SystemContentType,
};
use im_proto::prost::Message as _;
use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{ConnectOptions, Row};

use super::history::SYSTEM_CONTENT_MIN;
use super::messages::{
    BLOCKED_TEXT, BatchOutcome, Delivery, NOT_FRIENDS_TEXT, NewMessage, SendPolicy, SendResult,
    Stored, being_stored, entry_message, final_results, first_copies, inbox_users, own_entry,
    receipt_to, stored,
};
use super::receipts::{
    DeviceAck, covered_sender, move_cursors, newest_per_device, receipt_message,
};
use super::{Store, StoreError};

/// The batch statement. Binds, all arrays one element per row:
/// `$1`–`$7` the messages (sender, client_msg_id, conv_type, target,
/// content_type, body, policy: 0 unchecked, 1 one-to-one, 2 one-to-one
/// between friends only); `$8`, `$9` their recipients as (1-based message,
/// user), in order; `$10`, `$11` their inbox users likewise, and `$12`
/// each entry's `receipt_to` ([`receipt_to`]); `$13`–`$16`
/// the acknowledgements (user, device, sequence, and the start of the
/// bodies of the receipts it produces: [`receipt_head`]), one per device.
/// Then scalars: `$17` the time, `$18` the one-to-one conversation type,
/// `$19` the receipt content type, `$20` the tag of `Receipt.msg_ids`
/// ([`MSG_IDS_TAG`]), which `im_packed_int64s` (migration 0005) appends,
/// `$21` the first system content type (for entries without a
/// `receipt_to`).
///
/// Rows are (kind, item, a, b, c, text, bytes):
/// - 0: item stored, `a` its message id;
/// - 1: item stored before (its first acknowledgement is read afterwards,
///   only when a batch has such items: [`ORIGINALS_SQL`]);
/// - 2: item refused, `a` why (1 unknown user `b`, 2 blocked, 3 not friends);
/// - 3: inbox entry of item, `a` the user, `b` its sequence, `c` its place
///   among the item's inbox users;
/// - 4: a DELIVERED receipt message the acks produced, numbered after the
///   messages: `a` the reader, `b` the original sender, text and bytes its
///   client message id and body.
///
/// As in the multi-statement path ([`super::receipts::ack_sql`]): each
/// ack's cursor moved (never back) by an upsert that locks the cursors in
/// (user, device) order and returns the range it newly covers, read from
/// the newest version of the row, so that each range is taken once
/// however many logic processes acknowledge for one device at a time; the
/// range's entries that want a receipt, read by
/// index (`LATERAL … OFFSET 0`: Postgres would rather hash-join a scan of
/// the whole inbox once there are a few dozen ranges, and `OFFSET 0` keeps
/// the planner from flattening the subquery back into a join), by their
/// `receipt_to` (migration 0007; entries written before it, NULL there, by
/// their message); one receipt message per (device, original sender);
/// then every user the batch writes to locked in id order (a `FOR UPDATE`
/// under `ORDER BY` locks in that order): cursors first and users after,
/// each in one order, so concurrent writers never deadlock; the policy read beside
/// the locks; inserts in batch order; sequences reserved per user and
/// handed out in batch order. Data-modifying CTEs run once, whether or not
/// the query reads them, and see nothing of each other but what they return.
pub const BATCH_SQL: &str = batch_sql!(
    "code = 0",
    "nid = ANY (ARRAY(SELECT id FROM ins))",
    "INSERT INTO inbox (user_id, seq, msg_id, receipt_to) SELECT u, seq, id, rt FROM placed"
);

/// [`BATCH_SQL`] with the DELIVERED receipts it produces stored inline in
/// their inbox entry (migration 0009), without a `messages` row: their ids
/// still come from `messages_id_seq`, and they never conflict (each
/// acknowledged range is taken once). Used when logic runs with
/// `IM_INLINE_RECEIPTS` ([`Store::with_inline_receipts`]). Binds the same
/// parameters and returns the same rows.
pub const INLINE_BATCH_SQL: &str = batch_sql!(
    "code = 0 AND i <= COALESCE(cardinality($1::int8[]), 0)",
    "nid = ANY (ARRAY(SELECT id FROM ins)) OR (code = 0 AND i > COALESCE(cardinality($1::int8[]), 0))",
    "INSERT INTO inbox (user_id, seq, msg_id, receipt_to, sender, client_msg_id, content_type, body, sent_at_ms) \
     SELECT p.u, p.seq, p.id, p.rt, r.s, r.cmid, r.ctype, r.body, CASE WHEN r.i IS NOT NULL THEN $17 END \
     FROM placed p LEFT JOIN items r ON r.i = p.i AND r.i > COALESCE(cardinality($1::int8[]), 0)"
);

/// The batch statement, with the messages it inserts into `messages`
/// (`$ins_where`, over `st`), which items count as stored (`$stored`,
/// over `st`, beside those `ins` returned) and how the inbox entries are
/// written (`$inbox`, from `placed`) as parameters.
macro_rules! batch_sql {
    ($ins_where:literal, $stored:literal, $inbox:literal) => {
        concat!(
    "\
WITH a AS (SELECT * FROM unnest($13::int8[], $14::int8[], $15::int8[], $16::bytea[]) \
      WITH ORDINALITY AS a (user_id, device, ack, head, o)), \
 r AS MATERIALIZED (\
   SELECT a.o, a.user_id, a.device, a.head, LEAST(a.ack, s.seq) AS hi \
   FROM a CROSS JOIN LATERAL (SELECT seq FROM user_seq WHERE user_id = a.user_id OFFSET 0) s \
   LEFT JOIN LATERAL (SELECT acked_seq FROM device_cursors \
     WHERE user_id = a.user_id AND device = a.device OFFSET 0) c ON true \
   WHERE LEAST(a.ack, s.seq) > COALESCE(c.acked_seq, 0)), \
 moved AS (",
    move_cursors!("$17"),
    "), \
 covered AS MATERIALIZED (\
   SELECT r.o, r.user_id, r.device, r.head, c.id, c.sender \
   FROM moved m JOIN r ON r.user_id = m.user_id AND r.device = m.device CROSS JOIN LATERAL (\
     SELECT i.msg_id AS id, ",
    covered_sender!("$18", "$21"),
    " AS sender FROM inbox i \
     WHERE i.user_id = m.user_id AND i.seq > m.lo AND i.seq <= m.hi \
     AND (i.receipt_to IS NULL OR i.receipt_to <> 0) OFFSET 0) c \
   WHERE c.sender IS NOT NULL), \
 rc AS MATERIALIZED (\
   SELECT COALESCE(cardinality($1::int8[]), 0) + row_number() OVER (ORDER BY g.o, g.sender) AS i, g.* FROM (\
     SELECT o, user_id AS reader, device, head, sender, array_agg(id ORDER BY id) AS ids \
     FROM covered GROUP BY o, user_id, device, head, sender) g), \
 items AS MATERIALIZED (\
   SELECT x.i, x.s, x.cmid, x.conv, x.tgt, x.ctype, x.body, x.pol \
   FROM unnest($1::int8[], $2::text[], $3::int8[], $4::int8[], $5::int8[], $6::bytea[], $7::int8[]) \
     WITH ORDINALITY AS x (s, cmid, conv, tgt, ctype, body, pol, i) \
   UNION ALL \
   SELECT i, reader, 'dlv:' || device || ':' || ids[1] || ':' || ids[cardinality(ids)], $18, sender, $19, \
          head || im_packed_int64s($20, ids), 0 FROM rc), \
 rcpt AS (\
   SELECT x.i, x.u, x.o FROM unnest($8::int8[], $9::int8[]) WITH ORDINALITY AS x (i, u, o) \
   UNION ALL SELECT i, sender, 1 FROM rc), \
 ibx AS MATERIALIZED (\
   SELECT x.i, x.u, x.o, x.rt FROM unnest($10::int8[], $11::int8[], $12::int8[]) \
     WITH ORDINALITY AS x (i, u, rt, o) \
   UNION ALL SELECT i, sender, 1, 0 FROM rc), \
 locked AS MATERIALIZED (\
   SELECT user_id FROM user_seq WHERE user_id = ANY (ARRAY(SELECT u FROM ibx UNION SELECT u FROM rcpt)) \
   ORDER BY user_id FOR UPDATE), \
 unknown AS (\
   SELECT DISTINCT ON (x.i) x.i, x.u FROM rcpt x LEFT JOIN locked l ON l.user_id = x.u \
   WHERE l.user_id IS NULL ORDER BY x.i, x.o), \
 st AS MATERIALIZED (\
   SELECT t.*, CASE WHEN t.code = 0 THEN nextval('messages_id_seq') END AS nid FROM (\
     SELECT it.*, un.u AS bad, CASE \
       WHEN un.i IS NOT NULL THEN 1 \
       WHEN it.pol > 0 AND it.s <> it.tgt AND EXISTS (\
         SELECT 1 FROM blocks b WHERE b.user_id = it.tgt AND b.blocked_id = it.s) THEN 2 \
       WHEN it.pol = 2 AND it.s <> it.tgt AND NOT EXISTS (\
         SELECT 1 FROM friends f WHERE f.user_id = it.s AND f.friend_id = it.tgt) THEN 3 \
       ELSE 0 END AS code \
     FROM items it LEFT JOIN unknown un ON un.i = it.i) t \
   ORDER BY t.i), \
 ins AS (\
   INSERT INTO messages (id, sender, client_msg_id, conv_type, target, content_type, body, sent_at_ms) \
   SELECT nid, s, cmid, conv, tgt, ctype, body, $17 FROM st WHERE ",
    $ins_where,
    " ORDER BY i \
   ON CONFLICT (sender, client_msg_id) DO NOTHING RETURNING id), \
 sid AS MATERIALIZED (\
   SELECT array_agg(CASE WHEN ",
    $stored,
    " THEN nid END ORDER BY i) AS ids \
   FROM st), \
 e AS MATERIALIZED (\
   SELECT ibx.i, ibx.u, ibx.o, ibx.rt, sid.ids[ibx.i] AS id, \
          row_number() OVER (PARTITION BY ibx.u ORDER BY ibx.i, ibx.o) AS k \
   FROM ibx, sid WHERE sid.ids[ibx.i] IS NOT NULL), \
 cnt AS (SELECT u, count(*) AS n FROM e GROUP BY u), \
 up AS (\
   UPDATE user_seq SET seq = user_seq.seq + cnt.n FROM cnt \
   WHERE user_seq.user_id = cnt.u AND user_seq.user_id = ANY (ARRAY(SELECT u FROM cnt)) \
   RETURNING user_seq.user_id AS u, user_seq.seq - cnt.n AS base), \
 ub AS (SELECT array_agg(u) AS us, array_agg(base) AS bases FROM up), \
 placed AS MATERIALIZED (\
   SELECT e.i, e.u, e.o, e.rt, e.id, ub.bases[array_position(ub.us, e.u)] + e.k AS seq FROM e, ub), \
 inb AS (",
    $inbox,
    ") \
SELECT 0, st.i, sid.ids[st.i], NULL::int8, NULL::int8, NULL::text, NULL::bytea FROM st, sid \
  WHERE sid.ids[st.i] IS NOT NULL \
UNION ALL \
SELECT 1, st.i, NULL, NULL, NULL, NULL, NULL FROM st, sid \
  WHERE st.code = 0 AND sid.ids[st.i] IS NULL \
UNION ALL \
SELECT 2, i, code, bad, NULL, NULL, NULL FROM st WHERE code > 0 \
UNION ALL \
SELECT 3, i, u, seq, o, NULL, NULL FROM placed \
UNION ALL \
SELECT 4, i, s, tgt, NULL, cmid, body FROM items WHERE i > COALESCE(cardinality($1::int8[]), 0)"
        )
    };
}
use batch_sql;

/// The first acknowledgements of retransmitted messages ([`BATCH_SQL`]'s
/// rows of kind 1), read after the batch committed. Binds the messages'
/// senders and client message ids; rows are (place among them, 1-based;
/// message id; the sender's sequence, NULL for a message without a
/// sender's copy; the time).
///
/// Read here rather than in the batch statement: the statement's insert
/// waits for another writer's transaction storing the first copy, but its
/// snapshot is from before that commit, so read there such a retransmit
/// was answered "being stored; retry". (Its cost was not the reason: the
/// statement with and without that branch took the same Postgres CPU,
/// docs/benchmarks.md.)
pub const ORIGINALS_SQL: &str = concat!(
    "SELECT x.o, m.id, (SELECT i.seq FROM inbox i WHERE i.user_id = m.sender AND i.msg_id = m.id AND ",
    own_entry!(),
    "), m.sent_at_ms \
     FROM unnest($1::int8[], $2::text[]) WITH ORDINALITY AS x (s, cmid, o) \
     CROSS JOIN LATERAL (SELECT id, sender, sent_at_ms FROM messages \
     WHERE sender = x.s AND client_msg_id = x.cmid OFFSET 0) m"
);

/// Opens the writer's own connection, with the pool's settings.
///
/// [`BATCH_SQL`] is planned once, for any arguments
/// (`force_generic_plan`: planning it took ~3.5 ms, longer than running
/// it), and the writer keeps its connection, so the plan lasts until an
/// `ANALYZE` of one of its tables. Every lookup in a table is a `LATERAL …
/// OFFSET 0` subquery (a nested loop over an index) or an `= ANY (ARRAY(…))`
/// index scan, and sequential scans are off on this connection
/// (`enable_seqscan`), so the plan stays an index plan however small the
/// tables were when it was made: on tables that `ANALYZE` had seen empty
/// (an operator's `ANALYZE` after a migration or a restore, or
/// autovacuum's first pass while it is then off or behind) Postgres read
/// every acknowledged range by scanning the whole inbox and
/// `device_cursors`, and a batch of 12 messages with their acks slowed
/// from 2.3 ms to 10 ms over its first 600 batches, and on as the inbox
/// grew. Every statement this connection runs has an index to use; a
/// sequential scan is only priced out, never refused.
///
/// The CTEs' row estimates are guesses (10 rows an array), so they
/// would be joined by nested loops, quadratic in the batch (a batch of
/// 1,000 messages took 290 ms, 64 messages ~5 ms); instead, message ids are
/// taken from the sequence up front (in batch order) and looked up by item
/// number in an array, and each user's reserved sequences likewise.
pub async fn connect(store: &Store) -> Result<PgConnection, StoreError> {
    let url = &store.pool().connect_options().database_url;
    Ok(PgConnectOptions::from_url(url)?
        .options([
            ("plan_cache_mode", "force_generic_plan"),
            ("enable_seqscan", "off"),
        ])
        .connect()
        .await?)
}

/// The key of `Receipt.msg_ids` (field 4, length-delimited: packed).
pub const MSG_IDS_TAG: i32 = (4 << 3) | 2;

/// The encoded `Receipt` of a DELIVERED receipt from `ack`'s device,
/// without its message ids: protobuf fields concatenate, so the statement
/// appends the packed ids ([`MSG_IDS_TAG`], field 4, the last set).
pub fn receipt_head(ack: &DeviceAck) -> Vec<u8> {
    Receipt {
        kind: ReceiptKind::Delivered as i32,
        reader: ack.user,
        device: DeviceType::try_from(ack.device).unwrap_or_default() as i32,
        msg_ids: Vec::new(),
        up_to_msg_id: 0,
    }
    .encode_to_vec()
}

/// Most messages, inbox entries and acknowledgements of a batch that
/// [`BATCH_SQL`] stores; larger batches (a backlog, a large group's
/// fan-out) take the multi-statement path, whose statements scale.
const MAX_ITEMS: usize = 256;
const MAX_ENTRIES: usize = 1024;
const MAX_ACKS: usize = 1024;

/// Whether [`BATCH_SQL`] takes this batch.
pub fn fits(items: &[NewMessage], acks: &[DeviceAck]) -> bool {
    items.len() <= MAX_ITEMS
        && acks.len() <= MAX_ACKS
        && items.iter().map(|m| m.recipients.len() + 1).sum::<usize>() <= MAX_ENTRIES
}

/// The batch's arrays, in [`BATCH_SQL`]'s order.
#[derive(Default)]
struct Arrays<'a> {
    sender: Vec<i64>,
    cmid: Vec<&'a str>,
    conv: Vec<i64>,
    target: Vec<i64>,
    ctype: Vec<i64>,
    body: Vec<&'a [u8]>,
    policy: Vec<i64>,
    rcpt: (Vec<i64>, Vec<i64>),
    inbox: (Vec<i64>, Vec<i64>, Vec<i64>),
}

impl<'a> Arrays<'a> {
    fn push(&mut self, n: i64, m: &'a NewMessage) {
        self.sender.push(m.sender);
        self.cmid.push(&m.client_msg_id);
        self.conv.push(m.conv_type as i64);
        self.target.push(m.target);
        self.ctype.push(i64::from(m.content_type));
        self.body.push(&m.body);
        self.policy.push(match m.policy {
            SendPolicy::Unchecked => 0,
            SendPolicy::C2c {
                friends_only: false,
            } => 1,
            SendPolicy::C2c { friends_only: true } => 2,
        });
        for r in &m.recipients {
            self.rcpt.0.push(n);
            self.rcpt.1.push(*r);
        }
        for u in inbox_users(m) {
            self.inbox.0.push(n);
            self.inbox.1.push(u);
            self.inbox.2.push(receipt_to(m, u));
        }
    }
}

impl Store {
    /// [`Store::commit_with_acks_on`] on Postgres: one statement
    /// ([`BATCH_SQL`], or a variant of it in the store benchmark) on the
    /// writer's own connection. `items` come back followed by the receipt
    /// messages the acks produced, which results and deliveries index into.
    pub(super) async fn commit_in_one_statement(
        &self,
        conn: &mut PgConnection,
        statement: &'static str,
        mut items: Vec<NewMessage>,
        acks: &[DeviceAck],
        now_ms: u64,
    ) -> Result<(Vec<NewMessage>, BatchOutcome), StoreError> {
        // One candidate per (sender, client_msg_id); later copies follow it.
        let (candidates, follows) = first_copies(&items, 0..items.len());
        let mut arrays = Arrays::default();
        for (k, &i) in candidates.iter().enumerate() {
            arrays.push(k as i64 + 1, &items[i]);
        }
        let acks = newest_per_device(acks);
        let ack_col = |f: fn(&DeviceAck) -> i64| acks.iter().map(f).collect::<Vec<i64>>();
        let Arrays {
            sender,
            cmid,
            conv,
            target,
            ctype,
            body,
            policy,
            rcpt,
            inbox,
        } = arrays;
        let rows = sqlx::query(statement)
            .bind(sender)
            .bind(cmid)
            .bind(conv)
            .bind(target)
            .bind(ctype)
            .bind(body)
            .bind(policy)
            .bind(rcpt.0)
            .bind(rcpt.1)
            .bind(inbox.0)
            .bind(inbox.1)
            .bind(inbox.2)
            .bind(ack_col(|a| a.user))
            .bind(ack_col(|a| i64::from(a.device)))
            .bind(ack_col(|a| a.seq.min(i64::MAX as u64) as i64))
            .bind(acks.iter().map(receipt_head).collect::<Vec<Vec<u8>>>())
            .bind(now_ms as i64)
            .bind(ConversationType::C2c as i64)
            .bind(SystemContentType::Receipt as i64)
            .bind(MSG_IDS_TAG)
            .bind(i64::from(SYSTEM_CONTENT_MIN))
            .fetch_all(&mut *conn)
            .await?;

        // Statement items (1-based) → index into `items`; receipts are appended.
        let mut index: Vec<usize> = candidates;
        let mut results: Vec<Option<SendResult>> = vec![None; items.len()];
        let mut msg_ids: HashMap<usize, i64> = HashMap::new();
        let mut entries: Vec<(usize, i64, i64, i64)> = Vec::new();
        // Duplicates and refusals, by statement item.
        let mut answered: Vec<(usize, SendResult)> = Vec::new();
        let mut receipts: Vec<(usize, NewMessage)> = Vec::new();
        let mut retransmits: Vec<usize> = Vec::new();
        for row in &rows {
            let kind: i32 = row.try_get(0)?;
            let item: i64 = row.try_get(1)?;
            let (a, b, c): (Option<i64>, Option<i64>, Option<i64>) =
                (row.try_get(2)?, row.try_get(3)?, row.try_get(4)?);
            if kind == 4 {
                let (reader, sender) = (a.unwrap_or_default(), b.unwrap_or_default());
                let body = row.try_get::<Vec<u8>, _>(6)?.into();
                let m = receipt_message(reader, sender, row.try_get(5)?, body);
                receipts.push((item as usize, m));
                continue;
            }
            let at = item as usize - 1;
            match kind {
                0 => {
                    msg_ids.insert(at, a.unwrap_or_default());
                }
                1 => retransmits.push(at),
                2 => {
                    let refusal = match a {
                        Some(1) => ApiError::new(
                            ErrorCode::UnknownUser,
                            format!("unknown user {}", b.unwrap_or_default()),
                        ),
                        Some(2) => ApiError::new(ErrorCode::Forbidden, BLOCKED_TEXT),
                        _ => ApiError::new(ErrorCode::Forbidden, NOT_FRIENDS_TEXT),
                    };
                    answered.push((at, Err(refusal)));
                }
                _ => entries.push((
                    at,
                    a.unwrap_or_default(),
                    b.unwrap_or_default(),
                    c.unwrap_or_default(),
                )),
            }
        }
        if !retransmits.is_empty() {
            // The batch has committed: a failed read costs only the
            // retransmits their answer (they are sent again), not the batch.
            let copies = retransmits.iter().map(|&at| &items[index[at]]);
            let firsts = originals(conn, copies).await.unwrap_or_else(|e| {
                tracing::warn!(error = %e, "failed to read retransmits' first acknowledgements");
                vec![Err(being_stored()); retransmits.len()]
            });
            answered.extend(retransmits.into_iter().zip(firsts));
        }
        receipts.sort_by_key(|(i, _)| *i);
        for (_, m) in receipts {
            index.push(items.len());
            items.push(m);
            results.push(None);
        }
        for (at, r) in answered {
            results[index[at]] = Some(r);
        }

        // Inbox entries in batch order: by item, then the item's inbox users.
        entries.sort_unstable_by_key(|&(at, _, _, o)| (at, o));
        let mut deliveries = Vec::with_capacity(entries.len());
        for (at, user, seq, _) in entries {
            let i = index[at];
            let m = &items[i];
            let msg_id = msg_ids.get(&at).copied().unwrap_or_default();
            if user == m.sender {
                results[i] = Some(stored(msg_id, seq as u64, now_ms));
            }
            deliveries.push(Delivery {
                user,
                item: i,
                message: entry_message(m, msg_id, seq as u64, now_ms),
            });
        }
        for (at, msg_id) in msg_ids {
            // Messages without a sender copy (server pushes, DELIVERED receipts).
            results[index[at]].get_or_insert(stored(msg_id, 0, now_ms));
        }
        Ok((
            items,
            BatchOutcome {
                results: final_results(results, follows),
                deliveries,
            },
        ))
    }
}

/// The first acknowledgements of `copies` ([`ORIGINALS_SQL`]), in order.
async fn originals<'a>(
    conn: &mut PgConnection,
    copies: impl Iterator<Item = &'a NewMessage>,
) -> Result<Vec<SendResult>, StoreError> {
    let (senders, cmids): (Vec<i64>, Vec<&str>) =
        copies.map(|m| (m.sender, m.client_msg_id.as_str())).unzip();
    let mut firsts = vec![Err(being_stored()); senders.len()];
    let rows = sqlx::query(ORIGINALS_SQL)
        .bind(senders)
        .bind(cmids)
        .fetch_all(&mut *conn)
        .await?;
    for row in &rows {
        let (o, id, seq, at): (i64, i64, Option<i64>, i64) = (
            row.try_get(0)?,
            row.try_get(1)?,
            row.try_get(2)?,
            row.try_get(3)?,
        );
        if let (Some(slot), Some(seq)) = (firsts.get_mut(o as usize - 1), seq) {
            *slot = Ok(Stored {
                msg_id: id,
                sender_seq: seq as u64,
                sent_at_ms: at as u64,
                duplicate: true,
            });
        }
    }
    Ok(firsts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn to(n: usize) -> NewMessage {
        NewMessage {
            sender: 1,
            client_msg_id: "m".into(),
            conv_type: ConversationType::C2g,
            target: 9,
            content_type: 1,
            body: bytes::Bytes::new(),
            recipients: (2..2 + n as i64).collect(),
            policy: SendPolicy::Unchecked,
        }
    }

    #[test]
    fn large_batches_take_the_multi_statement_path() {
        let ack = DeviceAck {
            user: 1,
            device: 1,
            seq: 1,
        };
        assert!(fits(&vec![to(1); MAX_ITEMS], &vec![ack; MAX_ACKS]));
        assert!(!fits(&vec![to(1); MAX_ITEMS + 1], &[]), "too many messages");
        assert!(!fits(&[], &vec![ack; MAX_ACKS + 1]), "too many acks");
        // A message's entries: its recipients' and the sender's own.
        assert!(fits(&[to(MAX_ENTRIES - 1)], &[]));
        assert!(!fits(&[to(MAX_ENTRIES)], &[]), "too many inbox entries");
    }
}
