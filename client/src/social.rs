//! The REST API for friends, groups, conversations, history and revoke,
//! from the client side: thin calls that return the server's JSON.
use serde_json::{Value, json};

use crate::api::Api;
use crate::conn::ClientError;

/// The conversation id of a one-to-one chat between `a` and `b`.
pub fn c2c_conversation(a: i64, b: i64) -> String {
    format!("c2c:{}:{}", a.min(b), a.max(b))
}

/// The conversation id of a group.
pub fn group_conversation(group: i64) -> String {
    format!("group:{group}")
}

fn field_i64(v: &Value, name: &str) -> Result<i64, ClientError> {
    v[name]
        .as_i64()
        .ok_or_else(|| ClientError::Http(format!("response has no `{name}`: {v}")))
}

impl Api {
    fn url(&self, path: &str) -> String {
        format!("{}/api/v1{path}", self.base)
    }

    async fn get_json(&self, token: &str, path: &str) -> Result<Value, ClientError> {
        self.call(self.http.get(self.url(path)).bearer_auth(token))
            .await
    }

    async fn post_json(&self, token: &str, path: &str, body: Value) -> Result<Value, ClientError> {
        self.call(
            self.http
                .post(self.url(path))
                .bearer_auth(token)
                .json(&body),
        )
        .await
    }

    async fn put_json(&self, token: &str, path: &str, body: Value) -> Result<Value, ClientError> {
        self.call(self.http.put(self.url(path)).bearer_auth(token).json(&body))
            .await
    }

    async fn delete(&self, token: &str, path: &str) -> Result<Value, ClientError> {
        self.call(self.http.delete(self.url(path)).bearer_auth(token))
            .await
    }

    // ---- friends ----

    /// Asks `to` to be friends; `{"request_id", "status": "pending"|"accepted"}`.
    pub async fn send_friend_request(
        &self,
        token: &str,
        to: i64,
        note: &str,
    ) -> Result<Value, ClientError> {
        self.post_json(token, "/friends/requests", json!({"to": to, "note": note}))
            .await
    }

    /// Pending requests: `{"incoming": [...], "outgoing": [...]}`.
    pub async fn friend_requests(&self, token: &str) -> Result<Value, ClientError> {
        self.get_json(token, "/friends/requests").await
    }

    /// Accepts a request; returns the pair's key.
    pub async fn accept_friend_request(&self, token: &str, id: i64) -> Result<String, ClientError> {
        let v = self
            .post_json(token, &format!("/friends/requests/{id}/accept"), json!({}))
            .await?;
        v["key"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| ClientError::Http(format!("no key in {v}")))
    }

    pub async fn reject_friend_request(&self, token: &str, id: i64) -> Result<(), ClientError> {
        self.post_json(token, &format!("/friends/requests/{id}/reject"), json!({}))
            .await
            .map(|_| ())
    }

    /// `{"friends": [{"user_id", "username", "since_ms"}]}`.
    pub async fn friends(&self, token: &str) -> Result<Value, ClientError> {
        self.get_json(token, "/friends").await
    }

    pub async fn delete_friend(&self, token: &str, user: i64) -> Result<(), ClientError> {
        self.delete(token, &format!("/friends/{user}"))
            .await
            .map(|_| ())
    }

    /// The per-pair key shared with a friend.
    pub async fn friend_key(&self, token: &str, user: i64) -> Result<String, ClientError> {
        let v = self
            .get_json(token, &format!("/friends/{user}/key"))
            .await?;
        v["key"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| ClientError::Http(format!("no key in {v}")))
    }

    pub async fn block(&self, token: &str, user: i64) -> Result<(), ClientError> {
        self.call(
            self.http
                .put(self.url(&format!("/blocks/{user}")))
                .bearer_auth(token),
        )
        .await
        .map(|_| ())
    }

    pub async fn unblock(&self, token: &str, user: i64) -> Result<(), ClientError> {
        self.delete(token, &format!("/blocks/{user}"))
            .await
            .map(|_| ())
    }

    /// `{"blocked": [user ids]}`.
    pub async fn blocks(&self, token: &str) -> Result<Value, ClientError> {
        self.get_json(token, "/blocks").await
    }

    // ---- groups ----

    /// Creates a group (`policy`: open, invite or approval); returns its JSON.
    pub async fn create_group(
        &self,
        token: &str,
        name: &str,
        members: &[i64],
        policy: &str,
    ) -> Result<Value, ClientError> {
        self.post_json(
            token,
            "/groups",
            json!({"name": name, "members": members, "join_policy": policy}),
        )
        .await
    }

    /// Creates an open group and returns its id.
    pub async fn create_group_id(
        &self,
        token: &str,
        name: &str,
        members: &[i64],
    ) -> Result<i64, ClientError> {
        let v = self.create_group(token, name, members, "open").await?;
        field_i64(&v, "id")
    }

    /// `{"groups": [...]}`.
    pub async fn groups(&self, token: &str) -> Result<Value, ClientError> {
        self.get_json(token, "/groups").await
    }

    pub async fn group(&self, token: &str, group: i64) -> Result<Value, ClientError> {
        self.get_json(token, &format!("/groups/{group}")).await
    }

    pub async fn dismiss_group(&self, token: &str, group: i64) -> Result<(), ClientError> {
        self.delete(token, &format!("/groups/{group}"))
            .await
            .map(|_| ())
    }

    /// Joins; returns `joined` or `requested`.
    pub async fn join_group(
        &self,
        token: &str,
        group: i64,
        note: &str,
    ) -> Result<String, ClientError> {
        let v = self
            .post_json(
                token,
                &format!("/groups/{group}/join"),
                json!({"note": note}),
            )
            .await?;
        Ok(v["status"].as_str().unwrap_or("").to_string())
    }

    pub async fn quit_group(&self, token: &str, group: i64) -> Result<(), ClientError> {
        self.post_json(token, &format!("/groups/{group}/quit"), json!({}))
            .await
            .map(|_| ())
    }

    /// `{"members": [{"user_id", "username", "role", "muted_until_ms", "joined_at_ms"}]}`.
    pub async fn group_members(&self, token: &str, group: i64) -> Result<Value, ClientError> {
        self.get_json(token, &format!("/groups/{group}/members"))
            .await
    }

    /// Invites users; returns how many were added.
    pub async fn invite(&self, token: &str, group: i64, users: &[i64]) -> Result<i64, ClientError> {
        let v = self
            .post_json(
                token,
                &format!("/groups/{group}/members"),
                json!({"user_ids": users}),
            )
            .await?;
        field_i64(&v, "added")
    }

    pub async fn kick(&self, token: &str, group: i64, user: i64) -> Result<(), ClientError> {
        self.delete(token, &format!("/groups/{group}/members/{user}"))
            .await
            .map(|_| ())
    }

    /// `role`: admin or member.
    pub async fn set_role(
        &self,
        token: &str,
        group: i64,
        user: i64,
        role: &str,
    ) -> Result<(), ClientError> {
        self.put_json(
            token,
            &format!("/groups/{group}/members/{user}/role"),
            json!({"role": role}),
        )
        .await
        .map(|_| ())
    }

    /// Mutes a member for `secs` seconds (0 unmutes).
    pub async fn mute_member(
        &self,
        token: &str,
        group: i64,
        user: i64,
        secs: u64,
    ) -> Result<(), ClientError> {
        self.put_json(
            token,
            &format!("/groups/{group}/members/{user}/mute"),
            json!({"secs": secs}),
        )
        .await
        .map(|_| ())
    }

    pub async fn mute_all(&self, token: &str, group: i64, muted: bool) -> Result<(), ClientError> {
        self.put_json(
            token,
            &format!("/groups/{group}/mute"),
            json!({"muted": muted}),
        )
        .await
        .map(|_| ())
    }

    pub async fn transfer_group(
        &self,
        token: &str,
        group: i64,
        to: i64,
    ) -> Result<(), ClientError> {
        self.put_json(
            token,
            &format!("/groups/{group}/owner"),
            json!({"user_id": to}),
        )
        .await
        .map(|_| ())
    }

    pub async fn set_announcement(
        &self,
        token: &str,
        group: i64,
        text: &str,
    ) -> Result<(), ClientError> {
        self.put_json(
            token,
            &format!("/groups/{group}/announcement"),
            json!({"text": text}),
        )
        .await
        .map(|_| ())
    }

    /// `{"requests": [{"user_id", "username", "note", "created_at_ms"}]}`.
    pub async fn join_requests(&self, token: &str, group: i64) -> Result<Value, ClientError> {
        self.get_json(token, &format!("/groups/{group}/requests"))
            .await
    }

    pub async fn answer_join_request(
        &self,
        token: &str,
        group: i64,
        user: i64,
        approve: bool,
    ) -> Result<(), ClientError> {
        let verb = if approve { "approve" } else { "reject" };
        self.post_json(
            token,
            &format!("/groups/{group}/requests/{user}/{verb}"),
            json!({}),
        )
        .await
        .map(|_| ())
    }

    /// Sends text to a group: `{"msg_id", "seq", "sent_at_ms", "duplicate"}`.
    pub async fn send_group(
        &self,
        token: &str,
        group: i64,
        client_msg_id: &str,
        text: &str,
    ) -> Result<Value, ClientError> {
        self.post_json(
            token,
            &format!("/groups/{group}/messages"),
            json!({"client_msg_id": client_msg_id, "body": text}),
        )
        .await
    }

    /// One page of a read-diffusion group after `after_seq` (group sequence).
    pub async fn pull_group(
        &self,
        token: &str,
        group: i64,
        after_seq: u64,
        limit: u32,
    ) -> Result<Value, ClientError> {
        self.get_json(
            token,
            &format!("/groups/{group}/messages?after_seq={after_seq}&limit={limit}"),
        )
        .await
    }

    // ---- conversations, history, revoke ----

    /// `{"conversations": [{"id", "kind", "peer", "last", "unread", "read_msg_id"}]}`.
    pub async fn conversations(&self, token: &str) -> Result<Value, ClientError> {
        self.get_json(token, "/conversations").await
    }

    /// One history page, newest first: `{"messages": [...], "next_before"}`.
    pub async fn history(
        &self,
        token: &str,
        conversation: &str,
        before: Option<i64>,
        limit: u32,
    ) -> Result<Value, ClientError> {
        let mut path = format!("/conversations/{conversation}/messages?limit={limit}");
        if let Some(b) = before {
            path.push_str(&format!("&before={b}"));
        }
        self.get_json(token, &path).await
    }

    /// Marks a conversation read (up to a message, or everything); returns the position.
    pub async fn mark_read(
        &self,
        token: &str,
        conversation: &str,
        up_to_msg_id: Option<i64>,
    ) -> Result<i64, ClientError> {
        let v = self
            .post_json(
                token,
                &format!("/conversations/{conversation}/read"),
                json!({"up_to_msg_id": up_to_msg_id}),
            )
            .await?;
        field_i64(&v, "read_msg_id")
    }

    /// Revokes one of the caller's messages.
    pub async fn revoke(&self, token: &str, msg_id: i64) -> Result<(), ClientError> {
        self.post_json(token, &format!("/messages/{msg_id}/revoke"), json!({}))
            .await
            .map(|_| ())
    }
}
