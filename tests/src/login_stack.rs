//! The whole browser-login stack for end-to-end tests of gatehouse-extauth's `oidc_login`:
//! Redis, the OpenID provider, one or more gatehouse-extauth replicas on that one Redis, an
//! Envoy (envoy/gateway.yaml, its `/app/` route) in front of each replica, and the echo
//! upstream.
//!
//! Every gateway is at `http://localhost:<port>` and the IdP at `http://127.0.0.1:<port>`: two
//! sites, as in production, and the two hosts where Chromium keeps `Secure` cookies over http.
//! Cookies ignore ports, so the gateways share the browser's cookies just as the replicas
//! behind them share the sessions in Redis: a browser logged in through one is logged in
//! through all.
//!
//! The policy, [`POLICY`], has one identity method, `browser` (`oidc_login` with the IdP's
//! confidential web client): `redirect_uri` `<gateway 0>/app/callback`, `logout_path`
//! `/app/logout`, `post_logout_redirect_uri` `<gateway 0>/bye` (outside `/app/`, so no login
//! is needed there), and the identity upstream in `x-user-id` and `x-user-email`.
//! [`LoginStackOptions::oidc_login`] adds settings to the method. The IdP's code-flow clients
//! know those URIs and the back-channel logout URI, `<gateway 0>/oidc/backchannel-logout/app`.

use std::time::Duration;

use tempfile::TempDir;

use crate::browser::{Context, Cookie, Navigation, Page};
use crate::echo::Echo;
use crate::envoy::{Envoy, default_vars};
use crate::free_port;
use crate::oidc::{CodeClientUris, OidcOptions, OidcProvider, PUBLIC_CLIENT_ID, WEB_CLIENT_ID, WEB_CLIENT_SECRET};
use crate::redis::RedisServer;
use crate::service::{Kind, Service};

/// The extauth policy the `/app/` route names.
pub const POLICY: &str = "app";
/// The session cookie's name (the default `cookie_prefix`).
pub const SESSION_COOKIE: &str = "__Host-gatehouse-session";
/// The login-state cookies' names start with this; the login's `state` follows.
pub const LOGIN_COOKIE_PREFIX: &str = "__Host-gatehouse-login-";

/// How to build a [`LoginStack`]; `Default` is the IdP's defaults, the policy as described in
/// the module documentation, and one replica.
#[derive(Debug, Clone, Default)]
pub struct LoginStackOptions {
    pub idp: OidcOptions,
    /// YAML lines added to the `oidc_login` method, e.g. `refresh_ahead: 2s`.
    pub oidc_login: Vec<String>,
    /// gatehouse-extauth replicas (each behind its own Envoy); 0 counts as 1.
    pub replicas: usize,
    /// Log in as the IdP's public client (PKCE only, no secret) instead of the confidential one.
    pub public_client: bool,
}

impl LoginStackOptions {
    pub fn idp(mut self, idp: OidcOptions) -> LoginStackOptions {
        self.idp = idp;
        self
    }

    /// Adds one setting (a YAML line) to the `oidc_login` method.
    pub fn oidc_login(mut self, setting: &str) -> LoginStackOptions {
        self.oidc_login.push(setting.to_string());
        self
    }

    pub fn replicas(mut self, replicas: usize) -> LoginStackOptions {
        self.replicas = replicas;
        self
    }

    pub fn public_client(mut self) -> LoginStackOptions {
        self.public_client = true;
        self
    }
}

/// A running stack; every process stops when it is dropped.
#[derive(Debug)]
pub struct LoginStack {
    /// `http://localhost:<port>`, one per replica; the first is the one the policy's URIs name.
    pub gateways: Vec<String>,
    pub idp: OidcProvider,
    pub redis: RedisServer,
    /// The replicas, in the order of `gateways`.
    pub extauth: Vec<Service>,
    pub envoys: Vec<Envoy>,
    _echo: Echo,
    dir: TempDir,
}

impl LoginStack {
    pub async fn start() -> LoginStack {
        LoginStack::start_with(LoginStackOptions::default()).await
    }

    pub async fn start_with(options: LoginStackOptions) -> LoginStack {
        let dir = tempfile::tempdir().expect("temp dir");
        let redis = RedisServer::start();
        let echo = Echo::start().await;
        let mut idp = OidcProvider::start_with(options.idp.clone()).await.expect("OIDC provider");
        // The gateways' ports are chosen first: the policy and the IdP's client name them.
        let ports: Vec<u16> = (0..options.replicas.max(1)).map(|_| free_port()).collect();
        let gateways: Vec<String> = ports.iter().map(|p| format!("http://localhost:{p}")).collect();
        let gateway = &gateways[0];
        std::fs::write(dir.path().join("web.secret"), WEB_CLIENT_SECRET).expect("write client secret");
        std::fs::write(dir.path().join("cookie.key"), [42u8; 32]).expect("write cookie key");
        let extra: String = options.oidc_login.iter().map(|line| format!("            {line}\n")).collect();
        let policies = dir.path().join("policies.yaml");
        std::fs::write(
            &policies,
            format!(
                r#"
policies:
  - name: {POLICY}
    identity:
      any_of:
        - name: browser
          oidc_login:
            issuer: "{issuer}"
{client}            redirect_uri: "{gateway}/app/callback"
            cookie_secret_file: cookie.key
            scopes: [email, profile]
            logout_path: /app/logout
            post_logout_redirect_uri: "{gateway}/bye"
{extra}    response:
      headers:
        x-user-id: {{ from: sub }}
        x-user-email: {{ from: claims.email }}
"#,
                issuer = idp.issuer(),
                client = if options.public_client {
                    format!("            client_id: {PUBLIC_CLIENT_ID}\n")
                } else {
                    format!("            client_id: {WEB_CLIENT_ID}\n            client_secret_file: web.secret\n")
                },
            ),
        )
        .expect("write policies");
        let mut extauth = Vec::new();
        for _ in &ports {
            let env = [
                ("EXTAUTH_CONFIG", policies.display().to_string()),
                ("REDIS_URL", redis.addr()),
                ("LOG_LEVEL", "info".to_string()),
            ];
            extauth.push(Service::start(Kind::Extauth, &env, dir.path()).await);
        }
        idp.set_code_client_uris(CodeClientUris {
            redirect_uris: vec![format!("{gateway}/app/callback")],
            post_logout_redirect_uris: vec![format!("{gateway}/bye")],
            backchannel_logout_uri: Some(format!("{gateway}/oidc/backchannel-logout/{POLICY}")),
        })
        .await
        .expect("IdP client URIs");
        let mut envoys = Vec::new();
        for (port, replica) in ports.iter().zip(&extauth) {
            let mut vars = default_vars();
            vars.insert("GATEWAY_PORT".into(), port.to_string());
            vars.insert("UPSTREAM_PORT".into(), echo.port.to_string());
            vars.insert("EXTAUTH_PORT".into(), replica.grpc_port.to_string());
            vars.insert("EXTAUTH_HTTP_PORT".into(), replica.http_port.to_string());
            envoys.push(Envoy::start(&vars).await);
        }
        LoginStack { gateways, idp, redis, extauth, envoys, _echo: echo, dir }
    }

    /// The first gateway, `http://localhost:<port>`.
    pub fn gateway(&self) -> &str {
        &self.gateways[0]
    }

    /// `path` on the first gateway.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.gateway())
    }

    /// The back-channel logout URL the IdP posts to (through the first gateway).
    pub fn backchannel_logout_url(&self) -> String {
        self.url(&format!("/oidc/backchannel-logout/{POLICY}"))
    }

    /// The stack's temp dir (policies, secrets, the replicas' logs).
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// Every replica's log, then the IdP's, for failure messages.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for (i, replica) in self.extauth.iter().enumerate() {
            out.push_str(&format!("--- extauth replica {i} ---\n{}\n", replica.log()));
        }
        out.push_str(&format!("--- OIDC provider ---\n{}", self.idp.log()));
        out
    }

    /// Logs `login` in by navigating to `url` (on a gateway): the redirect to the IdP, its
    /// login form, and back to `url` itself, answered 200 by the upstream.
    pub async fn log_in(&self, page: &Page, url: &str, login: &str) -> Navigation {
        let nav = page.goto(url).await.expect("navigation");
        assert!(nav.url.starts_with(&self.idp.issuer()), "not at the IdP: {:?}\n{}", nav.chain(), self.logs());
        let landed = page.fill_login(login, "any-password").await.expect("login at the IdP");
        assert_eq!(landed.url, url, "chain: {:?}", landed.chain());
        assert_eq!(landed.status, Some(200), "chain: {:?}", landed.chain());
        landed
    }

    /// The session cookie the browser holds for the gateways.
    pub async fn session_cookie(&self, context: &Context) -> Option<Cookie> {
        context.cookie(self.gateway(), SESSION_COOKIE).await.expect("cookies")
    }

    /// The names of the login-state cookies the browser holds for the gateways.
    pub async fn login_cookies(&self, context: &Context) -> Vec<String> {
        let cookies = context.cookies(&[self.gateway()]).await.expect("cookies");
        cookies.into_iter().map(|c| c.name).filter(|n| n.starts_with(LOGIN_COOKIE_PREFIX)).collect()
    }
}

/// An HTTP client for requests a test makes itself: no proxy, no redirects followed.
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
        .expect("HTTP client")
}
