//! The permission matrix: every refused case is refused with its stable
//! code (REST) or protocol error (connection), and leaves nothing behind.
use std::time::Duration;

use im_proto::client::ErrorCode;
use im_tests::im_client::social::{c2c_conversation, group_conversation};
use im_tests::social::*;
use im_tests::*;

#[tokio::test]
async fn refusals_on_sqlite() -> anyhow::Result<()> {
    let node = SingleNode::start(&["--c2c-policy", "friends"]).await?;
    refusals(node.api(), node.tcp_endpoint()).await
}

#[tokio::test]
async fn refusals_on_postgres() -> anyhow::Result<()> {
    let opts = ClusterOptions::with_env("IM_C2C_POLICY", "friends");
    let c = Cluster::start_with(opts, 1, 1).await?;
    refusals(c.api(0), c.tcp_endpoint(0)).await
}

/// Every case over REST, and over a connection where the protocol has it.
async fn refusals(api: im_client::Api, ep: im_client::Endpoint) -> anyhow::Result<()> {
    let owner = new_user(&api, &unique("owner")).await?;
    let admin = new_user(&api, &unique("admin")).await?;
    let member = new_user(&api, &unique("member")).await?;
    let outsider = new_user(&api, &unique("outsider")).await?;
    let gid = api
        .create_group_id(&owner.token, "guarded", &[admin.id, member.id])
        .await?;
    api.set_role(&owner.token, gid, admin.id, "admin").await?;
    let out = online(&ep, &outsider).await?;
    let mem = online(&ep, &member).await?;
    let conv = group_conversation(gid);

    // A non-member sends to a group.
    assert_refused(
        api.send_group(&outsider.token, gid, "o-1", "let me talk")
            .await,
        403,
        "NOT_MEMBER",
    );
    assert_frame_refused(
        out.send_group_text(gid, "let me talk").await,
        ErrorCode::Forbidden,
        "not a member",
    );
    // A non-member reads a group: history, pull, members, info.
    assert_refused(
        api.history(&outsider.token, &conv, None, 10).await,
        403,
        "NOT_MEMBER",
    );
    assert_refused(
        api.pull_group(&outsider.token, gid, 0, 10).await,
        403,
        "NOT_MEMBER",
    );
    assert_refused(
        api.group_members(&outsider.token, gid).await,
        403,
        "NOT_MEMBER",
    );
    assert_refused(api.group(&outsider.token, gid).await, 403, "NOT_MEMBER");
    assert_refused(
        api.mark_read(&outsider.token, &conv, None).await,
        403,
        "NOT_MEMBER",
    );

    // A member manages without being an admin.
    assert_refused(
        api.kick(&member.token, gid, admin.id).await,
        403,
        "FORBIDDEN",
    );
    assert_refused(
        api.mute_member(&member.token, gid, admin.id, 60).await,
        403,
        "FORBIDDEN",
    );
    assert_refused(
        api.mute_all(&member.token, gid, true).await,
        403,
        "FORBIDDEN",
    );
    assert_refused(
        api.set_announcement(&member.token, gid, "mine now").await,
        403,
        "FORBIDDEN",
    );
    assert_refused(
        api.set_role(&member.token, gid, member.id, "admin").await,
        403,
        "FORBIDDEN",
    );
    assert_refused(
        api.transfer_group(&member.token, gid, member.id).await,
        403,
        "FORBIDDEN",
    );
    assert_refused(
        api.dismiss_group(&member.token, gid).await,
        403,
        "FORBIDDEN",
    );
    assert_refused(
        api.join_requests(&member.token, gid).await,
        403,
        "FORBIDDEN",
    );
    // An admin may not act on the owner or another admin, nor change roles.
    assert_refused(
        api.kick(&admin.token, gid, owner.id).await,
        403,
        "FORBIDDEN",
    );
    assert_refused(
        api.mute_member(&admin.token, gid, owner.id, 60).await,
        403,
        "FORBIDDEN",
    );
    assert_refused(
        api.set_role(&admin.token, gid, member.id, "admin").await,
        403,
        "FORBIDDEN",
    );
    let members = api.group_members(&owner.token, gid).await?;
    assert_eq!(
        members["members"].as_array().map(Vec::len),
        Some(3),
        "nobody was kicked"
    );
    assert_eq!(api.group(&owner.token, gid).await?["announcement"], "");

    // A muted member sends; the whole group muted refuses members, not admins.
    api.mute_member(&admin.token, gid, member.id, 3600).await?;
    assert_refused(
        api.send_group(&member.token, gid, "m-1", "hey").await,
        403,
        "MUTED",
    );
    assert_frame_refused(
        mem.send_group_text(gid, "hey").await,
        ErrorCode::Forbidden,
        "muted",
    );
    api.mute_member(&admin.token, gid, member.id, 0).await?;
    api.mute_all(&owner.token, gid, true).await?;
    assert_refused(
        api.send_group(&member.token, gid, "m-2", "hey").await,
        403,
        "MUTED",
    );
    retry(|| api.send_group(&admin.token, gid, "a-1", "admins may speak")).await?;
    api.mute_all(&owner.token, gid, false).await?;
    retry(|| api.send_group(&member.token, gid, "m-3", "thanks")).await?;
    let history = api.history(&owner.token, &conv, None, 50).await?;
    let bodies: Vec<&str> = history["messages"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m["body"].as_str())
        .collect();
    assert_eq!(
        bodies,
        vec!["thanks", "admins may speak"],
        "refused sends stored nothing"
    );

    // A stranger sends under the friends-only policy; a blocked user sends.
    assert_refused(
        api.send(&outsider.token, member.id, "s-1", "hi").await,
        403,
        "NOT_FRIENDS",
    );
    assert_frame_refused(
        out.send_text(member.id, "hi").await,
        ErrorCode::Forbidden,
        "friends",
    );
    befriend(&api, &outsider, &member).await?;
    retry(|| api.send(&outsider.token, member.id, "s-2", "hi friend")).await?;
    api.block(&member.token, outsider.id).await?;
    assert_refused(
        api.send(&outsider.token, member.id, "s-3", "hi?").await,
        403,
        "BLOCKED",
    );
    assert_frame_refused(
        out.send_text(member.id, "hi?").await,
        ErrorCode::Forbidden,
        "blocked",
    );
    let outsider_id = outsider.id;
    let mut got = recv_until(&mem, Duration::from_secs(5), |m| {
        m.from == outsider_id && is_user_message(m)
    })
    .await?;
    got.extend(mem.recv(Duration::from_millis(300)).await?);
    assert_eq!(texts_from(&got, outsider.id), vec!["hi friend"]);

    // Someone reads (or marks read) another user's conversation and history.
    let theirs = c2c_conversation(outsider.id, member.id);
    assert_refused(
        api.history(&owner.token, &theirs, None, 10).await,
        403,
        "FORBIDDEN",
    );
    assert_refused(
        api.mark_read(&owner.token, &theirs, None).await,
        403,
        "FORBIDDEN",
    );
    assert_eq!(
        api.history(&member.token, &theirs, None, 10).await?["messages"][0]["body"],
        "hi friend"
    );

    // Someone revokes another's message (one-to-one and group).
    let dm = history_id(&api, &member, &theirs).await?;
    assert_refused(api.revoke(&member.token, dm).await, 403, "FORBIDDEN");
    let gm = history_id(&api, &owner, &conv).await?;
    assert_refused(api.revoke(&owner.token, gm).await, 403, "FORBIDDEN");
    assert_refused(api.revoke(&owner.token, 987_654).await, 404, "NOT_FOUND");
    let h = api.history(&member.token, &theirs, None, 10).await?;
    assert_eq!(h["messages"][0]["revoked"], false);
    Ok(())
}

/// The newest message id of a conversation.
async fn history_id(api: &im_client::Api, who: &TestUser, conv: &str) -> anyhow::Result<i64> {
    let h = api.history(&who.token, conv, None, 1).await?;
    h["messages"][0]["msg_id"]
        .as_i64()
        .ok_or_else(|| anyhow::anyhow!("empty history {h}"))
}
