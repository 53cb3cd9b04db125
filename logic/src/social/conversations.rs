//! Conversations: the per-user list (peer or group, last message, unread
//! count, read position), marking read (with a READ receipt for one-to-one
//! chats, through the committer like any message) and paged history.
use std::collections::HashMap;

use im_proto::client::{ConversationType, Receipt, ReceiptKind, SystemContentType};
use im_proto::prost::Message as _;

use crate::service::LogicService;
use crate::store::history::HistoryItem;
use crate::store::{NewMessage, SendPolicy};

use super::{SocialError, SocialResult, now_ms, perms};

/// A conversation id as clients see it: `c2c:{low}:{high}` or `group:{id}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConvId {
    /// The two users, lower id first.
    C2c(i64, i64),
    Group(i64),
}

impl ConvId {
    pub fn c2c(a: i64, b: i64) -> ConvId {
        ConvId::C2c(a.min(b), a.max(b))
    }

    pub fn parse(s: &str) -> Option<ConvId> {
        let mut parts = s.split(':');
        let kind = parts.next()?;
        let ids: Vec<i64> = parts.map(|p| p.parse().ok()).collect::<Option<_>>()?;
        match (kind, ids.as_slice()) {
            ("c2c", [a, b]) if *a > 0 && *b > 0 => Some(ConvId::c2c(*a, *b)),
            ("group", [g]) if *g > 0 => Some(ConvId::Group(*g)),
            _ => None,
        }
    }

    /// The other side as `me` sees it: a user id (c2c) or the group id.
    pub fn peer_of(self, me: i64) -> i64 {
        match self {
            ConvId::C2c(a, b) if a == me => b,
            ConvId::C2c(a, _) => a,
            ConvId::Group(g) => g,
        }
    }

    pub fn conv_type(self) -> ConversationType {
        match self {
            ConvId::C2c(..) => ConversationType::C2c,
            ConvId::Group(_) => ConversationType::C2g,
        }
    }
}

impl std::fmt::Display for ConvId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConvId::C2c(a, b) => write!(f, "c2c:{a}:{b}"),
            ConvId::Group(g) => write!(f, "group:{g}"),
        }
    }
}

/// One entry of a user's conversation list.
#[derive(Debug, Clone, PartialEq)]
pub struct Conversation {
    pub id: ConvId,
    /// The peer user (c2c) or the group.
    pub peer: i64,
    pub last: Option<HistoryItem>,
    pub unread: i64,
    /// The last message id the user marked read (0: none).
    pub read_msg_id: i64,
}

impl LogicService {
    /// Checks `me` may read `conv`; returns the earliest send time `me` sees
    /// (a group's history starts when `me` joined).
    async fn conversation_access(&self, me: i64, conv: ConvId) -> SocialResult<i64> {
        match conv {
            ConvId::C2c(a, b) => {
                if me != a && me != b {
                    return Err(SocialError::Forbidden(
                        "this conversation is not yours".into(),
                    ));
                }
                Ok(0)
            }
            ConvId::Group(g) => {
                let (_, m) = self.group_and_member(g, me).await?;
                Ok(perms::require_member(m)?.joined_at_ms)
            }
        }
    }

    pub async fn conversations(&self, me: i64) -> SocialResult<Vec<Conversation>> {
        let reads = self.store.read_positions(me).await?;
        let unread = self.store.unread_c2c(me).await?;
        let c2c = ConversationType::C2c as i64;
        let c2g = ConversationType::C2g as i64;
        let mut list: Vec<(Conversation, Option<i64>)> = Vec::new();
        for (peer, last_id) in self.store.c2c_peers(me).await? {
            list.push((
                Conversation {
                    id: ConvId::c2c(me, peer),
                    peer,
                    last: None,
                    unread: unread.get(&peer).copied().unwrap_or(0),
                    read_msg_id: reads.get(&(c2c, peer)).copied().unwrap_or(0),
                },
                Some(last_id),
            ));
        }
        for (g, _) in self.my_groups(me).await? {
            let since = match self.store.member(g.id, me).await? {
                Some(m) => m.joined_at_ms,
                None => continue,
            };
            let read = reads.get(&(c2g, g.id)).copied().unwrap_or(0);
            let last_id = self.store.last_group_message(g.id, since).await?;
            let unread = self.store.unread_group(g.id, me, read, since).await?;
            list.push((
                Conversation {
                    id: ConvId::Group(g.id),
                    peer: g.id,
                    last: None,
                    unread,
                    read_msg_id: read,
                },
                last_id,
            ));
        }
        let ids: Vec<i64> = list.iter().filter_map(|(_, id)| *id).collect();
        let mut items: HashMap<i64, HistoryItem> = self
            .store
            .history_items(&ids)
            .await?
            .into_iter()
            .map(|i| (i.message.msg_id, i))
            .collect();
        list.sort_by_key(|(c, id)| (std::cmp::Reverse(id.unwrap_or(0)), c.peer));
        Ok(list
            .into_iter()
            .map(|(mut c, id)| {
                c.last = id.and_then(|id| items.remove(&id));
                c
            })
            .collect())
    }

    /// Newest first, message ids below `before` (None: from the newest).
    pub async fn history(
        &self,
        me: i64,
        conv: ConvId,
        before: Option<i64>,
        limit: u32,
    ) -> SocialResult<Vec<HistoryItem>> {
        let since = self.conversation_access(me, conv).await?;
        let limit = match limit {
            0 => 50,
            n => n.min(self.cfg.max_pull),
        };
        let before = before.unwrap_or(i64::MAX);
        Ok(match conv {
            ConvId::C2c(..) => {
                self.store
                    .history_c2c(me, conv.peer_of(me), before, limit)
                    .await?
            }
            ConvId::Group(g) => self.store.history_group(g, since, before, limit).await?,
        })
    }

    /// Moves `me`'s read position to `up_to` (None: the last message); for a
    /// one-to-one chat the peer gets a READ receipt. Returns the position.
    pub async fn mark_read(&self, me: i64, conv: ConvId, up_to: Option<i64>) -> SocialResult<i64> {
        let since = self.conversation_access(me, conv).await?;
        let peer = conv.peer_of(me);
        let last = match conv {
            ConvId::C2c(..) => self.store.last_c2c_message(me, peer).await?,
            ConvId::Group(g) => self.store.last_group_message(g, since).await?,
        };
        let up_to = match (up_to, last) {
            (Some(u), Some(l)) if u > 0 && u <= l => u,
            (Some(u), _) => {
                return Err(SocialError::BadRequest(format!(
                    "message {u} is not in this conversation"
                )));
            }
            (None, Some(l)) => l,
            (None, None) => return Ok(0),
        };
        let stored = self
            .store
            .mark_read(me, conv.conv_type() as i64, peer, up_to, now_ms())
            .await?;
        if let ConvId::C2c(..) = conv
            && peer != me
            && !self.store.has_blocked(peer, me).await?
        {
            self.send_read_receipt(me, peer, stored).await?;
        }
        Ok(stored)
    }

    /// A READ receipt from `reader` to `peer`, stored and pushed like any
    /// message; its client id makes it idempotent per position.
    async fn send_read_receipt(&self, reader: i64, peer: i64, up_to: i64) -> SocialResult<()> {
        let body = Receipt {
            kind: ReceiptKind::Read as i32,
            reader,
            up_to_msg_id: up_to,
            ..Default::default()
        };
        let msg = NewMessage {
            sender: reader,
            client_msg_id: format!("read:{peer}:{up_to}"),
            conv_type: ConversationType::C2c,
            target: peer,
            content_type: SystemContentType::Receipt as u32,
            body: body.encode_to_vec().into(),
            recipients: vec![peer],
            policy: SendPolicy::Unchecked,
        };
        let rx = self.committer.submit(msg, None).await?;
        rx.await.unwrap_or_else(|_| {
            Err(im_common::api::ApiError::unavailable(
                "store is shutting down",
            ))
        })?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::ConvId;

    #[test]
    fn conversation_ids_round_trip() {
        assert_eq!(ConvId::parse("c2c:7:3"), Some(ConvId::C2c(3, 7)));
        assert_eq!(ConvId::c2c(7, 3).to_string(), "c2c:3:7");
        assert_eq!(ConvId::parse("group:12"), Some(ConvId::Group(12)));
        assert_eq!(ConvId::parse("group:0"), None);
        assert_eq!(ConvId::parse("c2c:1"), None);
        assert_eq!(ConvId::parse("dm:1:2"), None);
        assert_eq!(ConvId::C2c(3, 7).peer_of(3), 7);
        assert_eq!(ConvId::C2c(3, 7).peer_of(7), 3);
    }
}
