//! The sequence/inbox path: `Store::commit_batch` on SQLite in a temp dir
//! (WAL, synchronous=FULL, as im-server runs it) with batches of 1 and 64
//! one-to-one messages between 64 users.
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use im_logic::store::{NewMessage, SendPolicy, Store};
use im_proto::client::ConversationType;

const USERS: usize = 64;

fn batch(users: &[i64], size: usize, next: &AtomicU64) -> Vec<NewMessage> {
    (0..size)
        .map(|i| {
            let n = next.fetch_add(1, Ordering::Relaxed);
            let from = users[i % users.len()];
            let to = users[(i + 1) % users.len()];
            NewMessage {
                sender: from,
                client_msg_id: format!("bench-{n}"),
                conv_type: ConversationType::C2c,
                target: to,
                content_type: 1,
                body: Bytes::from_static(&[b'x'; 64]),
                recipients: vec![to],
                policy: SendPolicy::Unchecked,
            }
        })
        .collect()
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
    let (store, users) = rt.block_on(async {
        let store = Store::connect(&url, 4).await.expect("open sqlite");
        store.migrate().await.expect("migrate");
        let mut users = Vec::new();
        for i in 0..USERS {
            users.push(
                store
                    .create_user(&format!("u{i}"), "not-a-hash", 0)
                    .await
                    .expect("create user"),
            );
        }
        (store, users)
    });
    let next = AtomicU64::new(0);
    let mut g = c.benchmark_group("store_commit_batch_sqlite");
    for size in [1usize, 64] {
        g.throughput(Throughput::Elements(size as u64));
        g.bench_function(format!("batch_{size}"), |b| {
            b.iter_batched(
                || batch(&users, size, &next),
                |items| {
                    rt.block_on(store.commit_batch(&items, im_proto::now_ms()))
                        .expect("commit")
                },
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
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
