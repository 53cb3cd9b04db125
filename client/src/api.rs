//! The REST API from the client side: accounts, tokens, user lookup, send, pull.
use serde::Deserialize;
use serde_json::{Value, json};

use crate::conn::ClientError;

/// REST client for `/api/v1`.
#[derive(Clone)]
pub struct Api {
    pub(crate) base: String,
    pub(crate) http: reqwest::Client,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Login {
    pub token: String,
    pub user_id: i64,
    pub expires_at: u64,
}

impl Api {
    /// `base` like `http://127.0.0.1:8080`.
    pub fn new(base: &str) -> Result<Api, ClientError> {
        // reqwest is built without a default TLS provider; install ring once.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(30))
            .build()
            .map_err(|e| ClientError::Http(e.to_string()))?;
        Ok(Api {
            base: base.trim_end_matches('/').to_string(),
            http,
        })
    }

    pub(crate) async fn call(&self, req: reqwest::RequestBuilder) -> Result<Value, ClientError> {
        let resp = req
            .send()
            .await
            .map_err(|e| ClientError::Http(e.to_string()))?;
        let status = resp.status();
        let text = resp
            .text()
            .await
            .map_err(|e| ClientError::Http(e.to_string()))?;
        let body: Value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        if status.is_success() {
            Ok(body)
        } else {
            Err(ClientError::Http(format!(
                "{} {}: {}",
                status.as_u16(),
                body["code"].as_str().unwrap_or(""),
                body["message"].as_str().unwrap_or("")
            )))
        }
    }

    pub async fn register(&self, username: &str, password: &str) -> Result<i64, ClientError> {
        let v = self
            .call(
                self.http
                    .post(format!("{}/api/v1/register", self.base))
                    .json(&json!({"username": username, "password": password})),
            )
            .await?;
        v["user_id"]
            .as_i64()
            .ok_or_else(|| ClientError::Http("register: no user_id".into()))
    }

    pub async fn login(&self, username: &str, password: &str) -> Result<Login, ClientError> {
        let v = self
            .call(
                self.http
                    .post(format!("{}/api/v1/login", self.base))
                    .json(&json!({"username": username, "password": password})),
            )
            .await?;
        serde_json::from_value(v).map_err(|e| ClientError::Http(e.to_string()))
    }

    pub async fn logout(&self, token: &str) -> Result<(), ClientError> {
        self.call(
            self.http
                .post(format!("{}/api/v1/logout", self.base))
                .bearer_auth(token),
        )
        .await
        .map(|_| ())
    }

    pub async fn user_id(&self, token: &str, username: &str) -> Result<i64, ClientError> {
        let v = self
            .call(
                self.http
                    .get(format!("{}/api/v1/users/{}", self.base, username))
                    .bearer_auth(token),
            )
            .await?;
        v["user_id"]
            .as_i64()
            .ok_or_else(|| ClientError::Http("no user_id".into()))
    }

    pub async fn username(&self, token: &str, user_id: i64) -> Result<String, ClientError> {
        let v = self
            .call(
                self.http
                    .get(format!("{}/api/v1/users", self.base))
                    .query(&[("id", user_id.to_string())])
                    .bearer_auth(token),
            )
            .await?;
        v["username"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| ClientError::Http("no username".into()))
    }

    /// One page of the inbox after `after_seq`, as JSON.
    pub async fn pull(
        &self,
        token: &str,
        after_seq: u64,
        limit: u32,
    ) -> Result<Value, ClientError> {
        self.call(
            self.http
                .get(format!("{}/api/v1/messages", self.base))
                .query(&[
                    ("after_seq", after_seq.to_string()),
                    ("limit", limit.to_string()),
                ])
                .bearer_auth(token),
        )
        .await
    }

    pub async fn send(
        &self,
        token: &str,
        to: i64,
        client_msg_id: &str,
        text: &str,
    ) -> Result<Value, ClientError> {
        self.call(
            self.http
                .post(format!("{}/api/v1/messages", self.base))
                .bearer_auth(token)
                .json(&json!({"to": to, "client_msg_id": client_msg_id, "body": text})),
        )
        .await
    }
}
