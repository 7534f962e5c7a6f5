//! API keys from a header, query parameter or cookie, checked against hashed keys in the
//! config file and, optionally, in Redis (so keys can be added or revoked without a reload).
//!
//! Keys are never stored or compared in clear. A `sha256:` key is found by looking up the
//! SHA-256 digest of the presented key, so timing reveals nothing about stored keys. An
//! `$argon2…` key is checked with argon2's own verification, on a blocking thread; successful
//! verifications are cached by digest. In Redis, a key lives at `<prefix><sha256 hex>` as
//! JSON: `{"id": "...", "metadata": {...}, "scopes": [...]}`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use argon2::{Argon2, PasswordHash, PasswordVerifier};
use gatehouse_common::redis::RedisConn;
use moka::sync::Cache;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::source::{Source, first_credential};
use super::{Identity, Kind, Outcome, Rejection};
use crate::Error;
use crate::request::AuthRequest;
use crate::stats::Dependencies;

/// A key's identity and what it grants.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KeyInfo {
    pub id: String,
    #[serde(default)]
    pub metadata: Map<String, Value>,
    #[serde(default)]
    pub scopes: Vec<String>,
}

pub type Digest = [u8; 32];

pub fn sha256(data: &[u8]) -> Digest {
    let d = ring::digest::digest(&ring::digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Parses `sha256:<64 hex digits>`.
pub fn parse_sha256(text: &str) -> Option<Digest> {
    let hex = text.strip_prefix("sha256:")?;
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// Where Redis keys live, and how long a lookup is trusted.
pub struct RedisKeys {
    pub conn: RedisConn,
    pub prefix: String,
    /// Found and not-found answers are cached this long: an added or revoked key takes
    /// effect within it.
    pub cache: Cache<Digest, Option<Arc<KeyInfo>>>,
    deps: Dependencies,
}

impl RedisKeys {
    pub fn new(conn: RedisConn, prefix: String, ttl: Duration, deps: Dependencies) -> RedisKeys {
        RedisKeys { conn, prefix, cache: Cache::builder().max_capacity(100_000).time_to_live(ttl).build(), deps }
    }

    async fn lookup(&self, digest: &Digest) -> Result<Option<Arc<KeyInfo>>, Error> {
        let cached = self.cache.get(digest);
        self.deps.cache("api_key", cached.is_some());
        if let Some(hit) = cached {
            return Ok(hit);
        }
        let key = format!("{}{}", self.prefix, hex(digest));
        let mut conn = self.conn.op("api_key");
        let raw: Option<String> = redis::cmd("GET")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .map_err(|e| Error::Unavailable(format!("API key store (Redis): {e}")))?;
        let info = match raw {
            None => None,
            Some(json) => match serde_json::from_str::<KeyInfo>(&json) {
                Ok(info) => Some(Arc::new(info)),
                Err(e) => {
                    // The hash prefix is safe to log: it does not reveal the key.
                    tracing::warn!(key = %&key[..key.len().min(self.prefix.len() + 8)], error = %e, "malformed API key record in Redis; treated as absent");
                    None
                }
            },
        };
        self.cache.insert(*digest, info.clone());
        Ok(info)
    }
}

pub struct ApiKeys {
    pub sources: Vec<Source>,
    /// sha256 keys by digest.
    pub by_digest: HashMap<Digest, Arc<KeyInfo>>,
    /// argon2 keys: PHC strings and their info.
    pub argon2: Vec<(String, Arc<KeyInfo>)>,
    /// Digests of presented keys that verified against an argon2 entry.
    pub argon2_verified: Cache<Digest, Arc<KeyInfo>>,
    pub redis: Option<RedisKeys>,
}

impl ApiKeys {
    pub async fn authenticate(&self, name: &Arc<str>, request: &AuthRequest) -> Result<Outcome, Error> {
        let Some(presented) = first_credential(&self.sources, request) else {
            return Ok(Outcome::Missing);
        };
        let digest = sha256(presented.as_bytes());
        let info = match self.find(&digest, presented).await? {
            Some(info) => info,
            None => return Ok(Outcome::Rejected(Rejection::new("invalid API key"))),
        };
        let mut identity = Identity::new(name, Kind::ApiKey, info.id.clone());
        identity.metadata = info.metadata.clone();
        identity.scopes = info.scopes.clone();
        Ok(Outcome::Authenticated(identity))
    }

    async fn find(&self, digest: &Digest, presented: String) -> Result<Option<Arc<KeyInfo>>, Error> {
        if let Some(info) = self.by_digest.get(digest) {
            return Ok(Some(info.clone()));
        }
        if let Some(info) = self.argon2_verified.get(digest) {
            return Ok(Some(info));
        }
        if !self.argon2.is_empty() {
            let entries = self.argon2.clone();
            let found = tokio::task::spawn_blocking(move || {
                entries.into_iter().find(|(phc, _)| verify_argon2(phc, presented.as_bytes())).map(|(_, info)| info)
            })
            .await
            .map_err(|e| Error::Internal(format!("argon2 verification: {e}")))?;
            if let Some(info) = found {
                self.argon2_verified.insert(*digest, info.clone());
                return Ok(Some(info));
            }
        }
        match &self.redis {
            Some(redis) => redis.lookup(digest).await,
            None => Ok(None),
        }
    }
}

/// Verifies `secret` against an argon2 PHC string; false for a malformed string.
pub fn verify_argon2(phc: &str, secret: &[u8]) -> bool {
    PasswordHash::new(phc).is_ok_and(|hash| Argon2::default().verify_password(secret, &hash).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::source::SourceSpec;

    fn keys(entries: &[(&str, &str)]) -> ApiKeys {
        let mut by_digest = HashMap::new();
        let mut argon2 = Vec::new();
        for (hash, id) in entries {
            let info = Arc::new(KeyInfo { id: id.to_string(), ..Default::default() });
            match parse_sha256(hash) {
                Some(d) => {
                    by_digest.insert(d, info);
                }
                None => argon2.push((hash.to_string(), info)),
            }
        }
        ApiKeys {
            sources: vec![SourceSpec::header("x-api-key", None).build().unwrap()],
            by_digest,
            argon2,
            argon2_verified: Cache::new(10),
            redis: None,
        }
    }

    async fn run(keys: &ApiKeys, presented: Option<&str>) -> Outcome {
        let mut r = AuthRequest::default();
        if let Some(k) = presented {
            r.headers.insert("x-api-key".into(), k.into());
        }
        keys.authenticate(&Arc::from("keys"), &r).await.unwrap()
    }

    #[tokio::test]
    async fn sha256_and_argon2_keys() {
        let sha = format!("sha256:{}", hex(&sha256(b"secret-one")));
        // argon2id of "secret-two", made with `gatehouse-extauth hash-key --argon2`.
        let phc = crate::hash_key_argon2("secret-two").unwrap();
        let k = keys(&[(&sha, "one"), (&phc, "two")]);
        assert!(matches!(run(&k, Some("secret-one")).await, Outcome::Authenticated(i) if i.subject == "one"));
        assert!(matches!(run(&k, Some("secret-two")).await, Outcome::Authenticated(i) if i.subject == "two"));
        assert_eq!(run(&k, Some("secret-three")).await, Outcome::Rejected(Rejection::new("invalid API key")));
        assert_eq!(run(&k, None).await, Outcome::Missing);
    }

    #[test]
    fn sha256_format() {
        assert!(parse_sha256("sha256:abc").is_none());
        assert!(parse_sha256(&format!("sha256:{}", "zz".repeat(32))).is_none());
        let d = sha256(b"x");
        assert_eq!(parse_sha256(&format!("sha256:{}", hex(&d))), Some(d));
    }
}
