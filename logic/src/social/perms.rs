//! Pure permission decisions: roles, join policies, who may send, manage,
//! revoke; which diffusion a group uses. No IO, so every rule is unit-tested.
use crate::store::groups::{GroupRecord, MemberRecord};
use crate::store::history::{MessageMeta, SYSTEM_CONTENT_MIN};

use super::{SocialError, SocialResult};

/// A member's role; higher outranks lower.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Member = 0,
    Admin = 1,
    Owner = 2,
}

impl Role {
    pub fn from_i64(v: i64) -> Role {
        match v {
            2 => Role::Owner,
            1 => Role::Admin,
            _ => Role::Member,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Role::Member => "member",
            Role::Admin => "admin",
            Role::Owner => "owner",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "member" => Some(Role::Member),
            "admin" => Some(Role::Admin),
            "owner" => Some(Role::Owner),
            _ => None,
        }
    }
}

/// How someone becomes a member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinPolicy {
    /// Anyone may join; any member may invite.
    Open = 0,
    /// Only admins and the owner add members (by invitation).
    Invite = 1,
    /// Joining asks; an admin approves. Admins may also invite.
    Approval = 2,
}

impl JoinPolicy {
    pub fn from_i64(v: i64) -> JoinPolicy {
        match v {
            1 => JoinPolicy::Invite,
            2 => JoinPolicy::Approval,
            _ => JoinPolicy::Open,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            JoinPolicy::Open => "open",
            JoinPolicy::Invite => "invite",
            JoinPolicy::Approval => "approval",
        }
    }

    pub fn parse(s: &str) -> Option<JoinPolicy> {
        match s {
            "open" => Some(JoinPolicy::Open),
            "invite" => Some(JoinPolicy::Invite),
            "approval" => Some(JoinPolicy::Approval),
            _ => None,
        }
    }
}

/// How a group's messages reach its members.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Diffusion {
    /// One inbox entry per member, synced with the user's own sequence.
    Write,
    /// One group entry; members pull by group cursor.
    Read,
}

impl Diffusion {
    pub fn of(member_count: usize, write_max: usize) -> Diffusion {
        if member_count <= write_max {
            Diffusion::Write
        } else {
            Diffusion::Read
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Diffusion::Write => "write",
            Diffusion::Read => "read",
        }
    }
}

/// A group that exists and is not dismissed.
pub fn live_group(group: Option<GroupRecord>, id: i64) -> SocialResult<GroupRecord> {
    match group {
        Some(g) if !g.dismissed => Ok(g),
        _ => Err(SocialError::NotFound(format!("no such group {id}"))),
    }
}

/// The caller's membership, or NOT_MEMBER.
pub fn require_member(member: Option<MemberRecord>) -> SocialResult<MemberRecord> {
    member.ok_or(SocialError::NotMember)
}

/// The caller's role must be at least `min` to `what`.
pub fn require_role(me: &MemberRecord, min: Role, what: &str) -> SocialResult<()> {
    if Role::from_i64(me.role) >= min {
        Ok(())
    } else {
        Err(SocialError::Forbidden(format!(
            "only the {} may {what}",
            if min == Role::Owner {
                "owner"
            } else {
                "owner or an admin"
            }
        )))
    }
}

/// Kicking or muting: an admin or the owner, acting on someone ranked lower.
pub fn may_manage(me: &MemberRecord, target: &MemberRecord, what: &str) -> SocialResult<()> {
    require_role(me, Role::Admin, what)?;
    if Role::from_i64(target.role) >= Role::from_i64(me.role) {
        return Err(SocialError::Forbidden(format!(
            "you may not {what} a member whose role is {}",
            Role::from_i64(target.role).name()
        )));
    }
    Ok(())
}

/// Inviting: any member of an open group; admins and the owner otherwise.
pub fn may_invite(me: &MemberRecord, policy: JoinPolicy) -> SocialResult<()> {
    match policy {
        JoinPolicy::Open => Ok(()),
        _ => require_role(me, Role::Admin, "invite to this group"),
    }
}

/// Sending to a group: a member, not muted, and (when the whole group is
/// muted) an admin or the owner.
pub fn may_send(me: Option<&MemberRecord>, group: &GroupRecord, now_ms: i64) -> SocialResult<()> {
    let me = me.ok_or(SocialError::NotMember)?;
    if me.muted_until_ms > now_ms {
        return Err(SocialError::Muted);
    }
    if group.muted_all && Role::from_i64(me.role) == Role::Member {
        return Err(SocialError::Muted);
    }
    Ok(())
}

/// The one-to-one policy: a block always refuses; strangers only when allowed.
pub fn may_message(blocked: bool, friends: bool, friends_only: bool) -> SocialResult<()> {
    if blocked {
        Err(SocialError::Blocked)
    } else if friends_only && !friends {
        Err(SocialError::NotFriends)
    } else {
        Ok(())
    }
}

/// Content types from 0xF000 are the server's own (receipts, revoke notices).
pub fn client_content_type(content_type: u32) -> SocialResult<()> {
    if content_type >= SYSTEM_CONTENT_MIN {
        return Err(SocialError::BadRequest(format!(
            "content types from {SYSTEM_CONTENT_MIN:#x} are reserved for the server"
        )));
    }
    Ok(())
}

/// Revoking: only the sender, only a user message, only within the window.
pub fn may_revoke(msg: &MessageMeta, me: i64, now_ms: i64, window_ms: u64) -> SocialResult<()> {
    if msg.sender != me {
        return Err(SocialError::Forbidden(
            "only the sender may revoke a message".into(),
        ));
    }
    if msg.content_type >= SYSTEM_CONTENT_MIN {
        return Err(SocialError::BadRequest(
            "system messages cannot be revoked".into(),
        ));
    }
    if now_ms - msg.sent_at_ms > window_ms as i64 {
        return Err(SocialError::RevokeExpired);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(user_id: i64, role: Role, muted_until_ms: i64) -> MemberRecord {
        MemberRecord {
            user_id,
            username: format!("u{user_id}"),
            role: role as i64,
            muted_until_ms,
            joined_at_ms: 0,
        }
    }

    fn group(muted_all: bool) -> GroupRecord {
        GroupRecord {
            id: 1,
            name: "g".into(),
            owner_id: 1,
            join_policy: 0,
            announcement: String::new(),
            muted_all,
            dismissed: false,
            created_at_ms: 0,
            member_count: 3,
        }
    }

    #[test]
    fn only_higher_ranks_manage() {
        let owner = member(1, Role::Owner, 0);
        let admin = member(2, Role::Admin, 0);
        let m = member(3, Role::Member, 0);
        assert!(may_manage(&owner, &admin, "kick").is_ok());
        assert!(may_manage(&admin, &m, "kick").is_ok());
        assert!(may_manage(&admin, &owner, "kick").is_err());
        assert!(may_manage(&admin, &admin, "kick").is_err());
        assert!(matches!(
            may_manage(&m, &member(4, Role::Member, 0), "mute"),
            Err(SocialError::Forbidden(_))
        ));
    }

    #[test]
    fn invitations_follow_the_policy() {
        let m = member(3, Role::Member, 0);
        assert!(may_invite(&m, JoinPolicy::Open).is_ok());
        assert!(may_invite(&m, JoinPolicy::Invite).is_err());
        assert!(may_invite(&member(2, Role::Admin, 0), JoinPolicy::Approval).is_ok());
    }

    #[test]
    fn sending_needs_membership_and_no_mute() {
        let g = group(false);
        assert!(matches!(
            may_send(None, &g, 10),
            Err(SocialError::NotMember)
        ));
        assert!(matches!(
            may_send(Some(&member(3, Role::Member, 20)), &g, 10),
            Err(SocialError::Muted)
        ));
        assert!(may_send(Some(&member(3, Role::Member, 5)), &g, 10).is_ok());
        let all = group(true);
        assert!(may_send(Some(&member(3, Role::Member, 0)), &all, 10).is_err());
        assert!(may_send(Some(&member(2, Role::Admin, 0)), &all, 10).is_ok());
    }

    #[test]
    fn one_to_one_policy() {
        assert!(matches!(
            may_message(true, true, false),
            Err(SocialError::Blocked)
        ));
        assert!(matches!(
            may_message(false, false, true),
            Err(SocialError::NotFriends)
        ));
        assert!(may_message(false, false, false).is_ok());
        assert!(may_message(false, true, true).is_ok());
    }

    #[test]
    fn diffusion_threshold_and_revoke_window() {
        assert_eq!(Diffusion::of(500, 500), Diffusion::Write);
        assert_eq!(Diffusion::of(501, 500), Diffusion::Read);
        let msg = MessageMeta {
            id: 1,
            sender: 7,
            conv_type: 1,
            target: 8,
            content_type: 1,
            sent_at_ms: 1_000,
        };
        assert!(may_revoke(&msg, 7, 2_000, 1_000).is_ok());
        assert!(matches!(
            may_revoke(&msg, 7, 2_001, 1_000),
            Err(SocialError::RevokeExpired)
        ));
        assert!(matches!(
            may_revoke(&msg, 8, 1_500, 1_000),
            Err(SocialError::Forbidden(_))
        ));
        assert!(client_content_type(0xF001).is_err());
        assert!(client_content_type(1).is_ok());
    }
}
