//! `imctl` subcommands for friends, blocks, groups, conversations, history
//! and revoke; each is one REST call through [`im_client::Api`], printed.
use clap::Subcommand;
use im_client::Api;
use im_client::social::{c2c_conversation, group_conversation};
use serde_json::Value;

#[derive(Debug, Subcommand)]
pub enum FriendCmd {
    /// Ask a user to be friends.
    Request {
        username: String,
        #[arg(long, default_value = "")]
        note: String,
    },
    /// Pending requests to and from you.
    Requests,
    /// Accept a request by id.
    Accept { request_id: i64 },
    /// Reject a request by id.
    Reject { request_id: i64 },
    /// Your friends.
    List,
    /// End a friendship.
    Delete { username: String },
    /// The key you share with a friend.
    Key { username: String },
    /// Block a user (their messages to you are refused).
    Block { username: String },
    /// Unblock a user.
    Unblock { username: String },
    /// The users you blocked.
    Blocked,
}

#[derive(Debug, Subcommand)]
pub enum GroupCmd {
    /// Create a group with initial members (usernames).
    Create {
        name: String,
        members: Vec<String>,
        /// open, invite or approval
        #[arg(long, default_value = "open")]
        policy: String,
    },
    /// Your groups.
    List,
    Info {
        group: i64,
    },
    /// Join (open), or ask to join (approval).
    Join {
        group: i64,
        #[arg(long, default_value = "")]
        note: String,
    },
    Quit {
        group: i64,
    },
    Members {
        group: i64,
    },
    Invite {
        group: i64,
        users: Vec<String>,
    },
    Kick {
        group: i64,
        user: String,
    },
    /// Make a member `admin` or `member` (owner only).
    Role {
        group: i64,
        user: String,
        role: String,
    },
    /// Mute a member for some seconds (0 unmutes).
    Mute {
        group: i64,
        user: String,
        secs: u64,
    },
    /// Mute (`on`) or unmute (`off`) the whole group.
    MuteAll {
        group: i64,
        state: String,
    },
    Transfer {
        group: i64,
        user: String,
    },
    Announce {
        group: i64,
        text: Vec<String>,
    },
    Dismiss {
        group: i64,
    },
    /// Pending join requests.
    Requests {
        group: i64,
    },
    Approve {
        group: i64,
        user: String,
    },
    Reject {
        group: i64,
        user: String,
    },
    /// Send text to a group over REST.
    Send {
        group: i64,
        #[arg(required = true)]
        text: Vec<String>,
    },
    /// Pull a read-diffusion group after a group sequence.
    Pull {
        group: i64,
        #[arg(long, default_value_t = 0)]
        after: u64,
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
}

#[derive(Debug, Subcommand)]
pub enum ConvCmd {
    /// Your conversations: last message, unread count, read position.
    List,
    /// History, newest first. CONV: a username, `group:ID` or a conversation id.
    History {
        conv: String,
        #[arg(long)]
        before: Option<i64>,
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Mark a conversation read (sends a READ receipt in one-to-one chats).
    Read {
        conv: String,
        #[arg(long)]
        up_to: Option<i64>,
    },
    /// Revoke one of your messages by id.
    Revoke { msg_id: i64 },
}

fn print(v: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
    );
}

async fn user(api: &Api, token: &str, name: &str) -> anyhow::Result<i64> {
    api.user_id(token, name)
        .await
        .map_err(|e| anyhow::anyhow!("unknown user {name}: {e}"))
}

async fn users(api: &Api, token: &str, names: &[String]) -> anyhow::Result<Vec<i64>> {
    let mut ids = Vec::with_capacity(names.len());
    for n in names {
        ids.push(user(api, token, n).await?);
    }
    Ok(ids)
}

pub async fn friend(api: &Api, token: &str, cmd: FriendCmd) -> anyhow::Result<()> {
    match cmd {
        FriendCmd::Request { username, note } => {
            let to = user(api, token, &username).await?;
            print(&api.send_friend_request(token, to, &note).await?);
        }
        FriendCmd::Requests => print(&api.friend_requests(token).await?),
        FriendCmd::Accept { request_id } => {
            let key = api.accept_friend_request(token, request_id).await?;
            println!("friends now; pair key {key}");
        }
        FriendCmd::Reject { request_id } => {
            api.reject_friend_request(token, request_id).await?;
            println!("rejected");
        }
        FriendCmd::List => print(&api.friends(token).await?),
        FriendCmd::Delete { username } => {
            api.delete_friend(token, user(api, token, &username).await?)
                .await?;
            println!("deleted");
        }
        FriendCmd::Key { username } => {
            println!(
                "{}",
                api.friend_key(token, user(api, token, &username).await?)
                    .await?
            );
        }
        FriendCmd::Block { username } => {
            api.block(token, user(api, token, &username).await?).await?;
            println!("blocked {username}");
        }
        FriendCmd::Unblock { username } => {
            api.unblock(token, user(api, token, &username).await?)
                .await?;
            println!("unblocked {username}");
        }
        FriendCmd::Blocked => print(&api.blocks(token).await?),
    }
    Ok(())
}

pub async fn group(api: &Api, token: &str, cmd: GroupCmd) -> anyhow::Result<()> {
    match cmd {
        GroupCmd::Create {
            name,
            members,
            policy,
        } => {
            let ids = users(api, token, &members).await?;
            print(&api.create_group(token, &name, &ids, &policy).await?);
        }
        GroupCmd::List => print(&api.groups(token).await?),
        GroupCmd::Info { group } => print(&api.group(token, group).await?),
        GroupCmd::Join { group, note } => {
            println!("{}", api.join_group(token, group, &note).await?);
        }
        GroupCmd::Quit { group } => {
            api.quit_group(token, group).await?;
            println!("left group {group}");
        }
        GroupCmd::Members { group } => print(&api.group_members(token, group).await?),
        GroupCmd::Invite {
            group,
            users: names,
        } => {
            let ids = users(api, token, &names).await?;
            println!("added {}", api.invite(token, group, &ids).await?);
        }
        GroupCmd::Kick { group, user: u } => {
            api.kick(token, group, user(api, token, &u).await?).await?;
            println!("kicked {u}");
        }
        GroupCmd::Role {
            group,
            user: u,
            role,
        } => {
            api.set_role(token, group, user(api, token, &u).await?, &role)
                .await?;
            println!("{u} is {role}");
        }
        GroupCmd::Mute {
            group,
            user: u,
            secs,
        } => {
            api.mute_member(token, group, user(api, token, &u).await?, secs)
                .await?;
            println!("muted {u} for {secs} s");
        }
        GroupCmd::MuteAll { group, state } => {
            let muted = match state.as_str() {
                "on" => true,
                "off" => false,
                _ => anyhow::bail!("state must be on or off"),
            };
            api.mute_all(token, group, muted).await?;
            println!("group {group} muted: {muted}");
        }
        GroupCmd::Transfer { group, user: u } => {
            api.transfer_group(token, group, user(api, token, &u).await?)
                .await?;
            println!("{u} owns group {group}");
        }
        GroupCmd::Announce { group, text } => {
            api.set_announcement(token, group, &text.join(" ")).await?;
            println!("announcement set");
        }
        GroupCmd::Dismiss { group } => {
            api.dismiss_group(token, group).await?;
            println!("group {group} dismissed");
        }
        GroupCmd::Requests { group } => print(&api.join_requests(token, group).await?),
        GroupCmd::Approve { group, user: u } => {
            api.answer_join_request(token, group, user(api, token, &u).await?, true)
                .await?;
            println!("approved {u}");
        }
        GroupCmd::Reject { group, user: u } => {
            api.answer_join_request(token, group, user(api, token, &u).await?, false)
                .await?;
            println!("rejected {u}");
        }
        GroupCmd::Send { group, text } => {
            let id = format!("{:016x}{:08x}", im_proto::now_ms(), rand::random::<u32>());
            print(&api.send_group(token, group, &id, &text.join(" ")).await?);
        }
        GroupCmd::Pull {
            group,
            after,
            limit,
        } => print(&api.pull_group(token, group, after, limit).await?),
    }
    Ok(())
}

/// A conversation id from a username, `group:ID` or an id as is.
async fn conversation(api: &Api, token: &str, me: i64, conv: &str) -> anyhow::Result<String> {
    if conv.starts_with("c2c:") || conv.starts_with("group:") {
        return Ok(match conv.strip_prefix("group:") {
            Some(g) => group_conversation(g.parse()?),
            None => conv.to_string(),
        });
    }
    Ok(c2c_conversation(me, user(api, token, conv).await?))
}

pub async fn conv(api: &Api, token: &str, me: i64, cmd: ConvCmd) -> anyhow::Result<()> {
    match cmd {
        ConvCmd::List => print(&api.conversations(token).await?),
        ConvCmd::History {
            conv,
            before,
            limit,
        } => {
            let id = conversation(api, token, me, &conv).await?;
            print(&api.history(token, &id, before, limit).await?);
        }
        ConvCmd::Read { conv, up_to } => {
            let id = conversation(api, token, me, &conv).await?;
            println!(
                "read up to message {}",
                api.mark_read(token, &id, up_to).await?
            );
        }
        ConvCmd::Revoke { msg_id } => {
            api.revoke(token, msg_id).await?;
            println!("revoked message {msg_id}");
        }
    }
    Ok(())
}
