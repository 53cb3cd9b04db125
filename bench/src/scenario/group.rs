//! Group fan-out: a group of M members, all online; a few members send
//! closed-loop; every other member must receive each message exactly once.
use std::time::Duration;

use anyhow::Context;
use serde_json::json;

use crate::drive::{self, Pace, Spec};
use crate::flow::Dest;
use crate::run::{self, Outcome};
use crate::target::Target;

#[derive(Debug, Clone, clap::Args)]
pub struct GroupArgs {
    #[arg(long, default_value_t = 1000)]
    pub members: usize,
    /// Members that send.
    #[arg(long, default_value_t = 4)]
    pub senders: usize,
    /// Messages each sender keeps not fully delivered.
    #[arg(long, default_value_t = 4)]
    pub window: usize,
    #[arg(long, default_value_t = 20)]
    pub duration_secs: u64,
    #[arg(long, default_value_t = 3)]
    pub warmup_secs: u64,
    #[arg(long, default_value_t = 64)]
    pub body_size: usize,
}

/// Creates the group through REST: owner plus everyone else, invited in chunks.
async fn create_group(target: &Target, owner_token: &str, members: &[i64]) -> anyhow::Result<i64> {
    let api = target.api(0)?;
    let first = members.len().min(200);
    let id = api
        .create_group_id(owner_token, "bench-group", &members[..first])
        .await
        .context("the group API is needed for group-fanout (POST /api/v1/groups failed)")?;
    for chunk in members[first..].chunks(200) {
        api.invite(owner_token, id, chunk)
            .await
            .context("failed to invite group members")?;
    }
    Ok(id)
}

pub async fn fanout(target: &mut Target, a: &GroupArgs) -> anyhow::Result<Outcome> {
    let m = a.members.max(2);
    let senders = a.senders.clamp(1, m);
    let users = run::users(target, "grp", m).await?;
    let ids: Vec<i64> = users[1..].iter().map(|u| u.id).collect();
    let group = create_group(target, &users[0].token, &ids).await?;
    let gateways = target.gateway_tcp.len().max(1);
    let clients = run::connect_all(target, &users, |i| i % gateways).await?;
    // Every member reads the group from its start (a cursor the client
    // starts on its own begins at the first push it happens to see).
    for c in &clients {
        c.set_group_cursor(group, 0);
    }
    let spec = Spec {
        senders: (0..senders).map(|s| (s, Dest::Group(group))).collect(),
        recipients_of: Box::new(move |s| (0..m).filter(|&u| u != s).collect()),
        fanout: (m - 1) as u32,
        pace: Pace::Closed { window: a.window },
        duration: Duration::from_secs(a.duration_secs),
        warmup: Duration::from_secs(a.warmup_secs),
        body_size: a.body_size,
    };
    let mut out = drive::drive(target, &clients, spec).await;
    out.parameters = json!({
        "members": m, "senders": senders, "window": a.window, "duration_secs": a.duration_secs,
        "warmup_secs": a.warmup_secs, "body_size": a.body_size, "group_id": group,
        "counted": "one delivery = one member received (and acknowledged) one message",
    });
    out.plot_title = format!("group-fanout: {m} members, {senders} senders, send→member latency");
    Ok(out)
}
