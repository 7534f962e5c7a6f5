//! gatehouse-extauth's browser login (`oidc_login`) in a real Chromium, through real Envoy
//! (envoy/gateway.yaml's `/app/` route), with the real OpenID provider and Redis.
//!
//! The gateway is at `http://localhost:<port>` and the IdP at `http://127.0.0.1:<port>`: two
//! sites, as in production, and the two hosts where Chromium keeps `Secure` cookies over http.

use std::time::Duration;

use gatehouse_testkit::browser::{Browser, FetchInit, RedirectMode};
use gatehouse_testkit::echo::Echo;
use gatehouse_testkit::envoy::{Envoy, default_vars};
use gatehouse_testkit::free_port;
use gatehouse_testkit::oidc::{CodeClientUris, OidcProvider, WEB_CLIENT_ID, WEB_CLIENT_SECRET};
use gatehouse_testkit::redis::RedisServer;
use gatehouse_testkit::service::{Kind, Service};
use serde_json::Value;

struct Stack {
    gateway: String,
    envoy: Envoy,
    _extauth: Service,
    idp: OidcProvider,
    redis: RedisServer,
    _echo: Echo,
    _dir: tempfile::TempDir,
}

async fn stack() -> Stack {
    let dir = tempfile::tempdir().unwrap();
    let redis = RedisServer::start();
    let echo = Echo::start().await;
    let mut idp = OidcProvider::start().await.expect("OIDC provider");
    // The gateway's port is chosen first: the policy and the IdP's client both name it.
    let port = free_port();
    let gateway = format!("http://localhost:{port}");
    std::fs::write(dir.path().join("web.secret"), WEB_CLIENT_SECRET).unwrap();
    std::fs::write(dir.path().join("cookie.key"), [42u8; 32]).unwrap();
    let policies = dir.path().join("policies.yaml");
    std::fs::write(
        &policies,
        format!(
            r#"
policies:
  - name: app
    identity:
      any_of:
        - name: browser
          oidc_login:
            issuer: "{issuer}"
            client_id: {WEB_CLIENT_ID}
            client_secret_file: web.secret
            redirect_uri: "{gateway}/app/callback"
            cookie_secret_file: cookie.key
            scopes: [email, profile]
            logout_path: /app/logout
            post_logout_redirect_uri: "{gateway}/app/bye"
    response:
      headers:
        x-user-id: {{ from: sub }}
        x-user-email: {{ from: claims.email }}
"#,
            issuer = idp.issuer()
        ),
    )
    .unwrap();
    let extauth = Service::start(
        Kind::Extauth,
        &[("EXTAUTH_CONFIG", policies.display().to_string()), ("REDIS_URL", redis.addr())],
        dir.path(),
    )
    .await;
    idp.set_code_client_uris(CodeClientUris {
        redirect_uris: vec![format!("{gateway}/app/callback")],
        post_logout_redirect_uris: vec![format!("{gateway}/app/bye")],
        backchannel_logout_uri: Some(format!("{gateway}/oidc/backchannel-logout/app")),
    })
    .await
    .expect("IdP client URIs");
    let mut vars = default_vars();
    vars.insert("GATEWAY_PORT".into(), port.to_string());
    vars.insert("UPSTREAM_PORT".into(), echo.port.to_string());
    vars.insert("EXTAUTH_PORT".into(), extauth.grpc_port.to_string());
    vars.insert("EXTAUTH_HTTP_PORT".into(), extauth.http_port.to_string());
    let envoy = Envoy::start(&vars).await;
    Stack { gateway, envoy, _extauth: extauth, idp, redis, _echo: echo, _dir: dir }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_session_and_logout_in_a_real_browser() {
    let s = stack().await;
    let browser = Browser::start().await.expect("browser");
    let (context, page) = browser.new_page().await.unwrap();
    let start = format!("{}/app/orders?id=42&sort=desc", s.gateway);

    // A script's call without a session: 401 with a login_url, never a redirect to the IdP.
    page.goto(&format!("{}/nothing-here", s.gateway)).await.unwrap();
    let r = page.fetch(&start, FetchInit::get()).await.unwrap();
    assert_eq!(r.status, 401, "{r:?}");
    let body: Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(body["login_url"], start.as_str(), "{body}");

    // A navigation: 302 to the IdP with a login cookie, log in, back to the original URL.
    let nav = page.goto(&start).await.unwrap();
    assert!(nav.url.starts_with(&s.idp.issuer()), "not at the IdP: {:?}", nav.chain());
    let first = &nav.redirects[0];
    assert_eq!(first.status, Some(302));
    let set_cookie = first.headers.get("set-cookie").cloned().unwrap_or_default();
    assert!(set_cookie.starts_with("__Host-gatehouse-login-"), "{set_cookie}");
    let landed = page.fill_login("ann", "any-password").await.unwrap();
    assert_eq!(landed.url, start, "chain: {:?}", landed.chain());
    assert_eq!(landed.status, Some(200));

    // The upstream saw the identity, and none of Gatehouse's cookies.
    let seen: Value = serde_json::from_str(&page.content().await.unwrap().text).unwrap();
    assert_eq!(seen["headers"]["x-user-id"], "ann", "{seen}");
    assert_eq!(seen["headers"]["x-user-email"], "ann@gatehouse.test", "{seen}");
    assert!(!seen["headers"]["cookie"].as_str().unwrap_or("").contains("__Host-gatehouse"), "{seen}");

    // The session cookie: __Host-, Secure, HttpOnly, Lax; the login cookie is gone.
    let cookies = context.cookies(&[&s.gateway]).await.unwrap();
    let session = cookies.iter().find(|c| c.name == "__Host-gatehouse-session").expect("session cookie");
    assert!(session.secure && session.http_only && session.path == "/", "{session:?}");
    assert_eq!(session.same_site.as_deref(), Some("Lax"));
    assert!(!cookies.iter().any(|c| c.name.starts_with("__Host-gatehouse-login-")), "{cookies:?}");
    // Redis holds the session under a hash, sealed: neither the cookie nor a token in clear.
    let keys = s.redis.cli(&["KEYS", "gatehouse:session:*"]).unwrap_or_default();
    assert!(!keys.contains(&session.value), "{keys}");

    // fetch() with the session: allowed.
    let r = page.fetch(&format!("{}/app/api", s.gateway), FetchInit::get()).await.unwrap();
    assert_eq!(r.status, 200, "{r:?}");

    // Logout: a cross-site or GET attempt is refused; a same-origin POST ends the session and
    // goes through the IdP's end_session_endpoint back to post_logout_redirect_uri.
    let r = page.fetch(&format!("{}/app/logout", s.gateway), FetchInit::get()).await.unwrap();
    assert_eq!(r.status, 405);
    // The 303 goes on to the IdP (another origin): a script sees an opaque redirect.
    let mut logout = FetchInit::post("");
    logout.redirect = RedirectMode::Manual;
    let r = page.fetch(&format!("{}/app/logout", s.gateway), logout).await.unwrap();
    assert_eq!((r.status, r.kind.as_str()), (0, "opaqueredirect"), "{r:?}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let r = page.fetch(&format!("{}/app/api", s.gateway), FetchInit::get()).await.unwrap();
    assert_eq!(r.status, 401, "the session survived logout: {r:?}");
    drop(s.envoy);
}
