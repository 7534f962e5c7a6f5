//! HTTP Basic authentication against htpasswd entries: bcrypt (`$2y$`, `$2a$`, `$2b$`),
//! Apache MD5 (`$apr1$`), SHA-1 (`{SHA}`) and argon2 (`$argon2id$`…).
//!
//! bcrypt and argon2 are slow on purpose, so they run on blocking threads, and a verified
//! `user:password` pair is remembered (by a keyed SHA-256 digest, never in clear) for
//! `cache_ttl`. A changed htpasswd file replaces the whole method, cache included.

use std::collections::HashMap;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use md5::{Digest as _, Md5};
use moka::sync::Cache;
use sha1::Sha1;
use subtle::ConstantTimeEq;

use super::api_key::{Digest, sha256};
use super::{Identity, Kind, Outcome, Rejection};
use crate::Error;
use crate::request::AuthRequest;

/// A password hash from an htpasswd line.
#[derive(Clone, Debug, PartialEq)]
pub enum PasswordHash {
    Bcrypt(String),
    Apr1 { salt: String, hash: String },
    Sha1(Vec<u8>),
    Argon2(String),
}

impl PasswordHash {
    pub fn parse(text: &str) -> Result<PasswordHash, String> {
        if text.starts_with("$2y$") || text.starts_with("$2a$") || text.starts_with("$2b$") {
            return Ok(PasswordHash::Bcrypt(text.to_string()));
        }
        if let Some(rest) = text.strip_prefix("$apr1$") {
            let (salt, hash) = rest.split_once('$').ok_or("malformed $apr1$ hash")?;
            return Ok(PasswordHash::Apr1 { salt: salt.to_string(), hash: hash.to_string() });
        }
        if let Some(b64) = text.strip_prefix("{SHA}") {
            return STANDARD.decode(b64).map(PasswordHash::Sha1).map_err(|_| "malformed {SHA} hash".to_string());
        }
        if text.starts_with("$argon2") {
            argon2::PasswordHash::new(text).map_err(|e| format!("malformed argon2 hash: {e}"))?;
            return Ok(PasswordHash::Argon2(text.to_string()));
        }
        Err("unsupported password hash: use bcrypt (htpasswd -B), $apr1$, {SHA} or argon2".into())
    }

    /// Whether the hash needs a blocking thread.
    fn is_slow(&self) -> bool {
        matches!(self, PasswordHash::Bcrypt(_) | PasswordHash::Argon2(_))
    }

    pub fn verify(&self, password: &str) -> bool {
        match self {
            PasswordHash::Bcrypt(h) => bcrypt::verify(password, h).unwrap_or(false),
            PasswordHash::Apr1 { salt, hash } => {
                apr1(password.as_bytes(), salt.as_bytes()).as_bytes().ct_eq(hash.as_bytes()).into()
            }
            PasswordHash::Sha1(expected) => Sha1::digest(password.as_bytes())[..].ct_eq(expected).into(),
            PasswordHash::Argon2(h) => super::api_key::verify_argon2(h, password.as_bytes()),
        }
    }
}

/// Parses htpasswd text: `user:hash` per line, `#` comments. Errors carry the 1-based line.
pub fn parse_htpasswd(text: &str) -> Result<HashMap<String, PasswordHash>, (usize, String)> {
    let mut users = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (user, hash) = line.split_once(':').ok_or((i + 1, "expected user:hash".to_string()))?;
        let hash = PasswordHash::parse(hash).map_err(|e| (i + 1, format!("user {user:?}: {e}")))?;
        if users.insert(user.to_string(), hash).is_some() {
            return Err((i + 1, format!("user {user:?} is listed twice")));
        }
    }
    Ok(users)
}

pub struct BasicAuth {
    pub users: HashMap<String, Arc<PasswordHash>>,
    /// Keyed digests of verified `user:password` pairs.
    pub verified: Cache<Digest, ()>,
    /// A random per-process key for those digests.
    pub cache_key: [u8; 32],
}

impl BasicAuth {
    pub fn new(users: HashMap<String, PasswordHash>, cache_ttl: std::time::Duration) -> BasicAuth {
        let mut cache_key = [0u8; 32];
        // A failing system RNG leaves the key zero; digests are still never stored in clear.
        let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut cache_key);
        BasicAuth {
            users: users.into_iter().map(|(u, h)| (u, Arc::new(h))).collect(),
            verified: Cache::builder().max_capacity(10_000).time_to_live(cache_ttl).build(),
            cache_key,
        }
    }

    pub async fn authenticate(&self, name: &Arc<str>, request: &AuthRequest) -> Result<Outcome, Error> {
        let Some(header) = request.header("authorization") else {
            return Ok(Outcome::Missing);
        };
        let Some(encoded) = header.get(..6).filter(|s| s.eq_ignore_ascii_case("basic ")).map(|_| header[6..].trim())
        else {
            return Ok(Outcome::Missing);
        };
        let Some((user, password)) = STANDARD
            .decode(encoded)
            .ok()
            .and_then(|bytes| String::from_utf8(bytes).ok())
            .and_then(|s| s.split_once(':').map(|(u, p)| (u.to_string(), p.to_string())))
        else {
            return Ok(Outcome::Rejected(Rejection::new("malformed basic credentials")));
        };
        let rejected = || Ok(Outcome::Rejected(Rejection::new("invalid user name or password")));
        let Some(hash) = self.users.get(&user).cloned() else {
            return rejected();
        };
        let mut keyed = self.cache_key.to_vec();
        keyed.extend_from_slice(user.as_bytes());
        keyed.push(b':');
        keyed.extend_from_slice(password.as_bytes());
        let digest = sha256(&keyed);
        let ok = if self.verified.contains_key(&digest) {
            true
        } else if hash.is_slow() {
            tokio::task::spawn_blocking(move || hash.verify(&password))
                .await
                .map_err(|e| Error::Internal(format!("password verification: {e}")))?
        } else {
            hash.verify(&password)
        };
        if !ok {
            return rejected();
        }
        self.verified.insert(digest, ());
        Ok(Outcome::Authenticated(Identity::new(name, Kind::Basic, user)))
    }
}

/// Apache's MD5-based crypt (`$apr1$`): returns the 22-character hash part.
pub fn apr1(password: &[u8], salt: &[u8]) -> String {
    let salt = &salt[..salt.len().min(8)];
    let mut alt = Md5::new();
    alt.update(password);
    alt.update(salt);
    alt.update(password);
    let alt = alt.finalize();

    let mut ctx = Md5::new();
    ctx.update(password);
    ctx.update(b"$apr1$");
    ctx.update(salt);
    let mut left = password.len();
    while left > 0 {
        ctx.update(&alt[..left.min(16)]);
        left = left.saturating_sub(16);
    }
    let mut bits = password.len();
    while bits > 0 {
        if bits & 1 == 1 {
            ctx.update([0u8])
        } else {
            ctx.update(&password[..1])
        }
        bits >>= 1;
    }
    let mut digest = ctx.finalize();

    for i in 0..1000 {
        let mut round = Md5::new();
        if i & 1 == 1 {
            round.update(password)
        } else {
            round.update(digest)
        }
        if i % 3 != 0 {
            round.update(salt);
        }
        if i % 7 != 0 {
            round.update(password);
        }
        if i & 1 == 1 {
            round.update(digest)
        } else {
            round.update(password)
        }
        digest = round.finalize();
    }

    const ITOA64: &[u8] = b"./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut out = String::with_capacity(22);
    let mut push = |value: u32, count: usize| {
        let mut v = value;
        for _ in 0..count {
            out.push(ITOA64[(v & 0x3f) as usize] as char);
            v >>= 6;
        }
    };
    let d = |i: usize| u32::from(digest[i]);
    for (a, b, c) in [(0, 6, 12), (1, 7, 13), (2, 8, 14), (3, 9, 15), (4, 10, 5)] {
        push((d(a) << 16) | (d(b) << 8) | d(c), 4);
    }
    push(d(11), 2);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    // Made with `openssl passwd -apr1 -salt saltsalt secret` and `htpasswd -nbs alice secret`.
    const APR1: &str = "$apr1$saltsalt$LrttParrLPdxvgutaSXWJ0";
    const SHA: &str = "{SHA}5en6G6MezRroT3XKqkdPOmY/BfQ=";

    #[test]
    fn apr1_matches_openssl() {
        assert_eq!(apr1(b"secret", b"saltsalt"), "LrttParrLPdxvgutaSXWJ0");
    }

    #[test]
    fn every_hash_kind_verifies() {
        let bcrypt = bcrypt::hash("secret", 4).unwrap();
        let argon = crate::hash_key_argon2("secret").unwrap();
        for text in [APR1, SHA, bcrypt.as_str(), argon.as_str()] {
            let h = PasswordHash::parse(text).unwrap();
            assert!(h.verify("secret"), "{text}");
            assert!(!h.verify("Secret"), "{text}");
        }
    }

    #[test]
    fn htpasswd_errors_name_the_line() {
        let text = format!("# users\nalice:{APR1}\nbob:plaintext\n");
        let (line, message) = parse_htpasswd(&text).unwrap_err();
        assert_eq!(line, 3);
        assert!(message.starts_with("user \"bob\": unsupported password hash"), "{message}");
        assert_eq!(parse_htpasswd(&format!("a:{SHA}\na:{SHA}")).unwrap_err(), (2, "user \"a\" is listed twice".into()));
    }

    #[tokio::test]
    async fn basic_header() {
        let users = parse_htpasswd(&format!("alice:{APR1}")).unwrap();
        let auth = BasicAuth::new(users, std::time::Duration::from_secs(60));
        let name: Arc<str> = Arc::from("users");
        let run = |value: Option<&str>| {
            let mut r = AuthRequest::default();
            if let Some(v) = value {
                r.headers.insert("authorization".into(), v.into());
            }
            let auth = &auth;
            let name = name.clone();
            async move { auth.authenticate(&name, &r).await.unwrap() }
        };
        let good = format!("Basic {}", STANDARD.encode("alice:secret"));
        assert!(matches!(run(Some(&good)).await, Outcome::Authenticated(i) if i.subject == "alice"));
        // Second time from the cache.
        assert!(matches!(run(Some(&good)).await, Outcome::Authenticated(_)));
        let bad = format!("basic {}", STANDARD.encode("alice:wrong"));
        assert_eq!(run(Some(&bad)).await, Outcome::Rejected(Rejection::new("invalid user name or password")));
        assert_eq!(run(Some("Bearer x")).await, Outcome::Missing);
        assert_eq!(run(None).await, Outcome::Missing);
        assert_eq!(run(Some("Basic !!!")).await, Outcome::Rejected(Rejection::new("malformed basic credentials")));
    }
}
