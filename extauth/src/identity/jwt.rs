//! JWT bearer tokens, verified against an issuer's published keys.
//!
//! Checks, in order: size, a parseable header with an allowed asymmetric `alg` and no `crit`
//! extension, a known `kid`, the signature, then the claims: `iss`, `aud`, `exp` and `nbf`
//! (with leeway) by [`claims::check_registered`], required claims and scopes. jsonwebtoken
//! checks the signature only; every claim check is ours, and strict about types. A verified token is cached by its SHA-256 digest until it expires, so steady traffic
//! costs one hash and one lookup per request.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use moka::sync::Cache;
use serde_json::{Map, Value};

use super::api_key::{Digest, sha256};
use super::claims::{self, Registered};
use super::jwks::{Jwks, Lookup};
use super::source::{Source, first_credential};
use super::{Identity, Kind, Outcome, Rejection, lookup_path};
use crate::Error;
use crate::request::AuthRequest;
use gatehouse_common::matcher::StringMatcher;

pub struct JwtAuth {
    pub sources: Vec<Source>,
    pub issuer: String,
    pub audiences: Vec<String>,
    pub algorithms: Vec<Algorithm>,
    pub leeway: Duration,
    pub max_token_bytes: usize,
    pub required_scopes: Vec<String>,
    pub required_claims: Vec<(String, StringMatcher)>,
    pub jwks: Arc<Jwks>,
    pub cache: Cache<Digest, CachedToken>,
}

#[derive(Clone)]
pub struct CachedToken {
    pub identity: Arc<Identity>,
    /// Seconds since the epoch.
    pub exp: u64,
}

impl CachedToken {
    pub fn new(identity: Identity, exp: u64) -> CachedToken {
        CachedToken { identity: Arc::new(identity), exp }
    }
}

/// Expires each cached token when the token itself expires.
pub struct UntilExp;

impl moka::Expiry<Digest, CachedToken> for UntilExp {
    fn expire_after_create(&self, _: &Digest, value: &CachedToken, _: std::time::Instant) -> Option<Duration> {
        Some(Duration::from_secs(value.exp.saturating_sub(now_secs())))
    }
}

pub fn token_cache(capacity: u64) -> Cache<Digest, CachedToken> {
    Cache::builder().max_capacity(capacity).expire_after(UntilExp).build()
}

pub fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

impl JwtAuth {
    pub async fn authenticate(&self, name: &Arc<str>, request: &AuthRequest) -> Result<Outcome, Error> {
        let Some(token) = first_credential(&self.sources, request) else {
            return Ok(Outcome::Missing);
        };
        if token.len() > self.max_token_bytes {
            return Ok(Outcome::Rejected(Rejection::invalid_token("token too large")));
        }
        let digest = sha256(token.as_bytes());
        if let Some(hit) = self.cache.get(&digest)
            && hit.exp > now_secs()
        {
            let mut identity = (*hit.identity).clone();
            identity.method = name.clone();
            return Ok(Outcome::Authenticated(identity));
        }
        match self.verify(&token).await? {
            Ok((identity, exp)) => {
                self.cache.insert(digest, CachedToken::new(identity.clone(), exp));
                let mut identity = identity;
                identity.method = name.clone();
                Ok(Outcome::Authenticated(identity))
            }
            Err(rejection) => Ok(Outcome::Rejected(rejection)),
        }
    }

    /// A token's verified claims (signature, `iss`, `aud`, `exp`, `nbf`, required claims):
    /// what other token kinds signed by an IdP (logout tokens) are checked with.
    pub async fn verify_claims(&self, token: &str) -> Result<Result<Map<String, Value>, Rejection>, Error> {
        Ok(self.verify(token).await?.map(|(identity, _)| identity.claims))
    }

    /// Verifies a token: `Err` only when keys are unavailable; a bad token is `Ok(Err(..))`.
    async fn verify(&self, token: &str) -> Result<Result<(Identity, u64), Rejection>, Error> {
        let header = match jsonwebtoken::decode_header(token) {
            Ok(h) => h,
            // Covers `alg: none` and symmetric algorithms we do not know as well.
            Err(_) => return Ok(Err(Rejection::invalid_token("malformed token or unsupported algorithm"))),
        };
        if !self.algorithms.contains(&header.alg) {
            return Ok(Err(Rejection::invalid_token(format!("algorithm {:?} is not allowed", header.alg))));
        }
        // RFC 7515 §4.1.11: a token that names critical extensions must be refused unless the
        // recipient understands them all, and this service understands none.
        if header.crit.is_some() {
            return Ok(Err(Rejection::invalid_token("unsupported critical header extension")));
        }
        let keys = match self.jwks.lookup(header.kid.as_deref()).await? {
            Lookup::Found(keys) => keys,
            Lookup::UnknownKid => return Ok(Err(Rejection::invalid_token("unknown signing key"))),
        };
        // The signature only: jsonwebtoken accepts a missing `aud`, a mistyped one and an
        // array `iss`, so the claims are checked below, strictly.
        let mut validation = Validation::new(header.alg);
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        validation.required_spec_claims.clear();
        let mut last = Rejection::invalid_token("no key can verify this token");
        for key in keys.iter().filter(|k| k.algorithms.contains(&header.alg)) {
            match jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, &validation) {
                Ok(data) => return Ok(self.identity(data.claims, now_secs())),
                Err(e) => {
                    last = Rejection::invalid_token(describe(e.kind()));
                    // Only a bad signature is worth trying the next key for.
                    if !matches!(e.kind(), ErrorKind::InvalidSignature) {
                        break;
                    }
                }
            }
        }
        Ok(Err(last))
    }

    fn identity(&self, claims: Map<String, Value>, now: u64) -> Result<(Identity, u64), Rejection> {
        let registered = Registered {
            issuer: Some(&self.issuer),
            audiences: &self.audiences,
            require_exp: true,
            leeway: self.leeway.as_secs(),
        };
        // `require_exp` makes `None` impossible here.
        let exp = claims::check_registered(&claims, &registered, now)?.unwrap_or(0);
        let scopes = scopes_of(&claims);
        for scope in &self.required_scopes {
            if !scopes.contains(scope) {
                return Err(Rejection {
                    reason: format!("missing scope {scope}"),
                    bearer_error: Some("insufficient_scope"),
                });
            }
        }
        for (path, matcher) in &self.required_claims {
            if !claims::value_matches(matcher, lookup_path(&claims, path)) {
                return Err(Rejection::invalid_token(format!("claim {path} does not match")));
            }
        }
        let subject = ["sub", "client_id", "azp"]
            .iter()
            .find_map(|c| claims.get(*c).and_then(Value::as_str))
            .unwrap_or_default()
            .to_string();
        let name: Arc<str> = Arc::from("");
        let mut identity = Identity::new(&name, Kind::Jwt, subject);
        identity.scopes = scopes;
        identity.claims = claims;
        Ok((identity, exp))
    }
}

/// OAuth scopes from `scope` (space-separated, RFC 8693) or `scp` (array or string). A
/// mistyped claim (a number, an array holding anything but strings) grants no scope at all.
pub fn scopes_of(claims: &Map<String, Value>) -> Vec<String> {
    match claims.get("scope").or_else(|| claims.get("scp")) {
        Some(Value::String(s)) => s.split_whitespace().map(str::to_string).collect(),
        Some(Value::Array(items)) if items.iter().all(Value::is_string) => {
            items.iter().filter_map(Value::as_str).map(str::to_string).collect()
        }
        _ => Vec::new(),
    }
}

/// A deny reason for a signature-verification error; safe to return to the client.
fn describe(kind: &ErrorKind) -> &'static str {
    match kind {
        ErrorKind::InvalidSignature => "invalid signature",
        ErrorKind::InvalidAlgorithm => "algorithm does not match the signing key",
        _ => "invalid token",
    }
}
