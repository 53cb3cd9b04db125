//! The store on both backends (SQLite file, fresh Postgres database): the
//! same assertions must hold on each.
use bytes::Bytes;
use im_common::api::ApiError;
use im_logic::store::{NewMessage, Store};
use im_proto::client::{ConversationType, ErrorCode};

async fn sqlite() -> (Store, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("t.db").display());
    let store = Store::connect(&url, 4).await.unwrap();
    store.migrate().await.unwrap();
    (store, dir)
}

async fn postgres() -> Store {
    let base = std::env::var("IM_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into());
    let url = format!("{base}/im_store_{}_{:08x}", std::process::id(), rand_u32());
    let store = Store::connect(&url, 4)
        .await
        .expect("Postgres must be running (scripts/test.sh starts it)");
    store.migrate().await.unwrap();
    store
}

fn rand_u32() -> u32 {
    (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos())
        ^ std::process::id()
}

fn msg(sender: i64, to: i64, id: &str) -> NewMessage {
    NewMessage {
        sender,
        client_msg_id: id.into(),
        conv_type: ConversationType::C2c,
        target: to,
        content_type: 1,
        body: Bytes::from(format!("body {id}")),
        recipients: vec![to],
    }
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
    // SQL-ish text is data.
    let evil = "'); DELETE FROM inbox; --";
    let out = store.commit_batch(&[msg(b, a, evil)], 3000).await.unwrap();
    assert!(out.results[0].is_ok());
    let (page, _) = store.pull(a, 3, 10).await.unwrap();
    assert_eq!(page[0].client_msg_id, evil);
    assert_eq!(store.max_seq(b).await.unwrap(), 3);

    // Cursors never move back.
    store.save_cursors(&[(a, 1, 5)], 1).await.unwrap();
    store.save_cursors(&[(a, 1, 3)], 2).await.unwrap();
    assert_eq!(store.cursor(a, 1).await.unwrap(), 5);
}

#[tokio::test]
async fn store_semantics_sqlite() {
    let (store, _dir) = sqlite().await;
    exercise(&store).await;
}

#[tokio::test]
async fn store_semantics_postgres() {
    let store = postgres().await;
    exercise(&store).await;
}
