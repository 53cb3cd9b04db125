//! Messages and inboxes: the group-commit batch and paged pulls. One batch is
//! one transaction; nothing here is acknowledged before its commit returns.
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use im_common::api::ApiError;
use im_proto::client::{ConversationType, ErrorCode, Message, SystemContentType};
use sqlx::AnyConnection;
use sqlx::Row;
use sqlx::any::AnyRow;

use super::sql;
use super::{Store, StoreError, WriterConn};

/// A pull page stops growing once its bodies pass this many bytes.
pub const MAX_PULL_BYTES: usize = 1024 * 1024;

/// A message to store, with every user (other than the sender) whose inbox gets it.
#[derive(Debug, Clone)]
pub struct NewMessage {
    pub sender: i64,
    pub client_msg_id: String,
    pub conv_type: ConversationType,
    pub target: i64,
    pub content_type: u32,
    pub body: bytes::Bytes,
    pub recipients: Vec<i64>,
    /// Checked inside the batch's transaction, against the committed state.
    pub policy: SendPolicy,
}

/// Who may send a message, decided in the batch (one query per batch, not
/// one per message).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendPolicy {
    /// System messages and group messages (checked before they are queued).
    Unchecked,
    /// One-to-one: refused when the recipient blocked the sender and, with
    /// `friends_only`, unless they are friends. Messages to oneself pass.
    C2c { friends_only: bool },
}

/// Tables of per-key sequences.
#[derive(Debug, Clone, Copy)]
pub(super) enum SeqTable {
    Users,
    Groups,
}

/// The answer to a retransmit whose first copy cannot be read (yet): its
/// transaction has not committed, or the read failed.
pub fn being_stored() -> ApiError {
    ApiError::unavailable("message is being stored; retry")
}

/// Refusal texts of the one-to-one policy (the same as the REST check's).
pub const BLOCKED_TEXT: &str = "the recipient has blocked you";
pub const NOT_FRIENDS_TEXT: &str =
    "only friends may message each other on this server; send a friend request first";

/// The acknowledgement of one stored message (receipt SENT).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stored {
    pub msg_id: i64,
    pub sender_seq: u64,
    pub sent_at_ms: u64,
    pub duplicate: bool,
}

pub type SendResult = Result<Stored, ApiError>;

/// One inbox entry to push: `message.seq` is in `user`'s own sequence.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub user: i64,
    /// Index of the batch item this delivery came from.
    pub item: usize,
    pub message: Message,
}

#[derive(Debug, Default)]
pub struct BatchOutcome {
    /// One result per input item, in input order.
    pub results: Vec<SendResult>,
    /// Inbox entries written by this batch, in commit order.
    pub deliveries: Vec<Delivery>,
}

impl SeqTable {
    /// The table and its key column.
    fn names(self) -> (&'static str, &'static str) {
        match self {
            SeqTable::Users => ("user_seq", "user_id"),
            SeqTable::Groups => ("group_seq", "group_id"),
        }
    }
}

impl Store {
    /// Stores a batch of messages in one transaction: idempotent on
    /// (sender, client_msg_id), one inbox entry per recipient user with a
    /// freshly allocated per-user sequence. The writers' path
    /// ([`Self::commit_with_acks_on`]) without acknowledgements.
    pub async fn commit_batch(
        &self,
        items: &[NewMessage],
        now_ms: u64,
    ) -> Result<BatchOutcome, StoreError> {
        let (_, outcome) = self
            .commit_with_acks_on(&mut WriterConn::default(), items.to_vec(), &[], now_ms)
            .await?;
        Ok(outcome)
    }

    /// [`Self::commit_batch`] inside a caller's transaction (receipts are
    /// recorded and sent in the same transaction as their bookkeeping).
    pub async fn commit_batch_in(
        &self,
        tx: &mut AnyConnection,
        items: &[NewMessage],
        now_ms: u64,
    ) -> Result<BatchOutcome, StoreError> {
        let mut results: Vec<Option<SendResult>> = vec![None; items.len()];

        // 1. Every user whose inbox the batch may write, locked in id order
        // (so concurrent batches never deadlock on Postgres); unknown
        // recipients are refused before anything is written.
        let users: Vec<i64> = items
            .iter()
            .flat_map(|m| inbox_users(m).chain(m.recipients.iter().copied()))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        // 1b. With the one-to-one policy, for every checked message at once.
        let (known, refused) = self.lock_and_check(&mut *tx, &users, items).await?;

        // 2. Refusals; one candidate per (sender, client_msg_id), later
        // copies follow the first.
        let mut eligible = Vec::with_capacity(items.len());
        for (i, m) in items.iter().enumerate() {
            if let Some(r) = m.recipients.iter().find(|r| !known.contains(r)) {
                results[i] = Some(Err(ApiError::new(
                    ErrorCode::UnknownUser,
                    format!("unknown user {r}"),
                )));
            } else if let SendPolicy::C2c { .. } = m.policy
                && let Some(text) = refused.get(&(m.sender, m.target))
            {
                results[i] = Some(Err(ApiError::new(ErrorCode::Forbidden, *text)));
            } else {
                eligible.push(i);
            }
        }
        let (candidates, follows) = first_copies(items, eligible);

        // 3. Insert; a conflict means the message was stored before.
        let fresh: Vec<&NewMessage> = candidates.iter().map(|&i| &items[i]).collect();
        let inserted = insert_messages(&mut *tx, &fresh, now_ms).await?;

        // 4. Allocate sequences: per user, in batch order, users locked in id order.
        let mut new_items: Vec<(usize, i64)> = Vec::new();
        let mut counts: BTreeMap<i64, i64> = BTreeMap::new();
        for &i in &candidates {
            let m = &items[i];
            match inserted.get(&(m.sender, m.client_msg_id.clone())) {
                Some(&id) => {
                    new_items.push((i, id));
                    for u in inbox_users(m) {
                        *counts.entry(u).or_default() += 1;
                    }
                }
                None => {
                    results[i] = Some(self.original_ack(&mut *tx, m).await?);
                }
            }
        }
        // 5. Inbox rows: each user's entries take its reserved sequences
        // in batch order (`offsets`: the entry's place among its user's).
        let mut taken: HashMap<i64, u64> = HashMap::with_capacity(counts.len());
        let mut offsets = Vec::new();
        let mut deliveries = Vec::new();
        for (i, msg_id) in &new_items {
            let m = &items[*i];
            for user in inbox_users(m) {
                let o = taken.entry(user).or_default();
                offsets.push(*o);
                *o += 1;
                deliveries.push(Delivery {
                    user,
                    item: *i,
                    message: entry_message(m, *msg_id, 0, now_ms),
                });
            }
        }
        let entries: Vec<Entry> = deliveries
            .iter()
            .zip(&offsets)
            .map(|(d, o)| Entry {
                user: d.user,
                offset: *o,
                msg_id: d.message.msg_id,
                receipt_to: receipt_to(&items[d.item], d.user),
            })
            .collect();
        let first = self.reserve_inbox(&mut *tx, &counts, &entries).await?;
        for (d, o) in deliveries.iter_mut().zip(offsets) {
            d.message.seq = first.get(&d.user).copied().unwrap_or_default() + o;
            let m = &items[d.item];
            if d.user == m.sender {
                results[d.item] = Some(stored(d.message.msg_id, d.message.seq, now_ms));
            }
        }
        for (i, msg_id) in &new_items {
            // Messages without a sender copy (server pushes, DELIVERED receipts).
            results[*i].get_or_insert(stored(*msg_id, 0, now_ms));
        }
        Ok(BatchOutcome {
            results: final_results(results, follows),
            deliveries,
        })
    }

    /// Reserves `counts[user]` inbox sequences per user and writes the
    /// entries at `first + offset`; returns each
    /// user's first reserved sequence. The users' rows are locked already.
    /// On Postgres both are one statement (a data-modifying CTE), on
    /// SQLite two statements sent as one query ([`reserve_inbox_sqlite`]):
    /// a round trip less on the path every message takes. Batches beyond
    /// one statement's size take two steps.
    async fn reserve_inbox(
        &self,
        tx: &mut AnyConnection,
        counts: &BTreeMap<i64, i64>,
        entries: &[Entry],
    ) -> Result<HashMap<i64, u64>, StoreError> {
        let (keys, rows) = (
            sql::padded_len(counts.len()),
            sql::padded_len(entries.len()),
        );
        let sqlite = self.backend() == super::Backend::Sqlite;
        let fits = if sqlite {
            3 * keys <= sql::SQLITE_MAX_PARAMS && 4 * rows <= sql::SQLITE_MAX_PARAMS
        } else {
            counts.len() <= sql::MAX_ROWS_PER_INSERT && entries.len() <= MAX_RESERVE_ENTRIES
        };
        if !fits {
            let first = self
                .allocate(&mut *tx, SeqTable::Users, counts, false)
                .await?;
            let rows: Vec<[Option<i64>; 4]> = entries
                .iter()
                .map(|e| {
                    let seq = first.get(&e.user).copied().unwrap_or_default() + e.offset;
                    [
                        Some(e.user),
                        Some(seq as i64),
                        Some(e.msg_id),
                        Some(e.receipt_to),
                    ]
                })
                .collect();
            insert_entries(&mut *tx, "inbox (user_id, seq, msg_id, receipt_to)", &rows).await?;
            return Ok(first);
        }
        let q = if sqlite {
            sql::cached(("reserve inbox, sqlite", keys, rows), || {
                reserve_inbox_sqlite(keys, rows)
            })
        } else {
            sql::cached(("reserve inbox", keys, rows), || {
                reserve_inbox_sql(keys, rows)
            })
        };
        let mut query = sqlx::query(q);
        for (u, n) in counts {
            query = query.bind(*u).bind(*n);
        }
        query = sql::bind_null_rows(query, counts.len(), 2);
        let ids: Vec<i64> = counts.keys().copied().collect();
        for u in sql::padded_ids(&ids) {
            query = query.bind(u);
        }
        let count = |user: i64| counts.get(&user).copied().unwrap_or_default();
        for e in entries {
            // SQLite places an entry back from the user's new sequence.
            let place = if sqlite {
                count(e.user) - 1 - e.offset as i64
            } else {
                e.offset as i64
            };
            query = query
                .bind(e.user)
                .bind(place)
                .bind(e.msg_id)
                .bind(e.receipt_to);
        }
        query = sql::bind_null_rows(query, entries.len(), 4);
        let mut first = HashMap::with_capacity(counts.len());
        for row in query.fetch_all(&mut *tx).await? {
            let (user, seq): (i64, i64) = (row.try_get(0)?, row.try_get(1)?);
            // Postgres returns the sequence before the reservation, SQLite after.
            let base = if sqlite { seq - count(user) } else { seq };
            first.insert(user, (base + 1) as u64);
        }
        Ok(first)
    }

    /// Takes the row locks of `users` (ascending) in their `user_seq` rows
    /// (on Postgres; SQLite has one writer anyway) and returns which exist.
    async fn lock_users(
        &self,
        tx: &mut AnyConnection,
        users: &[i64],
    ) -> Result<HashSet<i64>, StoreError> {
        let (tag, lock) = match self.backend() {
            super::Backend::Postgres => ("lock users", " FOR UPDATE"),
            super::Backend::Sqlite => ("known users", ""),
        };
        let mut known = HashSet::with_capacity(users.len());
        for chunk in users.chunks(sql::rows_per_statement(tx, 1)) {
            let n = sql::padded_len(chunk.len());
            let q = sql::cached((tag, n, 0), || {
                format!(
                    "SELECT user_id FROM user_seq WHERE user_id IN ({}) ORDER BY user_id{lock}",
                    sql::list(n, 1)
                )
            });
            let mut query = sqlx::query(q);
            for u in sql::padded_ids(chunk) {
                query = query.bind(u);
            }
            for row in query.fetch_all(&mut *tx).await? {
                known.insert(row.try_get::<i64, _>(0)?);
            }
        }
        Ok(known)
    }

    /// Reserves `n` sequences for each key in one statement per chunk;
    /// returns each key's first reserved sequence. With `lock` (on Postgres)
    /// the rows are locked in key order first, so concurrent batches never
    /// deadlock; without, the caller took the locks.
    pub(super) async fn allocate(
        &self,
        tx: &mut AnyConnection,
        table: SeqTable,
        counts: &BTreeMap<i64, i64>,
        lock: bool,
    ) -> Result<HashMap<i64, u64>, StoreError> {
        let (table, key) = table.names();
        let counts: Vec<(i64, i64)> = counts.iter().map(|(u, n)| (*u, *n)).collect();
        let mut next_seq = HashMap::with_capacity(counts.len());
        for chunk in counts.chunks(sql::rows_per_statement(tx, 3)) {
            if lock && self.backend() == super::Backend::Postgres {
                let q = sql::cached((table, chunk.len(), 1), || {
                    format!(
                        "SELECT {key} FROM {table} WHERE {key} IN ({}) ORDER BY {key} FOR UPDATE",
                        sql::list(chunk.len(), 1)
                    )
                });
                let mut query = sqlx::query(q);
                for (u, _) in chunk {
                    query = query.bind(*u);
                }
                query.execute(&mut *tx).await?;
            }
            // The key list beside the join keeps the plan an index lookup
            // per key, whatever the planner thinks of the VALUES list.
            let padded = sql::padded_len(chunk.len());
            let q = sql::cached((table, padded, 2), || {
                format!(
                    "WITH v (k, n) AS (VALUES {}) \
                     UPDATE {table} SET seq = {table}.seq + v.n FROM v \
                     WHERE {table}.{key} = v.k AND {table}.{key} IN ({}) \
                     RETURNING {table}.{key}, {table}.seq",
                    sql::values(padded, 2),
                    sql::list(padded, padded * 2 + 1)
                )
            });
            let mut query = sqlx::query(q);
            for (u, n) in chunk {
                query = query.bind(*u).bind(*n);
            }
            // NULL keys match nothing; repeated ids in the list change nothing.
            query = sql::bind_null_rows(query, chunk.len(), 2);
            let keys: Vec<i64> = chunk.iter().map(|(u, _)| *u).collect();
            for u in sql::padded_ids(&keys) {
                query = query.bind(u);
            }
            let wanted: HashMap<i64, i64> = chunk.iter().copied().collect();
            for row in query.fetch_all(&mut *tx).await? {
                let (user, end): (i64, i64) = (row.try_get(0)?, row.try_get(1)?);
                if let Some(n) = wanted.get(&user) {
                    next_seq.insert(user, (end - n + 1) as u64);
                }
            }
        }
        Ok(next_seq)
    }

    /// Locks `users` ([`Self::lock_users`]) and finds the (sender, target)
    /// pairs of the batch's one-to-one messages the policy refuses, with the
    /// reason. When the lists fit one statement, that is one round trip
    /// (on Postgres the locks in a CTE, the blocks and friendships beside
    /// them); otherwise one for the locks, one for blocks and (under
    /// friends-only) one for friendships.
    async fn lock_and_check(
        &self,
        tx: &mut AnyConnection,
        users: &[i64],
        items: &[NewMessage],
    ) -> Result<(HashSet<i64>, Refusals), StoreError> {
        let policy = PolicyPairs::of(items);
        let nu = sql::padded_len(users.len());
        let np = if policy.pairs.is_empty() {
            0
        } else {
            sql::padded_len(policy.senders.len().max(policy.targets.len()))
        };
        let friends_only = policy.friends_only;
        let backend = self.backend();
        let fits = match backend {
            super::Backend::Postgres => {
                let limit = sql::MAX_ROWS_PER_INSERT;
                users.len() <= limit && policy.senders.len().max(policy.targets.len()) <= limit
            }
            super::Backend::Sqlite => {
                nu + np * if friends_only { 4 } else { 2 } <= sql::SQLITE_MAX_PARAMS
            }
        };
        if !fits {
            let known = self.lock_users(&mut *tx, users).await?;
            if policy.pairs.is_empty() {
                return Ok((known, Refusals::new()));
            }
            // A block is stored as (blocker, blocked): the recipient blocked the sender.
            let blocks =
                pairs_in(tx, "blocks", "blocked_id", &policy.targets, &policy.senders).await?;
            let friends = if policy.friends_only {
                pairs_in(tx, "friends", "friend_id", &policy.senders, &policy.targets).await?
            } else {
                HashSet::new()
            };
            return Ok((known, policy.refusals(&blocks, &friends)));
        }
        let tag = match backend {
            super::Backend::Postgres => "lock and check",
            super::Backend::Sqlite => "check",
        };
        let q = sql::cached((tag, nu, np * 2 + usize::from(friends_only)), || {
            lock_and_check_sql(backend, nu, np, friends_only)
        });
        let mut query = sqlx::query(q);
        for u in sql::padded_ids(users) {
            query = query.bind(u);
        }
        if np > 0 {
            let lists: &[&[i64]] = if friends_only {
                &[
                    &policy.targets,
                    &policy.senders,
                    &policy.senders,
                    &policy.targets,
                ]
            } else {
                &[&policy.targets, &policy.senders]
            };
            for v in lists.iter().flat_map(|list| sql::padded_to(list, np)) {
                query = query.bind(v);
            }
        }
        let (mut known, mut blocks, mut friends) = (HashSet::new(), HashSet::new(), HashSet::new());
        for row in query.fetch_all(&mut *tx).await? {
            let (kind, a, b): (i64, i64, i64) = (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?);
            match kind {
                0 => {
                    known.insert(a);
                }
                1 => {
                    blocks.insert((a, b));
                }
                _ => {
                    friends.insert((a, b));
                }
            }
        }
        Ok((known, policy.refusals(&blocks, &friends)))
    }

    /// The acknowledgement first given for an already stored message.
    async fn original_ack(
        &self,
        tx: &mut AnyConnection,
        m: &NewMessage,
    ) -> Result<SendResult, StoreError> {
        let row = sqlx::query(ORIGINAL_ACK_SQL)
            .bind(m.sender)
            .bind(m.client_msg_id.as_str())
            .fetch_optional(&mut *tx)
            .await?;
        Ok(match row {
            Some(r) => Ok(Stored {
                msg_id: r.try_get(0)?,
                sender_seq: r.try_get::<i64, _>(1)? as u64,
                sent_at_ms: r.try_get::<i64, _>(2)? as u64,
                duplicate: true,
            }),
            // Stored by a transaction that has not committed yet: ask the client to retry.
            None => Err(being_stored()),
        })
    }

    /// Up to `limit` inbox entries after `after_seq`, ascending, and whether more follow.
    pub async fn pull(
        &self,
        user: i64,
        after_seq: u64,
        limit: u32,
    ) -> Result<(Vec<Message>, bool), StoreError> {
        // One row more than the page tells whether there is more. Inbox
        // sequences are dense (every allocated sequence gets its row in the
        // same transaction, and none is deleted), so those rows are exactly
        // the range (after, after + want]. Stated as a range, the page is read
        // in order by the primary key and stops there; with only `seq > after`
        // the planner, which cannot know how many rows follow, read and sorted
        // the user's whole remaining inbox (5,000 rows for a 500-row page in
        // offline-sync).
        let after = after_seq.min(i64::MAX as u64) as i64;
        let want = i64::from(limit) + 1;
        // An entry's message is its `messages` row or, for a receipt stored
        // inline (migration 0009), the entry's own columns: a one-to-one
        // message to the entry's user.
        let rows = sqlx::query(
            "SELECT i.seq, i.msg_id, COALESCE(m.sender, i.sender), COALESCE(m.conv_type, CAST($5 AS BIGINT)), \
                    COALESCE(m.target, i.user_id), COALESCE(m.client_msg_id, i.client_msg_id), \
                    COALESCE(m.content_type, i.content_type), COALESCE(m.body, i.body), \
                    COALESCE(m.sent_at_ms, i.sent_at_ms) \
             FROM inbox i LEFT JOIN messages m ON m.id = i.msg_id \
             WHERE i.user_id = $1 AND i.seq > $2 AND i.seq <= $3 \
               AND (m.id IS NOT NULL OR i.sender IS NOT NULL) ORDER BY i.seq LIMIT $4",
        )
        .bind(user)
        .bind(after)
        .bind(after.saturating_add(want))
        .bind(want)
        .bind(ConversationType::C2c as i64)
        .fetch_all(&self.pool)
        .await?;
        Ok(page(&rows, limit, false)?)
    }
}

/// Refusal texts by (sender, target).
type Refusals = HashMap<(i64, i64), &'static str>;

/// The one-to-one pairs of a batch the policy checks.
struct PolicyPairs {
    /// (sender, target) → whether friends-only applies.
    pairs: HashMap<(i64, i64), bool>,
    senders: Vec<i64>,
    targets: Vec<i64>,
    /// Whether any pair needs its friendship looked up.
    friends_only: bool,
}

impl PolicyPairs {
    fn of(items: &[NewMessage]) -> PolicyPairs {
        let mut pairs: HashMap<(i64, i64), bool> = HashMap::new();
        for m in items {
            if let SendPolicy::C2c { friends_only } = m.policy
                && m.sender != m.target
            {
                *pairs.entry((m.sender, m.target)).or_default() |= friends_only;
            }
        }
        let distinct = |side: fn(&(i64, i64)) -> i64| -> Vec<i64> {
            pairs
                .keys()
                .map(side)
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect()
        };
        let (senders, targets) = (distinct(|p| p.0), distinct(|p| p.1));
        let friends_only = pairs.values().any(|f| *f);
        PolicyPairs {
            pairs,
            senders,
            targets,
            friends_only,
        }
    }

    /// The refused pairs, given the (blocker, blocked) and (user, friend)
    /// rows found among them.
    fn refusals(&self, blocks: &HashSet<(i64, i64)>, friends: &HashSet<(i64, i64)>) -> Refusals {
        let mut refused = Refusals::new();
        for (&(sender, target), &friends_only) in &self.pairs {
            if blocks.contains(&(target, sender)) {
                refused.insert((sender, target), BLOCKED_TEXT);
            } else if friends_only && !friends.contains(&(sender, target)) {
                refused.insert((sender, target), NOT_FRIENDS_TEXT);
            }
        }
        refused
    }
}

/// Postgres: lock `users` user_seq rows in id order (bound as an id list;
/// on SQLite, which has one writer at a time, only read them)
/// and, with `pairs` > 0, read the blocks among the batch's pairs (bound as
/// the targets, then the senders, each padded to `pairs`) and, with
/// `friends`, their friendships (the senders, then the targets). Rows are
/// (0, user, 0) per known user, (1, blocker, blocked), (2, user, friend).
fn lock_and_check_sql(
    backend: super::Backend,
    users: usize,
    pairs: usize,
    friends: bool,
) -> String {
    let ids = sql::list(users, 1);
    let (mut q, int8) = match backend {
        super::Backend::Postgres => (
            format!(
                "WITH l AS MATERIALIZED (SELECT user_id FROM user_seq WHERE user_id IN ({ids}) \
                 ORDER BY user_id FOR UPDATE) SELECT 0::int8, user_id, 0::int8 FROM l"
            ),
            "::int8",
        ),
        // One writer at a time: nothing to lock.
        super::Backend::Sqlite => (
            format!("SELECT 0, user_id, 0 FROM user_seq WHERE user_id IN ({ids})"),
            "",
        ),
    };
    if pairs > 0 {
        let at = |k: usize| sql::list(pairs, users + 1 + k * pairs);
        q.push_str(&format!(
            " UNION ALL SELECT 1{int8}, user_id, blocked_id FROM blocks \
             WHERE user_id IN ({}) AND blocked_id IN ({})",
            at(0),
            at(1)
        ));
        if friends {
            q.push_str(&format!(
                " UNION ALL SELECT 2{int8}, user_id, friend_id FROM friends \
                 WHERE user_id IN ({}) AND friend_id IN ({})",
                at(2),
                at(3)
            ));
        }
    }
    q
}

/// SQLite: [`reserve_inbox_sql`] as two statements in one query (no
/// data-modifying CTEs there), bound alike except that an entry's place is
/// counted back from the user's new sequence (`n - 1 - offset`), so the
/// second statement needs no counts; returns (user, new sequence).
/// sqlx binds `$N` by number in every statement of a query, and runs them
/// all on one trip to the connection's worker thread: each trip is two
/// thread switches, which cost the single node more than the statements
/// did (`docs/benchmarks.md`).
fn reserve_inbox_sqlite(keys: usize, rows: usize) -> String {
    format!(
        "WITH v (k, n) AS (VALUES {counts}) \
         UPDATE user_seq SET seq = user_seq.seq + v.n FROM v \
         WHERE user_seq.user_id = v.k AND user_seq.user_id IN ({ids}) \
         RETURNING user_seq.user_id, user_seq.seq; \
         WITH e (k, back, id, rt) AS (VALUES {entries}) \
         INSERT INTO inbox (user_id, seq, msg_id, receipt_to) \
         SELECT e.k, s.seq - e.back, e.id, e.rt FROM e JOIN user_seq s ON s.user_id = e.k",
        counts = sql::values(keys, 2),
        ids = sql::list(keys, keys * 2 + 1),
        entries = sql::values_from(rows, 4, keys * 3 + 1),
    )
}

/// Most inbox entries [`Store::reserve_inbox`] writes in one statement.
const MAX_RESERVE_ENTRIES: usize = 4096;

/// Postgres: reserve sequences for `keys` users (bound as (user, n) rows,
/// then the same users again as an id list, see [`Store::allocate`]) and
/// insert `rows` inbox entries (bound as (user, offset, msg_id, receipt_to)) at the
/// user's previous sequence + 1 + offset; returns (user, previous sequence)
/// per user. NULL rows pad both lists and match nothing.
fn reserve_inbox_sql(keys: usize, rows: usize) -> String {
    format!(
        "WITH v (k, n) AS (VALUES {counts}), \
         up AS (UPDATE user_seq SET seq = user_seq.seq + v.n FROM v \
           WHERE user_seq.user_id = v.k AND user_seq.user_id IN ({ids}) \
           RETURNING user_seq.user_id AS k, user_seq.seq - v.n AS base), \
         e (k, o, id, rt) AS (VALUES {entries}), \
         ins AS (INSERT INTO inbox (user_id, seq, msg_id, receipt_to) \
           SELECT e.k, up.base + 1 + e.o, e.id, e.rt FROM e JOIN up ON up.k = e.k) \
         SELECT k, base FROM up",
        counts = sql::values(keys, 2),
        ids = sql::list(keys, keys * 2 + 1),
        entries = sql::values_from(rows, 4, keys * 3 + 1),
    )
}

/// The message pushed for an inbox entry of `m` at `seq`.
pub(super) fn entry_message(m: &NewMessage, msg_id: i64, seq: u64, now_ms: u64) -> Message {
    Message {
        msg_id,
        seq,
        conv_type: m.conv_type as i32,
        from: m.sender,
        to: m.target,
        client_msg_id: m.client_msg_id.clone(),
        content_type: m.content_type,
        body: m.body.clone(),
        sent_at_ms: now_ms,
        group_seq: 0,
    }
}

/// The acknowledgement of a message stored now (`sender_seq` 0: no sender copy).
pub(super) fn stored(msg_id: i64, sender_seq: u64, now_ms: u64) -> SendResult {
    Ok(Stored {
        msg_id,
        sender_seq,
        sent_at_ms: now_ms,
        duplicate: false,
    })
}

/// A batch's results: later copies (`follows`, see [`first_copies`]) get
/// their first copy's, marked duplicate; an item left without one is an
/// internal error.
pub(super) fn final_results(
    mut results: Vec<Option<SendResult>>,
    follows: Vec<(usize, usize)>,
) -> Vec<SendResult> {
    for (i, j) in follows {
        results[i] = results[j].clone().map(|r| {
            r.map(|s| Stored {
                duplicate: true,
                ..s
            })
        });
    }
    results
        .into_iter()
        .map(|r| {
            r.unwrap_or_else(|| Err(ApiError::new(ErrorCode::Internal, "message lost in batch")))
        })
        .collect()
}

/// Splits `eligible` item indices into the first copy of each (sender,
/// client_msg_id) and (later copy, first copy) pairs: a batch stores a
/// message once however often a client resent it.
pub(super) fn first_copies(
    items: &[NewMessage],
    eligible: impl IntoIterator<Item = usize>,
) -> (Vec<usize>, Vec<(usize, usize)>) {
    let mut first: HashMap<(i64, &str), usize> = HashMap::new();
    let (mut candidates, mut follows) = (Vec::new(), Vec::new());
    for i in eligible {
        let m = &items[i];
        match first.get(&(m.sender, m.client_msg_id.as_str())) {
            Some(&j) => follows.push((i, j)),
            None => {
                first.insert((m.sender, m.client_msg_id.as_str()), i);
                candidates.push(i);
            }
        }
    }
    (candidates, follows)
}

/// Inserts messages (a conflict on (sender, client_msg_id) inserts nothing)
/// and returns the ids of those inserted, by (sender, client_msg_id).
pub(super) async fn insert_messages(
    tx: &mut AnyConnection,
    items: &[&NewMessage],
    now_ms: u64,
) -> Result<HashMap<(i64, String), i64>, StoreError> {
    let mut inserted = HashMap::with_capacity(items.len());
    for chunk in items.chunks(sql::rows_per_insert(tx, 7)) {
        let key = ("insert messages", sql::padded_len(chunk.len()), 0);
        let q = sql::cached_insert(tx, key, || {
            format!(
                "INSERT INTO messages (sender, client_msg_id, conv_type, target, content_type, body, sent_at_ms) \
                 {} ON CONFLICT (sender, client_msg_id) DO NOTHING RETURNING id, sender, client_msg_id",
                sql::padded_values(chunk.len(), 7)
            )
        });
        let mut query = sqlx::query(q);
        for m in chunk {
            query = query
                .bind(m.sender)
                .bind(m.client_msg_id.as_str())
                .bind(m.conv_type as i64)
                .bind(m.target)
                .bind(i64::from(m.content_type))
                .bind(m.body.to_vec())
                .bind(now_ms as i64);
        }
        for _ in chunk.len()..sql::padded_len(chunk.len()) {
            query = query
                .bind(None::<i64>)
                .bind(None::<&str>)
                .bind(None::<i64>)
                .bind(None::<i64>)
                .bind(None::<i64>)
                .bind(None::<Vec<u8>>)
                .bind(None::<i64>);
        }
        for row in query.fetch_all(&mut *tx).await? {
            inserted.insert((row.try_get(1)?, row.try_get(2)?), row.try_get(0)?);
        }
    }
    Ok(inserted)
}

/// Inserts rows of `N` bigint columns into `target`, an inbox table with
/// its column list, e.g. `group_inbox (group_id, seq, msg_id)`.
pub(super) async fn insert_entries<const N: usize>(
    tx: &mut AnyConnection,
    target: &'static str,
    rows: &[[Option<i64>; N]],
) -> Result<(), StoreError> {
    for chunk in rows.chunks(sql::rows_per_insert(tx, N)) {
        let q = sql::cached_insert(tx, (target, sql::padded_len(chunk.len()), 0), || {
            format!(
                "INSERT INTO {target} {}",
                sql::padded_values(chunk.len(), N)
            )
        });
        let mut query = sqlx::query(q);
        for v in chunk.iter().flatten() {
            query = query.bind(*v);
        }
        sql::bind_null_rows(query, chunk.len(), N)
            .execute(&mut *tx)
            .await?;
    }
    Ok(())
}

/// An inbox entry of a batch: `user`'s `offset`-th of those it reserved.
struct Entry {
    user: i64,
    offset: u64,
    msg_id: i64,
    receipt_to: i64,
}

/// The `(user_id, other)` rows of `table` with `user_id` in `users` and
/// `other` in `others` (both columns bigint).
async fn pairs_in(
    tx: &mut AnyConnection,
    table: &'static str,
    other: &'static str,
    users: &[i64],
    others: &[i64],
) -> Result<HashSet<(i64, i64)>, StoreError> {
    let mut found = HashSet::new();
    let rows = sql::rows_per_statement(tx, 2);
    for a in users.chunks(rows) {
        for b in others.chunks(rows) {
            // Both lists padded to one length: one statement shape per size.
            let n = sql::padded_len(a.len().max(b.len()));
            let q = sql::cached((table, n, 0), || {
                format!(
                    "SELECT user_id, {other} FROM {table} WHERE user_id IN ({}) AND {other} IN ({})",
                    sql::list(n, 1),
                    sql::list(n, n + 1)
                )
            });
            let mut query = sqlx::query(q);
            for v in [a, b].into_iter().flat_map(|list| sql::padded_to(list, n)) {
                query = query.bind(v);
            }
            for row in query.fetch_all(&mut *tx).await? {
                found.insert((row.try_get(0)?, row.try_get(1)?));
            }
        }
    }
    Ok(found)
}

/// One pull page from rows of (seq, id, sender, conv_type, target,
/// client_msg_id, content_type, body, sent_at_ms): at most `limit` messages,
/// stopping once the bodies pass [`MAX_PULL_BYTES`] (a page stays well under
/// any client's frame limit); and whether more rows follow. With `group_seq`
/// the first column is the group's sequence (read diffusion), not the inbox's.
pub(super) fn page(
    rows: &[AnyRow],
    limit: u32,
    group_seq: bool,
) -> Result<(Vec<Message>, bool), sqlx::Error> {
    let mut messages = Vec::with_capacity(rows.len().min(limit as usize));
    let mut bytes = 0usize;
    for row in rows.iter().take(limit as usize) {
        if !messages.is_empty() && bytes >= MAX_PULL_BYTES {
            break;
        }
        let mut m = message_from_row(row)?;
        if group_seq {
            m.group_seq = m.seq;
            m.seq = 0;
        }
        bytes += m.body.len() + m.client_msg_id.len() + 64;
        messages.push(m);
    }
    let has_more = rows.len() > messages.len();
    Ok((messages, has_more))
}

/// The sender first (except for server pushes, and DELIVERED receipts, which
/// concern one device and are only for the original sender), then each
/// distinct recipient.
pub(super) fn inbox_users(m: &NewMessage) -> impl Iterator<Item = i64> + '_ {
    let no_copy = m.conv_type == ConversationType::S2c
        || (m.content_type == SystemContentType::Receipt as u32
            && m.client_msg_id
                .starts_with(super::receipts::DELIVERED_PREFIX));
    let sender = (!no_copy).then_some(m.sender);
    sender
        .into_iter()
        .chain(m.recipients.iter().copied().filter(move |r| *r != m.sender))
}

/// Whether inbox entry `i` is a sender's own copy, or another entry that
/// wants no receipt and holds no message inline: the entries of index
/// `inbox_own_msg` (migration 0010), whose condition a query states in
/// these words so that the planner can use it. A retransmit's lookup of
/// the sender's copy by message id goes through it.
macro_rules! own_entry {
    () => {
        "COALESCE(i.receipt_to, 0) = 0 AND i.sender IS NULL"
    };
}
pub(super) use own_entry;

/// The first acknowledgement of the stored message with sender `$1` and
/// client message id `$2`: (id, the sender's sequence, the time).
pub const ORIGINAL_ACK_SQL: &str = concat!(
    "SELECT m.id, i.seq, m.sent_at_ms FROM messages m \
     JOIN inbox i ON i.user_id = m.sender AND i.msg_id = m.id AND ",
    own_entry!(),
    " WHERE m.sender = $1 AND m.client_msg_id = $2"
);

/// The `inbox.receipt_to` of `user`'s entry of `m` (migration 0007): whom
/// acknowledging it sends a DELIVERED receipt to
/// (`im_proto::wants_delivered_receipt`), 0 for no one.
pub(super) fn receipt_to(m: &NewMessage, user: i64) -> i64 {
    im_proto::delivered_receipt_to(m.conv_type as i32, m.sender, m.content_type, user).unwrap_or(0)
}

fn message_from_row(r: &AnyRow) -> Result<Message, sqlx::Error> {
    Ok(Message {
        seq: r.try_get::<i64, _>(0)? as u64,
        msg_id: r.try_get(1)?,
        from: r.try_get(2)?,
        conv_type: r.try_get::<i64, _>(3)? as i32,
        to: r.try_get(4)?,
        client_msg_id: r.try_get(5)?,
        content_type: r.try_get::<i64, _>(6)? as u32,
        body: r.try_get::<Vec<u8>, _>(7)?.into(),
        sent_at_ms: r.try_get::<i64, _>(8)? as u64,
        group_seq: 0,
    })
}
