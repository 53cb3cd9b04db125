//! The REST API as a business server uses it: server push (s2c) to many
//! users, authenticated by a server API key instead of a user token.
use serde::Deserialize;
use serde_json::json;

use crate::api::Api;
use crate::conn::ClientError;

/// The acknowledgement of a server push: stored once, in every recipient's inbox.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct S2cSent {
    pub msg_id: i64,
    pub sent_at_ms: u64,
    /// `true` when this client_msg_id was already pushed (nothing new stored).
    pub duplicate: bool,
}

impl Api {
    /// `POST /api/v1/s2c/messages`: one message to up to 1000 users. Retry
    /// with the same `client_msg_id` after a failure; it is stored once.
    pub async fn s2c_send(
        &self,
        api_key: &str,
        to: &[i64],
        client_msg_id: &str,
        content_type: u32,
        body: &str,
    ) -> Result<S2cSent, ClientError> {
        let v = self
            .call(
                self.http
                    .post(format!("{}/api/v1/s2c/messages", self.base))
                    .header("X-Api-Key", api_key)
                    .json(&json!({
                        "to": to,
                        "client_msg_id": client_msg_id,
                        "content_type": content_type,
                        "body": body,
                    })),
            )
            .await?;
        serde_json::from_value(v).map_err(|e| ClientError::Http(e.to_string()))
    }

    /// `GET /api/v1/s2c/users/{username}`: a user id, with a server API key.
    pub async fn s2c_user_id(&self, api_key: &str, username: &str) -> Result<i64, ClientError> {
        let v = self
            .call(
                self.http
                    .get(format!("{}/api/v1/s2c/users/{}", self.base, username))
                    .header("X-Api-Key", api_key),
            )
            .await?;
        v["user_id"]
            .as_i64()
            .ok_or_else(|| ClientError::Http("no user_id".into()))
    }
}
