//! The policy file: YAML parsed into the `*Spec` structs (unknown fields are errors), then
//! built into [`Policies`], checking everything a typo could break. Errors name the file, the
//! line and the field. The format is documented in docs/extauth.md.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use gatehouse_common::config::{ConfigDuration, ConfigError, ConfigErrors, Position, Spanned, load_yaml};
use gatehouse_common::matcher::MatchSpec;
use gatehouse_common::redis::RedisConn;
use jsonwebtoken::Algorithm;
use moka::sync::Cache;
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::authz::{Check, Condition, Rule, Selector};
use crate::identity::api_key::{ApiKeys, KeyInfo, RedisKeys, parse_sha256};
use crate::identity::basic::{BasicAuth, PasswordHash, parse_htpasswd};
use crate::identity::introspection::{ClientAuth, Introspection};
use crate::identity::jwks::{Discovered, Jwks, KeySource, Refresh, Registry, issuer_mismatch};
use crate::identity::jwt::{JwtAuth, token_cache};
use crate::identity::mtls::MtlsAuth;
use crate::identity::source::{Source, SourceSpec};
use crate::identity::{Combination, Expression, IdentityStage, Method};
use crate::policy::{Policies, Policy, ResponseSpec, SignedJwt, ValueSource};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSpec {
    pub policies: Vec<PolicySpec>,
    /// The policy for requests that neither name a policy nor match a host.
    pub default_policy: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicySpec {
    pub name: Spanned<String>,
    #[serde(default)]
    pub hosts: Vec<String>,
    /// The realm in `WWW-Authenticate` challenges; the policy name by default.
    pub realm: Option<String>,
    pub identity: IdentitySpec,
    #[serde(default)]
    pub authorization: Vec<RuleSpec>,
    #[serde(default)]
    pub response: ResponseFileSpec,
}

/// Exactly one of `any_of`, `all_of`, or `methods` with `expression`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentitySpec {
    pub any_of: Option<Vec<MethodSpec>>,
    pub all_of: Option<Vec<MethodSpec>>,
    pub methods: Option<Vec<MethodSpec>>,
    pub expression: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MethodSpec {
    pub name: Spanned<String>,
    pub api_key: Option<ApiKeySpec>,
    pub basic: Option<BasicSpec>,
    pub jwt: Option<JwtSpec>,
    pub introspection: Option<IntrospectionSpec>,
    pub mtls: Option<MtlsSpec>,
    pub oidc_login: Option<OidcLoginSpec>,
    pub anonymous: Option<AnonymousSpec>,
}

/// The browser login (docs/extauth.md, "Browser login").
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcLoginSpec {
    pub issuer: Spanned<String>,
    pub client_id: String,
    /// Relative to the policy file. Without it, a public client (PKCE only).
    pub client_secret_file: Option<String>,
    /// `client_secret_basic` (default with a secret), `client_secret_post`, or `none`.
    pub client_auth: Option<Spanned<String>>,
    /// Absolute: the IdP sends the browser back here, and Check handles its path.
    pub redirect_uri: Spanned<String>,
    /// `openid` is always asked for. Default: openid, profile, email.
    pub scopes: Option<Vec<String>>,
    /// Relative to the policy file: at least 32 random bytes that seal the login cookies.
    pub cookie_secret_file: Spanned<String>,
    /// Default `__Host-gatehouse`.
    pub cookie_prefix: Option<Spanned<String>>,
    /// `auto` (default: navigations only), `always` or `never`.
    pub redirect: Option<Spanned<String>>,
    pub logout_path: Option<String>,
    pub post_logout_redirect_uri: Option<String>,
    /// Where logout ends without an IdP logout page: a path, or a URL on an allowed host.
    /// Default `/`.
    pub after_logout_url: Option<Spanned<String>>,
    /// Hosts (`host` or `host:port`) that `rd=` and `after_logout_url` may name.
    #[serde(default)]
    pub allowed_redirect_hosts: Vec<String>,
    #[serde(default)]
    pub session: SessionSpec,
    /// Default 30s.
    pub leeway: Option<ConfigDuration>,
    /// Default 10m: how long a login may take at the IdP.
    pub login_timeout: Option<ConfigDuration>,
    /// Default 5.
    pub max_login_attempts: Option<usize>,
    pub id_token_header: Option<String>,
    pub access_token_header: Option<String>,
    /// Default 5s: discovery and the code exchange.
    pub timeout: Option<ConfigDuration>,
    /// Default 60s: refresh when the access token has less than this left.
    pub refresh_ahead: Option<ConfigDuration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionSpec {
    /// `redis` (default) or `cookie` (no Redis; docs/extauth.md lists what it cannot do).
    pub store: Option<Spanned<String>>,
    /// Default 1h.
    pub idle_timeout: Option<ConfigDuration>,
    /// Default 12h.
    pub absolute_timeout: Option<ConfigDuration>,
    /// Default `gatehouse:session:`.
    pub redis_prefix: Option<String>,
    /// Default 5s (at most 30s; 0 turns the cache off): how long a replica keeps a session
    /// in memory. Logouts on any replica reach every cache within 100 ms regardless.
    pub cache_ttl: Option<Spanned<ConfigDuration>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnonymousSpec {}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeySpec {
    /// Default: the `x-api-key` header.
    #[serde(default)]
    pub from: Vec<SourceSpec>,
    #[serde(default)]
    pub keys: Vec<KeySpec>,
    /// Also look keys up in Redis (REDIS_URL) under this prefix.
    pub redis_prefix: Option<String>,
    /// How long a Redis answer is trusted (default 10s).
    pub redis_cache_ttl: Option<ConfigDuration>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeySpec {
    pub id: String,
    /// `sha256:<hex>` or an argon2 PHC string (`gatehouse-extauth hash-key`).
    pub hash: Spanned<String>,
    #[serde(default)]
    pub metadata: Map<String, Value>,
    #[serde(default)]
    pub scopes: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BasicSpec {
    /// An htpasswd file, relative to the policy file.
    pub htpasswd_file: Option<String>,
    /// htpasswd lines inline: `user:hash`.
    #[serde(default)]
    pub users: Vec<String>,
    pub cache_ttl: Option<ConfigDuration>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtSpec {
    pub issuer: Spanned<String>,
    /// Without it, the issuer's OIDC discovery document names the JWKS.
    pub jwks_uri: Option<String>,
    #[serde(default)]
    pub audiences: Vec<String>,
    /// Default: RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA.
    pub algorithms: Option<Spanned<Vec<String>>>,
    /// Default 30s.
    pub leeway: Option<ConfigDuration>,
    /// Default: `Authorization: Bearer`.
    #[serde(default)]
    pub from: Vec<SourceSpec>,
    #[serde(default)]
    pub required_scopes: Vec<String>,
    #[serde(default)]
    pub required_claims: BTreeMap<String, MatchSpec>,
    /// Default 8 KiB.
    pub max_token_bytes: Option<usize>,
    /// Default 5m.
    pub jwks_refresh: Option<ConfigDuration>,
    /// Least time between refetches for unknown kids. Default 30s.
    pub jwks_min_refetch: Option<ConfigDuration>,
    /// Default 5s.
    pub timeout: Option<ConfigDuration>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IntrospectionSpec {
    pub endpoint: Spanned<String>,
    pub client_id: String,
    pub client_secret: Option<String>,
    /// A file holding the client secret (a mounted Kubernetes Secret), relative to the policy file.
    pub client_secret_file: Option<String>,
    /// `client_secret_basic` (default) or `client_secret_post`.
    pub client_auth: Option<Spanned<String>>,
    #[serde(default)]
    pub from: Vec<SourceSpec>,
    #[serde(default)]
    pub required_scopes: Vec<String>,
    /// The answer's `aud` must name one of these.
    #[serde(default)]
    pub audiences: Vec<String>,
    /// Default 60s, and never past the token's `exp`.
    pub cache_ttl: Option<ConfigDuration>,
    pub timeout: Option<ConfigDuration>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MtlsSpec {
    /// Principals (SPIFFE IDs or subjects) allowed; any matcher may match.
    pub allow: Vec<MatchSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    pub name: Spanned<String>,
    pub when: Option<ConditionSpec>,
    pub require: Option<ConditionSpec>,
    pub cel: Option<String>,
    pub rego: Option<RegoSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegoSpec {
    /// Rego source inline, or `file` relative to the policy file.
    pub module: Option<String>,
    pub file: Option<String>,
    /// The rule that must be `true`, e.g. `data.gatehouse.allow`.
    pub query: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConditionSpec {
    pub method: Option<MatchSpec>,
    pub path: Option<MatchSpec>,
    pub host: Option<MatchSpec>,
    pub subject: Option<MatchSpec>,
    pub scopes: Option<MatchSpec>,
    #[serde(default)]
    pub headers: BTreeMap<String, MatchSpec>,
    #[serde(default)]
    pub query: BTreeMap<String, MatchSpec>,
    #[serde(default)]
    pub context: BTreeMap<String, MatchSpec>,
    #[serde(default)]
    pub claims: BTreeMap<String, MatchSpec>,
    #[serde(default)]
    pub metadata: BTreeMap<String, MatchSpec>,
}

/// `value: literal` or `from: identity path`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValueSpec {
    pub value: Option<String>,
    pub from: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResponseFileSpec {
    #[serde(default)]
    pub headers: BTreeMap<String, ValueSpec>,
    #[serde(default)]
    pub remove_headers: Vec<String>,
    #[serde(default)]
    pub query_set: BTreeMap<String, ValueSpec>,
    #[serde(default)]
    pub query_remove: Vec<String>,
    #[serde(default)]
    pub client_headers: BTreeMap<String, ValueSpec>,
    #[serde(default)]
    pub metadata: BTreeMap<String, ValueSpec>,
    pub signed_jwt: Option<SignedJwtSpec>,
    #[serde(default = "yes")]
    pub strip_credentials: bool,
}

impl Default for ResponseFileSpec {
    fn default() -> Self {
        ResponseFileSpec {
            headers: BTreeMap::new(),
            remove_headers: Vec::new(),
            query_set: BTreeMap::new(),
            query_remove: Vec::new(),
            client_headers: BTreeMap::new(),
            metadata: BTreeMap::new(),
            signed_jwt: None,
            strip_credentials: true,
        }
    }
}

fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedJwtSpec {
    /// Default `x-gatehouse-jwt`.
    pub header: Option<String>,
    /// Default 60s.
    pub ttl: Option<ConfigDuration>,
    pub audience: Option<String>,
    #[serde(default)]
    pub claims: Vec<String>,
}

/// What building a config needs besides the file.
pub struct BuildContext<'a> {
    pub jwks: &'a Registry,
    pub redis: Option<&'a RedisConn>,
    /// Validating only (`check-config`): settings such as Redis are not required.
    pub check_only: bool,
}

const DEFAULT_ALGORITHMS: [Algorithm; 9] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

/// Loads and builds the policy file. Contacts no IdP: see [`load_and_check_issuers`].
pub fn load(file: &Path, ctx: &BuildContext<'_>) -> Result<Policies, ConfigErrors> {
    let spec: FileSpec = load_yaml(file)?;
    Builder { file, ctx, errors: Vec::new(), referenced: Vec::new(), issuer_checks: Vec::new() }.build(spec)
}

/// A `jwt.issuer` whose discovery document must name it identically.
pub struct IssuerCheck {
    what: String,
    at: Position,
    configured: String,
    jwks: Arc<Jwks>,
}

/// Loads the policy file, then fetches the discovery document of every issuer that uses
/// discovery and refuses the file if one names a different issuer (say `http://idp` for a
/// configured `http://idp/`): under such a config every token would be refused. An IdP that
/// cannot be reached is not an error (keys are fetched again in the background); its
/// warning is returned with the policies.
///
/// Blocks on the IdP, bounded by each issuer's `timeout`: call it from a blocking thread
/// (the reloader's, `spawn_blocking`), never from async code.
pub fn load_and_check_issuers(file: &Path, ctx: &BuildContext<'_>) -> Result<(Policies, Vec<String>), ConfigErrors> {
    let policies = load(file, ctx)?;
    let mut errors = Vec::new();
    let mut warnings = Vec::new();
    ctx.jwks.runtime().block_on(async {
        for check in &policies.issuer_checks {
            match check.jwks.discovered().await {
                Some(Discovered::Issuer { url, issuer }) if issuer != check.configured => errors.push(ConfigError::at(
                    file,
                    check.at,
                    format!("{}: jwt.issuer: {}", check.what, issuer_mismatch(&check.configured, &issuer, &url)),
                )),
                Some(Discovered::Unreachable(e)) => warnings.push(format!(
                    "{}: jwt.issuer {:?} was not checked against its discovery document: {e}",
                    check.what, check.configured
                )),
                Some(Discovered::Issuer { .. }) | None => {}
            }
        }
    });
    if errors.is_empty() { Ok((policies, warnings)) } else { Err(ConfigErrors(errors)) }
}

struct Builder<'a, 'b> {
    file: &'a Path,
    ctx: &'a BuildContext<'b>,
    errors: Vec<ConfigError>,
    /// Files the policies read (htpasswd, Rego, secrets): watched for changes too.
    referenced: Vec<PathBuf>,
    issuer_checks: Vec<IssuerCheck>,
}

impl Builder<'_, '_> {
    fn error(&mut self, position: Position, message: impl Into<String>) {
        self.errors.push(ConfigError::at(self.file, position, message));
    }

    /// The bytes of a file named relative to the policy file (which is then watched too).
    fn read_relative(&mut self, path: &str) -> Result<Vec<u8>, String> {
        let full = self.relative(path);
        std::fs::read(&full).map_err(|e| format!("{}: {e}", full.display()))
    }

    /// A path from the policy file, relative to it; remembered for watching.
    fn relative(&mut self, path: &str) -> PathBuf {
        let path = Path::new(path);
        let path = if path.is_absolute() {
            path.to_path_buf()
        } else {
            self.file.parent().unwrap_or(Path::new(".")).join(path)
        };
        self.referenced.push(path.clone());
        path
    }

    fn build(mut self, spec: FileSpec) -> Result<Policies, ConfigErrors> {
        let mut policies = Policies::default();
        for p in spec.policies {
            let at = Position::of(&p.name);
            let name = p.name.value.clone();
            let hosts = p.hosts.clone();
            let Some(policy) = self.policy(p) else { continue };
            let policy = Arc::new(policy);
            if policies.by_name.insert(name.clone(), policy.clone()).is_some() {
                self.error(at, format!("policies: duplicate policy name {name:?}"));
            }
            for host in hosts {
                let host = host.to_ascii_lowercase();
                if host.contains(':') || (host.starts_with('*') && !host.starts_with("*.")) {
                    self.error(
                        at,
                        format!(
                            "policy {name:?}: host {host:?}: write a host without a port, or `*.suffix` for a wildcard"
                        ),
                    );
                    continue;
                }
                let clash = match host.strip_prefix('*') {
                    Some(suffix) => {
                        let clash = policies.wildcard_hosts.iter().any(|(s, _)| s == suffix);
                        policies.wildcard_hosts.push((suffix.to_string(), policy.clone()));
                        clash
                    }
                    None => policies.hosts.insert(host.clone(), policy.clone()).is_some(),
                };
                if clash {
                    self.error(at, format!("policy {name:?}: host {host:?} is already claimed by another policy"));
                }
            }
        }
        // Longest wildcard suffix first: `*.api.example.com` beats `*.example.com`.
        policies.wildcard_hosts.sort_by_key(|(suffix, _)| std::cmp::Reverse(suffix.len()));
        if let Some(default) = spec.default_policy {
            match policies.by_name.get(&default.value) {
                Some(p) => policies.default = Some(p.clone()),
                None => {
                    self.error(Position::of(&default), format!("default_policy: no policy named {:?}", default.value))
                }
            }
        }
        policies.files = std::iter::once(self.file.to_path_buf()).chain(self.referenced).collect();
        policies.issuer_checks = self.issuer_checks;
        if self.errors.is_empty() { Ok(policies) } else { Err(ConfigErrors(self.errors)) }
    }

    fn policy(&mut self, p: PolicySpec) -> Option<Policy> {
        let at = Position::of(&p.name);
        let name: Arc<str> = Arc::from(p.name.value.as_str());
        let errors_before = self.errors.len();
        if name.is_empty() {
            self.error(at, "policy name must not be empty");
        }
        let identity = self.identity(&name, at, p.identity);
        let rules: Vec<Rule> = p.authorization.into_iter().filter_map(|r| self.rule(&name, r)).collect();
        let response = self.response(&name, at, p.response);
        if self.errors.len() > errors_before {
            return None;
        }
        Some(Policy { realm: p.realm.unwrap_or_else(|| name.to_string()), name, identity: identity?, rules, response })
    }

    fn identity(&mut self, policy: &str, at: Position, spec: IdentitySpec) -> Option<IdentityStage> {
        let (methods, expression, mut combination) = match (spec.any_of, spec.all_of, spec.methods, spec.expression) {
            (Some(m), None, None, None) => (m, None, Combination::AnyOf),
            (None, Some(m), None, None) => (m, None, Combination::AllOf),
            (None, None, Some(m), Some(e)) => (m, Some(e), Combination::AnyOf),
            _ => {
                self.error(
                    at,
                    format!(
                        "policy {policy:?}: identity needs exactly one of `any_of`, `all_of`, or `methods` with `expression`"
                    ),
                );
                return None;
            }
        };
        let mut built = Vec::new();
        let mut seen = HashSet::new();
        for m in methods {
            let m_at = Position::of(&m.name);
            let name = m.name.value.clone();
            if !seen.insert(name.clone()) {
                self.error(m_at, format!("policy {policy:?}: duplicate identity method name {name:?}"));
            }
            if let Some(method) = self.method(policy, m) {
                let logins =
                    |b: &[(Arc<str>, Method)]| b.iter().filter(|(_, m)| matches!(m, Method::OidcLogin(_))).count();
                if matches!(method, Method::OidcLogin(_)) && logins(&built) > 0 {
                    // One callback path, one session cookie, one login per policy.
                    self.error(
                        m_at,
                        format!("policy {policy:?}: method {name:?}: a policy has at most one oidc_login"),
                    );
                }
                built.push((Arc::from(name.as_str()), method));
            }
        }
        if let Some(e) = expression {
            match Expression::parse(&e.value, |n| built.iter().position(|(m, _): &(Arc<str>, _)| &**m == n)) {
                Ok(parsed) => combination = Combination::Expression(parsed),
                Err(message) => {
                    self.error(Position::of(&e), format!("policy {policy:?}: identity.expression: {message}"));
                    return None;
                }
            }
        }
        if built.is_empty() {
            self.error(at, format!("policy {policy:?}: identity lists no methods"));
            return None;
        }
        Some(IdentityStage { methods: built, combination })
    }

    fn sources(&mut self, at: Position, what: &str, specs: &[SourceSpec], default: Source) -> Vec<Source> {
        if specs.is_empty() {
            return vec![default];
        }
        let mut out = Vec::new();
        for s in specs {
            match s.build() {
                Ok(source) => out.push(source),
                Err(e) => self.error(at, format!("{what}.from: {e}")),
            }
        }
        out
    }

    fn method(&mut self, policy: &str, m: MethodSpec) -> Option<Method> {
        let at = Position::of(&m.name);
        let what = format!("policy {policy:?}, method {:?}", m.name.value);
        let count = [
            m.api_key.is_some(),
            m.basic.is_some(),
            m.jwt.is_some(),
            m.introspection.is_some(),
            m.mtls.is_some(),
            m.oidc_login.is_some(),
            m.anonymous.is_some(),
        ]
        .iter()
        .filter(|b| **b)
        .count();
        if count != 1 {
            self.error(
                at,
                format!(
                    "{what}: needs exactly one of `api_key`, `basic`, `jwt`, `introspection`, `mtls`, `oidc_login`, `anonymous`"
                ),
            );
            return None;
        }
        if let Some(spec) = m.api_key {
            return self.api_key(&what, at, spec);
        }
        if let Some(spec) = m.basic {
            return self.basic(&what, at, spec);
        }
        if let Some(spec) = m.jwt {
            return self.jwt(&what, at, spec);
        }
        if let Some(spec) = m.introspection {
            return self.introspection(&what, at, spec);
        }
        if let Some(spec) = m.oidc_login {
            return self.oidc_login(&what, at, spec);
        }
        if let Some(spec) = m.mtls {
            let mut allow = Vec::new();
            for matcher in &spec.allow {
                match matcher.compile() {
                    Ok(c) => allow.push(c),
                    Err(e) => self.error(at, format!("{what}: mtls.allow: {e}")),
                }
            }
            if allow.is_empty() {
                self.error(at, format!("{what}: mtls.allow lists no principals"));
            }
            return Some(Method::Mtls(MtlsAuth { allow }));
        }
        Some(Method::Anonymous)
    }

    fn api_key(&mut self, what: &str, at: Position, spec: ApiKeySpec) -> Option<Method> {
        let sources = self.sources(
            at,
            &format!("{what}: api_key"),
            &spec.from,
            Source::Header { name: "x-api-key".into(), prefix: None },
        );
        let mut by_digest = HashMap::new();
        let mut argon2 = Vec::new();
        let mut ids = HashSet::new();
        for key in spec.keys {
            let key_at = Position::of(&key.hash);
            if !ids.insert(key.id.clone()) {
                self.error(key_at, format!("{what}: duplicate API key id {:?}", key.id));
            }
            let info = Arc::new(KeyInfo { id: key.id, metadata: key.metadata, scopes: key.scopes });
            let hash = key.hash.value.trim();
            if let Some(digest) = parse_sha256(hash) {
                if by_digest.insert(digest, info).is_some() {
                    self.error(key_at, format!("{what}: two API keys have the same hash"));
                }
            } else if hash.starts_with("$argon2") && argon2::PasswordHash::new(hash).is_ok() {
                argon2.push((hash.to_string(), info));
            } else {
                self.error(
                    key_at,
                    format!(
                        "{what}: API key {:?}: hash must be `sha256:<64 hex digits>` or an argon2 PHC string; keys are never stored in clear (`gatehouse-extauth hash-key`)",
                        info.id
                    ),
                );
            }
        }
        let redis = match (spec.redis_prefix, self.ctx.redis) {
            (Some(prefix), Some(conn)) => Some(RedisKeys::new(
                conn.clone(),
                prefix,
                spec.redis_cache_ttl.map_or(Duration::from_secs(10), |d| d.0),
                self.ctx.jwks.dependencies().clone(),
            )),
            (Some(_), None) if self.ctx.check_only => None,
            (Some(_), None) => {
                self.error(at, format!("{what}: api_key.redis_prefix needs Redis: set REDIS_URL"));
                None
            }
            (None, _) => None,
        };
        if by_digest.is_empty() && argon2.is_empty() && redis.is_none() && !self.ctx.check_only {
            self.error(at, format!("{what}: api_key has no `keys` and no `redis_prefix`"));
        }
        Some(Method::ApiKey(ApiKeys {
            sources,
            by_digest,
            argon2,
            argon2_verified: Cache::builder().max_capacity(10_000).time_to_live(Duration::from_secs(300)).build(),
            redis,
        }))
    }

    fn basic(&mut self, what: &str, at: Position, spec: BasicSpec) -> Option<Method> {
        let mut users: HashMap<String, PasswordHash> = HashMap::new();
        if let Some(file) = &spec.htpasswd_file {
            let path = self.relative(file);
            match std::fs::read_to_string(&path) {
                Ok(text) => match parse_htpasswd(&text) {
                    Ok(u) => users.extend(u),
                    Err((line, message)) => {
                        self.errors.push(ConfigError::at(&path, Position { line: line as u64, column: 1 }, message))
                    }
                },
                Err(e) => self.error(at, format!("{what}: basic.htpasswd_file {}: {e}", path.display())),
            }
        }
        match parse_htpasswd(&spec.users.join("\n")) {
            Ok(u) => users.extend(u),
            Err((line, message)) => self.error(at, format!("{what}: basic.users[{}]: {message}", line - 1)),
        }
        if users.is_empty() {
            self.error(at, format!("{what}: basic has no users"));
        }
        Some(Method::Basic(BasicAuth::new(users, spec.cache_ttl.map_or(Duration::from_secs(300), |d| d.0))))
    }

    fn jwt(&mut self, what: &str, at: Position, spec: JwtSpec) -> Option<Method> {
        let algorithms = match &spec.algorithms {
            None => DEFAULT_ALGORITHMS.to_vec(),
            Some(list) => {
                let mut out = Vec::new();
                for name in &list.value {
                    match name.parse::<Algorithm>() {
                        Ok(Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512) => self.error(
                            Position::of(list),
                            format!(
                                "{what}: jwt.algorithms: {name} is a shared-secret algorithm; with keys from a public JWKS anyone could forge tokens (algorithm confusion). Use RS256, PS256, ES256 or EdDSA"
                            ),
                        ),
                        Ok(alg) => out.push(alg),
                        Err(_) => self.error(Position::of(list), format!("{what}: jwt.algorithms: unknown algorithm {name:?}")),
                    }
                }
                out
            }
        };
        let issuer = spec.issuer.value.clone();
        if !(issuer.starts_with("https://") || issuer.starts_with("http://")) {
            self.error(Position::of(&spec.issuer), format!("{what}: jwt.issuer must be an http(s) URL"));
        }
        let mut required_claims = Vec::new();
        for (claim, matcher) in &spec.required_claims {
            match matcher.compile() {
                Ok(m) => required_claims.push((claim.clone(), m)),
                Err(e) => self.error(at, format!("{what}: jwt.required_claims.{claim}: {e}")),
            }
        }
        let sources = self.sources(at, &format!("{what}: jwt"), &spec.from, bearer());
        let refresh = Refresh {
            every: spec.jwks_refresh.map_or(Duration::from_secs(300), |d| d.0),
            min_refetch: spec.jwks_min_refetch.map_or(Duration::from_secs(30), |d| d.0),
            timeout: spec.timeout.map_or(Duration::from_secs(5), |d| d.0),
        };
        let discovery = spec.jwks_uri.is_none();
        let source = match spec.jwks_uri {
            Some(uri) => KeySource::Uri(uri),
            None => KeySource::Discovery { issuer: issuer.clone() },
        };
        let jwks = self.ctx.jwks.get(source, refresh);
        if discovery {
            self.issuer_checks.push(IssuerCheck {
                what: what.to_string(),
                at: Position::of(&spec.issuer),
                configured: issuer,
                jwks: jwks.clone(),
            });
        }
        Some(Method::Jwt(JwtAuth {
            sources,
            issuer: spec.issuer.value.clone(),
            audiences: spec.audiences,
            algorithms,
            leeway: spec.leeway.map_or(Duration::from_secs(30), |d| d.0),
            max_token_bytes: spec.max_token_bytes.unwrap_or(8 * 1024),
            required_scopes: spec.required_scopes,
            required_claims,
            jwks,
            cache: token_cache(100_000),
        }))
    }

    fn oidc_login(&mut self, what: &str, at: Position, spec: OidcLoginSpec) -> Option<Method> {
        use crate::identity::oidc_login::cookie_sessions::CookieSessions;
        use crate::identity::oidc_login::{ClientAuth, OidcLogin, RedirectMode, Settings, Store, session, web};
        let issuer = spec.issuer.value.clone();
        if !(issuer.starts_with("https://") || issuer.starts_with("http://")) {
            self.error(Position::of(&spec.issuer), format!("{what}: oidc_login.issuer must be an http(s) URL"));
        }
        let redirect_uri = spec.redirect_uri.value.clone();
        if !(redirect_uri.starts_with("https://") || redirect_uri.starts_with("http://")) {
            self.error(
                Position::of(&spec.redirect_uri),
                format!("{what}: oidc_login.redirect_uri must be an absolute http(s) URL"),
            );
        }
        let client_secret = spec.client_secret_file.as_ref().and_then(|f| match self.read_relative(f) {
            Ok(bytes) => Some(String::from_utf8_lossy(&bytes).trim().to_string()),
            Err(e) => {
                self.error(at, format!("{what}: oidc_login.client_secret_file: {e}"));
                None
            }
        });
        let client_auth = match spec.client_auth.as_ref().map(|s| s.value.as_str()) {
            None if spec.client_secret_file.is_none() => ClientAuth::None,
            None | Some("client_secret_basic") => ClientAuth::Basic,
            Some("client_secret_post") => ClientAuth::Post,
            Some("none") => ClientAuth::None,
            Some(other) => {
                self.error(
                    spec.client_auth.as_ref().map(Position::of).unwrap_or(at),
                    format!("{what}: oidc_login.client_auth: {other:?}; expected client_secret_basic, client_secret_post or none"),
                );
                ClientAuth::None
            }
        };
        if client_auth != ClientAuth::None && spec.client_secret_file.is_none() {
            self.error(at, format!("{what}: oidc_login.client_auth needs client_secret_file"));
        }
        let cookie_secret = match self.read_relative(&spec.cookie_secret_file.value) {
            Ok(bytes) if bytes.len() >= 32 => bytes,
            Ok(bytes) => {
                self.error(
                    Position::of(&spec.cookie_secret_file),
                    format!(
                        "{what}: oidc_login.cookie_secret_file holds {} bytes; it needs at least 32 random bytes (`openssl rand 32 > file`)",
                        bytes.len()
                    ),
                );
                return None;
            }
            Err(e) => {
                self.error(
                    Position::of(&spec.cookie_secret_file),
                    format!("{what}: oidc_login.cookie_secret_file: {e}"),
                );
                return None;
            }
        };
        let cookie_prefix = spec.cookie_prefix.as_ref().map_or("__Host-gatehouse".to_string(), |p| p.value.clone());
        if !cookie_prefix.starts_with("__Host-")
            || !cookie_prefix[7..].bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            self.error(
                spec.cookie_prefix.as_ref().map(Position::of).unwrap_or(at),
                format!(
                    "{what}: oidc_login.cookie_prefix must start with __Host- and hold only letters, digits, - and _"
                ),
            );
        }
        let redirect = match spec.redirect.as_ref().map(|s| s.value.as_str()) {
            None | Some("auto") => RedirectMode::Auto,
            Some("always") => RedirectMode::Always,
            Some("never") => RedirectMode::Never,
            Some(other) => {
                self.error(
                    spec.redirect.as_ref().map(Position::of).unwrap_or(at),
                    format!("{what}: oidc_login.redirect: {other:?}; expected auto, always or never"),
                );
                RedirectMode::Auto
            }
        };
        let mut scopes = spec.scopes.unwrap_or_else(|| vec!["profile".into(), "email".into()]);
        scopes.retain(|s| s != "openid");
        let after_logout_url = match &spec.after_logout_url {
            None => "/".to_string(),
            Some(url) => match web::safe_redirect(&url.value, &spec.allowed_redirect_hosts) {
                Ok(url) => url,
                Err(why) => {
                    self.error(
                        Position::of(url),
                        format!("{what}: oidc_login.after_logout_url {:?}: {why}; use a path such as /bye or list the host in allowed_redirect_hosts", url.value),
                    );
                    "/".into()
                }
            },
        };
        if let Some(ttl) = &spec.session.cache_ttl
            && ttl.value.0 > Duration::from_secs(30)
        {
            self.error(Position::of(ttl), format!("{what}: oidc_login.session.cache_ttl is at most 30s"));
        }
        let timeouts = session::Timeouts {
            idle: spec.session.idle_timeout.map_or(Duration::from_secs(3600), |d| d.0),
            absolute: spec.session.absolute_timeout.map_or(Duration::from_secs(12 * 3600), |d| d.0),
        };
        let store = match spec.session.store.as_ref().map(|s| s.value.as_str()) {
            Some("cookie") => Some(Store::Cookie(Box::new(CookieSessions::new(
                &cookie_secret,
                format!("{cookie_prefix}-session"),
                timeouts,
            )))),
            None | Some("redis") => match self.ctx.redis {
                Some(conn) => Some(Store::Redis(Box::new(session::RedisSessions::new(
                    conn.clone(),
                    spec.session.redis_prefix.unwrap_or_else(|| "gatehouse:session:".into()),
                    timeouts,
                    spec.session.cache_ttl.as_ref().map_or(Duration::from_secs(5), |d| d.value.0),
                    self.ctx.jwks.dependencies().clone(),
                )))),
                None if self.ctx.check_only => None,
                None => {
                    self.error(
                        spec.session.store.as_ref().map(Position::of).unwrap_or(at),
                        format!("{what}: oidc_login keeps sessions in Redis: set REDIS_URL, or choose `session: {{store: cookie}}`"),
                    );
                    return None;
                }
            },
            Some(other) => {
                self.error(
                    spec.session.store.as_ref().map(Position::of).unwrap_or(at),
                    format!("{what}: oidc_login.session.store: {other:?}; expected redis or cookie"),
                );
                return None;
            }
        };
        let settings = Settings {
            issuer,
            client_id: spec.client_id,
            client_secret,
            client_auth,
            redirect_uri,
            scopes,
            logout_path: spec.logout_path,
            post_logout_redirect_uri: spec.post_logout_redirect_uri,
            after_logout_url,
            allowed_redirect_hosts: spec.allowed_redirect_hosts,
            redirect,
            cookie_prefix,
            cookie_secret,
            login_timeout: spec.login_timeout.map_or(Duration::from_secs(600), |d| d.0),
            max_login_attempts: spec.max_login_attempts.unwrap_or(5).max(1),
            leeway: spec.leeway.map_or(Duration::from_secs(30), |d| d.0),
            id_token_header: spec.id_token_header.map(|h| h.to_ascii_lowercase()),
            access_token_header: spec.access_token_header.map(|h| h.to_ascii_lowercase()),
            timeout: spec.timeout.map_or(Duration::from_secs(5), |d| d.0),
            refresh_ahead: spec.refresh_ahead.map_or(Duration::from_secs(60), |d| d.0),
        };
        let http = reqwest::Client::builder()
            // Following redirects from the IdP's endpoints would open the door to SSRF.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_else(|_| self.ctx.jwks.http().clone());
        // ID and logout tokens are verified like bearer tokens, over the issuer's shared JWKS cache.
        let refresh = Refresh {
            every: Duration::from_secs(300),
            min_refetch: Duration::from_secs(30),
            timeout: settings.timeout,
        };
        let jwks = self.ctx.jwks.get(KeySource::Discovery { issuer: settings.issuer.clone() }, refresh);
        let issuer_tokens = JwtAuth {
            sources: Vec::new(),
            issuer: settings.issuer.clone(),
            audiences: vec![settings.client_id.clone()],
            algorithms: DEFAULT_ALGORITHMS.to_vec(),
            leeway: settings.leeway,
            max_token_bytes: 16 * 1024,
            required_scopes: Vec::new(),
            required_claims: Vec::new(),
            jwks,
            cache: token_cache(1),
        };
        match OidcLogin::new(settings, store, http, self.ctx.jwks.dependencies().clone(), issuer_tokens) {
            Ok(login) => Some(Method::OidcLogin(Arc::new(login))),
            Err(e) => {
                self.error(at, format!("{what}: oidc_login: {e}"));
                None
            }
        }
    }

    fn introspection(&mut self, what: &str, at: Position, spec: IntrospectionSpec) -> Option<Method> {
        let client_auth = match spec.client_auth.as_ref().map(|s| s.value.as_str()) {
            None | Some("client_secret_basic") => ClientAuth::Basic,
            Some("client_secret_post") => ClientAuth::Post,
            Some(other) => {
                self.error(
                    spec.client_auth.as_ref().map(Position::of).unwrap_or(at),
                    format!("{what}: introspection.client_auth: {other:?}; expected client_secret_basic or client_secret_post"),
                );
                ClientAuth::Basic
            }
        };
        let secret = match (spec.client_secret, &spec.client_secret_file) {
            (Some(s), None) => s,
            (None, Some(file)) => {
                let path = self.relative(file);
                match std::fs::read_to_string(&path) {
                    Ok(s) => s.trim().to_string(),
                    Err(e) => {
                        self.error(at, format!("{what}: introspection.client_secret_file {}: {e}", path.display()));
                        String::new()
                    }
                }
            }
            _ => {
                self.error(at, format!("{what}: introspection needs exactly one of client_secret, client_secret_file"));
                String::new()
            }
        };
        let sources = self.sources(at, &format!("{what}: introspection"), &spec.from, bearer());
        Some(Method::Introspection(Introspection {
            sources,
            endpoint: spec.endpoint.value,
            client_id: spec.client_id,
            client_secret: secret,
            client_auth,
            required_scopes: spec.required_scopes,
            audiences: spec.audiences,
            cache_ttl: spec.cache_ttl.map_or(Duration::from_secs(60), |d| d.0),
            timeout: spec.timeout.map_or(Duration::from_secs(5), |d| d.0),
            http: self.ctx.jwks.http().clone(),
            cache: token_cache(100_000),
            deps: self.ctx.jwks.dependencies().clone(),
        }))
    }

    fn rule(&mut self, policy: &str, r: RuleSpec) -> Option<Rule> {
        let at = Position::of(&r.name);
        let what = format!("policy {policy:?}, rule {:?}", r.name.value);
        let when = r.when.map(|c| self.condition(&what, at, c));
        let check = match (r.require, r.cel, r.rego) {
            (Some(c), None, None) => Check::Require(self.condition(&what, at, c)),
            (None, Some(expr), None) => match cel::Program::compile(&expr) {
                Ok(p) => Check::Cel(Box::new(p)),
                Err(e) => {
                    self.error(
                        at,
                        format!("{what}: cel: {}", e.to_string().lines().next().unwrap_or("invalid expression")),
                    );
                    return None;
                }
            },
            (None, None, Some(rego)) => self.rego(&what, at, rego)?,
            _ => {
                self.error(at, format!("{what}: needs exactly one of `require`, `cel`, `rego`"));
                return None;
            }
        };
        Some(Rule { name: Arc::from(r.name.value.as_str()), when, check })
    }

    fn rego(&mut self, what: &str, at: Position, spec: RegoSpec) -> Option<Check> {
        let (origin, source) = match (spec.module, spec.file) {
            (Some(module), None) => ("inline.rego".to_string(), module),
            (None, Some(file)) => {
                let path = self.relative(&file);
                match std::fs::read_to_string(&path) {
                    Ok(text) => (path.display().to_string(), text),
                    Err(e) => {
                        self.error(at, format!("{what}: rego.file {}: {e}", path.display()));
                        return None;
                    }
                }
            }
            _ => {
                self.error(at, format!("{what}: rego needs exactly one of `module`, `file`"));
                return None;
            }
        };
        let mut engine = regorus::Engine::new();
        engine.set_rego_v0(false);
        if let Err(e) = engine.add_policy(origin, source) {
            self.error(at, format!("{what}: rego: {e}"));
            return None;
        }
        if !spec.query.starts_with("data.") {
            self.error(at, format!("{what}: rego.query must be a rule path such as data.gatehouse.allow"));
            return None;
        }
        Some(Check::Rego { engine: Box::new(engine), query: spec.query })
    }

    fn condition(&mut self, what: &str, at: Position, c: ConditionSpec) -> Condition {
        let mut parts: Vec<(Selector, &MatchSpec)> = Vec::new();
        let singles = [
            (Selector::Method, &c.method),
            (Selector::Path, &c.path),
            (Selector::Host, &c.host),
            (Selector::Subject, &c.subject),
            (Selector::Scopes, &c.scopes),
        ];
        for (selector, spec) in singles {
            if let Some(spec) = spec {
                parts.push((selector, spec));
            }
        }
        for (k, m) in &c.headers {
            parts.push((Selector::Header(k.to_ascii_lowercase()), m));
        }
        for (k, m) in &c.query {
            parts.push((Selector::Query(k.clone()), m));
        }
        for (k, m) in &c.context {
            parts.push((Selector::Context(k.clone()), m));
        }
        for (k, m) in &c.claims {
            parts.push((Selector::Claim(k.clone()), m));
        }
        for (k, m) in &c.metadata {
            parts.push((Selector::Metadata(k.clone()), m));
        }
        if parts.is_empty() {
            self.error(at, format!("{what}: a condition needs at least one attribute"));
        }
        let mut condition = Condition::default();
        for (selector, spec) in parts {
            match spec.compile() {
                Ok(m) => condition.parts.push((selector, m)),
                Err(e) => self.error(at, format!("{what}: {e}")),
            }
        }
        condition
    }

    fn response(&mut self, policy: &str, at: Position, r: ResponseFileSpec) -> ResponseSpec {
        let what = format!("policy {policy:?}: response");
        let values = |field: &str, map: BTreeMap<String, ValueSpec>, this: &mut Self| -> Vec<(String, ValueSource)> {
            let mut out = Vec::new();
            for (name, v) in map {
                match (v.value, v.from) {
                    (Some(literal), None) => out.push((name, ValueSource::Literal(literal))),
                    (None, Some(path)) => out.push((name, ValueSource::Identity(path))),
                    _ => this.error(at, format!("{what}.{field}.{name}: needs exactly one of `value`, `from`")),
                }
            }
            out
        };
        let lower = |m: BTreeMap<String, ValueSpec>| m.into_iter().map(|(k, v)| (k.to_ascii_lowercase(), v)).collect();
        let upstream_headers = values("headers", lower(r.headers), self);
        let query_set = values("query_set", r.query_set, self);
        let client_headers = values("client_headers", lower(r.client_headers), self);
        let metadata = values("metadata", r.metadata, self);
        for (name, _) in upstream_headers.iter().chain(&client_headers) {
            if name.starts_with(':') || name == "host" {
                self.error(at, format!("{what}: header {name:?} cannot be set by ext_authz"));
            }
        }
        if let Some(s) = &r.signed_jwt {
            for path in &s.claims {
                let key = crate::policy::copied_claim_name(path);
                if crate::policy::RESERVED_UPSTREAM_CLAIMS.contains(&key) {
                    self.error(
                        at,
                        format!(
                            "{what}.signed_jwt.claims: {path:?} would set the {key:?} claim, which the service sets itself (the upstream token's iss, sub, aud and lifetime are never copied from the caller's)"
                        ),
                    );
                }
            }
        }
        let signed_jwt = r.signed_jwt.map(|s| SignedJwt {
            header: s.header.unwrap_or_else(|| "x-gatehouse-jwt".into()).to_ascii_lowercase(),
            ttl: s.ttl.map_or(Duration::from_secs(60), |d| d.0),
            audience: s.audience,
            claims: s.claims,
        });
        ResponseSpec {
            upstream_headers,
            remove_headers: r.remove_headers.iter().map(|h| h.to_ascii_lowercase()).collect(),
            query_set,
            query_remove: r.query_remove,
            client_headers,
            metadata,
            signed_jwt,
            strip_credentials: r.strip_credentials,
        }
    }
}

fn bearer() -> Source {
    Source::Header { name: "authorization".into(), prefix: Some("Bearer ".into()) }
}
