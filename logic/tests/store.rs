//! The store on both backends (SQLite file, fresh Postgres database): the
//! same assertions must hold on each.
mod common;

use im_common::api::ApiError;
use im_logic::store::receipts::DeviceAck;
use im_logic::store::{NewMessage, SendPolicy, Store, WriterConn};
use im_proto::client::{ConversationType, ErrorCode};
use im_proto::client::{Receipt, ReceiptKind, SystemContentType};
use im_proto::prost::Message as _;

/// Two tests running `$check` on a store: `$sqlite` on a SQLite file,
/// `$postgres` on a fresh Postgres database named after `$db`.
macro_rules! on_both_backends {
    ($($sqlite:ident, $postgres:ident: $check:ident, $db:literal;)*) => {$(
        #[tokio::test]
        async fn $sqlite() {
            let (store, _dir) = common::sqlite().await;
            $check(&store).await;
        }

        #[tokio::test]
        async fn $postgres() {
            let store = common::postgres($db).await;
            $check(&store).await;
        }
    )*};
}

on_both_backends! {
    store_semantics_sqlite, store_semantics_postgres: exercise, "im_store";
    retransmit_among_new_sqlite, retransmit_among_new_postgres: retransmit_among_new, "im_retx";
    messages_with_acks_sqlite, messages_with_acks_postgres: messages_with_acks, "im_store";
    batching_sqlite, batching_postgres: batching, "im_batch";
}

fn msg(sender: i64, to: i64, id: &str) -> NewMessage {
    common::c2c(sender, to, id, SendPolicy::Unchecked)
}

async fn exercise(store: &Store) {
    let a = store.create_user("alice", "h", 0).await.unwrap();
    let b = store.create_user("bob", "h", 0).await.unwrap();
    assert!(matches!(
        store.create_user("alice", "h", 0).await,
        Err(im_logic::store::StoreError::UsernameTaken)
    ));

    // A batch with a duplicate inside it, an unknown recipient and a self-message.
    let out = store
        .commit_batch(
            &[
                msg(a, b, "1"),
                msg(a, b, "2"),
                msg(a, b, "1"),
                msg(a, 999, "3"),
                msg(a, a, "4"),
            ],
            1000,
        )
        .await
        .unwrap();
    let r: Vec<&Result<_, ApiError>> = out.results.iter().collect();
    let s1 = r[0].as_ref().unwrap();
    let s2 = r[1].as_ref().unwrap();
    assert_eq!((s1.sender_seq, s2.sender_seq), (1, 2));
    assert!(!s1.duplicate);
    let dup = r[2].as_ref().unwrap();
    assert!(dup.duplicate);
    assert_eq!((dup.msg_id, dup.sender_seq), (s1.msg_id, s1.sender_seq));
    assert_eq!(r[3].as_ref().unwrap_err().code, ErrorCode::UnknownUser);
    let to_self = r[4].as_ref().unwrap();
    assert_eq!(to_self.sender_seq, 3);
    // Bob got seq 1 and 2; alice's own inbox 1..=3 (one entry for the self-message).
    assert_eq!(store.max_seq(b).await.unwrap(), 2);
    assert_eq!(store.max_seq(a).await.unwrap(), 3);
    assert_eq!(out.deliveries.len(), 5);

    // A later batch resending "2" returns the original ack and writes nothing.
    let again = store.commit_batch(&[msg(a, b, "2")], 2000).await.unwrap();
    let s = again.results[0].as_ref().unwrap();
    assert!(s.duplicate);
    assert_eq!((s.msg_id, s.sender_seq, s.sent_at_ms), (s2.msg_id, 2, 1000));
    assert!(again.deliveries.is_empty());
    assert_eq!(store.max_seq(b).await.unwrap(), 2);

    // Pull pages.
    let (page, more) = store.pull(b, 0, 1).await.unwrap();
    assert_eq!((page.len(), more, page[0].seq), (1, true, 1));
    assert_eq!(&page[0].body[..], b"body 1");
    let (page, more) = store.pull(b, 1, 10).await.unwrap();
    assert_eq!((page.len(), more, page[0].seq), (1, false, 2));
    // A cursor past the end (even past i64::MAX) is an empty page, not the start.
    for after in [2, 3, i64::MAX as u64, u64::MAX] {
        let (page, more) = store.pull(b, after, 10).await.unwrap();
        assert!(page.is_empty() && !more, "after {after}: {page:?}");
    }
    // SQL-ish text is data.
    let evil = "'); DELETE FROM inbox; --";
    let out = store.commit_batch(&[msg(b, a, evil)], 3000).await.unwrap();
    let evil_id = out.results[0].as_ref().unwrap().msg_id;
    let (page, _) = store.pull(a, 3, 10).await.unwrap();
    assert_eq!(page[0].client_msg_id, evil);
    assert_eq!(store.max_seq(b).await.unwrap(), 3);

    // Acks: DELIVERED receipts for messages from others, once per message and device.
    let ack = |user, device, seq| DeviceAck { user, device, seq };
    let d = store.commit_acks(&[ack(b, 1, 1000)], 4000).await.unwrap();
    // Clamped to bob's newest message; bob's own message (seq 3) gets no receipt.
    assert_eq!(store.cursor(b, 1).await.unwrap(), 3);
    let to_a: Vec<_> = d.iter().filter(|x| x.user == a).collect();
    assert_eq!(to_a.len(), 1, "one receipt message to alice");
    let m = &to_a[0].message;
    assert_eq!(m.content_type, SystemContentType::Receipt as u32);
    assert_eq!(m.from, b);
    let r = Receipt::decode(m.body.clone()).unwrap();
    assert_eq!(r.kind, ReceiptKind::Delivered as i32);
    assert_eq!(
        (r.reader, r.msg_ids.clone()),
        (b, vec![s1.msg_id, s2.msg_id])
    );
    // The same ack again, or an older one: nothing new, the cursor stays.
    assert!(
        store
            .commit_acks(&[ack(b, 1, 3), ack(b, 1, 1)], 5000)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(store.cursor(b, 1).await.unwrap(), 3);
    // Another device of bob receipts the same messages for itself.
    let d = store.commit_acks(&[ack(b, 2, 2)], 6000).await.unwrap();
    assert_eq!(d.iter().filter(|x| x.user == a).count(), 1);
    // Any ack, even past i64::MAX, is clamped to the newest message.
    store
        .commit_acks(&[ack(b, 3, u64::MAX)], 6500)
        .await
        .unwrap();
    assert_eq!(store.cursor(b, 3).await.unwrap(), 3);
    // Receipts do not beget receipts: alice acking everything (bob's message
    // and two receipts) receipts only bob's message.
    let a_max = store.max_seq(a).await.unwrap();
    let d = store.commit_acks(&[ack(a, 1, a_max)], 7000).await.unwrap();
    let to_b: Vec<_> = d.iter().filter(|x| x.user == b).collect();
    assert_eq!(to_b.len(), 1, "{d:?}");
    let r = Receipt::decode(to_b[0].message.body.clone()).unwrap();
    assert_eq!(r.msg_ids, vec![evil_id]);
}

/// A batch that holds a retransmit of a stored message beside new ones: the
/// retransmit gets its original acknowledgement, the new ones dense
/// sequences after everything before (no sequence is taken for the copy
/// the insert skipped).
async fn retransmit_among_new(store: &Store) {
    let a = store.create_user("carol", "h", 0).await.unwrap();
    let b = store.create_user("dave", "h", 0).await.unwrap();
    let first = store
        .commit_batch(&[msg(a, b, "x1"), msg(a, b, "x2")], 10)
        .await
        .unwrap();
    let x2 = *first.results[1].as_ref().unwrap();
    assert_eq!(x2.sender_seq, 2);
    let out = store
        .commit_batch(&[msg(a, b, "x3"), msg(a, b, "x2"), msg(a, b, "x4")], 20)
        .await
        .unwrap();
    let r: Vec<_> = out.results.iter().map(|r| r.as_ref().unwrap()).collect();
    assert!(!r[0].duplicate && r[1].duplicate && !r[2].duplicate);
    assert_eq!(
        (r[1].msg_id, r[1].sender_seq, r[1].sent_at_ms),
        (x2.msg_id, 2, 10)
    );
    assert_eq!((r[0].sender_seq, r[2].sender_seq), (3, 4));
    assert_eq!(out.deliveries.len(), 4);
    let (page, more) = store.pull(b, 0, 10).await.unwrap();
    assert!(!more);
    let got: Vec<(u64, &str)> = page
        .iter()
        .map(|m| (m.seq, m.client_msg_id.as_str()))
        .collect();
    assert_eq!(got, [(1, "x1"), (2, "x2"), (3, "x3"), (4, "x4")]);
    // And a batch of new messages only, after it: still dense.
    let out = store.commit_batch(&[msg(a, b, "x5")], 30).await.unwrap();
    assert_eq!(out.results[0].as_ref().unwrap().sender_seq, 5);
    assert_eq!(store.max_seq(b).await.unwrap(), 5);
}

/// Messages and acknowledgements in one transaction on a writer's own
/// connection (what a committer shard does): the acks' receipt messages are
/// stored after the batch's messages, results and deliveries index the
/// returned list, and the cursor moves in the same commit.
async fn messages_with_acks(store: &Store) {
    let a = store.create_user("erin", "h", 0).await.unwrap();
    let b = store.create_user("frank", "h", 0).await.unwrap();
    let first = store.commit_batch(&[msg(a, b, "m1")], 10).await.unwrap();
    let m1 = first.results[0].as_ref().unwrap().msg_id;
    let mut conn = WriterConn::default();
    let ack = DeviceAck {
        user: b,
        device: 1,
        seq: 1,
    };
    let (items, out) = store
        .commit_with_acks_on(
            &mut conn,
            vec![msg(a, b, "m2"), msg(b, a, "r1")],
            &[ack],
            20,
        )
        .await
        .unwrap();
    assert_eq!(items.len(), 3, "two messages, then one receipt");
    assert_eq!(items[2].content_type, SystemContentType::Receipt as u32);
    assert_eq!((items[2].sender, items[2].recipients.clone()), (b, vec![a]));
    let seqs: Vec<u64> = out
        .results
        .iter()
        .map(|r| r.as_ref().unwrap().sender_seq)
        .collect();
    // a: m1 = 1, m2 = 2; b: m1 = 1, m2 = 2, r1 = 3, and the receipt is b's.
    assert_eq!(seqs, [2, 3, 0]);
    let receipt: Vec<_> = out.deliveries.iter().filter(|d| d.item == 2).collect();
    assert_eq!(receipt.len(), 1);
    assert_eq!((receipt[0].user, receipt[0].message.seq), (a, 4));
    let r = Receipt::decode(receipt[0].message.body.clone()).unwrap();
    assert_eq!((r.reader, r.msg_ids.clone()), (b, vec![m1]));
    assert_eq!(store.cursor(b, 1).await.unwrap(), 1);
    // The kept connection serves the next transaction; acks alone work too.
    let ack = DeviceAck { seq: 3, ..ack };
    let d = store.commit_acks_on(&mut conn, &[ack], 30).await.unwrap();
    let r = Receipt::decode(d[0].message.body.clone()).unwrap();
    assert_eq!(r.msg_ids, vec![out.results[0].as_ref().unwrap().msg_id]);
    assert_eq!(store.cursor(b, 1).await.unwrap(), 3);
    let (page, _) = store.pull(a, 0, 10).await.unwrap();
    let got: Vec<(u64, i64)> = page.iter().map(|m| (m.seq, m.from)).collect();
    assert_eq!(got, [(1, a), (2, a), (3, b), (4, b), (5, b)]);
}

/// Two logic processes can apply acknowledgements of one device at the
/// same moment (two connections of one device type on different
/// gateways). Each covered message still gets its DELIVERED receipt once:
/// here both writers' transactions start before either commits (the first
/// is held on a lock of the receipts' addressee), and the second takes
/// only the range the first left, read from the cursor as the first
/// committed it, not as its own snapshot saw it. `filler` messages ride
/// along: with more than a batch statement takes, the acks go through
/// `ack_sql` in a transaction of several statements.
async fn one_device_acked_by_two_writers_at_once(prefix: &str, filler: usize) {
    let store = common::postgres(prefix).await;
    let a = store.create_user("ann", "h", 0).await.unwrap();
    let b = store.create_user("bob", "h", 0).await.unwrap();
    let c = store.create_user("cid", "h", 0).await.unwrap();
    let batch: Vec<NewMessage> = (0..30).map(|i| msg(a, b, &format!("m{i}"))).collect();
    let sent = store.commit_batch(&batch, 1).await.unwrap();
    let ids: Vec<i64> = sent
        .results
        .iter()
        .map(|r| r.as_ref().unwrap().msg_id)
        .collect();
    // Hold a's sequence row: a writer's receipt to a waits for it.
    let mut holder = store.pool().begin().await.unwrap();
    sqlx::query("SELECT seq FROM user_seq WHERE user_id = $1 FOR UPDATE")
        .bind(a)
        .execute(&mut *holder)
        .await
        .unwrap();
    // Each on a connection of its own, as two writers.
    let ack_to = |seq: u64, now: u64| {
        let store = store.clone();
        let ack = DeviceAck {
            user: b,
            device: 1,
            seq,
        };
        let items: Vec<NewMessage> = (0..filler)
            .map(|i| msg(c, c, &format!("f{seq}-{i}")))
            .collect();
        tokio::spawn(async move {
            let mut held = WriterConn::default();
            let (items, out) = store
                .commit_with_acks_on(&mut held, items, &[ack], now)
                .await
                .unwrap();
            assert_eq!(items.len(), filler + 1, "the fillers and one receipt");
            out.deliveries
                .into_iter()
                .filter(|d| d.item == filler)
                .collect::<Vec<_>>()
        })
    };
    let first = ack_to(20, 2);
    waiting_on_locks(&store, 1).await;
    let second = ack_to(30, 3);
    waiting_on_locks(&store, 2).await;
    holder.rollback().await.unwrap();
    let mut receipted = Vec::new();
    for d in [first.await.unwrap(), second.await.unwrap()].concat() {
        assert_eq!(d.user, a);
        receipted.extend(Receipt::decode(d.message.body.clone()).unwrap().msg_ids);
    }
    receipted.sort_unstable();
    assert_eq!(receipted, ids, "every message receipted once");
    assert_eq!(store.cursor(b, 1).await.unwrap(), 30);
}

#[tokio::test]
async fn one_device_acked_by_two_writers_at_once_gets_each_receipt_once_on_postgres() {
    one_device_acked_by_two_writers_at_once("im_ack2", 0).await;
}

#[tokio::test]
async fn one_device_acked_by_two_writers_in_large_batches_gets_each_receipt_once_on_postgres() {
    one_device_acked_by_two_writers_at_once("im_ack2l", 300).await;
}

/// A retransmit whose first copy another writer is storing right then (its
/// transaction holds the sender's sequence row, so the batch waits for it):
/// once that commits, the retransmit gets the first copy's acknowledgement.
/// (Read in the batch statement's snapshot, from before that commit, it was
/// "being stored; retry".)
#[tokio::test]
async fn a_retransmit_racing_its_first_copy_gets_its_acknowledgement_on_postgres() {
    let store = common::postgres("im_retx_race").await;
    let a = store.create_user("ann", "h", 0).await.unwrap();
    let b = store.create_user("bob", "h", 0).await.unwrap();
    // The other writer: locks the users, stores the first copy, and waits.
    let mut other = store.pool().begin().await.unwrap();
    sqlx::query("SELECT seq FROM user_seq WHERE user_id IN ($1, $2) ORDER BY user_id FOR UPDATE")
        .bind(a)
        .bind(b)
        .execute(&mut *other)
        .await
        .unwrap();
    let (id,): (i64,) = sqlx::query_as(
        "INSERT INTO messages (sender, client_msg_id, conv_type, target, content_type, body, sent_at_ms) \
         VALUES ($1, 'z', $2, $3, 1, 'x', 5) RETURNING id",
    )
    .bind(a)
    .bind(ConversationType::C2c as i32)
    .bind(b)
    .fetch_one(&mut *other)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO inbox (user_id, seq, msg_id, receipt_to) VALUES ($1, 1, $3, 0), ($2, 1, $3, $1)",
    )
    .bind(a)
    .bind(b)
    .bind(id)
    .execute(&mut *other)
    .await
    .unwrap();
    sqlx::query("UPDATE user_seq SET seq = 1 WHERE user_id IN ($1, $2)")
        .bind(a)
        .bind(b)
        .execute(&mut *other)
        .await
        .unwrap();
    let retransmit = {
        let store = store.clone();
        tokio::spawn(async move { store.commit_batch(&[msg(a, b, "z")], 10).await.unwrap() })
    };
    waiting_on_locks(&store, 1).await;
    other.commit().await.unwrap();
    let out = retransmit.await.unwrap();
    let first = out.results[0]
        .as_ref()
        .expect("the first copy's acknowledgement");
    assert!(first.duplicate);
    assert_eq!(
        (first.msg_id, first.sender_seq, first.sent_at_ms),
        (id, 1, 5)
    );
    assert!(out.deliveries.is_empty(), "nothing stored twice");
    assert_eq!(store.max_seq(b).await.unwrap(), 1);
}

/// Waits until `n` sessions of the store's database wait for a lock.
async fn waiting_on_locks(store: &Store, n: i64) {
    for _ in 0..500 {
        let (waiting,): (i64,) = sqlx::query_as(
            "SELECT COUNT(*) FROM pg_stat_activity \
             WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .fetch_one(store.pool())
        .await
        .unwrap();
        if waiting >= n {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("fewer than {n} sessions ever waited for a lock");
}

/// What batching must not change: the policy per message, dense sequences
/// per user across statement chunks, one receipt per (message, device) for
/// many devices acknowledged at once, and no deadlock or gap when batches
/// with overlapping users commit concurrently.
async fn batching(store: &Store) {
    use im_logic::store::messages::{BLOCKED_TEXT, NOT_FRIENDS_TEXT};
    let a = store.create_user("a", "h", 0).await.unwrap();
    let b = store.create_user("b", "h", 0).await.unwrap();
    let c = store.create_user("c", "h", 0).await.unwrap();
    let d = store.create_user("d", "h", 0).await.unwrap();
    store.block(b, a, 0).await.unwrap();
    store.befriend(a, c, "k", 0).await.unwrap();
    let checked = |m: NewMessage, friends_only| NewMessage {
        policy: SendPolicy::C2c { friends_only },
        ..m
    };
    let out = store
        .commit_batch(
            &[
                checked(msg(a, b, "p1"), false),
                checked(msg(a, c, "p2"), true),
                checked(msg(a, d, "p3"), true),
                checked(msg(a, a, "p4"), true),
                checked(msg(d, a, "p5"), false),
                msg(a, d, "p6"),
            ],
            10,
        )
        .await
        .unwrap();
    let refusal = |i: usize| {
        let e = out.results[i].as_ref().unwrap_err();
        (e.code, e.message.clone())
    };
    assert_eq!(refusal(0), (ErrorCode::Forbidden, BLOCKED_TEXT.to_string()));
    assert_eq!(
        refusal(2),
        (ErrorCode::Forbidden, NOT_FRIENDS_TEXT.to_string())
    );
    for i in [1, 3, 4, 5] {
        assert!(out.results[i].is_ok(), "{i}: {:?}", out.results[i]);
    }
    assert_eq!(store.max_seq(b).await.unwrap(), 0, "nothing reached b");
    assert_eq!(store.max_seq(c).await.unwrap(), 1);
    assert_eq!(
        store.max_seq(d).await.unwrap(),
        2,
        "d's own p5 and the unchecked p6"
    );

    // 700 recipients (more than one statement's worth), two messages each.
    let mut users = Vec::new();
    for i in 0..700 {
        users.push(store.create_user(&format!("u{i}"), "h", 0).await.unwrap());
    }
    let s = store.create_user("sender", "h", 0).await.unwrap();
    let items: Vec<NewMessage> = (0..1400)
        .map(|i| msg(s, users[i % 700], &format!("m{i}")))
        .collect();
    let out = store.commit_batch(&items, 20).await.unwrap();
    for (i, r) in out.results.iter().enumerate() {
        assert_eq!(r.as_ref().unwrap().sender_seq, i as u64 + 1, "batch order");
    }
    for u in &users {
        let (page, _) = store.pull(*u, 0, 10).await.unwrap();
        assert_eq!(page.iter().map(|m| m.seq).collect::<Vec<_>>(), vec![1, 2]);
    }

    // Every recipient acknowledges on two devices in one call (device 1
    // twice, the older ack first): one receipt per device, naming both messages.
    let mut acks = Vec::new();
    for u in &users {
        acks.push(DeviceAck {
            user: *u,
            device: 1,
            seq: 1,
        });
        acks.push(DeviceAck {
            user: *u,
            device: 2,
            seq: 2,
        });
        acks.push(DeviceAck {
            user: *u,
            device: 1,
            seq: 2,
        });
    }
    let delivered = store.commit_acks(&acks, 30).await.unwrap();
    let receipts: Vec<Receipt> = delivered
        .iter()
        .filter(|x| x.user == s)
        .map(|x| Receipt::decode(x.message.body.clone()).unwrap())
        .collect();
    assert_eq!(receipts.len(), 1400);
    assert!(receipts.iter().all(|r| r.msg_ids.len() == 2));
    for u in &users {
        assert_eq!(store.cursor(*u, 1).await.unwrap(), 2);
        assert_eq!(store.cursor(*u, 2).await.unwrap(), 2);
    }
    assert!(store.commit_acks(&acks, 40).await.unwrap().is_empty());

    // Concurrent batches over the same users in opposite orders.
    let group: Vec<i64> = users[..20].to_vec();
    let tasks: Vec<_> = (0..4)
        .map(|t| {
            let (store, group) = (store.clone(), group.clone());
            tokio::spawn(async move {
                for round in 0..15 {
                    let mut order = group.clone();
                    if (t + round) % 2 == 1 {
                        order.reverse();
                    }
                    let items: Vec<NewMessage> = order
                        .iter()
                        .enumerate()
                        .map(|(i, u)| msg(group[t], *u, &format!("c{t}-{round}-{i}")))
                        .collect();
                    store.commit_batch(&items, 50).await.unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    for u in &group {
        let max = store.max_seq(*u).await.unwrap();
        let mut seqs = Vec::new();
        let mut after = 0;
        loop {
            let (page, more) = store.pull(*u, after, 500).await.unwrap();
            seqs.extend(page.iter().map(|m| m.seq));
            after = seqs.last().copied().unwrap_or(after);
            if !more {
                break;
            }
        }
        assert_eq!(
            seqs,
            (1..=max).collect::<Vec<_>>(),
            "user {u}: dense and unique"
        );
    }
}

/// A fresh Postgres database for a plan test: one sender and `n`
/// recipients, and `rounds` batches of 1,000 messages from the sender to
/// the recipients in turn.
async fn plan_fixture(n: usize, rounds: usize) -> (Store, i64, Vec<i64>) {
    let store = common::postgres("im_plan").await;
    let s = store.create_user("s", "h", 0).await.unwrap();
    let mut users = Vec::new();
    for i in 0..n {
        users.push(store.create_user(&format!("r{i}"), "h", 0).await.unwrap());
    }
    for round in 0..rounds {
        let items: Vec<NewMessage> = (0..1000)
            .map(|i| msg(s, users[i % n], &format!("{round}-{i}")))
            .collect();
        store.commit_batch(&items, 1).await.unwrap();
    }
    (store, s, users)
}

/// The text of an `EXPLAIN`'s rows.
fn plan_text(rows: &[sqlx::any::AnyRow]) -> String {
    use sqlx::Row;
    rows.iter()
        .map(|r| r.try_get::<String, _>(0).unwrap())
        .collect::<Vec<_>>()
        .join("\n")
}

/// The writer's own kind of connection to `store`'s database.
async fn pg_conn(store: &Store) -> sqlx::PgConnection {
    use sqlx::ConnectOptions;
    let url = &store.pool().connect_options().database_url;
    sqlx::postgres::PgConnectOptions::from_url(url)
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// The batch statement's parameter types, in order.
const BATCH_PARAMS: &str = "int8[], text[], int8[], int8[], int8[], bytea[], int8[], int8[], int8[], \
     int8[], int8[], int8[], int8[], int8[], int8[], bytea[], int8, int8, int8, int4, int8";

/// The writer's batch statement, run under `explain` (`EXPLAIN …`), for
/// acks alone: every user of `users` acknowledges device 1 up to `seq`.
async fn explain_acks(
    conn: &mut sqlx::PgConnection,
    explain: &str,
    users: &[i64],
    seq: i64,
) -> String {
    use im_logic::store::pg_batch::{BATCH_SQL, receipt_head};
    use sqlx::Row;
    let none: Vec<i64> = Vec::new();
    let ones = vec![1i64; users.len()];
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!("{explain}{BATCH_SQL}")))
        .bind(&none)
        .bind(Vec::<String>::new())
        .bind(&none)
        .bind(&none)
        .bind(&none)
        .bind(Vec::<Vec<u8>>::new())
        .bind(&none)
        .bind(&none)
        .bind(&none)
        .bind(&none)
        .bind(&none)
        .bind(&none)
        .bind(users)
        .bind(&ones)
        .bind(vec![seq; users.len()])
        .bind(
            users
                .iter()
                .map(|&user| {
                    let seq = seq as u64;
                    receipt_head(&DeviceAck {
                        user,
                        device: 1,
                        seq,
                    })
                })
                .collect::<Vec<_>>(),
        )
        .bind(5i64)
        .bind(ConversationType::C2c as i64)
        .bind(SystemContentType::Receipt as i64)
        .bind(im_logic::store::pg_batch::MSG_IDS_TAG)
        .bind(0xF000i64)
        .fetch_all(conn)
        .await
        .unwrap();
    rows.iter()
        .map(|r| r.try_get::<String, _>(0).unwrap())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Entries stored before migration 0007 have no `receipt_to` (the
/// migration fills nothing in) and are decided from their message, as
/// are entries written during a rolling upgrade by a logic tier not yet
/// upgraded; entries written since carry it: the sender, or 0 for none.
async fn entries_from_before_0007_are_decided_by_their_message(
    store: &Store,
    migrator: sqlx::migrate::Migrator,
) {
    migrator.run_to(6, store.pool()).await.unwrap();
    let a = store.create_user("ann", "h", 0).await.unwrap();
    let b = store.create_user("bob", "h", 0).await.unwrap();
    let (c2c, c2g, receipt) = (
        ConversationType::C2c as i64,
        ConversationType::C2g as i64,
        SystemContentType::Receipt as i64,
    );
    // (id, sender, conversation, target, content type)
    let messages = [
        (1001, a, c2c, b, 1),
        (1002, b, c2c, a, receipt),
        (1003, a, c2g, 9, 1),
        (1004, b, c2c, a, 1),
    ];
    for (id, sender, conv, target, ctype) in messages {
        sqlx::query(
            "INSERT INTO messages (id, sender, client_msg_id, conv_type, target, content_type, body, sent_at_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, 0)",
        )
        .bind(id)
        .bind(sender)
        .bind(format!("m{id}"))
        .bind(conv)
        .bind(target)
        .bind(ctype)
        .bind(Vec::<u8>::new())
        .execute(store.pool())
        .await
        .unwrap();
    }
    let entries = [
        (a, 1, 1001),
        (b, 1, 1001),
        (a, 2, 1002),
        (b, 2, 1003),
        (a, 3, 1004),
    ];
    for (user, seq, msg_id) in entries {
        sqlx::query("INSERT INTO inbox (user_id, seq, msg_id) VALUES ($1, $2, $3)")
            .bind(user)
            .bind(seq)
            .bind(msg_id)
            .execute(store.pool())
            .await
            .unwrap();
    }
    for (user, seq) in [(a, 3), (b, 2)] {
        sqlx::query("UPDATE user_seq SET seq = $1 WHERE user_id = $2")
            .bind(seq)
            .bind(user)
            .execute(store.pool())
            .await
            .unwrap();
    }
    migrator.run(store.pool()).await.unwrap();
    let receipt_to = async || -> Vec<(i64, i64, Option<i64>)> {
        sqlx::query_as("SELECT user_id, seq, receipt_to FROM inbox ORDER BY user_id, seq")
            .fetch_all(store.pool())
            .await
            .unwrap()
    };
    assert!(receipt_to().await.iter().all(|e| e.2.is_none()));
    // b's first two entries: a's one-to-one message and a group message.
    let ack = |user, seq| DeviceAck {
        user,
        device: 1,
        seq,
    };
    let addressed = |d: &[im_logic::store::Delivery]| -> Vec<(i64, i64, Vec<i64>)> {
        d.iter()
            .map(|d| {
                let r = Receipt::decode(d.message.body.clone()).unwrap();
                (d.user, r.reader, r.msg_ids)
            })
            .collect()
    };
    let d = store.commit_acks(&[ack(b, 2)], 5).await.unwrap();
    assert_eq!(addressed(&d), [(a, b, vec![1001])]);

    // Written since: b's DELIVERED receipt (a's seq 4) and a's own copy
    // of a new message (a's seq 5) name no one, b's entry of it names a.
    let sent = store.commit_batch(&[msg(a, b, "new")], 6).await.unwrap();
    let new = sent.results[0].as_ref().unwrap().msg_id;
    let rows = receipt_to().await;
    for entry in [(a, 4, Some(0)), (a, 5, Some(0)), (b, 3, Some(a))] {
        assert!(rows.contains(&entry), "{entry:?} in {rows:?}");
    }
    let d = store.commit_acks(&[ack(b, 9)], 7).await.unwrap();
    assert_eq!(addressed(&d), [(a, b, vec![new])]);
    // a's entries: own copies (old and new), a receipt, b's message 1004.
    let d = store.commit_acks(&[ack(a, 9)], 8).await.unwrap();
    assert_eq!(addressed(&d), [(b, a, vec![1004])]);
}

#[tokio::test]
async fn entries_from_before_0007_are_decided_by_their_message_on_sqlite() {
    let (store, _dir) = common::sqlite_unmigrated().await;
    let migrator = sqlx::migrate!("./migrations/sqlite");
    entries_from_before_0007_are_decided_by_their_message(&store, migrator).await;
}

#[tokio::test]
async fn entries_from_before_0007_are_decided_by_their_message_on_postgres() {
    let store = common::postgres_unmigrated("im_mig7").await;
    let migrator = sqlx::migrate!("./migrations/postgres");
    entries_from_before_0007_are_decided_by_their_message(&store, migrator).await;
}

/// An acknowledgement of entries written with their `receipt_to` reads no
/// message: in the executed plan of the writer's batch statement no read
/// of `messages` runs (the covered entries' lookup is there for entries
/// from before migration 0007).
#[tokio::test]
async fn acks_of_new_entries_read_no_message_on_postgres() {
    let store = common::postgres("im_rto").await;
    let a = store.create_user("ann", "h", 0).await.unwrap();
    let b = store.create_user("bob", "h", 0).await.unwrap();
    let batch = [msg(a, b, "x1"), msg(a, b, "x2"), msg(b, a, "y1")];
    let sent = store.commit_batch(&batch, 10).await.unwrap();
    let plan = explain_acks(
        &mut pg_conn(&store).await,
        "EXPLAIN (ANALYZE, TIMING OFF) ",
        &[b],
        3,
    )
    .await;
    // (The other reads of `messages` look up retransmitted sends: none here.)
    let lookups: Vec<&str> = plan
        .lines()
        .filter(|l| l.contains("Scan") && l.contains(" on messages "))
        .collect();
    assert!(!lookups.is_empty(), "{plan}");
    assert!(
        lookups.iter().all(|l| l.contains("never executed")),
        "{plan}"
    );
    let ids = |i: usize| sent.results[i].as_ref().unwrap().msg_id;
    let (body,): (Vec<u8>,) =
        sqlx::query_as("SELECT body FROM messages WHERE sender = $1 AND content_type = $2")
            .bind(b)
            .bind(SystemContentType::Receipt as i64)
            .fetch_one(store.pool())
            .await
            .unwrap();
    let receipt = Receipt::decode(body.as_slice()).unwrap();
    assert_eq!(
        receipt.msg_ids,
        [ids(0), ids(1)],
        "x1 and x2, not b's own y1"
    );
}

/// The writer's batch statement reads each acknowledged range through the
/// inbox index, not by scanning every inbox (which Postgres prefers for a
/// plain join once a batch holds a few dozen acks and the inbox is large).
#[tokio::test]
async fn acks_read_inbox_ranges_by_index_on_postgres() {
    let (store, s, users) = plan_fixture(100, 40).await;
    sqlx::query("ANALYZE").execute(store.pool()).await.unwrap();
    // Each device acks up to 390 (run), then up to 400 (explained).
    let n = 64;
    let acks: Vec<DeviceAck> = users[..n]
        .iter()
        .map(|&user| DeviceAck {
            user,
            device: 1,
            seq: 390,
        })
        .collect();
    let receipts = store.commit_acks(&acks, 5).await.unwrap();
    assert_eq!(receipts.len(), n, "one receipt message per device");
    for d in &receipts {
        assert_eq!(d.user, s);
        let r = Receipt::decode(d.message.body.clone()).unwrap();
        assert_eq!(r.msg_ids.len(), 390, "a receipt per covered message");
    }
    let plan = explain_acks(&mut pg_conn(&store).await, "EXPLAIN ", &users[..n], 400).await;
    assert!(!plan.contains("Seq Scan on inbox"), "{plan}");
    assert!(plan.contains("inbox_pkey"), "{plan}");
}

/// The receipt bodies the batch statement builds (the writer's head, the
/// ids packed in SQL) are prost's bytes.
#[tokio::test]
async fn receipt_bodies_built_in_sql_are_prosts_bytes() {
    use im_logic::store::pg_batch::{MSG_IDS_TAG, receipt_head};
    use im_proto::client::DeviceType;
    let store = common::postgres("im_body").await;
    let cases: Vec<(i64, i32, Vec<i64>)> = vec![
        (9, DeviceType::Mobile as i32, vec![10, 30]),
        (1, DeviceType::Unspecified as i32, vec![1]),
        (
            300,
            DeviceType::Pad as i32,
            vec![127, 128, 16_383, 16_384, i64::MAX],
        ),
        (i64::MAX, 77, (1..200).map(|i| i * 1_000_003).collect()),
        (-5, DeviceType::Desktop as i32, vec![-1, 0]),
    ];
    for (user, device, ids) in cases {
        let head = receipt_head(&DeviceAck {
            user,
            device,
            seq: 0,
        });
        let sql: Vec<u8> = sqlx::query_scalar(
            "SELECT $1::bytea || im_packed_int64s($2::int4, \
             string_to_array($3::text, ',')::int8[])",
        )
        .bind(head)
        .bind(MSG_IDS_TAG)
        .bind(ids.iter().map(i64::to_string).collect::<Vec<_>>().join(","))
        .fetch_one(store.pool())
        .await
        .unwrap();
        let prost = Receipt {
            kind: ReceiptKind::Delivered as i32,
            reader: user,
            // Devices the enum does not name are sent as unspecified.
            device: DeviceType::try_from(device).unwrap_or_default() as i32,
            msg_ids: ids.clone(),
            up_to_msg_id: 0,
        }
        .encode_to_vec();
        assert_eq!(sql, prost, "user {user} device {device} ids {ids:?}");
    }
}

/// History reads the partial indexes that leave system messages out (the
/// query states their condition as a literal, which a prepared statement's
/// generic plan can match too); receipts have no entries there, and
/// one-to-one messages none in the group history index (migration 0006).
#[tokio::test]
async fn history_reads_the_partial_indexes_on_postgres() {
    use im_logic::store::history::history_c2c_sql;
    let (store, s, users) = plan_fixture(1000, 20).await;
    let acks: Vec<DeviceAck> = users
        .iter()
        .take(100)
        .map(|&u| DeviceAck {
            user: u,
            device: 1,
            seq: 20,
        })
        .collect();
    store.commit_acks(&acks, 2).await.unwrap();
    let pool = store.pool();
    sqlx::query("ANALYZE").execute(pool).await.unwrap();
    let plan = plan_text(
        &sqlx::query(sqlx::AssertSqlSafe(format!(
            "EXPLAIN {}",
            history_c2c_sql()
        )))
        .bind(i64::MAX)
        .bind(s)
        .bind(users[7])
        .bind(20i64)
        .fetch_all(pool)
        .await
        .unwrap(),
    );
    assert!(plan.contains("messages_pair"), "{plan}");
    assert!(!plan.contains("Seq Scan on messages"), "{plan}");
    // 20,000 messages in the pair index, none of the 100 receipts; the
    // group history index holds no one-to-one message.
    let (indexed, receipts, in_group_index): (i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT reltuples::bigint FROM pg_class WHERE relname = 'messages_pair'), \
                (SELECT COUNT(*) FROM messages WHERE content_type >= 61440), \
                (SELECT reltuples::bigint FROM pg_class WHERE relname = 'messages_conv')",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!((indexed, receipts, in_group_index), (20_000, 100, 0));
}

/// The writer's batch statements: receipts in `messages`, and inline.
const BATCH_STATEMENTS: [&str; 2] = [
    im_logic::store::pg_batch::BATCH_SQL,
    im_logic::store::pg_batch::INLINE_BATCH_SQL,
];

/// The generic plan of the writer's batch statement `k`
/// ([`BATCH_STATEMENTS`]) on `conn` (one ack, no message).
async fn explain_batch(conn: &mut sqlx::PgConnection, k: usize) -> String {
    use sqlx::Row;
    let statement = BATCH_STATEMENTS[k];
    for q in [
        "SET plan_cache_mode = force_generic_plan".to_string(),
        format!("PREPARE batch{k} ({BATCH_PARAMS}) AS {statement}"),
    ] {
        sqlx::raw_sql(sqlx::AssertSqlSafe(q))
            .execute(&mut *conn)
            .await
            .unwrap();
    }
    let args = ["'{}'"; 12]
        .into_iter()
        .chain(["'{1}'"; 3])
        .chain(["'{\"\\\\x08\"}'", "1", "1", "1", "34", "1"])
        .collect::<Vec<_>>()
        .join(", ");
    let rows = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "EXPLAIN EXECUTE batch{k} ({args})"
    )))
    .fetch_all(&mut *conn)
    .await
    .unwrap();
    rows.iter()
        .map(|r| r.try_get::<String, _>(0).unwrap())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every table the batch statement reads.
const BATCH_TABLES: [&str; 4] = ["user_seq", "device_cursors", "inbox", "messages"];

/// The writer's batch statement's generic plan, made on empty tables (a
/// writer prepares it at its first batch, and nothing re-plans it when the
/// tables grow unless ANALYZE runs): every table is read by index, and a
/// covered inbox entry written before migration 0007 (no `receipt_to`)
/// reads its message by primary key. With the system-content condition
/// written as a literal, the planner read a partial index of all messages
/// instead, and acknowledgements slowed down as the table grew (found at
/// 1,000 msg/s).
#[tokio::test]
async fn the_ack_statement_reads_messages_by_key_even_when_planned_on_empty_tables() {
    let store = common::postgres("im_plan").await;
    store.create_user("a", "h", 0).await.unwrap();
    let mut conn = pg_conn(&store).await;
    for k in 0..BATCH_STATEMENTS.len() {
        let plan = explain_batch(&mut conn, k).await;
        assert!(plan.contains("messages_pkey"), "{plan}");
        // (`messages_sender_client_msg_id_key` is the insert's conflict arbiter.)
        assert!(!plan.contains("using messages_sender "), "{plan}");
        assert!(!plan.contains("on messages_sender "), "{plan}");
        // Every table is read by index, however small it was when planned.
        for table in BATCH_TABLES {
            assert!(!plan.contains(&format!("Seq Scan on {table} ")), "{plan}");
        }
    }
}

/// Tables that `ANALYZE` saw empty are planned as empty, unlike tables
/// never analyzed (which Postgres takes for ten pages): without
/// `enable_seqscan = off` the batch statement's plan scans the whole inbox
/// and `device_cursors` for every acknowledged range, and that plan lasts
/// on the writer's kept connection while the tables grow. The writer's own
/// connection (`pg_batch::connect`) reads every table by index.
#[tokio::test]
async fn the_writers_plan_reads_by_index_on_tables_analyzed_empty() {
    let store = common::postgres("im_plan0").await;
    store.create_user("a", "h", 0).await.unwrap();
    sqlx::query("ANALYZE").execute(store.pool()).await.unwrap();
    let scans = |plan: &str| {
        BATCH_TABLES
            .into_iter()
            .filter(|t| plan.contains(&format!("Seq Scan on {t} ")))
            .collect::<Vec<_>>()
    };
    // (On an ordinary connection, Postgres 15 scans `user_seq`,
    // `device_cursors`, `inbox` and `messages` here.)
    let mut writer = im_logic::store::pg_batch::connect(&store).await.unwrap();
    for k in 0..BATCH_STATEMENTS.len() {
        let plan = explain_batch(&mut writer, k).await;
        assert_eq!(scans(&plan), Vec::<&str>::new(), "{plan}");
        assert!(plan.contains("inbox_pkey"), "{plan}");
        assert!(plan.contains("device_cursors_pkey"), "{plan}");
    }
}

/// `SHOW enable_seqscan` on `conn`.
async fn seqscan(conn: &mut sqlx::AnyConnection) -> String {
    sqlx::query_scalar("SHOW enable_seqscan")
        .fetch_one(conn)
        .await
        .unwrap()
}

/// A store writer's pooled connection (its transactions of several
/// statements: on Postgres, batches beyond the one statement) prices
/// sequential scans out like the writer's own connection, for as long as
/// the writer keeps it; other writes' connections do not, and the setting
/// never comes back to the pool.
#[tokio::test]
async fn store_writers_price_sequential_scans_out_on_postgres() {
    let store = common::postgres("im_seqw").await;
    let mut writer = WriterConn::for_writer();
    let mut other = WriterConn::default();
    for (held, expected) in [(&mut writer, "off"), (&mut other, "on")] {
        // Twice: the second transaction runs on the kept connection.
        for _ in 0..2 {
            let mut tx = store.begin_write_on(held).await.unwrap();
            assert_eq!(seqscan(&mut tx).await, expected);
            tx.rollback().await.unwrap();
        }
    }
    drop((writer, other));
    let pool = store.pool();
    let mut all = Vec::new();
    for _ in 0..pool.options().get_max_connections() {
        let mut conn = pool.acquire().await.unwrap();
        assert_eq!(seqscan(&mut conn).await, "on");
        all.push(conn);
    }
}

/// The acknowledgement statement of batches too large for the writer's one
/// statement (`ack_sql`) reads each acknowledged range through the inbox
/// index, not by scanning every inbox (which Postgres prefers for a plain
/// join once a batch holds a few dozen acks and the inbox is large).
#[tokio::test]
async fn large_ack_batches_read_inbox_ranges_by_index_on_postgres() {
    use im_logic::store::receipts::ack_sql;
    let (store, _, users) = plan_fixture(100, 40).await;
    sqlx::query("ANALYZE").execute(store.pool()).await.unwrap();
    // Each device acks up to 390 (run), then up to 400 (explained).
    let n = 64;
    let mut conn = store.pool().acquire().await.unwrap();
    let mut ack_all = async |explain: &str, seq: i64| {
        let mut query = sqlx::query(sqlx::AssertSqlSafe(format!("{explain}{}", ack_sql(n))));
        for u in &users[..n] {
            query = query.bind(*u).bind(1i64).bind(seq);
        }
        query
            .bind(5i64)
            .bind(ConversationType::C2c as i64)
            .bind(0xF000i64)
            .fetch_all(&mut *conn)
            .await
            .unwrap()
    };
    let rows = ack_all("", 390).await;
    assert_eq!(rows.len(), n * 390, "a receipt per covered message");
    let plan = plan_text(&ack_all("EXPLAIN ", 400).await);
    assert!(!plan.contains("Seq Scan on inbox"), "{plan}");
    assert!(plan.contains("inbox_pkey"), "{plan}");
}

/// `ack_sql`'s generic plan (batches too large for the writer's one
/// statement), made on empty tables: as
/// `the_ack_statement_reads_messages_by_key_even_when_planned_on_empty_tables`.
#[tokio::test]
async fn the_large_batch_ack_statement_reads_messages_by_key_even_when_planned_on_empty_tables() {
    use im_logic::store::receipts::ack_sql;
    let store = common::postgres("im_plan").await;
    store.create_user("a", "h", 0).await.unwrap();
    let mut conn = store.pool().acquire().await.unwrap();
    let params = 3 + 3; // one (user, device, ack) row, then now, conv, content
    let prepare = format!(
        "PREPARE ack ({}) AS {}",
        vec!["int8"; params].join(", "),
        ack_sql(1)
    );
    for q in [
        "SET plan_cache_mode = force_generic_plan".to_string(),
        prepare,
    ] {
        sqlx::raw_sql(sqlx::AssertSqlSafe(q))
            .execute(&mut *conn)
            .await
            .unwrap();
    }
    let args = vec!["1"; params].join(", ");
    let plan = plan_text(
        &sqlx::raw_sql(sqlx::AssertSqlSafe(format!("EXPLAIN EXECUTE ack ({args})")))
            .fetch_all(&mut *conn)
            .await
            .unwrap(),
    );
    assert!(plan.contains("inbox_pkey"), "{plan}");
    assert!(plan.contains("messages_pkey"), "{plan}");
    assert!(!plan.contains("messages_sender"), "{plan}");
}

/// The same conversation on two fresh databases, one writer storing its
/// DELIVERED receipts in `messages`, the other inline in the inbox entry
/// (migration 0009): the receipts pulled are the same messages, and the
/// inline one has no `messages` row. Acknowledging an inline receipt
/// moves the cursor and begets no receipt.
#[tokio::test]
async fn inline_receipts_are_pulled_like_stored_ones_on_postgres() {
    async fn run(store: &Store) -> (Vec<im_proto::client::Message>, i64, i64, i64) {
        let a = store.create_user("ann", "h", 0).await.unwrap();
        let b = store.create_user("bob", "h", 0).await.unwrap();
        let mut conn = WriterConn::default();
        let sent = store
            .commit_batch(&[msg(a, b, "m1"), msg(a, b, "m2")], 10)
            .await
            .unwrap();
        assert!(sent.results.iter().all(|r| r.is_ok()));
        // b's ack rides with b's own message to a: one receipt for m1 and m2.
        let ack = DeviceAck {
            user: b,
            device: 1,
            seq: 2,
        };
        let (items, out) = store
            .commit_with_acks_on(&mut conn, vec![msg(b, a, "r1")], &[ack], 20)
            .await
            .unwrap();
        assert_eq!(items.len(), 2, "b's message, then the receipt");
        assert!(out.results.iter().all(|r| r.is_ok()));
        let pushed: Vec<_> = out.deliveries.iter().filter(|d| d.item == 1).collect();
        assert_eq!(pushed.len(), 1);
        // a acknowledges everything, the receipt included: a receipt for
        // r1 only (a receipt begets none).
        let ack = DeviceAck {
            user: a,
            device: 1,
            seq: 4,
        };
        let (_, back) = store
            .commit_with_acks_on(&mut conn, Vec::new(), &[ack], 30)
            .await
            .unwrap();
        let r1 = out.results[0].as_ref().unwrap().msg_id;
        let receipted: Vec<(i64, Vec<i64>)> = back
            .deliveries
            .iter()
            .map(|d| {
                (
                    d.user,
                    Receipt::decode(d.message.body.clone()).unwrap().msg_ids,
                )
            })
            .collect();
        assert_eq!(receipted, [(b, vec![r1])]);
        assert_eq!(store.cursor(a, 1).await.unwrap(), 4);
        let (page, more) = store.pull(a, 0, 10).await.unwrap();
        assert!(!more);
        let pushed = &pushed[0].message;
        assert_eq!(page.last(), Some(pushed), "the receipt as pushed");
        let rows: (i64,) =
            sqlx::query_as("SELECT COUNT(*) FROM messages WHERE content_type >= 61440")
                .fetch_one(store.pool())
                .await
                .unwrap();
        (page, rows.0, a, b)
    }
    let plain = common::postgres("im_inline_off").await;
    let inline = common::postgres("im_inline_on")
        .await
        .with_inline_receipts(true);
    let (stored_page, stored_rows, a, b) = run(&plain).await;
    let (inline_page, inline_rows, ..) = run(&inline).await;
    assert_eq!((stored_rows, inline_rows), (2, 0), "one receipt each way");
    assert_eq!(inline_page, stored_page);
    // a's inbox: m1, m2 (own copies), r1 from b, the receipt from b.
    let got: Vec<(u64, i64, i32)> = inline_page
        .iter()
        .map(|m| (m.seq, m.from, m.conv_type))
        .collect();
    let c2c = ConversationType::C2c as i32;
    assert_eq!(got, [(1, a, c2c), (2, a, c2c), (3, b, c2c), (4, b, c2c)]);
    let receipt = &inline_page[3];
    assert_eq!(
        (receipt.to, receipt.content_type, receipt.sent_at_ms),
        (a, SystemContentType::Receipt as u32, 20)
    );
    let r = Receipt::decode(receipt.body.clone()).unwrap();
    assert_eq!((r.kind, r.reader), (ReceiptKind::Delivered as i32, b));
    assert_eq!(r.msg_ids.len(), 2);
    // A page boundary inside the conversation reads the inline entry too.
    let (first, more) = inline.pull(a, 2, 1).await.unwrap();
    assert!(more);
    assert_eq!(first, inline_page[2..3]);
    let (last, more) = inline.pull(a, 3, 1).await.unwrap();
    assert!(!more);
    assert_eq!(last, inline_page[3..]);
}

/// A retransmit finds the sender's own inbox entry through `inbox_own_msg`
/// (migration 0010), which holds only such entries, on both paths: the
/// writer's (`ORIGINALS_SQL`, on the writer's connection, planned
/// generically) and the multi-statement path's (`ORIGINAL_ACK_SQL`).
#[tokio::test]
async fn a_retransmit_finds_the_senders_entry_by_its_index_on_postgres() {
    use im_logic::store::messages::ORIGINAL_ACK_SQL;
    use im_logic::store::pg_batch::{ORIGINALS_SQL, connect};
    use sqlx::Row;
    let store = common::postgres("im_own").await;
    let a = store.create_user("ann", "h", 0).await.unwrap();
    let b = store.create_user("bob", "h", 0).await.unwrap();
    store.commit_batch(&[msg(a, b, "x")], 1).await.unwrap();
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!("EXPLAIN {ORIGINALS_SQL}")))
        .bind(vec![a])
        .bind(vec!["x"])
        .fetch_all(&mut connect(&store).await.unwrap())
        .await
        .unwrap();
    let plan: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    let plan = plan.join("\n");
    assert!(plan.contains("inbox_own_msg"), "{plan}");
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!("EXPLAIN {ORIGINAL_ACK_SQL}")))
        .bind(a)
        .bind("x")
        .fetch_all(store.pool())
        .await
        .unwrap();
    let plan = plan_text(&rows);
    assert!(plan.contains("inbox_own_msg"), "{plan}");
    // The recipient's entry and the sender's are both in the inbox; only
    // the sender's is in the index.
    let (entries, own): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(*) FILTER (WHERE COALESCE(receipt_to, 0) = 0 AND sender IS NULL) FROM inbox",
    )
    .fetch_one(store.pool())
    .await
    .unwrap();
    assert_eq!((entries, own), (2, 1));
}

#[tokio::test]
async fn a_retransmit_finds_the_senders_entry_by_its_index_on_sqlite() {
    use im_logic::store::messages::ORIGINAL_ACK_SQL;
    use sqlx::Row;
    let (store, _dir) = common::sqlite().await;
    let a = store.create_user("ann", "h", 0).await.unwrap();
    let b = store.create_user("bob", "h", 0).await.unwrap();
    store.commit_batch(&[msg(a, b, "x")], 1).await.unwrap();
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "EXPLAIN QUERY PLAN {ORIGINAL_ACK_SQL}"
    )))
    .bind(a)
    .bind("x")
    .fetch_all(store.pool())
    .await
    .unwrap();
    let plan: Vec<String> = rows.iter().map(|r| r.get(3)).collect();
    assert!(plan.iter().any(|l| l.contains("inbox_own_msg")), "{plan:?}");
}

/// The state of index `inbox_own_msg`: (valid, definition).
async fn own_msg_index(store: &Store) -> Option<(bool, String)> {
    sqlx::query_as(
        "SELECT i.indisvalid, pg_get_indexdef(i.indexrelid) FROM pg_index i \
         JOIN pg_class c ON c.oid = i.indexrelid WHERE c.relname = 'inbox_own_msg'",
    )
    .fetch_optional(store.pool())
    .await
    .unwrap()
}

/// Migration 0010 builds its index concurrently. A build that fails (its
/// process killed, say) leaves the index behind, invalid, and unrecorded;
/// `IF NOT EXISTS` would keep that one when the migration runs again, so
/// the next migration drops it first and the index is built anew.
#[tokio::test]
async fn an_index_a_failed_build_left_invalid_is_built_again_on_postgres() {
    let store = common::postgres("im_mig10").await;
    for q in [
        "DROP INDEX inbox_own_msg",
        "INSERT INTO inbox (user_id, seq, msg_id) VALUES (1, 1, 7), (1, 2, 8)",
        "DELETE FROM _sqlx_migrations WHERE version = 10",
    ] {
        sqlx::raw_sql(q).execute(store.pool()).await.unwrap();
    }
    // A unique index over duplicates fails its build and stays, invalid.
    let failed = sqlx::raw_sql("CREATE UNIQUE INDEX CONCURRENTLY inbox_own_msg ON inbox (user_id)")
        .execute(store.pool())
        .await;
    assert!(failed.is_err());
    assert_eq!(own_msg_index(&store).await.map(|i| i.0), Some(false));
    store.migrate().await.unwrap();
    let (valid, def) = own_msg_index(&store).await.unwrap();
    assert!(valid, "{def}");
    assert!(
        !def.contains("UNIQUE") && def.contains("(msg_id) WHERE"),
        "{def}"
    );
}

/// Logic processes starting at once on a new database take turns and all
/// finish, although migration 0010 builds an index concurrently: a build
/// waits for every older statement to end, and a process waiting for the
/// migration lock inside a statement (as sqlx's own lock waits) would
/// wait for the builder in turn.
#[tokio::test]
async fn processes_migrating_at_once_all_finish_on_postgres() {
    let first = common::postgres_unmigrated("im_migs").await;
    let url = first.pool().connect_options().database_url.to_string();
    let mut runs = Vec::new();
    for i in 0..4 {
        let store = match i {
            0 => first.clone(),
            _ => Store::connect(&url, 2).await.unwrap(),
        };
        runs.push(tokio::spawn(async move { store.migrate().await }));
    }
    for run in runs {
        tokio::time::timeout(std::time::Duration::from_secs(60), run)
            .await
            .expect("no process waits for ever")
            .unwrap()
            .unwrap();
    }
    let (applied,): (i64,) = sqlx::query_as("SELECT count(*) FROM _sqlx_migrations")
        .fetch_one(first.pool())
        .await
        .unwrap();
    let expected = sqlx::migrate!("./migrations/postgres").iter().count();
    assert_eq!(applied as usize, expected);
    assert_eq!(own_msg_index(&first).await.map(|i| i.0), Some(true));
}

/// A logic build starts against a database that a newer build migrated
/// further (a rollback, or an older pod restarting during a roll): the
/// migrations it does not know are let be, and a migration it knows
/// whose text changed still fails the start.
async fn an_older_build_starts_on_a_newer_schema(store: &Store) {
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES (9999, 'from a newer build', TRUE, $1, 0)",
    )
    .bind(vec![0u8])
    .execute(store.pool())
    .await
    .unwrap();
    store.migrate().await.unwrap();
    sqlx::query("UPDATE _sqlx_migrations SET checksum = $1 WHERE version = 1")
        .bind(vec![0u8])
        .execute(store.pool())
        .await
        .unwrap();
    let changed = store.migrate().await;
    assert!(
        matches!(
            changed,
            Err(im_logic::store::StoreError::Migrate(
                sqlx::migrate::MigrateError::VersionMismatch(1)
            ))
        ),
        "{changed:?}"
    );
}

on_both_backends! {
    an_older_build_starts_on_a_newer_schema_sqlite, an_older_build_starts_on_a_newer_schema_postgres:
        an_older_build_starts_on_a_newer_schema, "im_newer";
}
