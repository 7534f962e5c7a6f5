//! Login sessions in Redis.
//!
//! The session cookie carries a random 128-bit id and a random 256-bit key, and nothing else.
//! Redis holds the session (tokens and claims) sealed under that key, at a name derived from
//! the id by SHA-256. So neither a Redis dump (no keys, no ids) nor a Redis key name (a hash)
//! can be turned back into a working cookie, and a cookie is useless once its record is gone.

use crate::stats::Dependencies;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use gatehouse_common::redis::RedisConn;
use moka::sync::Cache;
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
    /// Empty in the cookie store, which keeps cookies small.
    #[serde(default, skip_serializing_if = "String::is_empty")]
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

/// Sessions in Redis (single, Sentinel or Cluster through `common::redis`), cached in process
/// for a short time.
///
/// The cache is kept honest across replicas by a log of ended sessions: a Redis stream
/// (`<prefix>ended`) that every replica appends to when it ends or changes a session (logout,
/// back-channel logout, a refused refresh, a refresh) and reads at most every
/// [`LOG_INTERVAL`] before serving from its cache. A cached session is therefore never used
/// more than that long after another replica ended it, and if the log cannot be read the
/// cache is dropped and Redis decides. A stream rather than pub/sub: nothing is lost while a
/// replica is disconnected, and it works the same on Cluster.
pub struct RedisSessions {
    conn: RedisConn,
    /// Key prefix, `gatehouse:session:` by default.
    prefix: String,
    pub timeouts: Timeouts,
    cache: Option<Cache<String, Arc<Cached>>>,
    /// Sessions this replica knows ended recently: never cached again.
    ended: Cache<String, ()>,
    log: tokio::sync::Mutex<LogCursor>,
    /// When the log was last read, in ms since `epoch` (0: never, or the cache was dropped).
    log_read_at: AtomicU64,
    epoch: Instant,
    /// Counts the session cache's lookups.
    deps: Dependencies,
}

/// A cached session, with the key its cookie must carry.
struct Cached {
    key: [u8; 32],
    session: Session,
    /// When Redis last restarted the session's idle timeout (ms since `epoch`).
    touched_ms: AtomicU64,
}

/// A cached session in use restarts its idle timeout in Redis at most this often.
const TOUCH_EVERY: Duration = Duration::from_secs(1);

#[derive(Default)]
struct LogCursor {
    /// The last entry read; `None` before the first read.
    last_id: Option<String>,
}

/// How stale the ended-sessions log may be before a cached session is served.
pub const LOG_INTERVAL: Duration = Duration::from_millis(100);

/// Ended-session entries are kept this long; a replica that has not read the log for longer
/// drops its whole cache. Sessions are cached for less (the config caps `cache_ttl`).
const LOG_RETENTION: Duration = Duration::from_secs(60);

fn unavailable(e: redis::RedisError) -> Error {
    Error::Unavailable(format!("session store (Redis): {e}"))
}

impl RedisSessions {
    /// `cache_ttl` zero: no in-process cache; every check reads Redis.
    pub fn new(
        conn: RedisConn,
        prefix: String,
        timeouts: Timeouts,
        cache_ttl: Duration,
        deps: Dependencies,
    ) -> RedisSessions {
        let cache = (!cache_ttl.is_zero())
            .then(|| Cache::builder().max_capacity(100_000).time_to_live(cache_ttl.min(LOG_RETENTION / 2)).build());
        RedisSessions {
            conn,
            prefix,
            timeouts,
            cache,
            ended: Cache::builder().max_capacity(100_000).time_to_live(LOG_RETENTION).build(),
            log: tokio::sync::Mutex::new(LogCursor::default()),
            log_read_at: AtomicU64::new(0),
            epoch: Instant::now(),
            deps,
        }
    }

    fn key(&self, handle: &SessionHandle) -> String {
        format!("{}{}", self.prefix, handle.storage_id())
    }

    fn log_key(&self) -> String {
        format!("{}ended", self.prefix)
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64 + 1
    }

    /// The session behind a cookie, or `None` when it has ended, expired, or the cookie does
    /// not open it. `Err` only when Redis cannot answer. From the cache when the log of ended
    /// sessions is fresh; otherwise from Redis, which also restarts the idle timeout.
    pub async fn load(&self, handle: &SessionHandle) -> Result<Option<Session>, Error> {
        let id = handle.storage_id();
        if let Some(cache) = &self.cache
            && self.log_is_fresh().await
            && let Some(hit) = cache.get(&id)
            && constant_time_eq(&hit.key, &handle.key)
            && let Some(session) = self.in_use(handle, &hit)
        {
            self.deps.cache("session", true);
            return Ok(Some(session));
        }
        if self.cache.is_some() {
            self.deps.cache("session", false);
        }
        let Some(session) = self.load_stored(handle).await? else { return Ok(None) };
        if let Some(cache) = &self.cache
            && !self.ended.contains_key(&id)
        {
            let touched_ms = AtomicU64::new(self.now_ms());
            cache.insert(id, Arc::new(Cached { key: handle.key, session: session.clone(), touched_ms }));
        }
        Ok(Some(session))
    }

    /// A cached session this request uses: its idle timeout restarts in Redis (in the
    /// background, at most every [`TOUCH_EVERY`]), as a read from Redis would. `None` when it
    /// may have idled out in Redis meanwhile, or passed its absolute timeout: Redis decides.
    fn in_use(&self, handle: &SessionHandle, hit: &Cached) -> Option<Session> {
        let now = self.now_ms();
        let touched = hit.touched_ms.load(Ordering::Acquire);
        if now.saturating_sub(touched) >= self.timeouts.idle.as_millis() as u64 {
            return None;
        }
        let ttl = self.timeouts.ttl(&hit.session, now_secs())?;
        if now.saturating_sub(touched) >= TOUCH_EVERY.as_millis() as u64
            && hit.touched_ms.compare_exchange(touched, now, Ordering::AcqRel, Ordering::Acquire).is_ok()
        {
            let (key, mut conn) = (self.key(handle), self.conn.op("session_load"));
            tokio::spawn(async move {
                let touched: redis::RedisResult<()> =
                    redis::cmd("PEXPIRE").arg(key).arg(ttl.as_millis().max(1) as u64).query_async(&mut conn).await;
                if let Err(e) = touched {
                    tracing::debug!(error = %e, "restarting a session's idle timeout");
                }
            });
        }
        Some(hit.session.clone())
    }

    /// The session as Redis has it now, bypassing the cache (the refresh path's re-checks).
    pub async fn load_stored(&self, handle: &SessionHandle) -> Result<Option<Session>, Error> {
        let key = self.key(handle);
        let mut conn = self.conn.op("session_load");
        let sealed: Option<String> = redis::cmd("GET").arg(&key).query_async(&mut conn).await.map_err(unavailable)?;
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
        let Some(ttl) = self.timeouts.ttl(&session, now_secs()) else { return Ok(None) };
        // A request restarts the idle timeout.
        let _: redis::RedisResult<()> =
            redis::cmd("PEXPIRE").arg(&key).arg(ttl.as_millis().max(1) as u64).query_async(&mut conn).await;
        Ok(Some(session))
    }

    /// Reads the log of ended sessions if it is older than [`LOG_INTERVAL`], dropping what it
    /// names from the cache. `false` when it cannot be read: the cache must not be trusted.
    async fn log_is_fresh(&self) -> bool {
        let fresh = |read_at: u64| read_at != 0 && self.now_ms() - read_at < LOG_INTERVAL.as_millis() as u64;
        if fresh(self.log_read_at.load(Ordering::Acquire)) {
            return true;
        }
        let mut cursor = self.log.lock().await;
        let read_at = self.log_read_at.load(Ordering::Acquire);
        if fresh(read_at) {
            return true;
        }
        let started = self.now_ms();
        // Behind by more than the log keeps (or never read): start over from its end.
        if read_at == 0 || started - read_at >= LOG_RETENTION.as_millis() as u64 {
            cursor.last_id = None;
        }
        match self.read_log(&mut cursor).await {
            Ok(()) => {
                self.log_read_at.store(started, Ordering::Release);
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the log of ended sessions; session cache dropped");
                if let Some(cache) = &self.cache {
                    cache.invalidate_all();
                }
                self.log_read_at.store(0, Ordering::Release);
                false
            }
        }
    }

    async fn read_log(&self, cursor: &mut LogCursor) -> Result<(), Error> {
        let mut conn = self.conn.op("session_events");
        let Some(last) = cursor.last_id.clone() else {
            // A fresh start: nothing cached can predate it.
            if let Some(cache) = &self.cache {
                cache.invalidate_all();
            }
            let tail: Vec<(String, Vec<String>)> = redis::cmd("XREVRANGE")
                .arg(self.log_key())
                .arg("+")
                .arg("-")
                .arg("COUNT")
                .arg(1)
                .query_async(&mut conn)
                .await
                .map_err(unavailable)?;
            cursor.last_id = Some(tail.into_iter().next().map_or_else(|| "0-0".to_string(), |(id, _)| id));
            return Ok(());
        };
        let mut last = last;
        loop {
            const PAGE: usize = 1000;
            let entries: Vec<(String, Vec<String>)> = redis::cmd("XRANGE")
                .arg(self.log_key())
                .arg(format!("({last}"))
                .arg("+")
                .arg("COUNT")
                .arg(PAGE)
                .query_async(&mut conn)
                .await
                .map_err(unavailable)?;
            let full = entries.len() == PAGE;
            for (entry, fields) in entries {
                for pair in fields.chunks(2) {
                    match pair {
                        [kind, id] if kind == "ended" => self.forget(id),
                        [kind, id] if kind == "changed" => self.drop_cached(id),
                        _ => {}
                    }
                }
                last = entry;
            }
            cursor.last_id = Some(last.clone());
            if !full {
                return Ok(());
            }
        }
    }

    /// Drops a session from this replica's cache for good.
    fn forget(&self, id: &str) {
        self.ended.insert(id.to_string(), ());
        self.drop_cached(id);
    }

    fn drop_cached(&self, id: &str) {
        if let Some(cache) = &self.cache {
            cache.invalidate(id);
        }
    }

    /// Tells every replica (and this one) that these sessions ended (`"ended"`) or changed
    /// (`"changed"`: a refresh).
    async fn announce(&self, kind: &'static str, ids: &[String]) -> Result<(), Error> {
        if ids.is_empty() {
            return Ok(());
        }
        for id in ids {
            match kind {
                "ended" => self.forget(id),
                _ => self.drop_cached(id),
            }
        }
        // Stream ids are Redis's clock in ms: trim what is older than the retention.
        let mut conn = self.conn.op("session_events");
        let now_ms: (u64, u64) = redis::cmd("TIME").query_async(&mut conn).await.map_err(unavailable)?;
        let min_id = (now_ms.0 * 1000 + now_ms.1 / 1000).saturating_sub(LOG_RETENTION.as_millis() as u64);
        let mut pipe = redis::pipe();
        for id in ids {
            pipe.cmd("XADD").arg(self.log_key()).arg("MINID").arg("~").arg(min_id).arg("*").arg(kind).arg(id).ignore();
        }
        pipe.cmd("PEXPIRE").arg(self.log_key()).arg(LOG_RETENTION.as_millis() as u64 * 2).ignore();
        pipe.query_async::<()>(&mut conn).await.map_err(unavailable)
    }

    /// Writes the session, (re)starting its idle timeout.
    pub async fn save(&self, handle: &SessionHandle, session: &Session) -> Result<(), Error> {
        let Some(ttl) = self.timeouts.ttl(session, now_secs()) else {
            return self.delete(handle).await;
        };
        let plain = serde_json::to_vec(session).map_err(|e| Error::Internal(format!("session: {e}")))?;
        let sealed = handle.seal_key().seal(&handle.storage_id(), &plain);
        let mut conn = self.conn.op("session_save");
        redis::cmd("SET")
            .arg(self.key(handle))
            .arg(sealed)
            .arg("PX")
            .arg(ttl.as_millis().max(1) as u64)
            .query_async::<()>(&mut conn)
            .await
            .map_err(unavailable)
    }

    /// Saves a refreshed session, and tells the other replicas to drop their cached copy.
    pub async fn save_refreshed(&self, handle: &SessionHandle, session: &Session) -> Result<(), Error> {
        self.save(handle, session).await?;
        self.announce("changed", &[handle.storage_id()]).await
    }

    /// Takes the session's refresh lock for `ttl` across replicas; `None` if another holder
    /// has it. The returned token releases it ([`RedisSessions::unlock`]).
    pub async fn try_lock(&self, handle: &SessionHandle, ttl: Duration) -> Result<Option<String>, Error> {
        let token = super::sealed::random_token::<12>();
        let mut conn = self.conn.op("session_lock");
        let set: Option<String> = redis::cmd("SET")
            .arg(format!("{}lock:{}", self.prefix, handle.storage_id()))
            .arg(&token)
            .arg("NX")
            .arg("PX")
            .arg(ttl.as_millis() as u64)
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(set.map(|_| token))
    }

    /// Releases the lock if this holder still has it (it may have expired and been taken).
    pub async fn unlock(&self, handle: &SessionHandle, token: &str) {
        const RELEASE: &str =
            "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0";
        let mut conn = self.conn.op("session_lock");
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
        let mut conn = self.conn.op("session_save");
        pipe.query_async::<()>(&mut conn).await.map_err(unavailable)
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
        // sid is the narrower: with both, only that IdP session ends (the spec's choice).
        let keys = match sid {
            Some(sid) => self.index_keys(issuer, Some(sid), None),
            None => self.index_keys(issuer, None, sub),
        };
        let mut conn = self.conn.op("session_delete");
        let mut ended = Vec::new();
        for index in keys {
            let members: Vec<String> =
                redis::cmd("SMEMBERS").arg(&index).query_async(&mut conn).await.map_err(unavailable)?;
            for id in members {
                let n: usize = redis::cmd("DEL")
                    .arg(format!("{}{id}", self.prefix))
                    .query_async(&mut conn)
                    .await
                    .map_err(unavailable)?;
                if n > 0 {
                    ended.push(id);
                }
            }
            redis::cmd("DEL").arg(&index).query_async::<()>(&mut conn).await.map_err(unavailable)?;
        }
        self.announce("ended", &ended).await?;
        Ok(ended.len())
    }

    /// `true` the first time a logout token's `jti` is seen (kept until `until`, unix
    /// seconds); `false` for a replay.
    pub async fn first_use(&self, jti: &str, until: u64) -> Result<bool, Error> {
        let digest = ring::digest::digest(&ring::digest::SHA256, jti.as_bytes());
        let ttl = until.saturating_sub(now_secs()).max(60);
        let mut conn = self.conn.op("session_events");
        let set: Option<String> = redis::cmd("SET")
            .arg(format!("{}jti:{}", self.prefix, hex(digest.as_ref())))
            .arg(1)
            .arg("NX")
            .arg("EX")
            .arg(ttl)
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(set.is_some())
    }

    /// Ends a session, on every replica.
    pub async fn delete(&self, handle: &SessionHandle) -> Result<(), Error> {
        let mut conn = self.conn.op("session_delete");
        redis::cmd("DEL").arg(self.key(handle)).query_async::<()>(&mut conn).await.map_err(unavailable)?;
        self.announce("ended", &[handle.storage_id()]).await
    }
}

/// Compares two secrets in time independent of where they differ.
fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
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
