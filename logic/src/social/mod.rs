//! Friends, groups, group messages, conversations, history and revoke: the
//! rules (who may do what) and the [`crate::LogicService`] methods that apply
//! them. Storage is in `crate::store`; transports (REST, frames) only call in.
//!
//! - [`perms`]: pure permission decisions for groups and messages.
//! - [`friends`]: requests, friendships with per-pair keys, blocks, the c2c policy.
//! - [`groups`]: group lifecycle, membership, roles, mutes.
//! - [`c2g`]: group messages, write or read diffusion, and read-diffusion pushes.
//! - [`conversations`]: conversation list, mark read (READ receipts), history.
//! - [`revoke`]: revoking one's own message within the window.
use im_common::api::ApiError;
use im_proto::client::ErrorCode;

use crate::store::StoreError;

pub mod c2g;
pub mod conversations;
pub mod friends;
pub mod groups;
pub mod perms;
pub mod revoke;

/// Server policies of this module (flags in `crate::cli::LogicArgs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocialConfig {
    /// Only friends may send each other one-to-one messages.
    pub friends_only: bool,
    /// Groups with at most this many members use write diffusion; larger ones read diffusion.
    pub write_diffusion_max: usize,
    /// Most members a group may have.
    pub max_group_members: usize,
    /// How long after sending a message its sender may revoke it.
    pub revoke_window_ms: u64,
}

impl Default for SocialConfig {
    fn default() -> Self {
        SocialConfig {
            friends_only: true,
            write_diffusion_max: 500,
            max_group_members: 10_000,
            revoke_window_ms: 120_000,
        }
    }
}

/// Free text users give (group names, notes, announcements), checked as
/// [`crate::service::text_problem`] says.
pub fn check_text(
    what: &str,
    text: &str,
    min: usize,
    max: usize,
    multiline: bool,
) -> SocialResult<()> {
    match crate::service::text_problem(what, text, min, max, multiline) {
        Some(why) => Err(SocialError::BadRequest(why)),
        None => Ok(()),
    }
}

/// Why a social operation was refused; each variant has a stable code.
#[derive(Debug, thiserror::Error)]
pub enum SocialError {
    #[error("{0}")]
    BadRequest(String),
    #[error("no such user {0}")]
    UnknownUser(i64),
    #[error("{0}")]
    NotFound(String),
    #[error("the recipient has blocked you")]
    Blocked,
    #[error("only friends may message each other on this server; send a friend request first")]
    NotFriends,
    #[error("you are not a member of this group")]
    NotMember,
    #[error("{0}")]
    Forbidden(String),
    #[error("you are muted in this group")]
    Muted,
    #[error("{0}")]
    Conflict(String),
    #[error("the revoke window has passed")]
    RevokeExpired,
    #[error("failed to access storage: {0}")]
    Store(#[from] StoreError),
    #[error("{0}")]
    Api(#[from] ApiError),
}

impl SocialError {
    /// The stable error code shown to REST clients.
    pub fn code(&self) -> &'static str {
        match self {
            SocialError::BadRequest(_) => "BAD_REQUEST",
            SocialError::UnknownUser(_) => "UNKNOWN_USER",
            SocialError::NotFound(_) => "NOT_FOUND",
            SocialError::Blocked => "BLOCKED",
            SocialError::NotFriends => "NOT_FRIENDS",
            SocialError::NotMember => "NOT_MEMBER",
            SocialError::Forbidden(_) => "FORBIDDEN",
            SocialError::Muted => "MUTED",
            SocialError::Conflict(_) => "CONFLICT",
            SocialError::RevokeExpired => "REVOKE_EXPIRED",
            SocialError::Store(_) => "UNAVAILABLE",
            SocialError::Api(e) => e.code.as_str_name().trim_start_matches("ERROR_CODE_"),
        }
    }

    /// The error as a protocol error (frames carry only the protocol codes).
    pub fn to_api(&self) -> ApiError {
        let code = match self {
            SocialError::BadRequest(_) | SocialError::NotFound(_) | SocialError::Conflict(_) => {
                ErrorCode::BadRequest
            }
            SocialError::UnknownUser(_) => ErrorCode::UnknownUser,
            SocialError::Blocked
            | SocialError::NotFriends
            | SocialError::NotMember
            | SocialError::Forbidden(_)
            | SocialError::Muted
            | SocialError::RevokeExpired => ErrorCode::Forbidden,
            SocialError::Store(e) => {
                tracing::warn!(error = %e, "storage error in social operation");
                return ApiError::unavailable("storage unavailable; retry");
            }
            SocialError::Api(e) => return e.clone(),
        };
        ApiError::new(code, self.to_string())
    }
}

impl From<SocialError> for ApiError {
    fn from(e: SocialError) -> Self {
        e.to_api()
    }
}

pub type SocialResult<T> = Result<T, SocialError>;

pub(crate) fn now_ms() -> i64 {
    im_proto::now_ms() as i64
}

#[cfg(test)]
mod text_tests {
    use super::check_text;

    #[test]
    fn text_is_bounded_and_free_of_control_characters() {
        assert!(check_text("name", "team", 1, 64, false).is_ok());
        assert!(check_text("name", "", 1, 64, false).is_err());
        assert!(check_text("name", &"x".repeat(65), 1, 64, false).is_err());
        assert!(check_text("name", "a\0b", 1, 64, false).is_err());
        assert!(check_text("name", "a\nb", 1, 64, false).is_err());
        assert!(check_text("note", "a\nb\tc\r\n", 0, 64, true).is_ok());
        assert!(check_text("note", "a\0b", 0, 64, true).is_err());
        assert!(check_text("note", "a\u{7f}b", 0, 64, true).is_err());
        assert!(check_text("note", "", 0, 64, true).is_ok());
        assert!(check_text("note", "日本語", 0, 64, true).is_ok());
    }
}
