//! gatehouse-extauth's browser login (`oidc_login`) in a real Chromium, through real Envoy
//! (envoy/gateway.yaml's `/app/` route), with the real OpenID provider and Redis.
//!
//! The stack is gatehouse_testkit's `login_stack` (shared with browser_sessions.rs): the
//! gateway at `http://localhost:<port>`, the IdP at `http://127.0.0.1:<port>`.

use std::time::Duration;

use gatehouse_testkit::browser::{Browser, FetchInit, RedirectMode};
use gatehouse_testkit::login_stack::LoginStack;
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_session_and_logout_in_a_real_browser() {
    let s = LoginStack::start().await;
    let browser = Browser::start().await.expect("browser");
    let (context, page) = browser.new_page().await.unwrap();
    let start = s.url("/app/orders?id=42&sort=desc");

    // A script's call without a session: 401 with a login_url, never a redirect to the IdP.
    page.goto(&s.url("/nothing-here")).await.unwrap();
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
    let cookies = context.cookies(&[s.gateway()]).await.unwrap();
    let session = cookies.iter().find(|c| c.name == "__Host-gatehouse-session").expect("session cookie");
    assert!(session.secure && session.http_only && session.path == "/", "{session:?}");
    assert_eq!(session.same_site.as_deref(), Some("Lax"));
    assert!(!cookies.iter().any(|c| c.name.starts_with("__Host-gatehouse-login-")), "{cookies:?}");
    // Redis holds the session under a hash, sealed: neither the cookie nor a token in clear.
    let keys = s.redis.cli(&["KEYS", "gatehouse:session:*"]).unwrap_or_default();
    assert!(!keys.contains(&session.value), "{keys}");

    // fetch() with the session: allowed.
    let r = page.fetch(&s.url("/app/api"), FetchInit::get()).await.unwrap();
    assert_eq!(r.status, 200, "{r:?}");

    // Logout: a cross-site or GET attempt is refused; a same-origin POST ends the session and
    // goes through the IdP's end_session_endpoint back to post_logout_redirect_uri.
    let r = page.fetch(&s.url("/app/logout"), FetchInit::get()).await.unwrap();
    assert_eq!(r.status, 405);
    // The 303 goes on to the IdP (another origin): a script sees an opaque redirect.
    let mut logout = FetchInit::post("");
    logout.redirect = RedirectMode::Manual;
    let r = page.fetch(&s.url("/app/logout"), logout).await.unwrap();
    assert_eq!((r.status, r.kind.as_str()), (0, "opaqueredirect"), "{r:?}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let r = page.fetch(&s.url("/app/api"), FetchInit::get()).await.unwrap();
    assert_eq!(r.status, 401, "the session survived logout: {r:?}");
}
