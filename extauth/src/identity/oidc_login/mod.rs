//! `oidc_login`: the OpenID Connect authorization-code flow with PKCE for browsers, with the
//! session in Redis, decided inside ext_authz `Check` (and HTTP forward-auth).
//!
//! ```text
//! browser ── GET /app/x ──> Envoy ── Check ──> no session: 302 to the IdP
//!                                              + Set-Cookie __Host-gatehouse-login-<state>
//!                                                (sealed: state, nonce, PKCE verifier, return URL)
//! browser ── logs in at the IdP ── 302 back to redirect_uri?code&state
//! browser ── GET /app/callback ──> Check ──> code exchange (PKCE), ID token verified (nonce)
//!                                              new session in Redis; 302 to /app/x
//!                                              + Set-Cookie __Host-gatehouse-session, login cookie deleted
//! browser ── GET /app/x ──> Check ──> session found: allowed, identity = the ID token's claims
//! ```
//!
//! Only navigations are redirected ([`web::is_navigation`]); scripts get a 401 with a
//! `login_url`. The return URL comes only from the request being checked and travels sealed.

pub mod cookie_sessions;
pub mod sealed;
pub mod session;
pub mod web;

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use openidconnect::core::{
    CoreAuthDisplay, CoreClaimName, CoreClaimType, CoreClient, CoreClientAuthMethod, CoreGrantType, CoreJsonWebKey,
    CoreJweContentEncryptionAlgorithm, CoreJweKeyManagementAlgorithm, CoreResponseMode, CoreResponseType,
    CoreSubjectIdentifierType,
};
use openidconnect::{
    AdditionalProviderMetadata, AuthType, AuthenticationFlow, AuthorizationCode, ClientId, ClientSecret, CsrfToken,
    EndpointMaybeSet, EndpointNotSet, EndpointSet, IssuerUrl, Nonce, OAuth2TokenResponse, PkceCodeChallenge,
    PkceCodeVerifier, ProviderMetadata, RedirectUrl, Scope, TokenResponse,
};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use self::cookie_sessions::{CookieSessions, Stored};
use self::sealed::{SealKey, random_token};
use self::session::{RedisSessions, Session, SessionHandle};
use crate::Error;
use crate::identity::jwt::now_secs;
use crate::identity::{Identity, Kind, Outcome, Rejection};
use crate::policy::Deny;
use crate::request::AuthRequest;
use crate::stats::Dependencies;

/// What discovery says beyond OpenID Connect Discovery's core fields.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
struct MoreEndpoints {
    /// RP-Initiated Logout 1.0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    end_session_endpoint: Option<String>,
    /// RFC 7009 token revocation (RFC 8414 metadata).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    revocation_endpoint: Option<String>,
}

impl AdditionalProviderMetadata for MoreEndpoints {}

type Metadata = ProviderMetadata<
    MoreEndpoints,
    CoreAuthDisplay,
    CoreClientAuthMethod,
    CoreClaimName,
    CoreClaimType,
    CoreGrantType,
    CoreJweContentEncryptionAlgorithm,
    CoreJweKeyManagementAlgorithm,
    CoreJsonWebKey,
    CoreResponseMode,
    CoreResponseType,
    CoreSubjectIdentifierType,
>;

/// A client built from discovery: authorization endpoint set, token endpoint if advertised.
type Client =
    CoreClient<EndpointSet, EndpointNotSet, EndpointNotSet, EndpointNotSet, EndpointMaybeSet, EndpointMaybeSet>;

/// How the client authenticates at the token endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientAuth {
    Basic,
    Post,
    /// A public client: PKCE only.
    None,
}

/// Which unauthenticated requests are redirected to the IdP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RedirectMode {
    /// Navigations only; script calls get a 401 with `login_url`.
    Auto,
    Always,
    /// Never: a 401 with `login_url` (an API that a separate app logs in for).
    Never,
}

/// The settings of one `oidc_login` method, validated by the config builder.
pub struct Settings {
    pub issuer: String,
    pub client_id: String,
    pub client_secret: Option<String>,
    pub client_auth: ClientAuth,
    /// Absolute; its path is the callback path Check handles.
    pub redirect_uri: String,
    pub scopes: Vec<String>,
    pub logout_path: Option<String>,
    /// Where the IdP sends the browser after logout (absolute, registered at the IdP).
    pub post_logout_redirect_uri: Option<String>,
    /// Where the browser goes after logout when the IdP has no `end_session_endpoint`:
    /// validated like `rd=` ([`web::safe_redirect`]). Default `/`.
    pub after_logout_url: String,
    /// Hosts (`host[:port]`) that `rd=` and `after_logout_url` may name besides relative paths.
    pub allowed_redirect_hosts: Vec<String>,
    pub redirect: RedirectMode,
    /// `__Host-gatehouse` by default: cookies are `<prefix>-session` and `<prefix>-login-<state>`.
    pub cookie_prefix: String,
    /// At least 32 bytes: seals the login-state cookies.
    pub cookie_secret: Vec<u8>,
    pub login_timeout: Duration,
    /// Live login attempts (tabs) per browser; the oldest cookie is dropped beyond it.
    pub max_login_attempts: usize,
    pub leeway: Duration,
    /// Optional upstream headers carrying the session's tokens.
    pub id_token_header: Option<String>,
    pub access_token_header: Option<String>,
    pub timeout: Duration,
    /// Refresh the tokens when the access token has less than this left.
    pub refresh_ahead: Duration,
}

/// What the login-state cookie holds, sealed.
#[derive(Debug, Serialize, Deserialize)]
struct LoginState {
    state: String,
    nonce: String,
    pkce_verifier: String,
    return_to: String,
    /// Unix seconds.
    started: u64,
}

/// The discovered provider and the client built from it.
struct Provider {
    client: Client,
    end_session_endpoint: Option<String>,
    revocation_endpoint: Option<String>,
}

/// Where sessions live.
pub enum Store {
    /// The default: revocable, shared by replicas, one refresh across them.
    Redis(Box<RedisSessions>),
    /// For set-ups without Redis ([`cookie_sessions`]).
    Cookie(Box<CookieSessions>),
}

pub struct OidcLogin {
    settings: Settings,
    callback_path: String,
    login_key: SealKey,
    /// `None` only when validating the config without Redis (`check-config`).
    store: Option<Store>,
    http: reqwest::Client,
    /// Times and counts the calls to the IdP.
    deps: Dependencies,
    provider: ArcSwapOption<Provider>,
    discovering: tokio::sync::Mutex<Option<Instant>>,
    /// When the IdP was last seen to answer, and whether it did ([`OidcLogin::idp_answers`]).
    idp_seen: tokio::sync::Mutex<Option<(Instant, bool)>>,
    /// One refresh per session at a time in this process (keyed by storage id, or by the
    /// sealed cookie's digest in the cookie store).
    refreshing: parking_lot::Mutex<std::collections::HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// The cookie store's recent refreshes, by the old cookie's digest: requests that still
    /// carry it (sent before the new cookie arrived) get the refreshed session.
    refreshed: moka::sync::Cache<String, Session>,
    /// Verifies what the IdP signs for us, ID tokens and back-channel logout tokens: the `jwt`
    /// method's verifier (signature, `iss`, `aud` = our client id, `exp`, `nbf`) over the
    /// issuer's shared JWKS cache, so key rotation and the capped refetch work as for bearer
    /// tokens. The checks particular to each kind of token are this module's.
    issuer_tokens: crate::identity::jwt::JwtAuth,
}

/// How long a replica may hold a session's refresh lock: the token call's timeout plus slack.
const REFRESH_LOCK: Duration = Duration::from_secs(10);

/// Rediscovery after a failure waits at least this long.
const DISCOVERY_RETRY: Duration = Duration::from_secs(5);

/// How long whether the IdP answers is trusted before a login redirect asks again.
const IDP_CHECK_EVERY: Duration = Duration::from_secs(3);

impl OidcLogin {
    pub fn new(
        settings: Settings,
        store: Option<Store>,
        http: reqwest::Client,
        deps: Dependencies,
        issuer_tokens: crate::identity::jwt::JwtAuth,
    ) -> Result<OidcLogin, String> {
        let redirect = openidconnect::url::Url::parse(&settings.redirect_uri)
            .map_err(|e| format!("redirect_uri {:?}: {e}", settings.redirect_uri))?;
        if settings.cookie_secret.len() < 32 {
            return Err("cookie secret: needs at least 32 bytes".into());
        }
        Ok(OidcLogin {
            callback_path: redirect.path().to_string(),
            login_key: SealKey::derive(&settings.cookie_secret, "login-state"),
            settings,
            store,
            http,
            deps,
            provider: ArcSwapOption::empty(),
            discovering: tokio::sync::Mutex::new(None),
            idp_seen: tokio::sync::Mutex::new(None),
            refreshing: parking_lot::Mutex::new(std::collections::HashMap::new()),
            refreshed: moka::sync::Cache::builder().max_capacity(10_000).time_to_live(Duration::from_secs(60)).build(),
            issuer_tokens,
        })
    }

    fn store(&self) -> Result<&Store, Error> {
        self.store.as_ref().ok_or_else(|| Error::Internal("oidc_login needs Redis: set REDIS_URL".into()))
    }

    /// `Set-Cookie` values that delete the request's session cookies.
    fn clear_session(&self, request: &AuthRequest) -> Vec<(String, String)> {
        let values = match &self.store {
            Some(Store::Cookie(cookies)) => cookies.clear(request),
            _ if request.cookie(&self.session_cookie()).is_some() => {
                vec![web::set_cookie(&self.session_cookie(), "", Some(0))]
            }
            _ => Vec::new(),
        };
        values.into_iter().map(|v| ("set-cookie".to_string(), v)).collect()
    }

    fn session_cookie(&self) -> String {
        format!("{}-session", self.settings.cookie_prefix)
    }

    fn login_cookie_prefix(&self) -> String {
        format!("{}-login-", self.settings.cookie_prefix)
    }

    /// The discovered provider, discovering it on first use (and again, at most every
    /// [`DISCOVERY_RETRY`], after a failure).
    async fn provider(&self) -> Result<Arc<Provider>, Error> {
        if let Some(p) = self.provider.load_full() {
            return Ok(p);
        }
        let mut last = self.discovering.lock().await;
        if let Some(p) = self.provider.load_full() {
            return Ok(p);
        }
        if last.is_some_and(|t| t.elapsed() < DISCOVERY_RETRY) {
            return Err(Error::Unavailable(format!("identity provider {} cannot be reached", self.settings.issuer)));
        }
        *last = Some(Instant::now());
        let provider = Arc::new(self.discover().await?);
        self.provider.store(Some(provider.clone()));
        Ok(provider)
    }

    async fn discover(&self) -> Result<Provider, Error> {
        let s = &self.settings;
        let unavailable = |e: String| Error::Unavailable(format!("identity provider {}: {e}", s.issuer));
        let issuer = IssuerUrl::new(s.issuer.clone()).map_err(|e| unavailable(e.to_string()))?;
        let metadata = self
            .deps
            .idp("discovery", async {
                tokio::time::timeout(s.timeout, Metadata::discover_async(issuer, &self.http))
                    .await
                    .map_err(|_| unavailable("discovery timed out".into()))?
                    .map_err(|e| unavailable(format!("discovery: {e}")))
            })
            .await?;
        let more = metadata.additional_metadata().clone();
        let redirect = RedirectUrl::new(s.redirect_uri.clone()).map_err(|e| Error::Internal(e.to_string()))?;
        let client = CoreClient::from_provider_metadata(
            metadata,
            ClientId::new(s.client_id.clone()),
            s.client_secret.clone().map(ClientSecret::new),
        )
        .set_redirect_uri(redirect)
        .set_auth_type(if s.client_auth == ClientAuth::Post {
            AuthType::RequestBody
        } else {
            AuthType::BasicAuth
        });
        Ok(Provider {
            client,
            end_session_endpoint: more.end_session_endpoint,
            revocation_endpoint: more.revocation_endpoint,
        })
    }

    /// One call to the IdP within the configured timeout (`Err` when it passes), timed and
    /// counted as `call`: an error, a timeout or an answer `succeeded` refuses counts as failed.
    async fn idp_call<T, E>(
        &self,
        call: &'static str,
        succeeded: fn(&T) -> bool,
        request: impl std::future::Future<Output = Result<T, E>>,
    ) -> Result<Result<T, E>, tokio::time::error::Elapsed> {
        let timed = tokio::time::timeout(self.settings.timeout, request);
        // The outcome travels in the Ok side so that the caller keeps it; only whether it
        // counts as failed goes to the metrics.
        let outcome = self
            .deps
            .idp(call, async {
                let outcome = timed.await;
                let ok = matches!(&outcome, Ok(Ok(answer)) if succeeded(answer));
                if ok { Ok(outcome) } else { Err(outcome) }
            })
            .await;
        outcome.unwrap_or_else(|outcome| outcome)
    }

    /// Whether the IdP answers now (its discovery document, checked at most every
    /// [`IDP_CHECK_EVERY`]): a login must not send the browser to an IdP that is down, where it
    /// would get a connection error instead of our 503 page. Concurrent callers share a check.
    async fn idp_answers(&self) -> bool {
        let mut seen = self.idp_seen.lock().await;
        if let Some((at, answered)) = *seen
            && at.elapsed() < IDP_CHECK_EVERY
        {
            return answered;
        }
        let url = crate::identity::jwks::discovery_url(&self.settings.issuer);
        let wait = self.settings.timeout.min(Duration::from_secs(2));
        let answered = matches!(
            tokio::time::timeout(wait, self.http.get(&url).send()).await,
            Ok(Ok(response)) if response.status().is_success()
        );
        if !answered {
            tracing::warn!(%url, "browser login: the identity provider does not answer");
        }
        *seen = Some((Instant::now(), answered));
        answered
    }

    /// A call to the IdP just went through (`true`: it answered, whatever it said) or failed
    /// (`false`: logins answer 503 until it answers again).
    async fn idp_answered(&self, answered: bool) {
        *self.idp_seen.lock().await = Some((Instant::now(), answered));
    }

    /// The session cookie's identity: `Missing` without a cookie, `Rejected` for one that
    /// opens no live session.
    pub async fn authenticate(&self, name: &Arc<str>, request: &AuthRequest) -> Result<Outcome, Error> {
        let found = match self.store()? {
            Store::Redis(sessions) => self.redis_session(sessions, request).await?,
            Store::Cookie(cookies) => self.cookie_session(cookies, request).await?,
        };
        let (session, client_headers) = match found {
            Found::Nothing => return Ok(Outcome::Missing),
            Found::Rejected(reason) => return Ok(Outcome::Rejected(Rejection::new(reason))),
            Found::Session(session, headers) => (session, headers),
        };
        let mut identity = Identity::new(name, Kind::Session, session.sub.clone());
        if let Some(scope) = session.claims.get("scope").and_then(Value::as_str) {
            identity.scopes = scope.split_whitespace().map(str::to_string).collect();
        }
        if let Some(header) = &self.settings.id_token_header
            && !session.id_token.is_empty()
        {
            identity.upstream_headers.push((header.clone(), session.id_token));
        }
        if let Some(header) = &self.settings.access_token_header {
            identity.upstream_headers.push((header.clone(), session.access_token));
        }
        identity.claims = session.claims;
        identity.client_headers = client_headers.into_iter().map(|v| ("set-cookie".to_string(), v)).collect();
        Ok(Outcome::Authenticated(identity))
    }

    async fn redis_session(&self, sessions: &RedisSessions, request: &AuthRequest) -> Result<Found, Error> {
        let Some(cookie) = request.cookie(&self.session_cookie()) else { return Ok(Found::Nothing) };
        let Some(handle) = SessionHandle::decode(cookie) else {
            return Ok(Found::Rejected("invalid session cookie"));
        };
        let Some(mut session) = sessions.load(&handle).await? else {
            return Ok(Found::Rejected("session expired or ended"));
        };
        if self.needs_refresh(&session) {
            match self.refresh(&handle, sessions).await? {
                Some(refreshed) => session = refreshed,
                None => return Ok(Found::Rejected("session ended: the identity provider refused to refresh it")),
            }
        }
        Ok(Found::Session(session, Vec::new()))
    }

    /// The cookie store: the session from the cookies, refreshed if due, and the cookies
    /// rewritten when it changed or its idle timeout needs restarting.
    async fn cookie_session(&self, cookies: &CookieSessions, request: &AuthRequest) -> Result<Found, Error> {
        let now = now_secs();
        let Some(opened) = cookies.read(request, now) else { return Ok(Found::Nothing) };
        let Some(mut stored) = opened else {
            return Ok(Found::Rejected("invalid or expired session cookie"));
        };
        let mut rewrite = cookies.due(&stored, now);
        if self.needs_refresh(&stored.session) {
            let key = crate::identity::api_key::hex(
                ring::digest::digest(
                    &ring::digest::SHA256,
                    request.cookie(&self.session_cookie()).unwrap_or_default().as_bytes(),
                )
                .as_ref(),
            );
            match self.refresh_cookie(key, stored.session).await? {
                Some(session) => stored.session = session,
                None => return Ok(Found::Rejected("session ended: the identity provider refused to refresh it")),
            }
            rewrite = true;
        }
        let headers = if rewrite {
            stored.last_seen = now;
            cookies.write(&stored, request)
        } else {
            Vec::new()
        };
        Ok(Found::Session(stored.session, headers))
    }

    fn needs_refresh(&self, session: &Session) -> bool {
        session.refresh_token.is_some()
            && session
                .access_expires_at
                .is_some_and(|at| at.saturating_sub(now_secs()) <= self.settings.refresh_ahead.as_secs())
    }

    /// Refreshes a session's tokens: at most one refresh per session at a time, across
    /// replicas. In this process, callers for one session queue on one mutex; the first takes
    /// the session's Redis lock, reloads the session and, if it still needs it, refreshes and
    /// saves it. The others (here or on other replicas) then reload the refreshed session.
    /// The cookie never changes. `None`: the session has ended.
    async fn refresh(&self, handle: &SessionHandle, sessions: &RedisSessions) -> Result<Option<Session>, Error> {
        self.one_at_a_time(handle.storage_id(), async {
            // Another replica may hold the lock: wait for its refresh, then reload.
            let deadline = Instant::now() + self.settings.timeout + Duration::from_secs(1);
            let token = loop {
                let Some(session) = sessions.load_stored(handle).await? else { return Ok(None) };
                if !self.needs_refresh(&session) {
                    return Ok(Some(session));
                }
                if let Some(token) = sessions.try_lock(handle, REFRESH_LOCK).await? {
                    break token;
                }
                if Instant::now() > deadline {
                    return self.unrefreshed(session);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            };
            let outcome = self.refresh_locked(handle, sessions).await;
            sessions.unlock(handle, &token).await;
            outcome
        })
        .await
    }

    /// Under the lock: reload, recheck, refresh.
    async fn refresh_locked(&self, handle: &SessionHandle, sessions: &RedisSessions) -> Result<Option<Session>, Error> {
        let Some(session) = sessions.load_stored(handle).await? else { return Ok(None) };
        if !self.needs_refresh(&session) {
            return Ok(Some(session));
        }
        match self.refresh_tokens(&session).await? {
            Refreshed::Done(session) => {
                sessions.save_refreshed(handle, &session).await?;
                Ok(Some(session))
            }
            Refreshed::Refused(reason) => {
                // Under the lock nobody else refreshes this session, so the grant is really
                // gone (revoked, expired, or reused): the session ends.
                tracing::info!(session = ?handle, %reason, "session ended: refresh refused");
                sessions.delete(handle).await?;
                Ok(None)
            }
            Refreshed::Unavailable => self.unrefreshed(session),
        }
    }

    /// The cookie store's refresh: one at a time per cookie in this process, and requests
    /// still carrying the old cookie get the new session. Replicas do not coordinate, so a
    /// refusal (another replica may have rotated the refresh token first) keeps the session
    /// while its access token lasts.
    async fn refresh_cookie(&self, key: String, session: Session) -> Result<Option<Session>, Error> {
        self.one_at_a_time(key.clone(), async {
            if let Some(done) = self.refreshed.get(&key) {
                return Ok(Some(done));
            }
            match self.refresh_tokens(&session).await? {
                Refreshed::Done(refreshed) => {
                    self.refreshed.insert(key, refreshed.clone());
                    Ok(Some(refreshed))
                }
                Refreshed::Refused(reason) => {
                    tracing::info!(%reason, "cookie session: refresh refused");
                    Ok(session.access_expires_at.is_some_and(|at| at > now_secs()).then_some(session))
                }
                Refreshed::Unavailable => self.unrefreshed(session),
            }
        })
        .await
    }

    /// Runs `work` for `key` after every earlier call for the same key in this process.
    async fn one_at_a_time<T>(&self, key: String, work: impl std::future::Future<Output = T>) -> T {
        let flight = self.refreshing.lock().entry(key.clone()).or_default().clone();
        let result = {
            let _turn = flight.lock().await;
            work.await
        };
        let mut map = self.refreshing.lock();
        if Arc::strong_count(&flight) <= 2 {
            map.remove(&key);
        }
        result
    }

    /// The token endpoint's refresh: the session with new tokens, a refusal that ends it, or
    /// no answer.
    async fn refresh_tokens(&self, session: &Session) -> Result<Refreshed, Error> {
        let Some(refresh_token) = session.refresh_token.clone() else { return Ok(Refreshed::Unavailable) };
        let Ok(provider) = self.provider().await else { return Ok(Refreshed::Unavailable) };
        let refresh_token = openidconnect::RefreshToken::new(refresh_token);
        let request = match provider.client.exchange_refresh_token(&refresh_token) {
            Ok(r) => r,
            Err(e) => return Err(Error::Internal(format!("the provider has no token endpoint: {e}"))),
        };
        let response = match self.idp_call("refresh", |_| true, request.request_async(&self.http)).await {
            Ok(Ok(response)) => {
                self.idp_answered(true).await;
                response
            }
            Ok(Err(openidconnect::RequestTokenError::ServerResponse(r)))
                if *r.error() == openidconnect::core::CoreErrorResponseType::InvalidGrant =>
            {
                self.idp_answered(true).await;
                return Ok(Refreshed::Refused("the refresh token was refused (invalid_grant)".into()));
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "session refresh failed");
                self.idp_answered(false).await;
                return Ok(Refreshed::Unavailable);
            }
            Err(_) => {
                tracing::warn!("session refresh timed out");
                self.idp_answered(false).await;
                return Ok(Refreshed::Unavailable);
            }
        };
        let mut session = session.clone();
        let now = now_secs();
        session.access_token = response.access_token().secret().clone();
        session.access_expires_at = response.expires_in().map(|d| now + d.as_secs());
        // With rotation the IdP sends a new refresh token; without, the old one stays valid.
        if let Some(rotated) = response.refresh_token() {
            session.refresh_token = Some(rotated.secret().clone());
        }
        // A new ID token must be as valid as the first, for the same user (OIDC Core §12.2);
        // its claims become the identity.
        if let Some(id_token) = response.id_token() {
            let id_token = id_token.to_string();
            match self.verify_id_token(&id_token, None, &session.access_token).await? {
                Ok(mut claims) if claims.get("sub").and_then(Value::as_str) == Some(session.sub.as_str()) => {
                    if let Some(scope) = session.claims.get("scope") {
                        claims.entry("scope").or_insert(scope.clone());
                    }
                    session.claims = claims;
                    if !session.id_token.is_empty() {
                        session.id_token = id_token;
                    }
                }
                verdict => {
                    let reason = verdict.err().unwrap_or_else(|| "another subject".into());
                    return Ok(Refreshed::Refused(format!("the refreshed ID token is not valid: {reason}")));
                }
            }
        }
        Ok(Refreshed::Done(session))
    }

    /// A refresh could not happen now (IdP unreachable, or another replica still busy): the
    /// session goes on while its access token is valid; after that, the request cannot be
    /// decided (503) rather than logging the user out.
    fn unrefreshed(&self, session: Session) -> Result<Option<Session>, Error> {
        if session.access_expires_at.is_some_and(|at| at > now_secs()) {
            Ok(Some(session))
        } else {
            Err(Error::Unavailable(
                "the session needs a token refresh and the identity provider cannot be reached".into(),
            ))
        }
    }

    /// Requests the flow answers itself, before any identity check: the callback.
    pub async fn intercept(&self, request: &AuthRequest) -> Result<Option<Deny>, Error> {
        if request.path == self.callback_path {
            return self.callback(request).await.map(Some);
        }
        if self.settings.logout_path.as_deref() == Some(request.path.as_str()) {
            return self.logout(request).await.map(Some);
        }
        Ok(None)
    }

    /// RP-initiated logout: a same-origin POST ends the session here, then the browser goes
    /// to the IdP's `end_session_endpoint` (with `id_token_hint` and the configured
    /// `post_logout_redirect_uri`) to end it there, or straight to that URI.
    async fn logout(&self, request: &AuthRequest) -> Result<Deny, Error> {
        if request.method != "POST" {
            let mut deny = Deny {
                status: 405,
                reason: "log out with a POST from this site (a form or fetch), not a link".into(),
                ..Default::default()
            };
            deny.headers.push(("allow".into(), "POST".into()));
            return Ok(deny);
        }
        if !web::is_same_origin(request) {
            return Ok(Deny {
                status: 403,
                reason: "logout refused: not sent from this site".into(),
                ..Default::default()
            });
        }
        // Where to go in the end: a validated `rd=`, else the configured page.
        let after = match request.query_param("rd") {
            Some(rd) => match web::safe_redirect(&rd, &self.settings.allowed_redirect_hosts) {
                Ok(url) => url,
                Err(why) => {
                    return Ok(Deny {
                        status: 400,
                        reason: format!("logout refused: rd is not a safe redirect ({why})"),
                        ..Default::default()
                    });
                }
            },
            None => self.settings.after_logout_url.clone(),
        };
        let session = match self.store()? {
            Store::Redis(sessions) => match request.cookie(&self.session_cookie()).and_then(SessionHandle::decode) {
                Some(handle) => {
                    let session = sessions.load_stored(&handle).await?;
                    sessions.delete(&handle).await?;
                    session
                }
                None => None,
            },
            Store::Cookie(cookies) => cookies.read(request, now_secs()).flatten().map(|stored| stored.session),
        };
        let mut deny = Deny { status: 303, reason: "logged out".into(), ..Default::default() };
        deny.headers.extend(self.clear_session(request));
        let provider = match self.provider().await {
            Ok(p) => Some(p),
            // The local session is gone either way; the IdP's stays until it expires.
            Err(e) => {
                tracing::warn!(error = %e, "logout: the identity provider cannot be reached; ending the local session only");
                None
            }
        };
        if let (Some(provider), Some(session)) = (&provider, &session) {
            self.revoke(provider, session).await;
        }
        // RP-initiated logout needs a registered post_logout_redirect_uri; `rd=` cannot travel
        // through the IdP, so with one the IdP's page decides where the browser ends up.
        let end_session = provider.as_ref().and_then(|p| p.end_session_endpoint.as_deref());
        let location = match end_session.and_then(|u| openidconnect::url::Url::parse(u).ok()) {
            Some(mut url) => {
                {
                    let mut q = url.query_pairs_mut();
                    q.append_pair("client_id", &self.settings.client_id);
                    if let Some(session) = session.as_ref().filter(|s| !s.id_token.is_empty()) {
                        q.append_pair("id_token_hint", &session.id_token);
                    }
                    if let Some(uri) = &self.settings.post_logout_redirect_uri {
                        q.append_pair("post_logout_redirect_uri", uri);
                    }
                }
                url.to_string()
            }
            None => after,
        };
        deny.headers.push(("location".into(), location));
        Ok(deny)
    }

    /// RFC 7009: revokes the session's refresh token (with it, at most IdPs, the whole grant)
    /// and access token where the IdP offers revocation. Best effort, within the timeout: the
    /// session has already ended here. By hand rather than through `openidconnect`, whose
    /// revocation refuses `http` endpoints (in-cluster IdPs often are).
    async fn revoke(&self, provider: &Provider, session: &Session) {
        let Some(endpoint) = &provider.revocation_endpoint else { return };
        let mut tokens = Vec::new();
        if let Some(refresh) = &session.refresh_token {
            tokens.push((refresh.as_str(), "refresh_token"));
        }
        tokens.push((session.access_token.as_str(), "access_token"));
        for (token, hint) in tokens {
            let mut form = vec![("token", token), ("token_type_hint", hint)];
            let mut request = self.http.post(endpoint);
            match (self.settings.client_auth, &self.settings.client_secret) {
                (ClientAuth::Basic, Some(secret)) => {
                    // RFC 6749 §2.3.1: both form-urlencoded before the Basic encoding.
                    let encode = |v: &str| form_urlencoded::byte_serialize(v.as_bytes()).collect::<String>();
                    request = request.basic_auth(encode(&self.settings.client_id), Some(encode(secret)));
                }
                (ClientAuth::Post, Some(secret)) => {
                    form.push(("client_id", &self.settings.client_id));
                    form.push(("client_secret", secret));
                }
                _ => form.push(("client_id", &self.settings.client_id)),
            }
            match self
                .idp_call("revocation", |r: &reqwest::Response| r.status().is_success(), request.form(&form).send())
                .await
            {
                Ok(Ok(response)) if response.status().is_success() => {}
                Ok(Ok(response)) => {
                    tracing::warn!(status = %response.status(), hint, "logout: the IdP refused to revoke a token");
                }
                Ok(Err(e)) => tracing::warn!(error = %e, hint, "logout: token revocation failed"),
                Err(_) => tracing::warn!(hint, "logout: token revocation timed out"),
            }
        }
    }

    /// `GET /oidc/start/{policy}?rd=<url>` on the HTTP port: starts a login that returns to a
    /// validated `rd` (default `/`). For proxies that cannot pass the IdP redirect on
    /// (NGINX's `auth_request` answers 401; `error_page 401` sends the browser here) and for
    /// a page's own "Log in" link.
    pub async fn start(&self, request: &AuthRequest) -> Result<Deny, Error> {
        let rd = request.query_param("rd").unwrap_or_else(|| "/".into());
        match web::safe_redirect(&rd, &self.settings.allowed_redirect_hosts) {
            Ok(return_to) => self.login_redirect(request, return_to).await,
            Err(why) => Ok(Deny {
                status: 400,
                reason: format!("login refused: rd is not a safe redirect ({why})"),
                ..Default::default()
            }),
        }
    }

    /// What an unauthenticated request gets: a redirect to the IdP for navigations (per
    /// `redirect`), else a 401 whose body names the `login_url`.
    pub async fn challenge(&self, request: &AuthRequest, rejection: Rejection) -> Result<Deny, Error> {
        let redirect = match self.settings.redirect {
            RedirectMode::Always => true,
            RedirectMode::Never => false,
            RedirectMode::Auto => web::is_navigation(request),
        };
        let mut deny = Deny { status: 401, reason: rejection.reason, ..Default::default() };
        deny.headers.extend(self.clear_session(request));
        if !redirect {
            deny.extra.insert("login_url".into(), Value::String(web::request_url(request)));
            return Ok(deny);
        }
        let mut login = self.login_redirect(request, web::request_url(request)).await?;
        login.headers.extend(deny.headers);
        Ok(login)
    }

    /// 302 to the IdP's authorization endpoint, with a new login cookie that brings the
    /// browser back to `return_to` (already trusted: the checked request's own URL, or a
    /// validated `rd`).
    async fn login_redirect(&self, request: &AuthRequest, return_to: String) -> Result<Deny, Error> {
        let provider = match self.provider().await {
            Ok(p) => p,
            Err(e) => return Ok(unavailable_page(&e)),
        };
        if !self.idp_answers().await {
            let down = Error::Unavailable(format!("identity provider {} does not answer", self.settings.issuer));
            return Ok(unavailable_page(&down));
        }
        let state = random_token::<16>();
        let nonce = random_token::<16>();
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let (url, _, _) = provider
            .client
            .authorize_url(
                AuthenticationFlow::<CoreResponseType>::AuthorizationCode,
                {
                    let state = state.clone();
                    move || CsrfToken::new(state)
                },
                {
                    let nonce = nonce.clone();
                    move || Nonce::new(nonce)
                },
            )
            .add_scopes(self.settings.scopes.iter().cloned().map(Scope::new))
            .set_pkce_challenge(challenge)
            .url();
        let login = LoginState {
            state: state.clone(),
            nonce,
            pkce_verifier: verifier.secret().clone(),
            return_to,
            started: now_secs(),
        };
        let name = format!("{}{state}", self.login_cookie_prefix());
        let sealed = self.login_key.seal(&name, &serde_json::to_vec(&login).expect("login state serializes"));
        let mut deny = Deny { status: 302, reason: "login required".into(), ..Default::default() };
        deny.headers.push(("location".into(), url.to_string()));
        deny.headers
            .push(("set-cookie".into(), web::set_cookie(&name, &sealed, Some(self.settings.login_timeout.as_secs()))));
        // Several tabs may log in at once, each with its own cookie; beyond the cap the oldest
        // (first in the header) go.
        let prefix = self.login_cookie_prefix();
        let live: Vec<&str> = web::cookies(request).map(|(n, _)| n).filter(|n| n.starts_with(&prefix)).collect();
        let excess = (live.len() + 1).saturating_sub(self.settings.max_login_attempts);
        for old in live.iter().take(excess) {
            deny.headers.push(("set-cookie".into(), web::set_cookie(old, "", Some(0))));
        }
        Ok(deny)
    }

    /// The IdP's redirect back: the code is exchanged and the session created, then the
    /// browser goes back to where it started. Every failure is a 401 page that names the
    /// reason (never the values).
    async fn callback(&self, request: &AuthRequest) -> Result<Deny, Error> {
        let refuse =
            |reason: &str| Deny { status: 401, reason: format!("login failed: {reason}"), ..Default::default() };
        if let Some(error) = request.query_param("error") {
            let error: String = error.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '_').take(64).collect();
            return Ok(refuse(&format!("the identity provider answered {error}")));
        }
        let (Some(state), Some(code)) = (request.query_param("state"), request.query_param("code")) else {
            return Ok(refuse("the callback carries no code and state"));
        };
        if !state.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
            return Ok(refuse("malformed state"));
        }
        let name = format!("{}{state}", self.login_cookie_prefix());
        let Some(login) = request
            .cookie(&name)
            .and_then(|sealed| self.login_key.open(&name, sealed))
            .and_then(|plain| serde_json::from_slice::<LoginState>(&plain).ok())
        else {
            return Ok(refuse("no login in progress for this state (expired, or started in another browser)"));
        };
        let mut delete_login = ("set-cookie".to_string(), web::set_cookie(&name, "", Some(0)));
        if login.state != state || now_secs().saturating_sub(login.started) > self.settings.login_timeout.as_secs() {
            let mut deny = refuse("the login attempt expired");
            deny.headers.push(delete_login);
            return Ok(deny);
        }
        // RFC 9207: an `iss` in the response must be our issuer (mix-up attacks).
        if let Some(iss) = request.query_param("iss")
            && iss != self.settings.issuer
        {
            let mut deny = refuse("the response names another issuer");
            deny.headers.push(delete_login);
            return Ok(deny);
        }
        let provider = match self.provider().await {
            Ok(p) => p,
            Err(e) => return Ok(unavailable_page(&e)),
        };
        let session = match self.exchange(&provider, code, &login).await {
            Ok(session) => {
                self.idp_answered(true).await;
                session
            }
            Err(Exchange::Refused(reason)) => {
                self.idp_answered(true).await;
                let mut deny = refuse(&reason);
                deny.headers.push(delete_login);
                return Ok(deny);
            }
            Err(Exchange::Unavailable(e)) => {
                self.idp_answered(false).await;
                return Ok(unavailable_page(&e));
            }
        };
        let mut deny = Deny { status: 302, reason: "logged in".into(), ..Default::default() };
        deny.headers.push(("location".into(), login.return_to));
        match self.store()? {
            Store::Redis(sessions) => {
                // A new id on every login: a session id planted before login is never used.
                let handle = SessionHandle::generate();
                sessions.save(&handle, &session).await?;
                sessions.index(&handle, &self.settings.issuer, &session).await?;
                let cookie = web::set_cookie(
                    &self.session_cookie(),
                    &handle.encode(),
                    Some(sessions.timeouts.absolute.as_secs()),
                );
                deny.headers.push(("set-cookie".into(), cookie));
            }
            Store::Cookie(cookies) => {
                let stored = Stored { session: Session { id_token: String::new(), ..session }, last_seen: now_secs() };
                deny.headers.extend(cookies.write(&stored, request).into_iter().map(|v| ("set-cookie".to_string(), v)));
            }
        }
        deny.headers.push(std::mem::take(&mut delete_login));
        Ok(deny)
    }

    /// The code exchange and the ID token's verification.
    async fn exchange(&self, provider: &Provider, code: String, login: &LoginState) -> Result<Session, Exchange> {
        let request = provider
            .client
            .exchange_code(AuthorizationCode::new(code))
            .map_err(|e| Exchange::Refused(format!("the provider has no token endpoint: {e}")))?
            .set_pkce_verifier(PkceCodeVerifier::new(login.pkce_verifier.clone()));
        let response = self
            .idp_call("token", |_| true, request.request_async(&self.http))
            .await
            .map_err(|_| Exchange::Unavailable(Error::Unavailable("the token endpoint timed out".into())))?
            .map_err(|e| match e {
                openidconnect::RequestTokenError::ServerResponse(r) => {
                    Exchange::Refused(format!("the token endpoint refused the code: {}", r.error()))
                }
                other => Exchange::Unavailable(Error::Unavailable(format!("token endpoint: {other}"))),
            })?;
        let id_token =
            response.id_token().ok_or_else(|| Exchange::Refused("no ID token in the token response".into()))?;
        let id_token = id_token.to_string();
        let access_token = response.access_token().secret();
        let mut claims = match self.verify_id_token(&id_token, Some(&login.nonce), access_token).await {
            Ok(Ok(claims)) => claims,
            Ok(Err(reason)) => return Err(Exchange::Refused(format!("the ID token is not valid: {reason}"))),
            Err(e) => return Err(Exchange::Unavailable(e)),
        };
        let sid = claims.get("sid").and_then(Value::as_str).map(str::to_string);
        if let Some(scopes) = response.scopes() {
            let scope = scopes.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(" ");
            claims.entry("scope").or_insert(Value::String(scope));
        }
        let now = now_secs();
        Ok(Session {
            sub: claims.get("sub").and_then(Value::as_str).unwrap_or_default().to_string(),
            sid,
            claims,
            id_token,
            access_token: response.access_token().secret().clone(),
            access_expires_at: response.expires_in().map(|d| now + d.as_secs()),
            refresh_token: response.refresh_token().map(|t| t.secret().clone()),
            created_at: now,
        })
    }

    /// Verifies an ID token (OIDC Core §3.1.3.7): signature, `iss`, `aud`, `exp` and `nbf` by
    /// the shared verifier, then `iat`, `sub`, `azp`, the login's `nonce` (not for tokens from
    /// a refresh, §12.2) and `at_hash`. The claims without `nonce`; `Ok(Err)` names what is
    /// wrong; `Err` when the keys cannot be had.
    async fn verify_id_token(
        &self,
        id_token: &str,
        nonce: Option<&str>,
        access_token: &str,
    ) -> Result<Result<Map<String, Value>, String>, Error> {
        let mut claims = match self.issuer_tokens.verify_claims(id_token).await? {
            Ok(claims) => claims,
            Err(rejection) => return Ok(Err(rejection.reason)),
        };
        let now = now_secs();
        match claims.get("iat").and_then(Value::as_u64) {
            Some(iat) if iat <= now + self.settings.leeway.as_secs() => {}
            Some(_) => return Ok(Err("issued in the future".into())),
            None => return Ok(Err("no iat".into())),
        }
        if claims.get("sub").and_then(Value::as_str).is_none_or(str::is_empty) {
            return Ok(Err("no sub".into()));
        }
        let audiences = claims.get("aud").and_then(Value::as_array).map_or(1, Vec::len);
        match claims.get("azp") {
            Some(Value::String(azp)) if *azp == self.settings.client_id => {}
            Some(_) => return Ok(Err("azp names another client".into())),
            None if audiences > 1 => return Ok(Err("several audiences and no azp".into())),
            None => {}
        }
        if let Some(expected) = nonce
            && claims.get("nonce").and_then(Value::as_str) != Some(expected)
        {
            return Ok(Err("the nonce is not this login's".into()));
        }
        if let Some(expected) = claims.get("at_hash") {
            let alg = jsonwebtoken::decode_header(id_token).map(|h| format!("{:?}", h.alg)).unwrap_or_default();
            if at_hash(&alg, access_token).as_ref().map(|h| Value::String(h.clone())).as_ref() != Some(expected) {
                return Ok(Err("at_hash does not match the access token".into()));
            }
        }
        claims.remove("nonce");
        Ok(Ok(claims))
    }

    /// Keeps Gatehouse's cookies from the upstream: the `Cookie` header without them, or its
    /// removal when nothing else is left.
    pub fn strip_own_cookies(&self, request: &AuthRequest, allow: &mut crate::policy::Allow) {
        if request.header("cookie").is_none() {
            return;
        }
        match web::cookie_header_without(request, &self.settings.cookie_prefix) {
            Some(rest) => allow.upstream_headers.push(("cookie".into(), rest)),
            None => allow.remove_headers.push("cookie".into()),
        }
    }

    /// OpenID Connect Back-Channel Logout 1.0: the IdP POSTs a `logout_token` (a JWT signed by
    /// the IdP, `typ: logout+jwt`) and every session it names ends, on every replica. `Ok(Err)`
    /// is a token to refuse (400), with the reason.
    pub async fn backchannel_logout(&self, logout_token: &str) -> Result<Result<usize, String>, Error> {
        const EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";
        // The spec asks for `typ: logout+jwt`; plain `JWT` (Keycloak before 25) is accepted
        // too: the events claim and the absent nonce already tell a logout token from an ID
        // token. Any other type is another kind of token.
        if let Ok(header) = jsonwebtoken::decode_header(logout_token)
            && let Some(typ) = header.typ.as_deref()
            && !["logout+jwt", "application/logout+jwt", "JWT"].iter().any(|t| typ.eq_ignore_ascii_case(t))
        {
            return Ok(Err(format!("typ {typ:?} is not logout+jwt")));
        }
        let claims = match self.issuer_tokens.verify_claims(logout_token).await? {
            Ok(claims) => claims,
            Err(rejection) => return Ok(Err(rejection.reason)),
        };
        if claims.get("iat").and_then(Value::as_u64).is_none() {
            return Ok(Err("no iat".into()));
        }
        if !claims.get("events").and_then(Value::as_object).is_some_and(|e| e.get(EVENT).is_some_and(Value::is_object))
        {
            return Ok(Err(format!("events does not hold {EVENT}")));
        }
        if claims.contains_key("nonce") {
            return Ok(Err("a logout token must not carry a nonce".into()));
        }
        let sid = claims.get("sid").and_then(Value::as_str);
        let sub = claims.get("sub").and_then(Value::as_str);
        if sid.is_none() && sub.is_none() {
            return Ok(Err("neither sid nor sub".into()));
        }
        let Some(jti) = claims.get("jti").and_then(Value::as_str) else {
            return Ok(Err("no jti".into()));
        };
        let Store::Redis(sessions) = self.store()? else {
            return Ok(Err("this policy keeps sessions in cookies, which back-channel logout cannot end".into()));
        };
        let exp = claims.get("exp").and_then(Value::as_u64).unwrap_or(0);
        if !sessions.first_use(jti, exp + self.settings.leeway.as_secs()).await? {
            return Ok(Err("replayed logout token (jti seen before)".into()));
        }
        let ended = sessions.end_all(&self.settings.issuer, sid, sub).await?;
        tracing::info!(ended, by_sid = sid.is_some(), "back-channel logout");
        Ok(Ok(ended))
    }
}

/// A session lookup's result.
enum Found {
    /// No session cookie.
    Nothing,
    Rejected(&'static str),
    /// The session, and `Set-Cookie` values for the response (the cookie store's rewrite).
    Session(Session, Vec<String>),
}

enum Refreshed {
    Done(Session),
    /// The IdP refused (`invalid_grant`, or an invalid new ID token).
    Refused(String),
    /// The IdP cannot be reached or did not answer in time.
    Unavailable,
}

enum Exchange {
    /// The IdP or the token said no: a 401 for this login.
    Refused(String),
    Unavailable(Error),
}

/// The `at_hash` of an access token for an ID token signed with `alg` (OIDC Core §3.1.3.6):
/// the left half of the hash, base64url.
fn at_hash(alg: &str, access_token: &str) -> Option<String> {
    use base64::Engine;
    let digest = match alg {
        "RS256" | "PS256" | "ES256" | "HS256" => &ring::digest::SHA256,
        "RS384" | "PS384" | "ES384" | "HS384" => &ring::digest::SHA384,
        "RS512" | "PS512" | "ES512" | "HS512" | "EdDSA" => &ring::digest::SHA512,
        _ => return None,
    };
    let hash = ring::digest::digest(digest, access_token.as_bytes());
    let bytes = hash.as_ref();
    Some(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&bytes[..bytes.len() / 2]))
}

/// 503 with a page a person can read: the login cannot start or finish now, or the session
/// cannot be checked (the IdP or Redis cannot be reached).
pub fn unavailable_page(error: &Error) -> Deny {
    tracing::warn!(%error, "browser login unavailable");
    let mut deny = Deny {
        status: 503,
        reason: "the login service is unavailable; try again in a moment".into(),
        ..Default::default()
    };
    deny.extra.insert("retry".into(), json!(true));
    deny
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_hash_matches_the_spec_example() {
        // OIDC Core, Appendix A.3: access token and at_hash of the example ID token (RS256).
        assert_eq!(
            at_hash("RS256", "jHkWEdUXMU1BwAsC4vtUsZwnNvTIxEl0z9K3vx5KF0Y").as_deref(),
            Some("77QmUPtjPfzWtF2AnpK9RQ")
        );
        assert_eq!(at_hash("none", "x"), None);
    }
}
