//! Passwords (argon2) and bearer tokens (JWT, HS256) — pure functions, no storage.
use argon2::Argon2;
use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("token has expired")]
    Expired,
    #[error("token is invalid")]
    Invalid,
    #[error("failed to hash password")]
    Hash,
}

/// Hashes a password with a fresh random salt (slow on purpose: call off the async threads).
pub fn hash_password(password: &str) -> Result<String, AuthError> {
    Argon2::default()
        .hash_password(password.as_bytes())
        .map(|h| h.to_string())
        .map_err(|_| AuthError::Hash)
}

pub fn verify_password(password: &str, hash: &str) -> bool {
    PasswordHash::new(hash)
        .map(|parsed| {
            Argon2::default()
                .verify_password(password.as_bytes(), &parsed)
                .is_ok()
        })
        .unwrap_or(false)
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Claims {
    /// user id
    pub sub: i64,
    /// token id, for revocation
    pub jti: String,
    pub iat: u64,
    /// expiry, seconds since the epoch
    pub exp: u64,
}

/// Issues and verifies tokens with one shared secret.
#[derive(Clone)]
pub struct TokenKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    ttl_secs: u64,
}

impl TokenKeys {
    pub fn new(secret: &[u8], ttl_secs: u64) -> Self {
        TokenKeys {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            ttl_secs,
        }
    }

    pub fn issue(&self, user_id: i64, now_secs: u64) -> Result<(String, Claims), AuthError> {
        let mut jti = [0u8; 16];
        rand::fill(&mut jti);
        let claims = Claims {
            sub: user_id,
            jti: jti.iter().map(|b| format!("{b:02x}")).collect(),
            iat: now_secs,
            exp: now_secs + self.ttl_secs,
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|_| AuthError::Invalid)?;
        Ok((token, claims))
    }

    pub fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 0;
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &validation)
            .map(|d| d.claims)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => AuthError::Expired,
                _ => AuthError::Invalid,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> u64 {
        im_proto::now_ms() / 1000
    }

    #[test]
    fn sign_and_verify_round_trip() {
        let keys = TokenKeys::new(b"secret", 60);
        let (token, claims) = keys.issue(42, now()).unwrap();
        assert_eq!(keys.verify(&token).unwrap(), claims);
        assert_eq!(claims.sub, 42);
    }

    #[test]
    fn expired_and_forged_tokens_are_refused() {
        let keys = TokenKeys::new(b"secret", 1);
        let (token, _) = keys.issue(1, now() - 100).unwrap();
        assert_eq!(keys.verify(&token), Err(AuthError::Expired));
        let other = TokenKeys::new(b"other", 60);
        let (forged, _) = other.issue(1, now()).unwrap();
        assert_eq!(keys.verify(&forged), Err(AuthError::Invalid));
        assert_eq!(keys.verify("not a token"), Err(AuthError::Invalid));
    }

    #[test]
    fn password_hash_verifies_only_the_password() {
        let h = hash_password("hunter22").unwrap();
        assert!(h.starts_with("$argon2"));
        assert!(verify_password("hunter22", &h));
        assert!(!verify_password("hunter23", &h));
        assert!(!verify_password("hunter22", "garbage"));
    }
}
