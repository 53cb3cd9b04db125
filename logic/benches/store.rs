//! The sequence/inbox path: `Store::commit_batch` on SQLite in a temp dir
//! (WAL, synchronous=FULL, as im-server runs it) and on Postgres (a fresh
//! database on `IM_BENCH_PG_BASE`, default the local server, dropped at the
//! end; skipped when it does not answer), with batches of one-to-one
//! messages between 64 users. On Postgres the batches run on one kept
//! connection, as the committer runs them.
//!
//! `store_c2c_steady_postgres` is the writer's work in `im-bench
//! c2c-latency`'s steady state: 500 pairs, batches of 12 messages (the
//! batch at 5,000 msg/s; 1 and 48 beside it tell the batch's fixed cost
//! from its cost per message), each batch also carrying the acks its
//! predecessor caused that reach logic at once: the recipients', which
//! store DELIVERED receipts. (The senders' acks of those receipts store
//! none; the gateway defers them, see `ConnHandle::on_ack`.)
//! `store_c2c_steady_sqlite` is the same on the single node's SQLite.
//! After each Postgres steady batch size it prints the CPU time of every
//! `postgres` process per message (from `/proc`): the database's work,
//! apart from the round trips and waits that a batch's time also holds.
//!
//! To weigh a change to the batch statement, set `IM_BENCH_AB` to text
//! replacements of it (`FROM=>TO`, separated by `;;`): before the steady
//! group the benchmark alternates the statement and the changed one and
//! prints the Postgres CPU a message of each ([`ab_statements`]).
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use im_logic::store::pg_batch::BATCH_SQL;
use im_logic::store::receipts::DeviceAck;
use im_logic::store::{NewMessage, SendPolicy, Store, WriterConn};
use im_proto::client::ConversationType;

const USERS: usize = 64;

/// A one-to-one text message with a 64-byte body.
fn message(from: i64, to: i64, client_msg_id: String) -> NewMessage {
    NewMessage {
        sender: from,
        client_msg_id,
        conv_type: ConversationType::C2c,
        target: to,
        content_type: 1,
        body: Bytes::from_static(&[b'x'; 64]),
        recipients: vec![to],
        // As `im-bench` runs logic (`IM_C2C_POLICY=anyone`): blocks are checked.
        policy: SendPolicy::C2c {
            friends_only: false,
        },
    }
}

fn batch(users: &[i64], size: usize, next: &AtomicU64) -> Vec<NewMessage> {
    (0..size)
        .map(|i| {
            let n = next.fetch_add(1, Ordering::Relaxed);
            let from = users[i % users.len()];
            let to = users[(i + 1) % users.len()];
            message(from, to, format!("bench-{n}"))
        })
        .collect()
}

async fn with_users(url: &str) -> Result<(Store, Vec<i64>), im_logic::store::StoreError> {
    with_n_users(url, USERS).await
}

async fn with_n_users(
    url: &str,
    n: usize,
) -> Result<(Store, Vec<i64>), im_logic::store::StoreError> {
    let store = Store::connect(url, 4).await?;
    store.migrate().await?;
    let mut users = Vec::new();
    for i in 0..n {
        users.push(store.create_user(&format!("u{i}"), "not-a-hash", 0).await?);
    }
    Ok((store, users))
}

fn commit_batches(
    c: &mut Criterion,
    rt: &tokio::runtime::Runtime,
    name: &str,
    (store, users): &(Store, Vec<i64>),
    sizes: &[usize],
) {
    // Dropped last: the kept connection closes on the runtime.
    let _rt = rt.enter();
    let next = AtomicU64::new(0);
    // The committer's connection: its own on Postgres, pooled on SQLite.
    let held = std::cell::RefCell::new(WriterConn::default());
    let mut g = c.benchmark_group(name);
    for &size in sizes {
        g.throughput(Throughput::Elements(size as u64));
        g.bench_function(format!("batch_{size}"), |b| {
            b.iter_batched(
                || batch(users, size, &next),
                |items| {
                    let mut held = held.borrow_mut();
                    rt.block_on(store.commit_with_acks_on(
                        &mut held,
                        items,
                        &[],
                        im_proto::now_ms(),
                    ))
                    .expect("commit")
                },
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

/// Pairs (sender `2k`, recipient `2k + 1`) and batch sizes: 12 is
/// `c2c-latency`'s at 5,000 msg/s, 1 its usual batch below 1,000 msg/s.
const PAIRS: usize = 500;
const STEADY_BATCHES: [usize; 3] = [1, 12, 48];

/// Commits batches of each of [`STEADY_BATCHES`] messages round the pairs,
/// each with the acks of the previous batch's messages that want a receipt
/// (per user, up to its newest).
fn commit_steady(
    c: &mut Criterion,
    rt: &tokio::runtime::Runtime,
    name: &str,
    (store, users): &(Store, Vec<i64>),
) {
    let _rt = rt.enter();
    let steady = std::cell::RefCell::new(Steady::new(users, "steady"));
    let mut g = c.benchmark_group(name);
    for size in STEADY_BATCHES {
        steady.borrow_mut().acks.clear();
        let (cpu_before, sent_before) = (server_cpu_secs(store), steady.borrow().sent());
        g.throughput(Throughput::Elements(size as u64));
        g.bench_function(format!("batch_{size}"), |b| {
            b.iter(|| steady.borrow_mut().commit_next(rt, store, size, None))
        });
        if let (Some(before), Some(after)) = (cpu_before, server_cpu_secs(store)) {
            let sent = steady.borrow().sent() - sent_before;
            println!(
                "{name}/batch_{size}: Postgres CPU {:.1} µs a message ({sent} messages with their receipts)",
                (after - before) * 1e6 / sent.max(1) as f64
            );
        }
    }
    g.finish();
}

/// The writer's steady state: batches round the pairs, each carrying the
/// acks of the previous batch's messages that want a receipt (per user, up
/// to its newest).
struct Steady<'a> {
    users: &'a [i64],
    /// Client message ids are `{prefix}-{n}`.
    prefix: &'static str,
    next: u64,
    held: WriterConn,
    acks: Vec<DeviceAck>,
}

impl<'a> Steady<'a> {
    fn new(users: &'a [i64], prefix: &'static str) -> Self {
        Steady {
            users,
            prefix,
            next: 0,
            held: WriterConn::default(),
            acks: Vec::new(),
        }
    }

    /// Messages committed so far.
    fn sent(&self) -> u64 {
        self.next
    }

    /// Commits the next batch of `size` messages with the queued acks, by
    /// `statement` when given (Postgres), else as the committer does.
    fn commit_next(
        &mut self,
        rt: &tokio::runtime::Runtime,
        store: &Store,
        size: usize,
        statement: Option<&'static str>,
    ) {
        let items: Vec<NewMessage> = (0..size)
            .map(|_| {
                let n = self.next;
                self.next += 1;
                let pair = n as usize % PAIRS;
                let to = self.users[2 * pair + 1];
                message(self.users[2 * pair], to, format!("{}-{n}", self.prefix))
            })
            .collect();
        let now = im_proto::now_ms();
        let (_, out) = rt
            .block_on(async {
                match statement {
                    Some(sql) => {
                        store
                            .commit_with_statement_on(&mut self.held, sql, items, &self.acks, now)
                            .await
                    }
                    None => {
                        store
                            .commit_with_acks_on(&mut self.held, items, &self.acks, now)
                            .await
                    }
                }
            })
            .expect("commit");
        let mut newest = BTreeMap::new();
        let acked = out
            .deliveries
            .iter()
            .filter(|d| im_proto::wants_delivered_receipt(&d.message, d.user));
        for d in acked {
            let seq = newest.entry(d.user).or_insert(0);
            *seq = d.message.seq.max(*seq);
        }
        self.acks = newest
            .into_iter()
            .map(|(user, seq)| DeviceAck {
                user,
                device: 1,
                seq,
            })
            .collect();
    }
}

/// `IM_BENCH_AB='FROM=>TO;;FROM=>TO'`: [`BATCH_SQL`] against the statement
/// with those replacements made, alternated in 1.5 s rounds (A B, B A,
/// …) on one database and one writer connection (`IM_BENCH_AB_ROUNDS` a
/// side, default 8, after one warm-up round each), at 12 and 48 messages
/// a batch; prints the Postgres CPU a message of each. The machine's
/// speed here swings more between minutes than two statements differ, so
/// only such pairs tell a few per cent apart, and two identical
/// statements differ by a few per cent too (docs/benchmarks.md).
fn ab_statements(rt: &tokio::runtime::Runtime, (store, users): &(Store, Vec<i64>), spec: &str) {
    let _rt = rt.enter();
    let mut variant = BATCH_SQL.to_string();
    for pair in spec.split(";;").filter(|p| !p.is_empty()) {
        let (from, to) = pair
            .split_once("=>")
            .expect("IM_BENCH_AB: FROM=>TO pairs, separated by ;;");
        assert!(
            variant.contains(from),
            "IM_BENCH_AB: {from:?} is not in the statement"
        );
        variant = variant.replace(from, to);
    }
    // A text of its own, so that it is prepared (and planned) apart.
    let variant: &'static str = Box::leak(format!("/* variant */ {variant}").into_boxed_str());
    let rounds: usize = std::env::var("IM_BENCH_AB_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8);
    let mut steady = Steady::new(users, "ab");
    // [statement][size]: (CPU seconds, messages)
    let mut tally = [[(0.0, 0u64); 2]; 2];
    for round in 0..2 * (rounds + 1) {
        // A B, B A, A B, …: neither goes first more often.
        let which = (round % 2) ^ (round / 2 % 2);
        let sql = [BATCH_SQL, variant][which];
        for (k, size) in [12, 48].into_iter().enumerate() {
            steady.acks.clear();
            let (cpu, sent) = (server_cpu_secs(store).unwrap_or(0.0), steady.sent());
            let started = std::time::Instant::now();
            while started.elapsed() < std::time::Duration::from_millis(1500) {
                steady.commit_next(rt, store, size, Some(sql));
            }
            if round >= 2 {
                let t = &mut tally[which][k];
                t.0 += server_cpu_secs(store).unwrap_or(0.0) - cpu;
                t.1 += steady.sent() - sent;
            }
        }
    }
    for (k, size) in [12, 48].into_iter().enumerate() {
        let per = |(cpu, n): (f64, u64)| cpu * 1e6 / n.max(1) as f64;
        println!(
            "ab/batch_{size}: Postgres CPU {:.1} µs a message with BATCH_SQL, {:.1} with the variant ({rounds} rounds each)",
            per(tally[0][k]),
            per(tally[1][k]),
        );
    }
}

/// CPU seconds (user + system) of every `postgres` process on this
/// machine (the local server; `None` on SQLite): the work a batch costs
/// the database, which a batch's time mixes with round trips and the
/// waits of a busy machine. The bench process and other clients of the
/// server count only what they make it do.
fn server_cpu_secs(store: &Store) -> Option<f64> {
    use im_common::procstat::{TICKS_PER_SEC, pids_named, stat_ticks};
    (store.backend() == im_logic::store::Backend::Postgres).then(|| {
        let ticks: u64 = pids_named("postgres")
            .into_iter()
            .map(|pid| stat_ticks(pid, false))
            .sum();
        ticks as f64 / TICKS_PER_SEC
    })
}

fn store(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("bench.db").display()
    );
    let sqlite = rt.block_on(with_users(&url)).expect("open sqlite");
    commit_batches(c, &rt, "store_commit_batch_sqlite", &sqlite, &[1, 64]);
    let steady = format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("steady.db").display()
    );
    let sqlite = rt
        .block_on(with_n_users(&steady, 2 * PAIRS))
        .expect("open sqlite");
    commit_steady(c, &rt, "store_c2c_steady_sqlite", &sqlite);

    let base = std::env::var("IM_BENCH_PG_BASE")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into());
    let url = format!("{base}/im_cbench_{}", std::process::id());
    match rt.block_on(with_users(&url)) {
        Ok(pg) => {
            commit_batches(c, &rt, "store_commit_batch_postgres", &pg, &[1, 16, 64]);
            rt.block_on(async { drop(pg) });
            let steady = format!("{url}_steady");
            match rt.block_on(with_n_users(&steady, 2 * PAIRS)) {
                Ok(pg) => {
                    if let Ok(spec) = std::env::var("IM_BENCH_AB") {
                        ab_statements(&rt, &pg, &spec);
                    }
                    commit_steady(c, &rt, "store_c2c_steady_postgres", &pg);
                    rt.block_on(async { drop(pg) });
                    drop_db(&rt, &steady);
                }
                Err(e) => eprintln!("skipping the steady benchmark: {e}"),
            }
            drop_db(&rt, &url);
        }
        Err(e) => eprintln!("skipping the Postgres benchmarks ({base}): {e}"),
    }
}

fn drop_db(rt: &tokio::runtime::Runtime, url: &str) {
    use sqlx::migrate::MigrateDatabase;
    if let Err(e) = rt.block_on(sqlx::Any::force_drop_database(url)) {
        eprintln!("could not drop {url}: {e}");
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(std::time::Duration::from_millis(500))
        .measurement_time(std::time::Duration::from_secs(3));
    targets = store
}
criterion_main!(benches);
