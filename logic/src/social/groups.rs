//! Group lifecycle and membership: create, join (open, invitation, approval),
//! quit, invite, kick, mute, roles, ownership, announcement, dismiss. Every
//! method checks the caller's permission through [`super::perms`] first.
use std::collections::BTreeSet;

use crate::service::LogicService;
use crate::store::groups::{GroupRecord, JoinRequest, MemberRecord};

use super::perms::{self, JoinPolicy, Role};
use super::{SocialError, SocialResult, now_ms};

pub const MAX_GROUP_NAME: usize = 64;
pub const MAX_ANNOUNCEMENT: usize = 4096;

/// What a join did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinOutcome {
    Joined,
    /// The group needs approval: a request is waiting for an admin.
    Requested,
}

impl LogicService {
    /// The group (not dismissed) and the caller's membership, if any.
    pub(crate) async fn group_and_member(
        &self,
        group: i64,
        me: i64,
    ) -> SocialResult<(GroupRecord, Option<MemberRecord>)> {
        let g = perms::live_group(self.store.group(group).await?, group)?;
        let m = self.store.member(group, me).await?;
        Ok((g, m))
    }

    async fn as_member(&self, group: i64, me: i64) -> SocialResult<(GroupRecord, MemberRecord)> {
        let (g, m) = self.group_and_member(group, me).await?;
        Ok((g, perms::require_member(m)?))
    }

    async fn target_member(&self, group: i64, user: i64) -> SocialResult<MemberRecord> {
        self.store
            .member(group, user)
            .await?
            .ok_or_else(|| SocialError::NotFound(format!("user {user} is not in this group")))
    }

    fn check_size(&self, member_count: i64, adding: usize) -> SocialResult<()> {
        let max = self.cfg.social.max_group_members;
        if member_count.max(0) as usize + adding > max {
            return Err(SocialError::Forbidden(format!(
                "a group may have at most {max} members"
            )));
        }
        Ok(())
    }

    /// Distinct registered users among `ids`, or UNKNOWN_USER for the first stranger.
    async fn known_users(&self, ids: &[i64]) -> SocialResult<Vec<i64>> {
        let wanted: BTreeSet<i64> = ids.iter().copied().collect();
        let list: Vec<i64> = wanted.into_iter().collect();
        let found = self.store.existing_users(&list).await?;
        if let Some(u) = list.iter().find(|u| !found.contains(u)) {
            return Err(SocialError::UnknownUser(*u));
        }
        Ok(list)
    }

    pub async fn create_group(
        &self,
        me: i64,
        name: &str,
        members: &[i64],
        policy: JoinPolicy,
    ) -> SocialResult<GroupRecord> {
        let name = name.trim();
        super::check_text("group name", name, 1, MAX_GROUP_NAME, false)?;
        let members = self.known_users(members).await?;
        let others = members.iter().filter(|u| **u != me).count();
        self.check_size(1, others)?;
        let id = self
            .store
            .create_group(name, me, policy as i64, &members, now_ms())
            .await?;
        perms::live_group(self.store.group(id).await?, id)
    }

    pub async fn my_groups(&self, me: i64) -> SocialResult<Vec<(GroupRecord, Role)>> {
        Ok(self
            .store
            .groups_of(me)
            .await?
            .into_iter()
            .filter(|(g, _)| !g.dismissed)
            .map(|(g, r)| (g, Role::from_i64(r)))
            .collect())
    }

    /// Group info for a member, with the caller's membership.
    pub async fn group_info(
        &self,
        me: i64,
        group: i64,
    ) -> SocialResult<(GroupRecord, MemberRecord)> {
        self.as_member(group, me).await
    }

    pub async fn join_group(&self, me: i64, group: i64, note: &str) -> SocialResult<JoinOutcome> {
        let (g, m) = self.group_and_member(group, me).await?;
        if m.is_some() {
            return Ok(JoinOutcome::Joined);
        }
        match JoinPolicy::from_i64(g.join_policy) {
            JoinPolicy::Open => {
                self.check_size(g.member_count, 1)?;
                self.store.add_members(group, &[me], now_ms()).await?;
                Ok(JoinOutcome::Joined)
            }
            JoinPolicy::Invite => Err(SocialError::Forbidden(
                "this group is joined by invitation only".into(),
            )),
            JoinPolicy::Approval => {
                super::check_text("note", note, 0, super::friends::MAX_NOTE, true)?;
                self.store
                    .add_join_request(group, me, note, now_ms())
                    .await?;
                Ok(JoinOutcome::Requested)
            }
        }
    }

    pub async fn quit_group(&self, me: i64, group: i64) -> SocialResult<()> {
        let (_, m) = self.as_member(group, me).await?;
        if Role::from_i64(m.role) == Role::Owner {
            return Err(SocialError::Forbidden(
                "the owner must transfer ownership or dismiss the group first".into(),
            ));
        }
        self.store.remove_member(group, me).await?;
        Ok(())
    }

    pub async fn group_members(&self, me: i64, group: i64) -> SocialResult<Vec<MemberRecord>> {
        self.as_member(group, me).await?;
        Ok(self.store.members(group).await?)
    }

    /// Adds users; returns how many were not members yet.
    pub async fn invite(&self, me: i64, group: i64, users: &[i64]) -> SocialResult<u64> {
        let (g, m) = self.as_member(group, me).await?;
        perms::may_invite(&m, JoinPolicy::from_i64(g.join_policy))?;
        if users.is_empty() {
            return Err(SocialError::BadRequest("no users to invite".into()));
        }
        let users = self.known_users(users).await?;
        self.check_size(g.member_count, users.len())?;
        Ok(self.store.add_members(group, &users, now_ms()).await?)
    }

    pub async fn kick(&self, me: i64, group: i64, user: i64) -> SocialResult<()> {
        let (_, m) = self.as_member(group, me).await?;
        let target = self.target_member(group, user).await?;
        perms::may_manage(&m, &target, "kick")?;
        self.store.remove_member(group, user).await?;
        Ok(())
    }

    /// Mutes a member for `secs` seconds (0 unmutes).
    pub async fn mute_member(
        &self,
        me: i64,
        group: i64,
        user: i64,
        secs: u64,
    ) -> SocialResult<i64> {
        let (_, m) = self.as_member(group, me).await?;
        let target = self.target_member(group, user).await?;
        perms::may_manage(&m, &target, "mute")?;
        let until = if secs == 0 {
            0
        } else {
            now_ms().saturating_add((secs.min(i64::MAX as u64 / 2000) * 1000) as i64)
        };
        self.store.set_muted_until(group, user, until).await?;
        Ok(until)
    }

    pub async fn mute_all(&self, me: i64, group: i64, muted: bool) -> SocialResult<()> {
        let (_, m) = self.as_member(group, me).await?;
        perms::require_role(&m, Role::Admin, "mute the whole group")?;
        Ok(self.store.set_muted_all(group, muted).await?)
    }

    /// Makes a member an admin or a plain member again (owner only).
    pub async fn set_member_role(
        &self,
        me: i64,
        group: i64,
        user: i64,
        role: Role,
    ) -> SocialResult<()> {
        let (_, m) = self.as_member(group, me).await?;
        perms::require_role(&m, Role::Owner, "change roles")?;
        if role == Role::Owner {
            return Err(SocialError::BadRequest(
                "use the transfer operation to change the owner".into(),
            ));
        }
        let target = self.target_member(group, user).await?;
        if Role::from_i64(target.role) == Role::Owner {
            return Err(SocialError::Forbidden(
                "the owner's role changes only by transfer".into(),
            ));
        }
        self.store.set_role(group, user, role as i64).await?;
        Ok(())
    }

    pub async fn transfer_group(&self, me: i64, group: i64, to: i64) -> SocialResult<()> {
        let (_, m) = self.as_member(group, me).await?;
        perms::require_role(&m, Role::Owner, "transfer ownership")?;
        if to == me {
            return Err(SocialError::BadRequest("you already own this group".into()));
        }
        self.target_member(group, to).await?;
        Ok(self.store.transfer_group(group, me, to).await?)
    }

    pub async fn set_announcement(&self, me: i64, group: i64, text: &str) -> SocialResult<()> {
        let (_, m) = self.as_member(group, me).await?;
        perms::require_role(&m, Role::Admin, "set the announcement")?;
        super::check_text("announcement", text, 0, MAX_ANNOUNCEMENT, true)?;
        Ok(self.store.set_announcement(group, text).await?)
    }

    pub async fn dismiss_group(&self, me: i64, group: i64) -> SocialResult<()> {
        let (_, m) = self.as_member(group, me).await?;
        perms::require_role(&m, Role::Owner, "dismiss the group")?;
        Ok(self.store.dismiss_group(group).await?)
    }

    pub async fn group_join_requests(&self, me: i64, group: i64) -> SocialResult<Vec<JoinRequest>> {
        let (_, m) = self.as_member(group, me).await?;
        perms::require_role(&m, Role::Admin, "see join requests")?;
        Ok(self.store.join_requests(group).await?)
    }

    pub async fn answer_join_request(
        &self,
        me: i64,
        group: i64,
        user: i64,
        approve: bool,
    ) -> SocialResult<()> {
        let (g, m) = self.as_member(group, me).await?;
        perms::require_role(&m, Role::Admin, "answer join requests")?;
        if approve {
            self.check_size(g.member_count, 1)?;
        }
        if !self.store.take_join_request(group, user).await? {
            return Err(SocialError::NotFound(format!(
                "no join request from user {user}"
            )));
        }
        if approve {
            self.store.add_members(group, &[user], now_ms()).await?;
        }
        Ok(())
    }
}
