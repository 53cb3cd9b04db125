//! Session rules around login and logout: the second-login policy and
//! logout closing the sessions of the revoked token.
use im_common::api::ApiError;
use im_common::route::Route;
use im_proto::client::{ErrorCode, KickReason, Kickout};
use im_proto::logic::KickRequest;

use crate::auth::Claims;
use crate::service::LogicService;

impl LogicService {
    /// Under [`crate::service::LoginPolicy::RejectNew`]: refuses a login while
    /// another live session holds the same device type.
    pub(crate) async fn refuse_second_login(&self, user: i64, new: &Route) -> Result<(), ApiError> {
        let live = self
            .routes
            .lookup(&[user])
            .await
            .map_err(|e| ApiError::unavailable(e.to_string()))?;
        let taken = live
            .get(&user)
            .into_iter()
            .flatten()
            .any(|r| r.route.device == new.device && r.route != *new);
        if taken {
            return Err(ApiError::new(
                ErrorCode::Forbidden,
                "already signed in on this device type; sign out there first",
            ));
        }
        Ok(())
    }

    /// Revokes the token and closes every session that authenticated with
    /// it (each gets a KICKOUT with reason LOGOUT; its route goes with it).
    pub async fn logout(&self, claims: &Claims) -> Result<(), ApiError> {
        self.store
            .revoke_token(&claims.jti, claims.exp as i64 * 1000)
            .await
            .map_err(|e| ApiError::unavailable(format!("failed to revoke token: {e}")))?;
        let live = self
            .routes
            .lookup(&[claims.sub])
            .await
            .map_err(|e| ApiError::unavailable(e.to_string()))?;
        for r in live.get(&claims.sub).into_iter().flatten() {
            let req = KickRequest {
                conn_id: r.route.conn_id,
                kickout: Some(Kickout {
                    reason: KickReason::Logout as i32,
                    message: "signed out".into(),
                }),
                session_id: claims.jti.clone(),
            };
            if let Err(e) = self.gateways.kick(&r.gate_addr, req).await {
                tracing::warn!(error = %e, "failed to close a signed-out session");
            }
        }
        Ok(())
    }
}
