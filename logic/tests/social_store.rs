//! Friends, groups, read diffusion, history and revoke in the store, on
//! both backends (SQLite file, fresh Postgres database): same assertions.
mod common;

use bytes::Bytes;
use im_logic::store::{NewMessage, SendPolicy, Store};
use im_proto::client::ConversationType;

fn group_msg(sender: i64, group: i64, id: &str) -> NewMessage {
    NewMessage {
        sender,
        client_msg_id: id.into(),
        conv_type: ConversationType::C2g,
        target: group,
        content_type: 1,
        body: Bytes::from(format!("body {id}")),
        recipients: Vec::new(),
        policy: SendPolicy::Unchecked,
    }
}

async fn exercise(store: &Store) {
    let a = store.create_user("ann", "h", 0).await.unwrap();
    let b = store.create_user("ben", "h", 0).await.unwrap();
    let c = store.create_user("cat", "h", 0).await.unwrap();

    // Friends: a request, then both rows with one key; blocks are one-way.
    let r = store.insert_friend_request(a, b, "hi", 1).await.unwrap();
    assert_eq!(store.pending_requests(b, true).await.unwrap()[0].id, r);
    assert_eq!(
        store
            .pending_request_between(a, b)
            .await
            .unwrap()
            .map(|r| r.note),
        Some("hi".into())
    );
    store.befriend(a, b, "k", 2).await.unwrap();
    assert!(store.pending_requests(b, true).await.unwrap().is_empty());
    assert_eq!(store.pair_key(b, a).await.unwrap().as_deref(), Some("k"));
    assert_eq!(store.friends_of(a).await.unwrap()[0].username, "ben");
    store.block(b, c, 3).await.unwrap();
    assert!(store.has_blocked(b, c).await.unwrap());
    assert!(!store.has_blocked(c, b).await.unwrap());
    assert!(store.unblock(b, c).await.unwrap());
    assert!(store.unfriend(b, a).await.unwrap());
    assert!(!store.are_friends(a, b).await.unwrap());

    // Groups: owner and members with roles, counts, removal.
    let g = store.create_group("g", a, 0, &[b, a, b], 10).await.unwrap();
    let rec = store.group(g).await.unwrap().unwrap();
    assert_eq!((rec.member_count, rec.owner_id), (2, a));
    assert_eq!(store.member(g, a).await.unwrap().unwrap().role, 2);
    assert_eq!(store.add_members(g, &[b, c], 11).await.unwrap(), 1);
    assert_eq!(store.member_ids(g).await.unwrap(), vec![a, b, c]);
    store.transfer_group(g, a, b).await.unwrap();
    assert_eq!(store.member(g, a).await.unwrap().unwrap().role, 1);
    assert_eq!(store.group(g).await.unwrap().unwrap().owner_id, b);
    assert!(store.remove_member(g, c).await.unwrap());
    assert_eq!(store.groups_of(b).await.unwrap()[0].1, 2);

    // Read diffusion: per-group sequence, idempotent, pulled by cursor.
    let m1 = store
        .commit_group_message(&group_msg(a, g, "1"), 100)
        .await
        .unwrap()
        .unwrap();
    let m2 = store
        .commit_group_message(&group_msg(b, g, "2"), 101)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((m1.group_seq, m2.group_seq), (1, 2));
    let dup = store
        .commit_group_message(&group_msg(a, g, "1"), 102)
        .await
        .unwrap()
        .unwrap();
    assert!(dup.duplicate);
    assert_eq!((dup.msg_id, dup.group_seq), (m1.msg_id, 1));
    let (page, more) = store.pull_group(g, 0, 1, 10).await.unwrap();
    assert!(!more);
    assert_eq!(page.len(), 1);
    assert_eq!(
        (page[0].seq, page[0].group_seq, page[0].msg_id),
        (0, 2, m2.msg_id)
    );
    assert_eq!(store.group_max_seq(g).await.unwrap(), 2);

    // History, unread, read positions, revoke.
    let h = store.history_group(g, 0, i64::MAX, 10).await.unwrap();
    assert_eq!(
        h.iter().map(|i| i.message.msg_id).collect::<Vec<_>>(),
        vec![m2.msg_id, m1.msg_id]
    );
    assert_eq!(store.unread_group(g, a, 0, 0).await.unwrap(), 1);
    assert_eq!(
        store.last_group_message(g, 0).await.unwrap(),
        Some(m2.msg_id)
    );
    let pos = store.mark_read(a, 2, g, m2.msg_id, 200).await.unwrap();
    assert_eq!(pos, m2.msg_id);
    assert_eq!(
        store.mark_read(a, 2, g, m1.msg_id, 201).await.unwrap(),
        m2.msg_id,
        "never back"
    );
    assert_eq!(store.read_positions(a).await.unwrap()[&(2, g)], m2.msg_id);
    assert!(store.mark_revoked(m1.msg_id, 300).await.unwrap());
    assert!(!store.mark_revoked(m1.msg_id, 301).await.unwrap());
    let h = store.history_group(g, 0, m2.msg_id, 10).await.unwrap();
    assert!(h[0].revoked && h[0].message.body.is_empty());
    let meta = store.message_meta(m2.msg_id).await.unwrap().unwrap();
    assert_eq!((meta.sender, meta.target, meta.sent_at_ms), (b, g, 101));

    // One-to-one conversations through the committed inbox path.
    let dm = NewMessage {
        sender: c,
        client_msg_id: "d".into(),
        conv_type: ConversationType::C2c,
        target: a,
        content_type: 1,
        body: Bytes::from_static(b"hey"),
        recipients: vec![a],
        policy: SendPolicy::Unchecked,
    };
    let out = store.commit_batch(&[dm], 400).await.unwrap();
    let id = out.results[0].as_ref().unwrap().msg_id;
    assert_eq!(store.c2c_peers(a).await.unwrap(), vec![(c, id)]);
    assert_eq!(store.unread_c2c(a).await.unwrap()[&c], 1);
    assert_eq!(
        store.history_c2c(c, a, i64::MAX, 5).await.unwrap()[0]
            .message
            .msg_id,
        id
    );
    assert_eq!(store.last_c2c_message(a, c).await.unwrap(), Some(id));

    store.dismiss_group(g).await.unwrap();
    assert!(store.group(g).await.unwrap().unwrap().dismissed);
    assert!(store.member_ids(g).await.unwrap().is_empty());
}

#[tokio::test]
async fn social_store_sqlite() {
    let (store, _dir) = common::sqlite().await;
    exercise(&store).await;
}

#[tokio::test]
async fn social_store_postgres() {
    let store = common::postgres("im_social").await;
    exercise(&store).await;
}
