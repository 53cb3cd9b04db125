//! Group messages: a member's message is stored once; groups up to the
//! write-diffusion threshold get one inbox entry per member (through the
//! committer, like c2c), larger groups one per-group sequence that members
//! pull by their own cursor, with pushes batched per gateway.
use std::collections::HashMap;
use std::pin::Pin;

use bytes::Bytes;
use im_common::api::{ApiError, ReplyFuture, ready_reply};
use im_common::route::LiveRoute;
use im_proto::client::{C2gSendRequest, ConversationType, GroupPullRequest, Message, PullResponse};
use im_proto::logic::{PushBatch, PushItem, UpReply, up_reply};

use crate::metrics;
use crate::pusher::Origin;
use crate::service::{LogicService, MAX_CLIENT_MSG_ID};
use crate::store::{NewMessage, SendPolicy, Stored};

use super::perms::{self, Diffusion};
use super::{SocialError, SocialResult, now_ms};

/// A stored-later acknowledgement, resolved once the message is durable.
pub type SendFuture = Pin<Box<dyn Future<Output = Result<Stored, ApiError>> + Send>>;

/// One push batch per gateway for a read-diffusion message: a single item
/// listing every live connection of every member on that gateway (except
/// the connection the message came from).
pub fn plan_group_push(
    routes: &HashMap<i64, Vec<LiveRoute>>,
    message: &Message,
    origin: Option<&Origin>,
) -> HashMap<String, PushBatch> {
    let mut conns: HashMap<&str, Vec<u64>> = HashMap::new();
    for live in routes.values() {
        for r in live {
            if origin.is_some_and(|o| o.gate_id == r.route.gate_id && o.conn_id == r.route.conn_id)
            {
                continue;
            }
            conns
                .entry(r.gate_addr.as_str())
                .or_default()
                .push(r.route.conn_id);
        }
    }
    conns
        .into_iter()
        .map(|(addr, mut conn_ids)| {
            conn_ids.sort_unstable();
            conn_ids.dedup();
            let batch = PushBatch {
                items: vec![PushItem {
                    conn_ids,
                    messages: vec![message.clone()],
                }],
            };
            (addr.to_string(), batch)
        })
        .collect()
}

/// A group message to store, before diffusion is chosen.
pub(crate) struct GroupMessage {
    pub sender: i64,
    pub group: i64,
    pub client_msg_id: String,
    pub content_type: u32,
    pub body: Bytes,
}

impl LogicService {
    /// Validates a member's group message and queues it; the future resolves
    /// once it is durable (SENT). Refusals as protocol errors (frames).
    pub async fn send_c2g(
        &self,
        sender: i64,
        req: C2gSendRequest,
        origin: Option<Origin>,
    ) -> Result<SendFuture, ApiError> {
        self.group_send(sender, req, origin)
            .await
            .map_err(|e| e.to_api())
    }

    /// Like [`Self::send_c2g`], with the precise refusal (REST codes).
    pub async fn group_send(
        &self,
        sender: i64,
        req: C2gSendRequest,
        origin: Option<Origin>,
    ) -> SocialResult<SendFuture> {
        let bad = |m: String| Err(SocialError::BadRequest(m));
        if req.group_id <= 0 {
            return bad("`group_id` is required".into());
        }
        super::check_text(
            "client_msg_id",
            &req.client_msg_id,
            1,
            MAX_CLIENT_MSG_ID,
            false,
        )?;
        if req.body.len() > self.cfg.max_body {
            return bad(format!("body exceeds {} bytes", self.cfg.max_body));
        }
        perms::client_content_type(req.content_type)?;
        let (group, me) = self.group_and_member(req.group_id, sender).await?;
        perms::may_send(me.as_ref(), &group, now_ms())?;
        let msg = GroupMessage {
            sender,
            group: req.group_id,
            client_msg_id: req.client_msg_id,
            content_type: req.content_type,
            body: req.body.into(),
        };
        self.submit_group(msg, origin).await
    }

    /// Stores a group message by the group's current diffusion (no permission
    /// checks: callers check them, system messages skip them).
    pub(crate) async fn submit_group(
        &self,
        msg: GroupMessage,
        origin: Option<Origin>,
    ) -> SocialResult<SendFuture> {
        let members = self.store.member_ids(msg.group).await?;
        let diffusion = Diffusion::of(members.len(), self.cfg.social.write_diffusion_max);
        let new = NewMessage {
            sender: msg.sender,
            client_msg_id: msg.client_msg_id,
            conv_type: ConversationType::C2g,
            target: msg.group,
            content_type: msg.content_type,
            body: msg.body,
            recipients: Vec::new(),
            policy: SendPolicy::Unchecked,
        };
        match diffusion {
            Diffusion::Write => {
                let rx = self
                    .committer
                    .submit(
                        NewMessage {
                            recipients: members,
                            ..new
                        },
                        origin,
                    )
                    .await?;
                Ok(Box::pin(async move {
                    rx.await
                        .unwrap_or_else(|_| Err(ApiError::unavailable("store is shutting down")))
                }))
            }
            Diffusion::Read => {
                let rx = self.group_committer.submit(new, members, origin).await?;
                Ok(Box::pin(async move {
                    rx.await
                        .unwrap_or_else(|_| Err(ApiError::unavailable("store is shutting down")))
                }))
            }
        }
    }

    /// GROUP_PULL from a connection: one page, as an upstream reply.
    pub(crate) async fn submit_group_pull(
        &self,
        req_id: u64,
        user: i64,
        p: GroupPullRequest,
    ) -> ReplyFuture {
        let r = self
            .pull_group(user, p.group_id, p.after_seq, p.limit)
            .await
            .map_err(|e| e.to_api());
        metrics::request("group_pull", crate::service::code_label(&r));
        ready_reply(match r {
            Ok(page) => UpReply {
                req_id,
                kind: Some(up_reply::Kind::Pulled(page)),
                ..Default::default()
            },
            Err(e) => e.into_reply(req_id),
        })
    }

    /// One page of a read-diffusion group after the caller's group cursor.
    pub async fn pull_group(
        &self,
        me: i64,
        group: i64,
        after_seq: u64,
        limit: u32,
    ) -> SocialResult<PullResponse> {
        let (_, m) = self.group_and_member(group, me).await?;
        // A member sees the group from the moment they joined.
        let since = perms::require_member(m)?.joined_at_ms;
        let limit = match limit {
            0 => 100,
            n => n.min(self.cfg.max_pull),
        };
        let (messages, has_more) = self
            .store
            .pull_group(group, since, after_seq, limit)
            .await?;
        let max_seq = self.store.group_max_seq(group).await?;
        Ok(PullResponse {
            messages,
            has_more,
            max_seq,
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use im_common::route::Route;

    /// A live route of device 2 on gateway `gate` (address `addr-{gate}`).
    pub(crate) fn live(gate: &str, conn: u64) -> LiveRoute {
        LiveRoute {
            route: Route {
                device: 2,
                gate_id: gate.into(),
                conn_id: conn,
            },
            gate_addr: format!("addr-{gate}"),
        }
    }

    #[test]
    fn one_item_per_gateway_without_the_origin() {
        let routes = HashMap::from([
            (1, vec![live("a", 1), live("b", 2)]),
            (2, vec![live("a", 3)]),
            (3, vec![live("a", 4)]),
        ]);
        let m = Message {
            msg_id: 9,
            group_seq: 5,
            ..Default::default()
        };
        let origin = Origin {
            gate_id: "a".into(),
            conn_id: 1,
        };
        let plans = plan_group_push(&routes, &m, Some(&origin));
        assert_eq!(plans.len(), 2);
        assert_eq!(plans["addr-a"].items.len(), 1);
        assert_eq!(plans["addr-a"].items[0].conn_ids, vec![3, 4]);
        assert_eq!(plans["addr-b"].items[0].conn_ids, vec![2]);
        assert_eq!(plans["addr-b"].items[0].messages[0].group_seq, 5);
    }
}
