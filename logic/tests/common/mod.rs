//! Stores for the backend-parity tests: a SQLite file and a fresh Postgres
//! database; and their messages. Each test binary uses part of it.
#![allow(dead_code)]
use bytes::Bytes;
use im_logic::store::{NewMessage, SendPolicy, Store};
use im_proto::client::ConversationType;

/// A one-to-one message from `sender` to `to` with client id `id`.
pub fn c2c(sender: i64, to: i64, id: &str, policy: SendPolicy) -> NewMessage {
    NewMessage {
        sender,
        client_msg_id: id.into(),
        conv_type: ConversationType::C2c,
        target: to,
        content_type: 1,
        body: Bytes::from(format!("body {id}")),
        recipients: vec![to],
        policy,
    }
}

pub async fn sqlite() -> (Store, tempfile::TempDir) {
    let (store, dir) = sqlite_unmigrated().await;
    store.migrate().await.unwrap();
    (store, dir)
}

/// A SQLite store without its tables (see [`Store::migrate`]).
pub async fn sqlite_unmigrated() -> (Store, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("t.db").display());
    (Store::connect(&url, 4).await.unwrap(), dir)
}

pub async fn postgres(prefix: &str) -> Store {
    let store = postgres_unmigrated(prefix).await;
    store.migrate().await.unwrap();
    store
}

/// A fresh Postgres database without its tables (see [`Store::migrate`]).
pub async fn postgres_unmigrated(prefix: &str) -> Store {
    let base = std::env::var("IM_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into());
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let url = format!("{base}/{prefix}_{}_{nanos:08x}", std::process::id());
    Store::connect(&url, 4)
        .await
        .expect("Postgres must be running (scripts/test.sh starts it)")
}
