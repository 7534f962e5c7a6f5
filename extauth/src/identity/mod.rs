//! Identity: who is calling. Each method reads one kind of credential and answers with an
//! [`Outcome`]; a policy combines its methods with "any of", "all of" or a boolean expression
//! ([`Combination`]).
//!
//! A method never fails a request because a credential is bad: that is `Outcome::Rejected`,
//! a 401. It returns `Err` only when it cannot decide (the IdP or Redis is unreachable and
//! nothing is cached), which Envoy turns into its `status_on_error`.

pub mod api_key;
pub mod basic;
pub mod claims;
pub mod expression;
pub mod introspection;
pub mod jwks;
pub mod jwt;
pub mod mtls;
pub mod oidc_login;
pub mod source;

use std::sync::Arc;

use serde_json::{Map, Value, json};

use crate::Error;
use crate::request::AuthRequest;

pub use expression::Expression;

/// What kind of credential proved an identity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    ApiKey,
    Basic,
    Jwt,
    Introspection,
    Mtls,
    Anonymous,
    /// A browser session from `oidc_login`.
    Session,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::ApiKey => "api_key",
            Kind::Basic => "basic",
            Kind::Jwt => "jwt",
            Kind::Introspection => "introspection",
            Kind::Mtls => "mtls",
            Kind::Anonymous => "anonymous",
            Kind::Session => "oidc_login",
        }
    }
}

/// An authenticated caller.
#[derive(Clone, Debug, PartialEq)]
pub struct Identity {
    /// The name of the method in the policy that authenticated the caller.
    pub method: Arc<str>,
    pub kind: Kind,
    /// API key id, user name, token `sub` (else `client_id`), or mTLS principal.
    pub subject: String,
    /// Token scopes, or the scopes listed in an API key's metadata.
    pub scopes: Vec<String>,
    /// Token claims (JWT, introspection) or certificate facts (mTLS).
    pub claims: Map<String, Value>,
    /// Per-credential metadata from the config or Redis: owner, plan, tenant...
    pub metadata: Map<String, Value>,
    /// Headers the method itself sends upstream (a browser session's tokens, when
    /// configured). Not part of what rules see.
    pub upstream_headers: Vec<(String, String)>,
    /// Headers the method sends back to the client with the upstream's response (a rewritten
    /// session cookie). Not part of what rules see.
    pub client_headers: Vec<(String, String)>,
}

impl Identity {
    pub fn new(method: &Arc<str>, kind: Kind, subject: impl Into<String>) -> Identity {
        Identity {
            method: method.clone(),
            kind,
            subject: subject.into(),
            scopes: Vec::new(),
            claims: Map::new(),
            metadata: Map::new(),
            upstream_headers: Vec::new(),
            client_headers: Vec::new(),
        }
    }

    /// The identity as rules, CEL and Rego see it under `identity` (docs/extauth.md).
    pub fn to_json(&self) -> Value {
        json!({
            "method": &*self.method,
            "kind": self.kind.as_str(),
            "sub": self.subject,
            "scopes": self.scopes,
            "claims": self.claims,
            "metadata": self.metadata,
        })
    }

    /// A value by dotted path from the identity JSON: `sub`, `claims.tenant`, `metadata.plan`.
    pub fn lookup(&self, path: &str) -> Option<Value> {
        let (head, rest) = path.split_once('.').map_or((path, None), |(h, r)| (h, Some(r)));
        let root = match head {
            "sub" | "subject" => return Some(Value::String(self.subject.clone())),
            "method" => return Some(Value::String(self.method.to_string())),
            "kind" => return Some(Value::String(self.kind.as_str().into())),
            "scopes" => return Some(Value::String(self.scopes.join(" "))),
            "claims" => &self.claims,
            "metadata" => &self.metadata,
            _ => return None,
        };
        match rest {
            None => Some(Value::Object(root.clone())),
            Some(rest) => lookup_path(root, rest).cloned(),
        }
    }
}

/// Follows a dotted path through JSON objects.
pub fn lookup_path<'a>(root: &'a Map<String, Value>, path: &str) -> Option<&'a Value> {
    let mut parts = path.split('.');
    let mut value = root.get(parts.next()?)?;
    for part in parts {
        value = value.as_object()?.get(part)?;
    }
    Some(value)
}

/// Renders a JSON value for a header or metadata string: strings as they are, arrays of
/// strings space-separated (as OAuth scopes are), anything else as JSON.
pub fn value_to_string(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Array(items) if items.iter().all(Value::is_string) => {
            items.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(" ")
        }
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// Why a credential was refused. The text goes into the deny body and must never contain the
/// credential itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    pub reason: String,
    /// RFC 6750 error code for Bearer challenges (`invalid_token`, `insufficient_scope`).
    pub bearer_error: Option<&'static str>,
}

impl Rejection {
    pub fn new(reason: impl Into<String>) -> Rejection {
        Rejection { reason: reason.into(), bearer_error: None }
    }

    pub fn invalid_token(reason: impl Into<String>) -> Rejection {
        Rejection { reason: reason.into(), bearer_error: Some("invalid_token") }
    }
}

/// The result of one identity method.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    Authenticated(Identity),
    /// The request carries no credential of this kind.
    Missing,
    /// The request carries a credential of this kind, and it is not valid.
    Rejected(Rejection),
}

/// One configured identity method.
pub enum Method {
    ApiKey(api_key::ApiKeys),
    Basic(basic::BasicAuth),
    Jwt(jwt::JwtAuth),
    Introspection(introspection::Introspection),
    Mtls(mtls::MtlsAuth),
    OidcLogin(Arc<oidc_login::OidcLogin>),
    Anonymous,
}

impl Method {
    /// The method's kind as configured: `api_key`, `basic`, `jwt`, `introspection`, `mtls`,
    /// `oidc_login` or `anonymous`.
    pub fn kind(&self) -> &'static str {
        match self {
            Method::ApiKey(_) => "api_key",
            Method::Basic(_) => "basic",
            Method::Jwt(_) => "jwt",
            Method::Introspection(_) => "introspection",
            Method::Mtls(_) => "mtls",
            Method::OidcLogin(_) => "oidc_login",
            Method::Anonymous => "anonymous",
        }
    }

    /// Runs the method, in an `identity` span with the method's name and kind and the outcome
    /// (`authenticated`, `missing`, `rejected` or `error`). Never the credential, the subject or
    /// the rejection's reason: spans leave the process.
    pub async fn authenticate(&self, name: &Arc<str>, request: &AuthRequest) -> Result<Outcome, Error> {
        use tracing::Instrument as _;
        let span = tracing::info_span!(
            "extauth.identity",
            otel.name = "identity",
            extauth.method = &**name,
            extauth.method.kind = self.kind(),
            extauth.outcome = tracing::field::Empty,
        );
        let result = self.run_method(name, request).instrument(span.clone()).await;
        if !span.is_disabled() {
            let outcome = match &result {
                Ok(Outcome::Authenticated(_)) => "authenticated",
                Ok(Outcome::Missing) => "missing",
                Ok(Outcome::Rejected(_)) => "rejected",
                Err(_) => "error",
            };
            span.record("extauth.outcome", outcome);
        }
        result
    }

    async fn run_method(&self, name: &Arc<str>, request: &AuthRequest) -> Result<Outcome, Error> {
        match self {
            Method::ApiKey(m) => m.authenticate(name, request).await,
            Method::Basic(m) => m.authenticate(name, request).await,
            Method::Jwt(m) => m.authenticate(name, request).await,
            Method::Introspection(m) => m.authenticate(name, request).await,
            Method::Mtls(m) => Ok(m.authenticate(name, request)),
            Method::OidcLogin(m) => m.authenticate(name, request).await,
            Method::Anonymous => Ok(Outcome::Authenticated(Identity::new(name, Kind::Anonymous, "anonymous"))),
        }
    }

    /// The `WWW-Authenticate` challenge this method offers (RFC 7235), if any.
    pub fn challenge(&self, realm: &str, rejection: Option<&Rejection>) -> Option<String> {
        let realm = realm.replace('"', "");
        match self {
            Method::Jwt(_) | Method::Introspection(_) => {
                let mut c = format!("Bearer realm=\"{realm}\"");
                if let Some(Rejection { bearer_error: Some(error), reason }) = rejection {
                    c.push_str(&format!(", error=\"{error}\", error_description=\"{}\"", reason.replace('"', "'")));
                }
                Some(c)
            }
            Method::Basic(_) => Some(format!("Basic realm=\"{realm}\", charset=\"UTF-8\"")),
            Method::ApiKey(_) => Some(format!("APIKey realm=\"{realm}\"")),
            // Browsers are redirected instead (Policy::evaluate).
            Method::Mtls(_) | Method::OidcLogin(_) | Method::Anonymous => None,
        }
    }
}

/// How a policy combines its identity methods.
pub enum Combination {
    /// The first method that authenticates wins (in order).
    AnyOf,
    /// Every method must authenticate; the first one's identity is the caller's.
    AllOf,
    /// A boolean expression over method names: `keys || (users && mesh)`.
    Expression(Expression),
}

/// A policy's identity stage.
pub struct IdentityStage {
    pub methods: Vec<(Arc<str>, Method)>,
    pub combination: Combination,
}

/// The identity stage's verdict.
#[derive(Debug, PartialEq)]
pub enum Verdict {
    Authenticated(Identity),
    /// Not authenticated: the most specific rejection (a bad credential beats a missing one),
    /// and the challenges of every method.
    Unauthenticated {
        rejection: Rejection,
        challenges: Vec<String>,
    },
}

impl IdentityStage {
    pub async fn run(&self, realm: &str, request: &AuthRequest) -> Result<Verdict, Error> {
        let mut outcomes: Vec<Option<Outcome>> = vec![None; self.methods.len()];
        let authenticated = match &self.combination {
            Combination::AnyOf => {
                let mut found = None;
                let mut rejected = false;
                for (i, (name, method)) in self.methods.iter().enumerate() {
                    // A bad credential is not rescued by a later `anonymous`: the caller tried
                    // to authenticate and failed.
                    if rejected && matches!(method, Method::Anonymous) {
                        continue;
                    }
                    let outcome = method.authenticate(name, request).await?;
                    rejected |= matches!(outcome, Outcome::Rejected(_));
                    let ok = matches!(outcome, Outcome::Authenticated(_));
                    outcomes[i] = Some(outcome);
                    if ok {
                        found = Some(i);
                        break;
                    }
                }
                found
            }
            Combination::AllOf => {
                let mut all = true;
                for (i, (name, method)) in self.methods.iter().enumerate() {
                    let outcome = method.authenticate(name, request).await?;
                    let ok = matches!(outcome, Outcome::Authenticated(_));
                    outcomes[i] = Some(outcome);
                    if !ok {
                        all = false;
                        break;
                    }
                }
                all.then_some(0)
            }
            Combination::Expression(expr) => {
                // Evaluate methods lazily, each at most once.
                let mut memo: Vec<Option<bool>> = vec![None; self.methods.len()];
                let mut pending = expr.evaluate(&memo);
                while let Err(needed) = pending {
                    let (name, method) = &self.methods[needed];
                    let outcome = method.authenticate(name, request).await?;
                    memo[needed] = Some(matches!(outcome, Outcome::Authenticated(_)));
                    outcomes[needed] = Some(outcome);
                    pending = expr.evaluate(&memo);
                }
                if pending == Ok(true) {
                    // The caller is the first method, in declaration order, that succeeded.
                    memo.iter().position(|m| *m == Some(true)).or(Some(usize::MAX))
                } else {
                    None
                }
            }
        };

        if let Some(i) = authenticated {
            if let Some(Some(Outcome::Authenticated(identity))) = outcomes.get_mut(i).map(Option::take) {
                return Ok(Verdict::Authenticated(identity));
            }
            // An expression can be true with no method authenticated (`!keys`): anonymous.
            let name: Arc<str> = Arc::from("expression");
            return Ok(Verdict::Authenticated(Identity::new(&name, Kind::Anonymous, "anonymous")));
        }

        let rejected = outcomes.iter().enumerate().find_map(|(i, o)| match o {
            Some(Outcome::Rejected(r)) => Some((i, r.clone())),
            _ => None,
        });
        let rejection = match &rejected {
            Some((_, r)) => r.clone(),
            None => Rejection::new("missing credentials"),
        };
        let challenges = self
            .methods
            .iter()
            .enumerate()
            .filter_map(|(i, (_, m))| {
                let r = rejected.as_ref().filter(|(j, _)| *j == i).map(|(_, r)| r);
                m.challenge(realm, r)
            })
            .collect();
        Ok(Verdict::Unauthenticated { rejection, challenges })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::api_key::{ApiKeys, KeyInfo, sha256};
    use crate::identity::source::SourceSpec;

    fn keys() -> Method {
        let mut by_digest = std::collections::HashMap::new();
        by_digest.insert(sha256(b"good"), Arc::new(KeyInfo { id: "k".into(), ..Default::default() }));
        Method::ApiKey(ApiKeys {
            sources: vec![SourceSpec::header("x-api-key", None).build().unwrap()],
            by_digest,
            argon2: Vec::new(),
            argon2_verified: moka::sync::Cache::new(1),
            redis: None,
        })
    }

    async fn run(stage: &IdentityStage, key: Option<&str>) -> Verdict {
        let mut r = AuthRequest::default();
        if let Some(k) = key {
            r.headers.insert("x-api-key".into(), k.into());
        }
        stage.run("realm", &r).await.unwrap()
    }

    fn subject(v: &Verdict) -> Option<&str> {
        match v {
            Verdict::Authenticated(i) => Some(&i.subject),
            Verdict::Unauthenticated { .. } => None,
        }
    }

    #[tokio::test]
    async fn anonymous_never_rescues_a_rejected_credential() {
        let stage = IdentityStage {
            methods: vec![(Arc::from("keys"), keys()), (Arc::from("anyone"), Method::Anonymous)],
            combination: Combination::AnyOf,
        };
        assert_eq!(subject(&run(&stage, Some("good")).await), Some("k"));
        assert_eq!(subject(&run(&stage, None).await), Some("anonymous"));
        let Verdict::Unauthenticated { rejection, challenges } = run(&stage, Some("bad")).await else {
            panic!("a wrong key must not pass as anonymous");
        };
        assert_eq!(rejection.reason, "invalid API key");
        assert_eq!(challenges, vec!["APIKey realm=\"realm\"".to_string()]);
    }

    #[tokio::test]
    async fn all_of_and_expressions() {
        let both = IdentityStage {
            methods: vec![(Arc::from("keys"), keys()), (Arc::from("anyone"), Method::Anonymous)],
            combination: Combination::AllOf,
        };
        assert_eq!(subject(&run(&both, Some("good")).await), Some("k"), "the first method's identity");
        assert_eq!(subject(&run(&both, None).await), None);
        let not_keys = IdentityStage {
            methods: vec![(Arc::from("keys"), keys())],
            combination: Combination::Expression(Expression::parse("!keys", |_| Some(0)).unwrap()),
        };
        assert_eq!(subject(&run(&not_keys, None).await), Some("anonymous"));
        assert_eq!(subject(&run(&not_keys, Some("good")).await), None);
    }
}
