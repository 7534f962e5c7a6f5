//! Login sessions in Redis.
//!
//! The session cookie carries a random 128-bit id and a random 256-bit key, and nothing else.
//! Redis holds the session (tokens and claims) sealed under that key, at a name derived from
//! the id by SHA-256. So neither a Redis dump (no keys, no ids) nor a Redis key name (a hash)
//! can be turned back into a working cookie, and a cookie is useless once its record is gone.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use gatehouse_common::redis::RedisConn;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::sealed::{SealKey, random};
use crate::Error;
use crate::identity::api_key::hex;
use crate::identity::jwt::now_secs;

/// What the session cookie holds.
#[derive(Clone, PartialEq, Eq)]
pub struct SessionHandle {
    id: [u8; 16],
    key: [u8; 32],
}

impl std::fmt::Debug for SessionHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The storage id only: the id and key are credentials.
        write!(f, "SessionHandle({})", &self.storage_id()[..12])
    }
}

impl SessionHandle {
    /// A new session: never reuses an id the browser brought (no fixation).
    pub fn generate() -> SessionHandle {
        SessionHandle { id: random(), key: random() }
    }

    pub fn encode(&self) -> String {
        let mut bytes = [0u8; 48];
        bytes[..16].copy_from_slice(&self.id);
        bytes[16..].copy_from_slice(&self.key);
        URL_SAFE_NO_PAD.encode(bytes)
    }

    pub fn decode(cookie: &str) -> Option<SessionHandle> {
        let bytes = URL_SAFE_NO_PAD.decode(cookie).ok()?;
        let bytes: [u8; 48] = bytes.try_into().ok()?;
        Some(SessionHandle { id: bytes[..16].try_into().ok()?, key: bytes[16..].try_into().ok()? })
    }

    /// The name the session is stored under: SHA-256 of the id, hex.
    pub fn storage_id(&self) -> String {
        hex(ring::digest::digest(&ring::digest::SHA256, &self.id).as_ref())
    }

    fn seal_key(&self) -> SealKey {
        SealKey::new(&self.key)
    }
}

/// A logged-in browser.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Session {
    pub sub: String,
    /// The IdP's session id (`sid` in the ID token), for back-channel logout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sid: Option<String>,
    /// The verified ID token's claims: the identity rules and headers see.
    pub claims: Map<String, Value>,
    pub id_token: String,
    pub access_token: String,
    /// Unix seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_expires_at: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
    /// Unix seconds: the absolute timeout counts from here.
    pub created_at: u64,
}

/// Session lifetimes.
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    /// Without a request for this long, the session ends.
    pub idle: Duration,
    /// However active, the session ends this long after login.
    pub absolute: Duration,
}

impl Timeouts {
    /// How long Redis should keep a session written now: the idle timeout, cut short by the
    /// absolute one. `None` once the absolute timeout has passed.
    pub fn ttl(&self, session: &Session, now: u64) -> Option<Duration> {
        let age = Duration::from_secs(now.saturating_sub(session.created_at));
        let left = self.absolute.checked_sub(age).filter(|d| !d.is_zero())?;
        Some(left.min(self.idle))
    }
}

/// Sessions in Redis (single, Sentinel or Cluster through `common::redis`).
pub struct RedisSessions {
    pub conn: RedisConn,
    /// Key prefix, `gatehouse:session:` by default.
    pub prefix: String,
    pub timeouts: Timeouts,
}

impl RedisSessions {
    fn key(&self, handle: &SessionHandle) -> String {
        format!("{}{}", self.prefix, handle.storage_id())
    }

    /// The session behind a cookie, or `None` when it has ended, expired, or the cookie does
    /// not open it. `Err` only when Redis cannot answer.
    pub async fn load(&self, handle: &SessionHandle) -> Result<Option<Session>, Error> {
        let key = self.key(handle);
        let mut conn = self.conn.clone();
        let sealed: Option<String> = redis::cmd("GET")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .map_err(|e| Error::Unavailable(format!("session store (Redis): {e}")))?;
        let Some(sealed) = sealed else { return Ok(None) };
        let Some(plain) = handle.seal_key().open(&handle.storage_id(), &sealed) else {
            return Ok(None);
        };
        let session: Session = match serde_json::from_slice(&plain) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(session = ?handle, error = %e, "unreadable session record; treated as ended");
                return Ok(None);
            }
        };
        if self.timeouts.ttl(&session, now_secs()).is_none() {
            return Ok(None);
        }
        Ok(Some(session))
    }

    /// Writes the session, (re)starting its idle timeout.
    pub async fn save(&self, handle: &SessionHandle, session: &Session) -> Result<(), Error> {
        let Some(ttl) = self.timeouts.ttl(session, now_secs()) else {
            return self.delete(handle).await;
        };
        let plain = serde_json::to_vec(session).map_err(|e| Error::Internal(format!("session: {e}")))?;
        let sealed = handle.seal_key().seal(&handle.storage_id(), &plain);
        let mut conn = self.conn.clone();
        redis::cmd("SET")
            .arg(self.key(handle))
            .arg(sealed)
            .arg("PX")
            .arg(ttl.as_millis().max(1) as u64)
            .query_async::<()>(&mut conn)
            .await
            .map_err(|e| Error::Unavailable(format!("session store (Redis): {e}")))
    }

    /// Takes the session's refresh lock for `ttl` across replicas; `None` if another holder
    /// has it. The returned token releases it ([`RedisSessions::unlock`]).
    pub async fn try_lock(&self, handle: &SessionHandle, ttl: Duration) -> Result<Option<String>, Error> {
        let token = super::sealed::random_token::<12>();
        let mut conn = self.conn.clone();
        let set: Option<String> = redis::cmd("SET")
            .arg(format!("{}lock:{}", self.prefix, handle.storage_id()))
            .arg(&token)
            .arg("NX")
            .arg("PX")
            .arg(ttl.as_millis() as u64)
            .query_async(&mut conn)
            .await
            .map_err(|e| Error::Unavailable(format!("session store (Redis): {e}")))?;
        Ok(set.map(|_| token))
    }

    /// Releases the lock if this holder still has it (it may have expired and been taken).
    pub async fn unlock(&self, handle: &SessionHandle, token: &str) {
        const RELEASE: &str =
            "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0";
        let mut conn = self.conn.clone();
        let result: redis::RedisResult<i64> = redis::Script::new(RELEASE)
            .key(format!("{}lock:{}", self.prefix, handle.storage_id()))
            .arg(token)
            .invoke_async(&mut conn)
            .await;
        if let Err(e) = result {
            // The lock expires on its own.
            tracing::debug!(error = %e, "releasing a session refresh lock");
        }
    }

    /// Records a new session under its IdP session id and subject, for back-channel logout.
    pub async fn index(&self, handle: &SessionHandle, issuer: &str, session: &Session) -> Result<(), Error> {
        let ttl = self.timeouts.absolute.as_secs().max(1);
        let mut pipe = redis::pipe();
        for index in self.index_keys(issuer, session.sid.as_deref(), Some(&session.sub)) {
            pipe.cmd("SADD").arg(&index).arg(handle.storage_id()).ignore();
            pipe.cmd("EXPIRE").arg(&index).arg(ttl).ignore();
        }
        let mut conn = self.conn.clone();
        pipe.query_async::<()>(&mut conn).await.map_err(|e| Error::Unavailable(format!("session store (Redis): {e}")))
    }

    /// Index keys: one per IdP session (`sid`) and one per user (`sub`), each within the issuer.
    fn index_keys(&self, issuer: &str, sid: Option<&str>, sub: Option<&str>) -> Vec<String> {
        let hash = |kind: &str, value: &str| {
            let digest = ring::digest::digest(&ring::digest::SHA256, format!("{issuer}\n{kind}\n{value}").as_bytes());
            format!("{}{kind}:{}", self.prefix, hex(digest.as_ref()))
        };
        let mut keys = Vec::new();
        if let Some(sid) = sid {
            keys.push(hash("sid", sid));
        }
        if let Some(sub) = sub {
            keys.push(hash("sub", sub));
        }
        keys
    }

    /// Ends every session of an IdP session (`sid`), or else of a user (`sub`), on every
    /// replica at once (they all read Redis). Returns how many sessions were ended.
    pub async fn end_all(&self, issuer: &str, sid: Option<&str>, sub: Option<&str>) -> Result<usize, Error> {
        let unavailable = |e: redis::RedisError| Error::Unavailable(format!("session store (Redis): {e}"));
        // sid is the narrower: with both, only that IdP session ends (the spec's choice).
        let keys = match sid {
            Some(sid) => self.index_keys(issuer, Some(sid), None),
            None => self.index_keys(issuer, None, sub),
        };
        let mut conn = self.conn.clone();
        let mut ended = 0;
        for index in keys {
            let members: Vec<String> =
                redis::cmd("SMEMBERS").arg(&index).query_async(&mut conn).await.map_err(unavailable)?;
            for id in &members {
                let n: usize = redis::cmd("DEL")
                    .arg(format!("{}{id}", self.prefix))
                    .query_async(&mut conn)
                    .await
                    .map_err(unavailable)?;
                ended += n;
            }
            redis::cmd("DEL").arg(&index).query_async::<()>(&mut conn).await.map_err(unavailable)?;
        }
        Ok(ended)
    }

    /// `true` the first time a logout token's `jti` is seen (kept until `until`, unix
    /// seconds); `false` for a replay.
    pub async fn first_use(&self, jti: &str, until: u64) -> Result<bool, Error> {
        let digest = ring::digest::digest(&ring::digest::SHA256, jti.as_bytes());
        let ttl = until.saturating_sub(now_secs()).max(60);
        let mut conn = self.conn.clone();
        let set: Option<String> = redis::cmd("SET")
            .arg(format!("{}jti:{}", self.prefix, hex(digest.as_ref())))
            .arg(1)
            .arg("NX")
            .arg("EX")
            .arg(ttl)
            .query_async(&mut conn)
            .await
            .map_err(|e| Error::Unavailable(format!("session store (Redis): {e}")))?;
        Ok(set.is_some())
    }

    pub async fn delete(&self, handle: &SessionHandle) -> Result<(), Error> {
        let mut conn = self.conn.clone();
        redis::cmd("DEL")
            .arg(self.key(handle))
            .query_async::<()>(&mut conn)
            .await
            .map_err(|e| Error::Unavailable(format!("session store (Redis): {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_round_trip_and_hide_their_secrets() {
        let h = SessionHandle::generate();
        let encoded = h.encode();
        assert_eq!(encoded.len(), 64);
        assert_eq!(SessionHandle::decode(&encoded), Some(h.clone()));
        assert_ne!(SessionHandle::generate(), h);
        for bad in ["", "short", &encoded[..63], &format!("{encoded}A"), "!!!!"] {
            assert_eq!(SessionHandle::decode(bad), None, "{bad:?}");
        }
        // The storage id is a hash: it reveals neither id nor key.
        let stored = h.storage_id();
        assert_eq!(stored.len(), 64);
        assert!(!encoded.contains(&stored[..16]));
        assert!(!format!("{h:?}").contains(&encoded[..8]));
    }

    #[test]
    fn ttl_is_the_idle_timeout_cut_by_the_absolute_one() {
        let t = Timeouts { idle: Duration::from_secs(600), absolute: Duration::from_secs(3600) };
        let s = |created_at| Session {
            sub: "u".into(),
            sid: None,
            claims: Map::new(),
            id_token: String::new(),
            access_token: String::new(),
            access_expires_at: None,
            refresh_token: None,
            created_at,
        };
        assert_eq!(t.ttl(&s(1000), 1000), Some(Duration::from_secs(600)));
        assert_eq!(t.ttl(&s(1000), 1000 + 3300), Some(Duration::from_secs(300)));
        assert_eq!(t.ttl(&s(1000), 1000 + 3600), None);
        assert_eq!(t.ttl(&s(1000), 1000 + 9999), None);
    }
}
