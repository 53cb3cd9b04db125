//! Friend requests, friendships with a per-pair key, blocks, and the
//! one-to-one policy every c2c send passes through.
use crate::service::LogicService;
use crate::store::social::{
    Friend, FriendRequest, REQUEST_ACCEPTED, REQUEST_PENDING, REQUEST_REJECTED,
};

use super::perms;
use super::{SocialError, SocialResult, now_ms};

/// Longest note on a friend request, in bytes.
pub const MAX_NOTE: usize = 512;

/// What sending a friend request did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestOutcome {
    pub request_id: i64,
    /// true when the other side had already asked: both are friends now.
    pub accepted: bool,
}

/// A fresh random per-pair key, 32 bytes as lower-case hex.
pub fn new_pair_key() -> String {
    let bytes: [u8; 32] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl LogicService {
    /// The one-to-one policy: the recipient has not blocked the sender, and
    /// (under friends-only) they are friends; client content types only.
    pub async fn check_c2c(&self, sender: i64, to: i64, content_type: u32) -> SocialResult<()> {
        perms::client_content_type(content_type)?;
        if sender == to {
            return Ok(());
        }
        let blocked = self.store.has_blocked(to, sender).await?;
        let friends_only = self.cfg.social.friends_only;
        let friends = !friends_only || self.store.are_friends(sender, to).await?;
        let r = perms::may_message(blocked, friends, friends_only);
        if matches!(r, Err(SocialError::NotFriends))
            && self.store.existing_users(&[to]).await?.is_empty()
        {
            return Err(SocialError::UnknownUser(to));
        }
        r
    }

    async fn require_user(&self, id: i64) -> SocialResult<()> {
        if id <= 0 || self.store.existing_users(&[id]).await?.is_empty() {
            return Err(SocialError::UnknownUser(id));
        }
        Ok(())
    }

    pub async fn send_friend_request(
        &self,
        me: i64,
        to: i64,
        note: &str,
    ) -> SocialResult<RequestOutcome> {
        if me == to {
            return Err(SocialError::BadRequest(
                "you cannot befriend yourself".into(),
            ));
        }
        super::check_text("note", note, 0, MAX_NOTE, true)?;
        self.require_user(to).await?;
        if self.store.has_blocked(to, me).await? {
            return Err(SocialError::Blocked);
        }
        if self.store.are_friends(me, to).await? {
            return Err(SocialError::Conflict("you are already friends".into()));
        }
        // They asked first: asking back accepts.
        if let Some(theirs) = self.store.pending_request_between(to, me).await? {
            self.store
                .befriend(me, to, &new_pair_key(), now_ms())
                .await?;
            return Ok(RequestOutcome {
                request_id: theirs.id,
                accepted: true,
            });
        }
        if let Some(mine) = self.store.pending_request_between(me, to).await? {
            return Ok(RequestOutcome {
                request_id: mine.id,
                accepted: false,
            });
        }
        let id = self
            .store
            .insert_friend_request(me, to, note, now_ms())
            .await?;
        Ok(RequestOutcome {
            request_id: id,
            accepted: false,
        })
    }

    /// Pending requests: (to me, from me).
    pub async fn friend_requests(
        &self,
        me: i64,
    ) -> SocialResult<(Vec<FriendRequest>, Vec<FriendRequest>)> {
        Ok((
            self.store.pending_requests(me, true).await?,
            self.store.pending_requests(me, false).await?,
        ))
    }

    /// Accepts or rejects a pending request addressed to `me`. On accept the
    /// pair gets its key, which is returned.
    pub async fn answer_friend_request(
        &self,
        me: i64,
        id: i64,
        accept: bool,
    ) -> SocialResult<Option<(i64, String)>> {
        let req = self
            .store
            .friend_request(id)
            .await?
            .filter(|r| r.to_user == me || r.from_user == me)
            .ok_or_else(|| SocialError::NotFound(format!("no friend request {id}")))?;
        if req.to_user != me {
            return Err(SocialError::Forbidden(
                "only the recipient may answer a friend request".into(),
            ));
        }
        if req.status != REQUEST_PENDING {
            return Err(SocialError::Conflict(
                "the friend request was already answered".into(),
            ));
        }
        if !accept {
            self.store
                .close_request(id, REQUEST_REJECTED, now_ms())
                .await?;
            return Ok(None);
        }
        if self.store.has_blocked(me, req.from_user).await? {
            return Err(SocialError::Conflict(
                "unblock this user before accepting".into(),
            ));
        }
        if !self.store.are_friends(me, req.from_user).await? {
            self.store
                .befriend(me, req.from_user, &new_pair_key(), now_ms())
                .await?;
        } else {
            self.store
                .close_request(id, REQUEST_ACCEPTED, now_ms())
                .await?;
        }
        let key = self.friend_key(me, req.from_user).await?;
        Ok(Some((req.from_user, key)))
    }

    pub async fn friends(&self, me: i64) -> SocialResult<Vec<Friend>> {
        Ok(self.store.friends_of(me).await?)
    }

    pub async fn delete_friend(&self, me: i64, other: i64) -> SocialResult<()> {
        if !self.store.unfriend(me, other).await? {
            return Err(SocialError::NotFound(format!(
                "user {other} is not your friend"
            )));
        }
        Ok(())
    }

    /// The per-pair key shared by `me` and a friend.
    pub async fn friend_key(&self, me: i64, other: i64) -> SocialResult<String> {
        self.store
            .pair_key(me, other)
            .await?
            .ok_or_else(|| SocialError::NotFound(format!("user {other} is not your friend")))
    }

    pub async fn block_user(&self, me: i64, other: i64) -> SocialResult<()> {
        if me == other {
            return Err(SocialError::BadRequest("you cannot block yourself".into()));
        }
        self.require_user(other).await?;
        Ok(self.store.block(me, other, now_ms()).await?)
    }

    pub async fn unblock_user(&self, me: i64, other: i64) -> SocialResult<()> {
        if !self.store.unblock(me, other).await? {
            return Err(SocialError::NotFound(format!(
                "user {other} is not blocked"
            )));
        }
        Ok(())
    }

    pub async fn blocked_users(&self, me: i64) -> SocialResult<Vec<i64>> {
        Ok(self.store.blocked_by(me).await?)
    }
}
