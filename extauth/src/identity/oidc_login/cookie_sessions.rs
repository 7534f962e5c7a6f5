//! Sessions kept in the browser, for set-ups without Redis (`session.store: cookie`).
//!
//! The session (claims, access and refresh tokens, never the ID token) is sealed under a key
//! derived from the cookie secret, with the cookie name as associated data, and split over
//! `<prefix>-session`, `<prefix>-session-1`, ... so that no cookie passes [`CHUNK`] bytes
//! (browsers and proxies refuse cookies over 4 KB). What it cannot do, compared with Redis:
//! end a session before it times out (logout clears this browser's cookies, but a copy taken
//! earlier stays valid until the idle or absolute timeout), back-channel logout, and one
//! refresh across replicas (each replica refreshes on its own; see docs/extauth.md).

use serde::{Deserialize, Serialize};

use super::sealed::SealKey;
use super::session::{Session, Timeouts};
use super::web;
use crate::request::AuthRequest;

/// The most bytes of sealed value per cookie: with the name and attributes, under 4 KB.
pub const CHUNK: usize = 3800;

/// More chunks than this is not a session this store wrote.
const MAX_CHUNKS: usize = 8;

pub struct CookieSessions {
    key: SealKey,
    /// `<prefix>-session`: the first chunk's name and the sealed value's associated data.
    name: String,
    pub timeouts: Timeouts,
}

/// What the cookies hold, sealed.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Stored {
    pub session: Session,
    /// Unix seconds of the last rewrite: the idle timeout counts from here.
    pub last_seen: u64,
}

impl CookieSessions {
    pub fn new(secret: &[u8], name: String, timeouts: Timeouts) -> CookieSessions {
        CookieSessions { key: SealKey::derive(secret, "session-cookie"), name, timeouts }
    }

    fn chunk_name(&self, i: usize) -> String {
        if i == 0 { self.name.clone() } else { format!("{}-{i}", self.name) }
    }

    /// The request's session: `None` without a session cookie, `Some(None)` for cookies that
    /// do not open (tampered, truncated, from another secret) or a session that timed out.
    pub fn read(&self, request: &AuthRequest, now: u64) -> Option<Option<Stored>> {
        let mut sealed = request.cookie(&self.name)?.to_string();
        for i in 1..MAX_CHUNKS {
            match request.cookie(&self.chunk_name(i)) {
                Some(chunk) => sealed.push_str(chunk),
                None => break,
            }
        }
        let stored = self
            .key
            .open(&self.name, &sealed)
            .and_then(|plain| serde_json::from_slice::<Stored>(&plain).ok())
            .filter(|stored| self.live(stored, now));
        Some(stored)
    }

    fn live(&self, stored: &Stored, now: u64) -> bool {
        now.saturating_sub(stored.last_seen) < self.timeouts.idle.as_secs()
            && self.timeouts.ttl(&stored.session, now).is_some()
    }

    /// Whether a request now should rewrite the cookies to restart the idle timeout (at most
    /// every quarter of it, so most responses carry no `Set-Cookie`).
    pub fn due(&self, stored: &Stored, now: u64) -> bool {
        now.saturating_sub(stored.last_seen) >= self.timeouts.idle.as_secs() / 4
    }

    /// `Set-Cookie` values that store `stored` (seen now), deleting chunks the request
    /// carries beyond the new count.
    pub fn write(&self, stored: &Stored, request: &AuthRequest) -> Vec<String> {
        let plain = serde_json::to_vec(stored).expect("a session serializes");
        let sealed = self.key.seal(&self.name, &plain);
        let max_age = self.timeouts.ttl(&stored.session, stored.last_seen).map_or(0, |d| d.as_secs());
        let chunks: Vec<&str> =
            sealed.as_bytes().chunks(CHUNK).map(|c| std::str::from_utf8(c).expect("base64 is ASCII")).collect();
        let mut headers: Vec<String> = chunks
            .iter()
            .enumerate()
            .map(|(i, chunk)| web::set_cookie(&self.chunk_name(i), chunk, Some(max_age)))
            .collect();
        headers.extend(self.clear_from(request, chunks.len()));
        headers
    }

    /// `Set-Cookie` values that delete every session chunk the request carries.
    pub fn clear(&self, request: &AuthRequest) -> Vec<String> {
        self.clear_from(request, 0)
    }

    fn clear_from(&self, request: &AuthRequest, first: usize) -> Vec<String> {
        (first..MAX_CHUNKS)
            .map(|i| self.chunk_name(i))
            .filter(|name| request.cookie(name).is_some())
            .map(|name| web::set_cookie(&name, "", Some(0)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::{Map, Value};

    use super::*;

    fn store() -> CookieSessions {
        let timeouts = Timeouts { idle: Duration::from_secs(600), absolute: Duration::from_secs(3600) };
        CookieSessions::new(&[7u8; 32], "__Host-gatehouse-session".into(), timeouts)
    }

    fn session(claims_bytes: usize) -> Session {
        let mut claims = Map::new();
        claims.insert("big".into(), Value::String("x".repeat(claims_bytes)));
        Session {
            sub: "ann".into(),
            sid: None,
            claims,
            id_token: String::new(),
            access_token: "a".repeat(900),
            access_expires_at: Some(2000),
            refresh_token: Some("r".repeat(60)),
            created_at: 1000,
        }
    }

    /// A request carrying the cookies that `Set-Cookie` values set.
    fn request_with(set_cookies: &[String]) -> AuthRequest {
        let cookie = set_cookies
            .iter()
            .map(|c| c.split(';').next().unwrap().to_string())
            .filter(|pair| !pair.ends_with('='))
            .collect::<Vec<_>>()
            .join("; ");
        let mut request = AuthRequest::default();
        request.headers.insert("cookie".into(), cookie);
        request
    }

    #[test]
    fn a_session_round_trips_split_below_4_kb() {
        let store = store();
        let stored = Stored { session: session(6000), last_seen: 1000 };
        let headers = store.write(&stored, &AuthRequest::default());
        assert!(headers.len() >= 2, "{} chunks", headers.len());
        assert!(headers.iter().all(|h| h.len() < 4000), "{:?}", headers.iter().map(String::len).collect::<Vec<_>>());
        let back = store.read(&request_with(&headers), 1100).unwrap().unwrap();
        assert_eq!(back.session, stored.session);
    }

    #[test]
    fn tampered_reordered_or_timed_out_cookies_do_not_open() {
        let store = store();
        let stored = Stored { session: session(6000), last_seen: 1000 };
        let headers = store.write(&stored, &AuthRequest::default());
        let request = request_with(&headers);
        assert!(store.read(&request, 1000 + 599).unwrap().is_some());
        assert!(store.read(&request, 1000 + 600).unwrap().is_none(), "idle timeout");
        // A chunk missing, or one flipped byte.
        let mut missing = request.clone();
        let cookie = missing.headers["cookie"].clone();
        let first_chunk_only = cookie.split("; ").next().unwrap().to_string();
        missing.headers.insert("cookie".into(), first_chunk_only);
        assert!(store.read(&missing, 1001).unwrap().is_none());
        let mut flipped = request.clone();
        let mut bytes = cookie.into_bytes();
        let at = bytes.len() - 10;
        bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
        flipped.headers.insert("cookie".into(), String::from_utf8(bytes).unwrap());
        assert!(store.read(&flipped, 1001).unwrap().is_none());
        // No cookie at all is not a failed session.
        assert!(store.read(&AuthRequest::default(), 1001).is_none());
    }

    #[test]
    fn a_smaller_session_deletes_the_chunks_it_no_longer_needs() {
        let store = store();
        let big = store.write(&Stored { session: session(6000), last_seen: 1000 }, &AuthRequest::default());
        let small = store.write(&Stored { session: session(10), last_seen: 1000 }, &request_with(&big));
        assert!(small[0].starts_with("__Host-gatehouse-session="));
        assert!(small[1..].iter().all(|h| h.contains("Max-Age=0")), "{small:?}");
        assert_eq!(small.len(), big.len());
    }
}
