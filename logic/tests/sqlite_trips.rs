//! How many trips to sqlx's worker thread a single-node writer's batch
//! takes. Every query on a SQLite connection is a trip there and back (two
//! thread switches), which cost the single node more CPU than SQLite's own
//! work (docs/benchmarks.md, "Findings"). sqlx logs each query it runs,
//! on that thread, under the target `sqlx::query`: this binary counts
//! those events with a process-wide subscriber, so it holds one test.
mod common;
use std::sync::atomic::{AtomicUsize, Ordering};

use im_logic::store::receipts::DeviceAck;
use im_logic::store::{NewMessage, SendPolicy, WriterConn};
use im_proto::client::Receipt;
use im_proto::prost::Message as _;
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Metadata, Subscriber};

/// The one-to-one policy (the block check), as gateways send c2c.
const C2C: SendPolicy = SendPolicy::C2c {
    friends_only: false,
};

static QUERIES: AtomicUsize = AtomicUsize::new(0);
/// Queries whose text inserts messages.
static MESSAGE_INSERTS: AtomicUsize = AtomicUsize::new(0);

/// Counts `sqlx::query` events, whichever thread logs them.
struct CountQueries;

/// Whether an event's text fields (sqlx's summary and statement) insert
/// messages.
#[derive(Default)]
struct InsertsMessages(bool);

impl tracing::field::Visit for InsertsMessages {
    fn record_str(&mut self, _: &tracing::field::Field, value: &str) {
        self.0 |= value.contains("INSERT INTO messages");
    }
    fn record_debug(&mut self, _: &tracing::field::Field, _: &dyn std::fmt::Debug) {}
}

impl Subscriber for CountQueries {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.target() == "sqlx::query"
    }
    fn new_span(&self, _: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }
    fn record(&self, _: &Id, _: &Record<'_>) {}
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, event: &Event<'_>) {
        if event.metadata().target() == "sqlx::query" {
            QUERIES.fetch_add(1, Ordering::SeqCst);
            let mut text = InsertsMessages::default();
            event.record(&mut text);
            if text.0 {
                MESSAGE_INSERTS.fetch_add(1, Ordering::SeqCst);
            }
        }
    }
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}

/// The batch of `c2c-latency`'s steady state: one-to-one messages under
/// the block check, with the acks of the batch before, whose receipts
/// are stored and whose cursors move. Four queries: the acks (covered
/// entries, receipts, cursors); users and blocks; messages; sequences and
/// inbox rows (`BEGIN` and `COMMIT` are not queries). Nine before they
/// were folded. Then a full batch, whose messages are one statement.
#[tokio::test]
async fn sqlite_batches_take_few_queries() {
    tracing::subscriber::set_global_default(CountQueries).expect("the only subscriber");
    let (store, _dir) = common::sqlite().await;
    let mut users = Vec::new();
    for i in 0..6 {
        users.push(store.create_user(&format!("u{i}"), "h", 0).await.unwrap());
    }
    let pairs: Vec<(i64, i64)> = users.chunks(2).map(|p| (p[0], p[1])).collect();
    let mut held = WriterConn::default();
    let batch = |round: usize| -> Vec<NewMessage> {
        pairs
            .iter()
            .map(|&(a, b)| common::c2c(a, b, &format!("m{round}-{a}"), C2C))
            .collect()
    };
    let (_, first) = store
        .commit_with_acks_on(&mut held, batch(1), &[], 10)
        .await
        .unwrap();
    let acks: Vec<DeviceAck> = first
        .deliveries
        .iter()
        .filter(|d| pairs.iter().any(|&(_, b)| b == d.user))
        .map(|d| DeviceAck {
            user: d.user,
            device: 1,
            seq: d.message.seq,
        })
        .collect();
    assert_eq!(acks.len(), 3);

    let before = QUERIES.load(Ordering::SeqCst);
    let (items, out) = store
        .commit_with_acks_on(&mut held, batch(2), &acks, 20)
        .await
        .unwrap();
    let queries = QUERIES.load(Ordering::SeqCst) - before;
    assert_eq!(queries, 4, "queries for one steady batch");

    // And it did everything: three messages stored, three receipts to their
    // senders after them, every inbox in order.
    assert_eq!(items.len(), 6);
    assert!(out.results.iter().all(|r| r.is_ok()), "{:?}", out.results);
    for &(a, b) in &pairs {
        let mine: Vec<_> = out.deliveries.iter().filter(|d| d.user == a).collect();
        // The sender's own copy of m2 (seq 2), then b's receipt (seq 3).
        let seqs: Vec<u64> = mine.iter().map(|d| d.message.seq).collect();
        assert_eq!(seqs, [2, 3], "user {a}");
        let r = Receipt::decode(mine[1].message.body.clone()).unwrap();
        assert_eq!(r.reader, b);
        let theirs: Vec<u64> = out
            .deliveries
            .iter()
            .filter(|d| d.user == b)
            .map(|d| d.message.seq)
            .collect();
        assert_eq!(theirs, [2], "user {b}");
        assert_eq!(store.cursor(b, 1).await.unwrap(), 1);
    }

    // A full batch (the committer takes up to 256 messages; with their
    // receipts up to 512): its messages go in one statement on SQLite,
    // whose anonymous placeholders sqlx binds in one pass (32 rows a
    // statement before, named ones costing the square of their number).
    let senders: Vec<i64> = pairs.iter().map(|&(a, _)| a).collect();
    let full: Vec<NewMessage> = (0..512)
        .map(|i| {
            let (a, b) = pairs[i % pairs.len()];
            common::c2c(a, b, &format!("full-{i}"), C2C)
        })
        .collect();
    let before = MESSAGE_INSERTS.load(Ordering::SeqCst);
    let (_, out) = store
        .commit_with_acks_on(&mut held, full, &[], 30)
        .await
        .unwrap();
    assert_eq!(MESSAGE_INSERTS.load(Ordering::SeqCst) - before, 1);
    assert!(out.results.iter().all(|r| r.is_ok()));
    for a in senders {
        // After m1, m2 and b's receipt: 171 or 170 more, dense.
        let (page, _) = store.pull(a, 3, 1000).await.unwrap();
        let seqs: Vec<u64> = page.iter().map(|m| m.seq).collect();
        assert_eq!(seqs, (4..4 + seqs.len() as u64).collect::<Vec<_>>());
        assert!(seqs.len() >= 170, "{}", seqs.len());
    }
}
