//! A policy is a pipeline: identity → authorization → response. [`Policies`] is one loaded
//! config file: the policies by name, the host fallback, and the default.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value};

use crate::Error;
use crate::authz::Rule;
use crate::identity::{Identity, IdentityStage, Verdict, value_to_string};
use crate::request::AuthRequest;
use crate::signer::Signer;

/// The `context_extensions` key that names the policy for a route.
pub const POLICY_CONTEXT_KEY: &str = "gatehouse_policy";

/// A header or metadata value: a literal, or a path into the identity (`sub`, `claims.tenant`,
/// `metadata.plan`).
#[derive(Clone, Debug, PartialEq)]
pub enum ValueSource {
    Literal(String),
    Identity(String),
}

impl ValueSource {
    fn resolve(&self, identity: &Identity) -> Option<String> {
        match self {
            ValueSource::Literal(s) => Some(s.clone()),
            ValueSource::Identity(path) => identity.lookup(path).map(|v| value_to_string(&v)).filter(|s| !s.is_empty()),
        }
    }
}

/// A signed JWT about the caller, sent upstream.
pub struct SignedJwt {
    pub header: String,
    pub ttl: Duration,
    pub audience: Option<String>,
    /// Identity claims to copy into the token (besides `sub`).
    pub claims: Vec<String>,
}

/// Claims of a signed upstream JWT that the service sets itself and that no copied identity
/// value may name: a caller's `aud` or `exp` must never become the upstream token's.
pub const RESERVED_UPSTREAM_CLAIMS: [&str; 9] =
    ["iss", "sub", "aud", "exp", "nbf", "iat", "jti", "gatehouse_policy", "gatehouse_method"];

/// The claim name an identity path is copied under: its last segment (`claims.tenant` →
/// `tenant`).
pub fn copied_claim_name(path: &str) -> &str {
    path.rsplit('.').next().unwrap_or(path)
}

/// What an allowed request carries upstream and back.
#[derive(Default)]
pub struct ResponseSpec {
    pub upstream_headers: Vec<(String, ValueSource)>,
    pub remove_headers: Vec<String>,
    pub query_set: Vec<(String, ValueSource)>,
    pub query_remove: Vec<String>,
    pub client_headers: Vec<(String, ValueSource)>,
    pub metadata: Vec<(String, ValueSource)>,
    pub signed_jwt: Option<SignedJwt>,
    /// Remove the credential the caller authenticated with (API key header or query
    /// parameter, `Authorization`) before the request goes upstream.
    pub strip_credentials: bool,
}

pub struct Policy {
    pub name: Arc<str>,
    pub realm: String,
    pub identity: IdentityStage,
    pub rules: Vec<Rule>,
    pub response: ResponseSpec,
}

/// An allowed request's changes.
#[derive(Debug, Default, PartialEq)]
pub struct Allow {
    /// Set on the upstream request, replacing any value the client sent.
    pub upstream_headers: Vec<(String, String)>,
    pub remove_headers: Vec<String>,
    pub query_set: Vec<(String, String)>,
    pub query_remove: Vec<String>,
    /// Added to the response to the client.
    pub client_headers: Vec<(String, String)>,
    /// Dynamic metadata (all strings), under Envoy's `envoy.filters.http.ext_authz` namespace.
    pub metadata: Map<String, Value>,
    pub subject: String,
}

/// A denied request: what Envoy answers instead of forwarding it.
#[derive(Debug, Default, PartialEq)]
pub struct Deny {
    /// 401 (unauthenticated) or 403 (forbidden); the browser login also answers 302 (to the
    /// IdP, or back after the callback) and 503 (the IdP cannot be reached).
    pub status: u16,
    /// Safe to show: never contains a credential.
    pub reason: String,
    pub challenges: Vec<String>,
    /// The rule that failed, for 403s.
    pub rule: Option<Arc<str>>,
    /// Further response headers, each added (never replacing another): `Location`, and one
    /// `Set-Cookie` per cookie.
    pub headers: Vec<(String, String)>,
    /// Fields added to the JSON body, such as the browser login's `login_url`.
    pub extra: Map<String, Value>,
}

impl Deny {
    /// The JSON body of a deny: the error class, the reason, the policy, and the request id for
    /// correlating with logs. Never a credential.
    pub fn body(&self, policy: &str, request_id: Option<&str>) -> String {
        let error = match self.status {
            401 => "unauthorized",
            302 | 303 => "redirect",
            400 => "bad_request",
            404 => "not_found",
            405 => "method_not_allowed",
            503 => "unavailable",
            _ => "forbidden",
        };
        let mut body = serde_json::json!({ "error": error, "reason": self.reason, "policy": policy });
        if let Some(id) = request_id {
            body["request_id"] = Value::String(id.to_string());
        }
        for (k, v) in &self.extra {
            body[k] = v.clone();
        }
        body.to_string()
    }
}

#[derive(Debug, PartialEq)]
pub enum Decision {
    Allow(Allow),
    Deny(Deny),
}

impl Policy {
    pub async fn evaluate(&self, request: &AuthRequest, signer: &Signer) -> Result<Decision, Error> {
        let login = self.browser_login();
        if let Some(login) = login
            && let Some(deny) = login.intercept(request).await?
        {
            return Ok(Decision::Deny(deny));
        }
        let verdict = match self.identity.run(&self.realm, request).await {
            // A browser gets a page that says so (a session that needs the IdP, or Redis),
            // not Envoy's empty answer to an error.
            Err(e @ Error::Unavailable(_)) if login.is_some() => {
                return Ok(Decision::Deny(crate::identity::oidc_login::unavailable_page(&e)));
            }
            verdict => verdict?,
        };
        let identity = match verdict {
            Verdict::Authenticated(identity) => identity,
            Verdict::Unauthenticated { rejection, challenges } => {
                if let Some(login) = login {
                    let mut deny = login.challenge(request, rejection).await?;
                    deny.challenges = challenges;
                    return Ok(Decision::Deny(deny));
                }
                return Ok(Decision::Deny(Deny {
                    status: 401,
                    reason: rejection.reason,
                    challenges,
                    ..Default::default()
                }));
            }
        };
        let mut input = None;
        for rule in &self.rules {
            // One span per rule: its name (from the config) and kind, and whether it allowed.
            let span = tracing::info_span!(
                "extauth.rule",
                otel.name = "rule",
                extauth.rule = &*rule.name,
                extauth.rule.kind = rule.kind(),
                extauth.rule.allowed = tracing::field::Empty,
            );
            let allowed = span.in_scope(|| rule.allows(request, &identity, &mut input));
            span.record("extauth.rule.allowed", allowed);
            if !allowed {
                return Ok(Decision::Deny(Deny {
                    status: 403,
                    reason: format!("forbidden by rule {}", rule.name),
                    rule: Some(rule.name.clone()),
                    ..Default::default()
                }));
            }
        }
        let mut allow = self.allow(&identity, signer)?;
        if let Some(login) = login {
            login.strip_own_cookies(request, &mut allow);
        }
        Ok(Decision::Allow(allow))
    }

    fn allow(&self, identity: &Identity, signer: &Signer) -> Result<Allow, Error> {
        let r = &self.response;
        let resolve_all = |list: &[(String, ValueSource)]| -> Vec<(String, String)> {
            list.iter().filter_map(|(name, source)| Some((name.clone(), source.resolve(identity)?))).collect()
        };
        let mut allow = Allow {
            upstream_headers: resolve_all(&r.upstream_headers),
            remove_headers: r.remove_headers.clone(),
            query_set: resolve_all(&r.query_set),
            query_remove: r.query_remove.clone(),
            client_headers: resolve_all(&r.client_headers),
            metadata: Map::new(),
            subject: identity.subject.clone(),
        };
        if r.strip_credentials {
            self.strip_credentials(&mut allow);
        }
        allow.upstream_headers.extend(identity.upstream_headers.iter().cloned());
        allow.client_headers.extend(identity.client_headers.iter().cloned());

        let mut put = |k: &str, v: String| {
            allow.metadata.insert(k.to_string(), Value::String(v));
        };
        // Key metadata (plan, owner...) is flattened so ratelimit descriptors can key on it.
        for (k, v) in &identity.metadata {
            put(k, value_to_string(v));
        }
        for (k, source) in &r.metadata {
            if let Some(v) = source.resolve(identity) {
                put(k, v);
            }
        }
        // Built-in keys last: a key record (possibly from Redis) cannot replace what rate
        // limits key on.
        put("policy", self.name.to_string());
        put("method", identity.method.to_string());
        put("kind", identity.kind.as_str().to_string());
        put("subject", identity.subject.clone());
        if !identity.scopes.is_empty() {
            put("scopes", identity.scopes.join(" "));
        }

        if let Some(jwt) = &r.signed_jwt {
            let mut claims = Map::new();
            for path in &jwt.claims {
                if let Some(v) = identity.lookup(path) {
                    claims.insert(copied_claim_name(path).to_string(), v);
                }
            }
            // The service's own claims last, so nothing copied from the caller's token can
            // replace them (config refuses such copies too).
            claims.insert("sub".into(), Value::String(identity.subject.clone()));
            claims.insert("gatehouse_policy".into(), Value::String(self.name.to_string()));
            claims.insert("gatehouse_method".into(), Value::String(identity.method.to_string()));
            if let Some(aud) = &jwt.audience {
                claims.insert("aud".into(), Value::String(aud.clone()));
            }
            let token = signer.mint(claims, jwt.ttl).map_err(|e| Error::Internal(format!("signing JWT: {e}")))?;
            allow.upstream_headers.push((jwt.header.clone(), token));
        }
        Ok(allow)
    }

    /// The policy's browser login, if it has one (at most one per policy).
    pub fn browser_login(&self) -> Option<&crate::identity::oidc_login::OidcLogin> {
        self.identity.methods.iter().find_map(|(_, m)| match m {
            crate::identity::Method::OidcLogin(login) => Some(&**login),
            _ => None,
        })
    }

    /// Removes every credential this policy reads, so upstream never sees one (with `all_of`
    /// or an expression, several methods may have consumed a credential).
    fn strip_credentials(&self, allow: &mut Allow) {
        use crate::identity::Method;
        for (_, method) in &self.identity.methods {
            let sources = match method {
                Method::ApiKey(m) => &m.sources,
                Method::Jwt(m) => &m.sources,
                Method::Introspection(m) => &m.sources,
                Method::Basic(_) => {
                    allow.remove_headers.push("authorization".into());
                    continue;
                }
                // The session and login cookies go; the upstream keeps its own cookies.
                Method::OidcLogin(_) => continue,
                Method::Mtls(_) | Method::Anonymous => continue,
            };
            for source in sources {
                let (header, query) = source.strip_target();
                allow.remove_headers.extend(header.map(str::to_string));
                allow.query_remove.extend(query.map(str::to_string));
            }
        }
        allow.remove_headers.sort();
        allow.remove_headers.dedup();
        allow.query_remove.sort();
        allow.query_remove.dedup();
    }
}

/// One loaded config.
#[derive(Default)]
pub struct Policies {
    pub by_name: HashMap<String, Arc<Policy>>,
    /// Exact hosts, and `*.suffix` wildcards stored as `.suffix`.
    pub hosts: HashMap<String, Arc<Policy>>,
    pub wildcard_hosts: Vec<(String, Arc<Policy>)>,
    pub default: Option<Arc<Policy>>,
    /// The policy file and the files it references.
    pub files: Vec<std::path::PathBuf>,
    /// Issuers to check against their discovery documents before this config serves.
    pub issuer_checks: Vec<crate::config::IssuerCheck>,
}

/// Why no policy applies.
#[derive(Debug)]
pub enum Selection<'a> {
    Found(&'a Arc<Policy>),
    /// The route names a policy this config does not have.
    Unknown(String),
    /// Nothing names or matches a policy.
    None,
}

impl Policies {
    /// The route's policy (`context_extensions`), else the host's, else the default.
    pub fn select(&self, request: &AuthRequest) -> Selection<'_> {
        if let Some(name) = request.context.get(POLICY_CONTEXT_KEY) {
            return match self.by_name.get(name) {
                Some(p) => Selection::Found(p),
                None => Selection::Unknown(name.clone()),
            };
        }
        let host = strip_port(&request.host).to_ascii_lowercase();
        if let Some(p) = self.hosts.get(&host) {
            return Selection::Found(p);
        }
        if let Some((_, p)) = self.wildcard_hosts.iter().find(|(suffix, _)| host.ends_with(suffix.as_str())) {
            return Selection::Found(p);
        }
        match &self.default {
            Some(p) => Selection::Found(p),
            None => Selection::None,
        }
    }
}

impl std::fmt::Debug for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Policy").field("name", &self.name).finish_non_exhaustive()
    }
}

fn strip_port(host: &str) -> &str {
    // `[::1]:8080` keeps its brackets; `example.com:8080` loses the port.
    match host.rsplit_once(':') {
        Some((h, port)) if !h.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) && !h.ends_with(':') => h,
        _ => host,
    }
}
