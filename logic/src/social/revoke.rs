//! Revoke: the sender withdraws a message within the window; the message is
//! marked revoked (history hides its body) and the other side gets a
//! SYSTEM_CONTENT_TYPE_REVOKE notice through the normal message path.
use im_proto::client::{ConversationType, Revoke, SystemContentType};
use im_proto::prost::Message as _;

use crate::service::LogicService;
use crate::store::{NewMessage, SendPolicy};

use super::c2g::GroupMessage;
use super::{SocialError, SocialResult, now_ms, perms};

impl LogicService {
    /// Revokes `msg_id` (sent by `me`); idempotent within the window.
    pub async fn revoke(&self, me: i64, msg_id: i64) -> SocialResult<()> {
        let meta = self
            .store
            .message_meta(msg_id)
            .await?
            .ok_or_else(|| SocialError::NotFound(format!("no message {msg_id}")))?;
        perms::may_revoke(&meta, me, now_ms(), self.cfg.social.revoke_window_ms)?;
        self.store.mark_revoked(msg_id, now_ms()).await?;
        let body = Revoke { msg_id }.encode_to_vec();
        let client_msg_id = format!("revoke:{msg_id}");
        let content_type = SystemContentType::Revoke as u32;
        if meta.conv_type == ConversationType::C2g as i64 {
            let msg = GroupMessage {
                sender: me,
                group: meta.target,
                client_msg_id,
                content_type,
                body: body.into(),
            };
            self.submit_group(msg, None).await?.await?;
        } else {
            let msg = NewMessage {
                sender: me,
                client_msg_id,
                conv_type: ConversationType::C2c,
                target: meta.target,
                content_type,
                body: body.into(),
                recipients: vec![meta.target],
                policy: SendPolicy::Unchecked,
            };
            let rx = self.committer.submit(msg, None).await?;
            rx.await.unwrap_or_else(|_| {
                Err(im_common::api::ApiError::unavailable(
                    "store is shutting down",
                ))
            })?;
        }
        Ok(())
    }
}
