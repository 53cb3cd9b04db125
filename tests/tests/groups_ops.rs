//! Groups end to end on a single node: lifecycle and membership over REST,
//! group messages over connected clients and REST (write diffusion), then
//! conversations, history, mark read with READ receipts, and revoke.
use std::time::Duration;

use im_proto::client::{Receipt, ReceiptKind, Revoke, SystemContentType};
use im_proto::prost::Message as _;
use im_tests::im_client::social::{c2c_conversation, group_conversation};
use im_tests::social::*;
use im_tests::*;

const WAIT: Duration = Duration::from_secs(10);

/// A cluster (two gateways, one logic process, Postgres) with friends-only chat.
async fn cluster() -> anyhow::Result<Cluster> {
    let opts = ClusterOptions::with_env("IM_C2C_POLICY", "friends");
    Cluster::start_with(opts, 2, 1).await
}

#[tokio::test]
async fn group_lifecycle_and_membership_on_sqlite() -> anyhow::Result<()> {
    let node = SingleNode::start(&[]).await?;
    lifecycle(node.api()).await
}

#[tokio::test]
async fn group_lifecycle_and_membership_on_postgres() -> anyhow::Result<()> {
    let c = cluster().await?;
    lifecycle(c.api(0)).await
}

async fn lifecycle(api: im_client::Api) -> anyhow::Result<()> {
    let owner = new_user(&api, &unique("owner")).await?;
    let ann = new_user(&api, &unique("ann")).await?;
    let ben = new_user(&api, &unique("ben")).await?;
    let cat = new_user(&api, &unique("cat")).await?;
    let dan = new_user(&api, &unique("dan")).await?;

    // Create with initial members; the creator owns it.
    let g = api
        .create_group(&owner.token, "team", &[ann.id, ben.id], "invite")
        .await?;
    let gid = g["id"].as_i64().unwrap_or_default();
    assert_eq!(g["member_count"], 3);
    assert_eq!(g["my_role"], "owner");
    assert_eq!(g["join_policy"], "invite");
    assert_eq!(g["diffusion"], "write");
    let mine = api.groups(&ann.token).await?;
    assert_eq!(mine["groups"][0]["id"], gid);
    assert_eq!(mine["groups"][0]["my_role"], "member");
    assert_eq!(api.group(&ben.token, gid).await?["name"], "team");

    // Invitation-only: joining is refused, a plain member may not invite, an admin may.
    assert_refused(api.join_group(&cat.token, gid, "").await, 403, "FORBIDDEN");
    assert_refused(
        api.invite(&ann.token, gid, &[cat.id]).await,
        403,
        "FORBIDDEN",
    );
    api.set_role(&owner.token, gid, ann.id, "admin").await?;
    assert_eq!(api.invite(&ann.token, gid, &[cat.id]).await?, 1);
    let members = api.group_members(&cat.token, gid).await?;
    let role_of = |id: i64| {
        members["members"]
            .as_array()
            .and_then(|ms| ms.iter().find(|m| m["user_id"] == id))
            .map(|m| m["role"].as_str().unwrap_or("").to_string())
    };
    assert_eq!(role_of(owner.id).as_deref(), Some("owner"));
    assert_eq!(role_of(ann.id).as_deref(), Some("admin"));
    assert_eq!(role_of(cat.id).as_deref(), Some("member"));

    // Admin mutes and kicks members; announcement; mute-all.
    api.mute_member(&ann.token, gid, ben.id, 60).await?;
    let members = api.group_members(&owner.token, gid).await?;
    assert!(members["members"].as_array().is_some_and(|ms| {
        ms.iter()
            .any(|m| m["user_id"] == ben.id && m["muted_until_ms"].as_i64().unwrap_or(0) > 0)
    }));
    api.mute_member(&ann.token, gid, ben.id, 0).await?;
    api.set_announcement(&ann.token, gid, "standup at nine")
        .await?;
    assert_eq!(
        api.group(&cat.token, gid).await?["announcement"],
        "standup at nine"
    );
    api.mute_all(&owner.token, gid, true).await?;
    assert_eq!(api.group(&cat.token, gid).await?["muted_all"], true);
    api.mute_all(&owner.token, gid, false).await?;
    api.kick(&ann.token, gid, cat.id).await?;
    assert_refused(api.group(&cat.token, gid).await, 403, "NOT_MEMBER");

    // Approval groups: a request waits for an admin.
    let open = api
        .create_group(&owner.token, "by approval", &[], "approval")
        .await?;
    let oid = open["id"].as_i64().unwrap_or_default();
    assert_eq!(
        api.join_group(&dan.token, oid, "let me in").await?,
        "requested"
    );
    let reqs = api.join_requests(&owner.token, oid).await?;
    assert_eq!(reqs["requests"][0]["user_id"], dan.id);
    assert_eq!(reqs["requests"][0]["note"], "let me in");
    api.answer_join_request(&owner.token, oid, dan.id, true)
        .await?;
    assert_eq!(api.group(&dan.token, oid).await?["member_count"], 2);
    assert_eq!(api.join_group(&cat.token, oid, "").await?, "requested");
    api.answer_join_request(&owner.token, oid, cat.id, false)
        .await?;
    assert_refused(api.group(&cat.token, oid).await, 403, "NOT_MEMBER");

    // Open groups: join at once; quit.
    let free = api.create_group_id(&owner.token, "open", &[]).await?;
    assert_eq!(api.join_group(&cat.token, free, "").await?, "joined");
    api.quit_group(&cat.token, free).await?;
    assert_refused(api.group(&cat.token, free).await, 403, "NOT_MEMBER");

    // Ownership: the owner may not quit; transfer makes the old owner an admin.
    assert_refused(api.quit_group(&owner.token, gid).await, 403, "FORBIDDEN");
    api.transfer_group(&owner.token, gid, ben.id).await?;
    assert_eq!(api.group(&ben.token, gid).await?["my_role"], "owner");
    assert_eq!(api.group(&owner.token, gid).await?["my_role"], "admin");
    api.quit_group(&owner.token, gid).await?;
    // Dismiss (new owner only).
    assert_refused(api.dismiss_group(&ann.token, gid).await, 403, "FORBIDDEN");
    api.dismiss_group(&ben.token, gid).await?;
    assert_refused(api.group(&ben.token, gid).await, 404, "NOT_FOUND");
    assert!(
        api.groups(&ann.token).await?["groups"]
            .as_array()
            .is_some_and(|gs| gs.iter().all(|g| g["id"] != gid))
    );
    Ok(())
}

#[tokio::test]
async fn group_messages_conversations_history_and_revoke_on_sqlite() -> anyhow::Result<()> {
    let node = SingleNode::start(&["--c2c-policy", "friends"]).await?;
    messages_flow(node.api(), node.tcp_endpoint(), node.ws_endpoint()).await
}

#[tokio::test]
async fn group_messages_conversations_history_and_revoke_on_postgres() -> anyhow::Result<()> {
    let c = cluster().await?;
    messages_flow(c.api(0), c.tcp_endpoint(0), c.ws_endpoint(1)).await
}

async fn messages_flow(
    api: im_client::Api,
    ep_a: im_client::Endpoint,
    ep_b: im_client::Endpoint,
) -> anyhow::Result<()> {
    let ann = new_user(&api, &unique("ann")).await?;
    let ben = new_user(&api, &unique("ben")).await?;
    let cat = new_user(&api, &unique("cat")).await?;
    let gid = api
        .create_group_id(&ann.token, "chat", &[ben.id, cat.id])
        .await?;
    let a = online(&ep_a, &ann).await?;
    let b = online(&ep_b, &ben).await?;

    // Group messages over the connection and over REST reach every member once.
    for i in 0..5 {
        let text = format!("hello {i}");
        retry(|| a.send_group_text(gid, &text)).await?;
    }
    retry(|| api.send_group(&ben.token, gid, "b-1", "hi all")).await?;
    let at_b = recv_user_messages(&b, 6, WAIT).await?;
    assert_eq!(
        texts_from(&at_b, ann.id),
        (0..5).map(|i| format!("hello {i}")).collect::<Vec<_>>()
    );
    assert!(
        at_b.iter()
            .all(|m| m.to == gid && m.conv_type == 2 && m.seq > 0)
    );
    let at_a = recv_user_messages(&a, 1, WAIT).await?;
    assert_eq!(texts_from(&at_a, ben.id), vec!["hi all"]);
    // Cat was offline: everything is in her inbox, with her own sequence.
    let pulled = api.pull(&cat.token, 0, 100).await?;
    let texts: Vec<&str> = pulled["messages"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m["body"].as_str())
        .collect();
    assert_eq!(texts.len(), 6);
    assert_eq!(pulled["messages"][0]["seq"], 1);
    // Idempotent per (sender, client_msg_id).
    let again = retry(|| api.send_group(&ben.token, gid, "b-1", "hi all")).await?;
    assert_eq!(again["duplicate"], true);

    // Conversations: the group with unread counts, and a one-to-one chat.
    befriend(&api, &ann, &ben).await?;
    let sent = retry(|| api.send(&ann.token, ben.id, "c-1", "psst")).await?;
    let dm = sent["msg_id"].as_i64().unwrap_or_default();
    retry(|| api.send(&ann.token, ben.id, "c-2", "are you there")).await?;
    let convs = api.conversations(&ben.token).await?;
    let list = convs["conversations"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(list.len(), 2);
    assert_eq!(list[0]["id"], c2c_conversation(ann.id, ben.id));
    assert_eq!(list[0]["peer"], ann.id);
    assert_eq!(list[0]["unread"], 2);
    assert_eq!(list[0]["last"]["body"], "are you there");
    assert_eq!(list[1]["id"], group_conversation(gid));
    assert_eq!(list[1]["unread"], 5, "ben's own message is not unread");
    assert_eq!(list[1]["last"]["body"], "hi all");

    // Mark read: the position moves, unread drops, ann gets a READ receipt.
    let dm_conv = c2c_conversation(ann.id, ben.id);
    let pos = retry(|| api.mark_read(&ben.token, &dm_conv, Some(dm))).await?;
    assert_eq!(pos, dm);
    let convs = api.conversations(&ben.token).await?;
    assert_eq!(convs["conversations"][0]["unread"], 1);
    assert_eq!(convs["conversations"][0]["read_msg_id"], dm);
    let is_read = |m: &im_proto::client::Message| {
        m.content_type == SystemContentType::Receipt as u32
            && m.from == ben.id
            && Receipt::decode(m.body.clone()).is_ok_and(|r| r.kind == ReceiptKind::Read as i32)
    };
    let got = recv_until(&a, WAIT, is_read).await?;
    let receipt = got
        .iter()
        .find(|m| {
            m.content_type == SystemContentType::Receipt as u32
                && m.from == ben.id
                && Receipt::decode(m.body.clone()).is_ok_and(|r| r.kind == ReceiptKind::Read as i32)
        })
        .map(|m| Receipt::decode(m.body.clone()))
        .transpose()?
        .ok_or_else(|| anyhow::anyhow!("no READ receipt in {got:?}"))?;
    assert_eq!(receipt.reader, ben.id);
    assert_eq!(receipt.up_to_msg_id, dm);
    // Marking the same position again stores no second receipt.
    retry(|| api.mark_read(&ben.token, &dm_conv, Some(dm))).await?;
    let group_conv = group_conversation(gid);
    retry(|| api.mark_read(&ben.token, &group_conv, None)).await?;
    let convs = api.conversations(&ben.token).await?;
    assert_eq!(convs["conversations"][1]["unread"], 0);
    let receipts = api.pull(&ann.token, 0, 500).await?["messages"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| {
            m["content_type"] == SystemContentType::Receipt as u32
                && m["from"] == ben.id
                && m["client_msg_id"]
                    .as_str()
                    .is_some_and(|c| c.starts_with("read:"))
        })
        .count();
    assert_eq!(receipts, 1);

    // History: newest first, paged before a message id.
    let conv = group_conversation(gid);
    let page = api.history(&cat.token, &conv, None, 4).await?;
    let bodies: Vec<&str> = page["messages"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m["body"].as_str())
        .collect();
    assert_eq!(bodies, vec!["hi all", "hello 4", "hello 3", "hello 2"]);
    let next = page["next_before"].as_i64();
    let older = api.history(&cat.token, &conv, next, 4).await?;
    let bodies: Vec<&str> = older["messages"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m["body"].as_str())
        .collect();
    assert_eq!(bodies, vec!["hello 1", "hello 0"]);
    assert!(older["next_before"].is_null());
    let dms = api
        .history(&ann.token, &c2c_conversation(ann.id, ben.id), None, 10)
        .await?;
    assert_eq!(dms["messages"][0]["body"], "are you there");
    assert_eq!(dms["messages"][1]["body"], "psst");

    // Revoke: the sender only; the other side gets a notice; history marks it.
    assert_refused(api.revoke(&ben.token, dm).await, 403, "FORBIDDEN");
    retry(|| api.revoke(&ann.token, dm)).await?;
    let notices = recv_notice(&b, dm).await?;
    assert_eq!(notices, 1);
    let dms = api
        .history(&ben.token, &c2c_conversation(ann.id, ben.id), None, 10)
        .await?;
    assert_eq!(dms["messages"][1]["msg_id"], dm);
    assert_eq!(dms["messages"][1]["revoked"], true);
    assert_eq!(dms["messages"][1]["body"], "");
    assert_eq!(dms["messages"][0]["revoked"], false);
    // A group message revoked: members get the notice through the group.
    let g = retry(|| api.send_group(&cat.token, gid, "c-g", "oops")).await?;
    let gm = g["msg_id"].as_i64().unwrap_or_default();
    retry(|| api.revoke(&cat.token, gm)).await?;
    assert_eq!(recv_notice(&b, gm).await?, 1);
    let page = api.history(&ann.token, &conv, None, 1).await?;
    assert_eq!(page["messages"][0]["msg_id"], gm);
    assert_eq!(page["messages"][0]["revoked"], true);
    Ok(())
}

#[tokio::test]
async fn the_revoke_window_closes() -> anyhow::Result<()> {
    let node = SingleNode::start(&["--revoke-window-secs", "1"]).await?;
    let api = node.api();
    let ann = new_user(&api, &unique("ann")).await?;
    let ben = new_user(&api, &unique("ben")).await?;
    let sent = api.send(&ann.token, ben.id, "m-1", "late").await?;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_refused(
        api.revoke(&ann.token, sent["msg_id"].as_i64().unwrap_or_default())
            .await,
        403,
        "REVOKE_EXPIRED",
    );
    Ok(())
}

/// Receives until a revoke notice for `msg_id` arrives; how many arrived.
async fn recv_notice(client: &im_client::ChatClient, msg_id: i64) -> anyhow::Result<usize> {
    let deadline = std::time::Instant::now() + WAIT;
    let mut n = 0;
    while n == 0 && std::time::Instant::now() < deadline {
        for m in client.recv(Duration::from_millis(500)).await? {
            if m.content_type == SystemContentType::Revoke as u32
                && Revoke::decode(m.body.clone())?.msg_id == msg_id
            {
                n += 1;
            }
        }
    }
    for m in client.recv(Duration::from_millis(200)).await? {
        if m.content_type == SystemContentType::Revoke as u32
            && Revoke::decode(m.body.clone())?.msg_id == msg_id
        {
            n += 1;
        }
    }
    Ok(n)
}

#[tokio::test]
async fn read_diffusion_through_a_connected_client() -> anyhow::Result<()> {
    let node = SingleNode::start(&["--group-write-diffusion-max", "2"]).await?;
    let api = node.api();
    let ann = new_user(&api, &unique("ann")).await?;
    let ben = new_user(&api, &unique("ben")).await?;
    let cat = new_user(&api, &unique("cat")).await?;
    let dan = new_user(&api, &unique("dan")).await?;
    let g = api
        .create_group(&ann.token, "large", &[ben.id, cat.id, dan.id], "open")
        .await?;
    assert_eq!(g["diffusion"], "read");
    let gid = g["id"].as_i64().unwrap_or_default();
    let a = online(&node.tcp_endpoint(), &ann).await?;
    let b = online(&node.ws_endpoint(), &ben).await?;
    let listed = api.groups(&ben.token).await?;
    b.set_group_cursor(
        gid,
        listed["groups"][0]["max_group_seq"].as_u64().unwrap_or(0),
    );

    let mut acks = Vec::new();
    for i in 0..3 {
        let text = format!("read {i}");
        acks.push(retry(|| a.send_group_text(gid, &text)).await?);
    }
    assert_eq!(
        acks.iter().map(|s| s.seq).collect::<Vec<_>>(),
        vec![1, 2, 3],
        "group sequences"
    );
    let got = recv_user_messages(&b, 3, WAIT).await?;
    assert_eq!(texts_from(&got, ann.id), vec!["read 0", "read 1", "read 2"]);
    assert!(
        got.iter()
            .all(|m| m.seq == 0 && m.group_seq > 0 && m.to == gid)
    );
    assert_eq!(b.group_cursor(gid), 3);
    assert!(
        b.recv(Duration::from_millis(300)).await?.is_empty(),
        "exactly once"
    );

    // Offline: nothing in the inbox; the group pull has everything, by cursor.
    assert!(
        api.pull(&dan.token, 0, 100).await?["messages"]
            .as_array()
            .is_some_and(|m| m.is_empty())
    );
    let page = api.pull_group(&dan.token, gid, 0, 100).await?;
    assert_eq!(page["max_seq"], 3);
    let seqs: Vec<u64> = page["messages"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m["group_seq"].as_u64())
        .collect();
    assert_eq!(seqs, vec![1, 2, 3]);
    let rest = api.pull_group(&dan.token, gid, 2, 100).await?;
    assert_eq!(rest["messages"][0]["body"], "read 2");
    assert_eq!(rest["has_more"], false);

    // Idempotent: the same client message id acknowledges the same message.
    let first = retry(|| api.send_group(&cat.token, gid, "c-1", "once")).await?;
    let again = retry(|| api.send_group(&cat.token, gid, "c-1", "once")).await?;
    assert_eq!(again["duplicate"], true);
    assert_eq!(again["msg_id"], first["msg_id"]);
    assert_eq!(again["seq"], first["seq"]);

    // Revoke notices travel the same way.
    let revoked = acks[1].msg_id;
    retry(|| api.revoke(&ann.token, revoked)).await?;
    assert_eq!(recv_notice(&b, revoked).await?, 1);
    let h = api
        .history(&dan.token, &group_conversation(gid), None, 10)
        .await?;
    let flags: Vec<(String, bool)> = h["messages"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| {
            (
                m["body"].as_str().unwrap_or("").to_string(),
                m["revoked"] == true,
            )
        })
        .collect();
    assert_eq!(
        flags,
        vec![
            ("once".to_string(), false),
            ("read 2".to_string(), false),
            (String::new(), true),
            ("read 0".to_string(), false)
        ]
    );
    Ok(())
}

#[tokio::test]
async fn read_diffusion_catch_up_over_the_connection() -> anyhow::Result<()> {
    let node = SingleNode::start(&["--group-write-diffusion-max", "1"]).await?;
    let api = node.api();
    let ann = new_user(&api, &unique("ann")).await?;
    let ben = new_user(&api, &unique("ben")).await?;
    let out = new_user(&api, &unique("out")).await?;
    let gid = api.create_group_id(&ann.token, "pair", &[ben.id]).await?;
    for i in 0..7 {
        let (id, text) = (format!("m-{i}"), format!("text {i}"));
        retry(|| api.send_group(&ann.token, gid, &id, &text)).await?;
    }
    // Ben was offline: GROUP_PULL on his connection from cursor 0, in pages.
    let b = online(&node.tcp_endpoint(), &ben).await?;
    b.set_group_cursor(gid, 0);
    let page = b.conn.group_pull(gid, 0, 3).await?;
    assert_eq!(
        page.messages
            .iter()
            .map(|m| m.group_seq)
            .collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    assert!(page.has_more);
    assert_eq!(page.max_seq, 7);
    b.catch_up_group(gid).await?;
    let got = recv_user_messages(&b, 7, WAIT).await?;
    assert_eq!(
        texts_from(&got, ann.id),
        (0..7).map(|i| format!("text {i}")).collect::<Vec<_>>()
    );
    assert_eq!(b.group_cursor(gid), 7);
    // A non-member's GROUP_PULL is refused.
    let o = online(&node.tcp_endpoint(), &out).await?;
    assert_frame_refused(
        o.conn.group_pull(gid, 0, 10).await,
        im_proto::client::ErrorCode::Forbidden,
        "not a member",
    );
    Ok(())
}
