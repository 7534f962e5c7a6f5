//! OAuth 2.0 token introspection (RFC 7662) for opaque tokens.
//!
//! The service authenticates to the endpoint as a client (`client_secret_basic` or
//! `client_secret_post`). An answer allows only if `active` is the boolean `true` and its
//! claims pass the same strict checks as a JWT's ([`claims::check_registered`]): a present
//! `exp` or `nbf` must be a number and current, and with `audiences` set, `aud` must name one.
//! Active answers are cached by token digest for at most `cache_ttl` and never past the
//! token's own `exp`; inactive answers are not cached.

use std::sync::Arc;
use std::time::Duration;

use moka::sync::Cache;
use serde_json::{Map, Value};

use super::api_key::{Digest, sha256};
use super::claims::{self, Registered};
use super::jwt::{CachedToken, scopes_of};
use super::source::{Source, first_credential};
use super::{Identity, Kind, Outcome, Rejection};
use crate::Error;
use crate::request::AuthRequest;
use crate::stats::Dependencies;

/// Clock skew allowed on `exp` and `nbf` in answers, as a JWT's default leeway.
const LEEWAY_SECS: u64 = 30;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientAuth {
    Basic,
    Post,
}

pub struct Introspection {
    pub sources: Vec<Source>,
    pub endpoint: String,
    pub client_id: String,
    pub client_secret: String,
    pub client_auth: ClientAuth,
    pub required_scopes: Vec<String>,
    /// `aud` must name one of these; empty means any.
    pub audiences: Vec<String>,
    pub cache_ttl: Duration,
    pub timeout: Duration,
    pub http: reqwest::Client,
    pub cache: Cache<Digest, CachedToken>,
    pub deps: Dependencies,
}

impl Introspection {
    pub async fn authenticate(&self, name: &Arc<str>, request: &AuthRequest) -> Result<Outcome, Error> {
        let Some(token) = first_credential(&self.sources, request) else {
            return Ok(Outcome::Missing);
        };
        if token.len() > 16 * 1024 {
            return Ok(Outcome::Rejected(Rejection::invalid_token("token too large")));
        }
        let digest = sha256(token.as_bytes());
        let cached = self.cache.get(&digest);
        self.deps.cache("introspection", cached.is_some());
        if let Some(hit) = cached {
            let mut identity = (*hit.identity).clone();
            identity.method = name.clone();
            return Ok(Outcome::Authenticated(identity));
        }
        let claims = self.introspect(&token).await?;
        if claims.get("active").and_then(Value::as_bool) != Some(true) {
            return Ok(Outcome::Rejected(Rejection::invalid_token("token is not active")));
        }
        let now = super::jwt::now_secs();
        let registered =
            Registered { issuer: None, audiences: &self.audiences, require_exp: false, leeway: LEEWAY_SECS };
        let exp = match claims::check_registered(&claims, &registered, now) {
            Ok(exp) => exp,
            Err(rejection) => return Ok(Outcome::Rejected(rejection)),
        };
        let scopes = scopes_of(&claims);
        if let Some(missing) = self.required_scopes.iter().find(|s| !scopes.contains(s)) {
            return Ok(Outcome::Rejected(Rejection {
                reason: format!("missing scope {missing}"),
                bearer_error: Some("insufficient_scope"),
            }));
        }
        let subject = ["sub", "username", "client_id"]
            .iter()
            .find_map(|c| claims.get(*c).and_then(Value::as_str))
            .unwrap_or_default()
            .to_string();
        let mut identity = Identity::new(name, Kind::Introspection, subject);
        identity.scopes = scopes;
        let exp = exp.unwrap_or(u64::MAX).min(now + self.cache_ttl.as_secs());
        identity.claims = claims;
        if exp > now {
            self.cache.insert(digest, CachedToken::new(identity.clone(), exp));
        }
        Ok(Outcome::Authenticated(identity))
    }

    async fn introspect(&self, token: &str) -> Result<Map<String, Value>, Error> {
        let unavailable = |e: String| Error::Unavailable(format!("introspection at {}: {e}", self.endpoint));
        let mut form = vec![("token", token), ("token_type_hint", "access_token")];
        let mut request = self.http.post(&self.endpoint).timeout(self.timeout);
        match self.client_auth {
            ClientAuth::Basic => request = request.basic_auth(&self.client_id, Some(&self.client_secret)),
            ClientAuth::Post => {
                form.push(("client_id", &self.client_id));
                form.push(("client_secret", &self.client_secret));
            }
        }
        self.deps
            .idp("introspection", async {
                let response = request.form(&form).send().await.map_err(|e| unavailable(e.to_string()))?;
                if !response.status().is_success() {
                    return Err(unavailable(format!("HTTP {}", response.status())));
                }
                response.json::<Map<String, Value>>().await.map_err(|e| unavailable(e.to_string()))
            })
            .await
    }
}
