//! A real OpenID Provider on loopback: `tests/oidc/provider.mjs`, which runs panva's
//! `oidc-provider` (OpenID Certified) under Node.
//!
//! The provider picks its port and prints `LISTENING <port>` on stdout; the fixture reads it
//! back and waits until discovery answers. Its issuer is `http://127.0.0.1:PORT`.
//!
//! Built-in clients (see the script): [`TEST_CLIENT_ID`] may use `client_credentials` with
//! scopes `read write admin`; [`INTROSPECTOR_CLIENT_ID`] may introspect any client's tokens.
//! A `client_credentials` token requested with a `resource` is a JWT (RS256, `aud` = the
//! resource); one requested without is opaque and only introspection can read it.
//!
//! Browser login: [`WEB_CLIENT_ID`] (confidential, `client_secret_basic`) and
//! [`PUBLIC_CLIENT_ID`] (public) may use the authorization code flow, PKCE S256 required, and
//! `refresh_token`. Their redirect, post-logout and back-channel logout URIs come from
//! [`OidcOptions`] or, once the gateway's port is known, [`OidcProvider::set_code_client_uris`].
//! The provider's dev login page accepts any login and password; the login becomes `sub`, with
//! `email` `<login>@gatehouse.test` and `name` `<login>`, all in the ID token with `sid`. The
//! token endpoint returns a refresh token without `offline_access`, bound to the provider's
//! login session; refresh tokens rotate (unless [`OidcOptions::rotate_refresh_tokens`] is
//! `Some(false)`), and reusing a rotated one revokes the whole grant. RP-initiated logout
//! (`end_session_endpoint`) and [`OidcProvider::logout_user`] send back-channel logout tokens
//! to the clients' `backchannel_logout_uri`. [`OidcProvider::token_calls`] counts token
//! endpoint calls by grant type; [`OidcProvider::events`] lists refused grants and back-channel
//! logouts. [`OidcProvider::sign`] and [`OidcProvider::forge_next_id_token`] make validly signed
//! tokens the provider would never issue, for relying parties' negative tests.
//!
//! Signing keys live in a file in the fixture's temp dir, so [`OidcProvider::restart`] comes
//! back with the same JWKS; tokens and other provider state are in memory and do not survive
//! a restart (they do survive [`OidcProvider::rotate_keys`]).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine as _;
use tempfile::TempDir;

use crate::{Process, binary, repo_root};

/// The confidential client allowed the `client_credentials` grant with `read write admin`.
pub const TEST_CLIENT_ID: &str = "gatehouse-test";
pub const TEST_CLIENT_SECRET: &str = "gatehouse-test-secret";
/// The client allowed to introspect every client's tokens (RFC 7662).
pub const INTROSPECTOR_CLIENT_ID: &str = "gatehouse-introspector";
pub const INTROSPECTOR_CLIENT_SECRET: &str = "introspector-secret";
/// The confidential browser-login client (authorization code + PKCE, refresh tokens).
pub const WEB_CLIENT_ID: &str = "gatehouse-web";
pub const WEB_CLIENT_SECRET: &str = "gatehouse-web-secret";
/// The public browser-login client (`token_endpoint_auth_method: none`).
pub const PUBLIC_CLIENT_ID: &str = "gatehouse-public";
/// What an ID token's and a logout token's `events` carry for a back-channel logout.
pub const BACKCHANNEL_LOGOUT_EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";

/// How long a start may take, from spawning Node to discovery answering.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// Per-request timeout of the fixture's own HTTP calls.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

pub fn node_binary() -> PathBuf {
    binary("GATEHOUSE_NODE", ".venv/bin/node", "node")
}

/// `tests/oidc`, the Node package holding the provider script.
fn package_dir() -> PathBuf {
    repo_root().join("tests/oidc")
}

/// How to start the provider; `Default` is port 0 (the provider picks), its built-in clients
/// and TTLs, and the code-flow clients' default URIs (the compose stack's gateway,
/// `http://localhost:10000`).
#[derive(Debug, Clone, Default)]
pub struct OidcOptions {
    /// Access token lifetime, whole seconds (the script's default is 300 s).
    pub access_token_ttl: Option<Duration>,
    /// ID token lifetime (default: the access token's).
    pub id_token_ttl: Option<Duration>,
    /// Refresh token lifetime (default 3600 s).
    pub refresh_token_ttl: Option<Duration>,
    /// The provider's own login session, and so every refresh token bound to it (default 3600 s).
    pub session_ttl: Option<Duration>,
    /// `Some(false)`: a refresh returns no new refresh token and the old one stays valid.
    /// Default: every refresh rotates it.
    pub rotate_refresh_tokens: Option<bool>,
    /// A fixed port instead of one the provider picks.
    pub port: Option<u16>,
    /// Client metadata (a JSON array, RFC 7591 names) replacing the built-in clients.
    pub clients: Option<serde_json::Value>,
    /// The code-flow clients' URIs (empty lists: the script's defaults).
    pub code_clients: CodeClientUris,
}

impl OidcOptions {
    /// Adds a redirect URI of the code-flow clients.
    pub fn redirect_uri(mut self, uri: &str) -> OidcOptions {
        self.code_clients.redirect_uris.push(uri.to_string());
        self
    }

    /// Adds a `post_logout_redirect_uri` of the code-flow clients.
    pub fn post_logout_redirect_uri(mut self, uri: &str) -> OidcOptions {
        self.code_clients.post_logout_redirect_uris.push(uri.to_string());
        self
    }

    /// The code-flow clients' `backchannel_logout_uri` (with `sid` required).
    pub fn backchannel_logout_uri(mut self, uri: &str) -> OidcOptions {
        self.code_clients.backchannel_logout_uri = Some(uri.to_string());
        self
    }

    pub fn access_token_ttl(mut self, ttl: Duration) -> OidcOptions {
        self.access_token_ttl = Some(ttl);
        self
    }

    pub fn id_token_ttl(mut self, ttl: Duration) -> OidcOptions {
        self.id_token_ttl = Some(ttl);
        self
    }

    pub fn refresh_token_ttl(mut self, ttl: Duration) -> OidcOptions {
        self.refresh_token_ttl = Some(ttl);
        self
    }

    pub fn session_ttl(mut self, ttl: Duration) -> OidcOptions {
        self.session_ttl = Some(ttl);
        self
    }

    pub fn rotate_refresh_tokens(mut self, rotate: bool) -> OidcOptions {
        self.rotate_refresh_tokens = Some(rotate);
        self
    }
}

/// The URIs of every code-flow client (those allowed `authorization_code`).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct CodeClientUris {
    pub redirect_uris: Vec<String>,
    pub post_logout_redirect_uris: Vec<String>,
    /// With `backchannel_logout_session_required: true`, so logout tokens carry `sid`.
    pub backchannel_logout_uri: Option<String>,
}

/// Token endpoint calls by `grant_type`, granted or refused.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(transparent)]
pub struct TokenCalls(pub BTreeMap<String, u64>);

impl TokenCalls {
    pub fn get(&self, grant_type: &str) -> u64 {
        self.0.get(grant_type).copied().unwrap_or(0)
    }

    pub fn authorization_code(&self) -> u64 {
        self.get("authorization_code")
    }

    pub fn refresh_token(&self) -> u64 {
        self.get("refresh_token")
    }
}

/// What the provider did besides answering: refused grants and back-channel logouts.
#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct OidcEvents {
    pub token_errors: Vec<TokenError>,
    pub backchannel_logout: Vec<BackchannelLogout>,
    /// RP-initiated logouts completed.
    pub end_session: u64,
}

/// A token request the provider refused.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct TokenError {
    pub grant_type: String,
    /// e.g. `invalid_grant`.
    pub error: String,
    pub error_description: Option<String>,
}

/// A back-channel logout the provider sent.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct BackchannelLogout {
    pub client_id: String,
    pub sub: String,
    pub sid: Option<String>,
    /// Whether the client answered 200 or 204.
    pub ok: bool,
    pub error: Option<String>,
}

/// What [`OidcProvider::logout_user`] and [`OidcProvider::logout_session`] did.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct AdminLogout {
    /// Login sessions ended.
    pub sessions: u64,
    pub backchannel_logout: Vec<BackchannelLogout>,
}

/// A PKCE (RFC 7636) verifier and its S256 challenge.
#[derive(Debug, Clone)]
pub struct Pkce {
    pub verifier: String,
    pub challenge: String,
}

impl Pkce {
    pub fn new() -> Pkce {
        let verifier = random_token();
        let digest = ring::digest::digest(&ring::digest::SHA256, verifier.as_bytes());
        Pkce { verifier, challenge: base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest.as_ref()) }
    }
}

impl Default for Pkce {
    fn default() -> Pkce {
        Pkce::new()
    }
}

/// 32 random bytes, base64url.
pub fn random_token() -> String {
    let bytes: [u8; 32] = ring::rand::generate(&ring::rand::SystemRandom::new())
        .map(|b| b.expose())
        // The system's random source failing is not something a test can recover from.
        .expect("system random source");
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// An authorization request of the code flow, as a relying party would make it.
#[derive(Debug, Clone)]
pub struct AuthorizationRequest {
    pub client_id: String,
    pub redirect_uri: String,
    pub scope: String,
    pub state: String,
    pub nonce: String,
    pub pkce: Pkce,
}

impl AuthorizationRequest {
    /// Scopes `openid email profile`, a random state and nonce, a fresh PKCE pair.
    pub fn new(client_id: &str, redirect_uri: &str) -> AuthorizationRequest {
        AuthorizationRequest {
            client_id: client_id.to_string(),
            redirect_uri: redirect_uri.to_string(),
            scope: "openid email profile".to_string(),
            state: random_token(),
            nonce: random_token(),
            pkce: Pkce::new(),
        }
    }
}

/// Why a call to the provider failed.
#[derive(Debug)]
pub enum OidcError {
    /// No answer: the provider is down, refused the connection or timed out.
    Unreachable(reqwest::Error),
    /// An error status, e.g. 400 `invalid_scope` or 401 `invalid_client`.
    Rejected { status: u16, body: String },
    /// A success status whose body lacks what the call expects.
    Malformed(String),
}

impl std::fmt::Display for OidcError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OidcError::Unreachable(e) => write!(f, "OIDC provider unreachable: {e}"),
            OidcError::Rejected { status, body } => write!(f, "OIDC provider answered {status}: {body}"),
            OidcError::Malformed(what) => write!(f, "unexpected OIDC provider response: {what}"),
        }
    }
}

impl std::error::Error for OidcError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            OidcError::Unreachable(e) => Some(e),
            _ => None,
        }
    }
}

/// A running (or stopped) provider.
#[derive(Debug)]
pub struct OidcProvider {
    port: u16,
    options: OidcOptions,
    process: Option<Process>,
    http: reqwest::Client,
    /// `keys.json` (the private JWKS), `stdout.txt`, `provider.log` (stderr of every run).
    dir: TempDir,
}

impl OidcProvider {
    /// Starts the provider on a port it picks, with the built-in clients.
    pub async fn start() -> std::io::Result<OidcProvider> {
        OidcProvider::start_with(OidcOptions::default()).await
    }

    pub async fn start_with(options: OidcOptions) -> std::io::Result<OidcProvider> {
        if !package_dir().join("node_modules/oidc-provider").is_dir() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!(
                    "{} is missing oidc-provider: run scripts/install-test-deps.sh",
                    package_dir().join("node_modules").display()
                ),
            ));
        }
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(REQUEST_TIMEOUT)
            .build()
            .map_err(|e| std::io::Error::other(format!("HTTP client: {e}")))?;
        let dir = tempfile::tempdir()?;
        let mut provider = OidcProvider { port: options.port.unwrap_or(0), options, process: None, http, dir };
        let (process, port) = provider.spawn(provider.port).await?;
        provider.process = Some(process);
        provider.port = port;
        Ok(provider)
    }

    /// `http://127.0.0.1:PORT`, exactly as the provider puts it in `iss`.
    pub fn issuer(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn discovery_url(&self) -> String {
        format!("{}/.well-known/openid-configuration", self.issuer())
    }

    pub fn jwks_uri(&self) -> String {
        format!("{}/jwks", self.issuer())
    }

    pub fn token_endpoint(&self) -> String {
        format!("{}/token", self.issuer())
    }

    pub fn introspection_endpoint(&self) -> String {
        format!("{}/token/introspection", self.issuer())
    }

    pub fn authorization_endpoint(&self) -> String {
        format!("{}/auth", self.issuer())
    }

    pub fn end_session_endpoint(&self) -> String {
        format!("{}/session/end", self.issuer())
    }

    pub fn userinfo_endpoint(&self) -> String {
        format!("{}/me", self.issuer())
    }

    pub fn revocation_endpoint(&self) -> String {
        format!("{}/token/revocation", self.issuer())
    }

    /// The URL a browser opens to start `request`.
    pub fn authorization_url(&self, request: &AuthorizationRequest) -> String {
        let query = form(&[
            ("response_type", "code"),
            ("client_id", &request.client_id),
            ("redirect_uri", &request.redirect_uri),
            ("scope", &request.scope),
            ("state", &request.state),
            ("nonce", &request.nonce),
            ("code_challenge", &request.pkce.challenge),
            ("code_challenge_method", "S256"),
        ]);
        format!("{}?{query}", self.authorization_endpoint())
    }

    /// The RP-initiated logout URL for a browser: `id_token_hint` and where to land after.
    pub fn end_session_url(&self, id_token_hint: &str, post_logout_redirect_uri: &str) -> String {
        let query = form(&[("id_token_hint", id_token_hint), ("post_logout_redirect_uri", post_logout_redirect_uri)]);
        format!("{}?{query}", self.end_session_endpoint())
    }

    /// Exchanges `code` from `request`'s redirect for tokens (the token response as JSON);
    /// `client_secret` `None` for a public client.
    pub async fn exchange_code(
        &self,
        request: &AuthorizationRequest,
        client_secret: Option<&str>,
        code: &str,
    ) -> Result<serde_json::Value, OidcError> {
        let params = [
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", request.redirect_uri.as_str()),
            ("code_verifier", request.pkce.verifier.as_str()),
        ];
        self.token_request(&request.client_id, client_secret, &params).await
    }

    /// The refresh token grant (the token response as JSON).
    pub async fn refresh(
        &self,
        client_id: &str,
        client_secret: Option<&str>,
        refresh_token: &str,
    ) -> Result<serde_json::Value, OidcError> {
        let params = [("grant_type", "refresh_token"), ("refresh_token", refresh_token)];
        self.token_request(client_id, client_secret, &params).await
    }

    /// The userinfo endpoint's claims for an access token.
    pub async fn userinfo(&self, access_token: &str) -> Result<serde_json::Value, OidcError> {
        json_response(self.http.get(self.userinfo_endpoint()).bearer_auth(access_token).send().await).await
    }

    /// A token endpoint call as `client_id`: Basic auth with a secret, else `client_id` in the
    /// form (a public client).
    async fn token_request(
        &self,
        client_id: &str,
        client_secret: Option<&str>,
        params: &[(&str, &str)],
    ) -> Result<serde_json::Value, OidcError> {
        match client_secret {
            Some(secret) => self.post_form(&self.token_endpoint(), client_id, secret, params).await,
            None => {
                let mut params = params.to_vec();
                params.push(("client_id", client_id));
                let request = self
                    .http
                    .post(self.token_endpoint())
                    .header("content-type", "application/x-www-form-urlencoded")
                    .body(form(&params));
                json_response(request.send().await).await
            }
        }
    }

    /// Replaces the code-flow clients' URIs on the running provider (sessions and tokens
    /// stay), and keeps them for [`OidcProvider::restart`]. Use it when the gateway's port is
    /// known only after the provider started.
    pub async fn set_code_client_uris(&mut self, uris: CodeClientUris) -> Result<(), OidcError> {
        let url = format!("{}/__admin/code-clients", self.issuer());
        json_response(self.http.post(url).json(&uris).send().await).await?;
        self.options.code_clients = uris;
        Ok(())
    }

    /// Token endpoint calls so far (since the start or [`OidcProvider::reset_stats`]).
    pub async fn token_calls(&self) -> Result<TokenCalls, OidcError> {
        self.admin_get("stats").await
    }

    /// Refused grants and back-channel logouts so far.
    pub async fn events(&self) -> Result<OidcEvents, OidcError> {
        self.admin_get("events").await
    }

    /// Zeroes [`OidcProvider::token_calls`] and [`OidcProvider::events`].
    pub async fn reset_stats(&self) -> Result<(), OidcError> {
        let url = format!("{}/__admin/reset-stats", self.issuer());
        json_response(self.http.post(url).send().await).await.map(drop)
    }

    /// Ends every login session of `sub` at the provider, as an administrator would: each of
    /// their clients with a `backchannel_logout_uri` gets a logout token, their grants (and so
    /// their access and refresh tokens) are revoked, and the sessions are gone.
    pub async fn logout_user(&self, sub: &str) -> Result<AdminLogout, OidcError> {
        self.admin_logout(&[("sub", sub)]).await
    }

    /// [`OidcProvider::logout_user`] for the one login session holding `sid`.
    pub async fn logout_session(&self, sid: &str) -> Result<AdminLogout, OidcError> {
        self.admin_logout(&[("sid", sid)]).await
    }

    async fn admin_logout(&self, query: &[(&str, &str)]) -> Result<AdminLogout, OidcError> {
        let url = format!("{}/__admin/logout?{}", self.issuer(), form(query));
        let json = json_response(self.http.post(url).send().await).await?;
        serde_json::from_value(json.clone()).map_err(|e| OidcError::Malformed(format!("{e}: {json}")))
    }

    async fn admin_get<T: serde::de::DeserializeOwned>(&self, what: &str) -> Result<T, OidcError> {
        let json = self.get_json(&format!("{}/__admin/{what}", self.issuer())).await?;
        serde_json::from_value(json.clone()).map_err(|e| OidcError::Malformed(format!("{e}: {json}")))
    }

    /// The discovery document.
    pub async fn discovery(&self) -> Result<serde_json::Value, OidcError> {
        self.get_json(&self.discovery_url()).await
    }

    /// The public JWKS, signing key first.
    pub async fn jwks(&self) -> Result<serde_json::Value, OidcError> {
        self.get_json(&self.jwks_uri()).await
    }

    /// An access token for [`TEST_CLIENT_ID`]: a JWT for audience `resource` when given,
    /// otherwise an opaque token. An empty `scope` requests none.
    pub async fn client_credentials_token(&self, scope: &str, resource: Option<&str>) -> Result<String, OidcError> {
        self.client_credentials_token_for(TEST_CLIENT_ID, TEST_CLIENT_SECRET, scope, resource).await
    }

    /// [`OidcProvider::client_credentials_token`] for any client (client_secret_basic).
    pub async fn client_credentials_token_for(
        &self,
        client_id: &str,
        client_secret: &str,
        scope: &str,
        resource: Option<&str>,
    ) -> Result<String, OidcError> {
        let mut params = vec![("grant_type", "client_credentials")];
        if !scope.is_empty() {
            params.push(("scope", scope));
        }
        if let Some(resource) = resource {
            params.push(("resource", resource));
        }
        let json = self.post_form(&self.token_endpoint(), client_id, client_secret, &params).await?;
        json["access_token"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| OidcError::Malformed(format!("token response without access_token: {json}")))
    }

    /// RFC 7662 introspection of `token` as [`INTROSPECTOR_CLIENT_ID`].
    pub async fn introspect(&self, token: &str) -> Result<serde_json::Value, OidcError> {
        let params = [("token", token)];
        self.post_form(&self.introspection_endpoint(), INTROSPECTOR_CLIENT_ID, INTROSPECTOR_CLIENT_SECRET, &params)
            .await
    }

    /// Makes every token endpoint call wait `delay` before it is handled (zero: none): a slow
    /// IdP, so that concurrent refreshes would overlap one another.
    pub async fn set_token_delay(&self, delay: Duration) -> Result<(), OidcError> {
        let url = format!("{}/__admin/token-delay", self.issuer());
        let body = serde_json::json!({ "ms": delay.as_millis() as u64 });
        json_response(self.http.post(url).json(&body).send().await).await.map(drop)
    }

    /// A JWT over `claims` signed with the provider's current signing key (RS256; `header`
    /// adds to or overrides `alg` and `kid`): a token the provider would not issue itself, with
    /// a signature a relying party accepts, e.g. a logout token with a `nonce`.
    pub async fn sign(&self, header: serde_json::Value, claims: serde_json::Value) -> Result<String, OidcError> {
        let url = format!("{}/__admin/sign", self.issuer());
        let body = serde_json::json!({ "header": header, "claims": claims });
        let json = json_response(self.http.post(url).json(&body).send().await).await?;
        json["token"].as_str().map(str::to_string).ok_or_else(|| OidcError::Malformed(format!("sign: {json}")))
    }

    /// Makes the next ID token the token endpoint issues carry `claims` (merged over its own,
    /// e.g. another `nonce`), signed again with the signing key: a forgery only the claims
    /// check can catch. Applies once.
    pub async fn forge_next_id_token(&self, claims: serde_json::Value) -> Result<(), OidcError> {
        let url = format!("{}/__admin/forge-id-token", self.issuer());
        let body = serde_json::json!({ "claims": claims });
        json_response(self.http.post(url).json(&body).send().await).await.map(drop)
    }

    /// Generates a new signing key and puts it first in the JWKS; the old keys stay published
    /// unless `drop_old`. Returns the new key's `kid`.
    pub async fn rotate_keys(&self, drop_old: bool) -> Result<String, OidcError> {
        let query = if drop_old { "?drop_old=1" } else { "" };
        let url = format!("{}/__admin/rotate{query}", self.issuer());
        let json = json_response(self.http.post(url).send().await).await?;
        json["kid"].as_str().map(str::to_string).ok_or_else(|| OidcError::Malformed(format!("rotate: {json}")))
    }

    /// Kills the provider (the IdP is down; connections are refused).
    pub fn stop(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.kill();
        }
    }

    /// Starts the provider again on the same port, with the same keys and clients.
    pub async fn restart(&mut self) -> std::io::Result<()> {
        self.stop();
        // The port was ours a moment ago; something else may briefly hold it.
        let mut last_error = None;
        for _ in 0..10 {
            match self.spawn(self.port).await {
                Ok((process, _)) => {
                    self.process = Some(process);
                    return Ok(());
                }
                Err(e) => last_error = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Err(last_error.unwrap_or_else(|| std::io::Error::other("provider did not restart")))
    }

    /// The provider's stderr so far (all runs), for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("provider.log")).unwrap_or_default()
    }

    /// Spawns `provider.mjs` on `port` (0: any) and waits until discovery answers.
    async fn spawn(&self, port: u16) -> std::io::Result<(Process, u16)> {
        let stdout_path = self.dir.path().join("stdout.txt");
        let stdout = std::fs::File::create(&stdout_path)?;
        let stderr =
            std::fs::OpenOptions::new().create(true).append(true).open(self.dir.path().join("provider.log"))?;
        let mut cmd = Command::new(node_binary());
        cmd.arg("provider.mjs")
            .arg(port.to_string())
            .current_dir(package_dir())
            .env("OIDC_KEYS_FILE", self.dir.path().join("keys.json"))
            .env("OIDC_EXIT_WITH_PARENT", "1")
            .env_remove("PORT")
            .env_remove("OIDC_ISSUER")
            .env_remove("OIDC_CLIENTS")
            .env_remove("OIDC_REDIRECT_URIS")
            .env_remove("OIDC_POST_LOGOUT_REDIRECT_URIS")
            .env_remove("OIDC_BACKCHANNEL_LOGOUT_URI")
            .env_remove("OIDC_ROTATE_REFRESH_TOKEN")
            .stdout(stdout)
            .stderr(stderr);
        let ttls = [
            ("ACCESS_TOKEN_TTL", self.options.access_token_ttl),
            ("ID_TOKEN_TTL", self.options.id_token_ttl),
            ("REFRESH_TOKEN_TTL", self.options.refresh_token_ttl),
            ("SESSION_TTL", self.options.session_ttl),
        ];
        for (name, ttl) in ttls {
            if let Some(ttl) = ttl {
                cmd.env(name, ttl.as_secs().max(1).to_string());
            }
        }
        if let Some(rotate) = self.options.rotate_refresh_tokens {
            cmd.env("OIDC_ROTATE_REFRESH_TOKEN", if rotate { "1" } else { "0" });
        }
        let uris = &self.options.code_clients;
        if !uris.redirect_uris.is_empty() {
            cmd.env("OIDC_REDIRECT_URIS", uris.redirect_uris.join(","));
        }
        if !uris.post_logout_redirect_uris.is_empty() {
            cmd.env("OIDC_POST_LOGOUT_REDIRECT_URIS", uris.post_logout_redirect_uris.join(","));
        }
        if let Some(uri) = &uris.backchannel_logout_uri {
            cmd.env("OIDC_BACKCHANNEL_LOGOUT_URI", uri);
        }
        if let Some(clients) = &self.options.clients {
            cmd.env("OIDC_CLIENTS", clients.to_string());
        }
        let mut process = Process::spawn("oidc provider (node)", &mut cmd).map_err(|e| {
            std::io::Error::new(e.kind(), format!("{e} (run scripts/install-test-deps.sh, or set GATEHOUSE_NODE)"))
        })?;
        let deadline = Instant::now() + START_TIMEOUT;
        let port = loop {
            let text = tokio::fs::read_to_string(&stdout_path).await.unwrap_or_default();
            if let Some(port) = listening_port(&text) {
                break port;
            }
            if process.exited() {
                return Err(self.start_error("exited before listening"));
            }
            if Instant::now() >= deadline {
                return Err(self.start_error("printed no LISTENING line in time"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let discovery = format!("http://127.0.0.1:{port}/.well-known/openid-configuration");
        loop {
            let answered = self.http.get(&discovery).send().await.is_ok_and(|r| r.status().is_success());
            if answered {
                return Ok((process, port));
            }
            if process.exited() || Instant::now() >= deadline {
                return Err(self.start_error("did not answer discovery"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn start_error(&self, what: &str) -> std::io::Error {
        let log = self.log();
        let tail: Vec<&str> = log.lines().rev().take(30).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        std::io::Error::other(format!(
            "OIDC provider ({} {}) {what}; stderr:\n{}",
            node_binary().display(),
            package_dir().join("provider.mjs").display(),
            tail.join("\n")
        ))
    }

    async fn get_json(&self, url: &str) -> Result<serde_json::Value, OidcError> {
        json_response(self.http.get(url).send().await).await
    }

    async fn post_form(
        &self,
        url: &str,
        client_id: &str,
        client_secret: &str,
        params: &[(&str, &str)],
    ) -> Result<serde_json::Value, OidcError> {
        // RFC 6749 2.3.1: the credentials are form-encoded before they go into Basic.
        let request = self
            .http
            .post(url)
            .basic_auth(form_encode(client_id), Some(form_encode(client_secret)))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form(params));
        json_response(request.send().await).await
    }
}

async fn json_response(response: reqwest::Result<reqwest::Response>) -> Result<serde_json::Value, OidcError> {
    let response = response.map_err(OidcError::Unreachable)?;
    let status = response.status();
    let body = response.text().await.map_err(OidcError::Unreachable)?;
    if !status.is_success() {
        return Err(OidcError::Rejected { status: status.as_u16(), body });
    }
    serde_json::from_str(&body).map_err(|e| OidcError::Malformed(format!("{e}: {body}")))
}

/// The port from the provider's `LISTENING <port>` line.
fn listening_port(stdout: &str) -> Option<u16> {
    stdout.lines().find_map(|l| l.strip_prefix("LISTENING ")?.trim().parse().ok()).filter(|p| *p != 0)
}

/// `application/x-www-form-urlencoded` for `pairs`.
fn form(pairs: &[(&str, &str)]) -> String {
    pairs.iter().map(|(k, v)| format!("{}={}", form_encode(k), form_encode(v))).collect::<Vec<_>>().join("&")
}

fn form_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'*' => out.push(char::from(b)),
            b' ' => out.push('+'),
            // Writing to a String cannot fail.
            _ => {
                let _ = write!(out, "%{b:02X}");
            }
        }
    }
    out
}

/// A JWT's header, decoded but not verified (for assertions on `kid`, `alg`, `typ`).
pub fn jwt_header(token: &str) -> Option<serde_json::Value> {
    jwt_part(token, 0)
}

/// A JWT's claims, decoded but not verified.
pub fn jwt_claims(token: &str) -> Option<serde_json::Value> {
    jwt_part(token, 1)
}

fn jwt_part(token: &str, index: usize) -> Option<serde_json::Value> {
    let part = token.split('.').nth(index)?;
    serde_json::from_slice(&base64url_decode(part)?).ok()
}

/// Unpadded base64url (RFC 4648 section 5), as JWS uses it.
fn base64url_decode(input: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(input.len() * 3 / 4);
    let mut buffer = 0u32;
    let mut bits = 0;
    for c in input.bytes() {
        let value = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' => 62,
            b'_' => 63,
            _ => return None,
        };
        buffer = (buffer << 6) | u32::from(value);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((buffer >> bits) as u8);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_listening_line() {
        assert_eq!(listening_port("LISTENING 4242\n"), Some(4242));
        assert_eq!(listening_port("noise\nLISTENING 80\n"), Some(80));
        assert_eq!(listening_port("LISTENING 0\n"), None);
        assert_eq!(listening_port("LISTEN"), None);
    }

    #[test]
    fn form_encodes() {
        assert_eq!(
            form(&[("scope", "read write"), ("resource", "https://a.test/x?y=1")]),
            "scope=read+write&resource=https%3A%2F%2Fa.test%2Fx%3Fy%3D1"
        );
    }

    #[test]
    fn decodes_base64url() {
        assert_eq!(base64url_decode("eyJhIjoxfQ").as_deref(), Some(&b"{\"a\":1}"[..]));
        assert_eq!(base64url_decode("_-8"), Some(vec![0xff, 0xef]));
        assert_eq!(base64url_decode("a+b"), None);
    }
}
