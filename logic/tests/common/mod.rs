//! Stores for the backend-parity tests: a SQLite file and a fresh Postgres database.
use im_logic::store::Store;

pub async fn sqlite() -> (Store, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("t.db").display());
    let store = Store::connect(&url, 4).await.unwrap();
    store.migrate().await.unwrap();
    (store, dir)
}

pub async fn postgres(prefix: &str) -> Store {
    let base = std::env::var("IM_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into());
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let url = format!("{base}/{prefix}_{}_{nanos:08x}", std::process::id());
    let store = Store::connect(&url, 4)
        .await
        .expect("Postgres must be running (scripts/test.sh starts it)");
    store.migrate().await.unwrap();
    store
}
