//! The browser fixture itself: headless Chromium on loopback pages, cookies as Chromium keeps
//! them, and the OpenID provider's browser flows (login with PKCE, refresh rotation,
//! RP-initiated, back-channel and admin logout).

use std::time::Duration;

use axum::extract::State;
use axum::routing::post;
use gatehouse_testkit::browser::{
    Browser, ClickOptions, Context, Cookie, FetchInit, GotoOptions, Navigation, Page, RedirectMode,
};
use gatehouse_testkit::echo::Echo;
use gatehouse_testkit::oidc::{
    AuthorizationRequest, BACKCHANNEL_LOGOUT_EVENT, CodeClientUris, OidcError, OidcOptions, OidcProvider,
    PUBLIC_CLIENT_ID, WEB_CLIENT_ID, WEB_CLIENT_SECRET, jwt_claims, jwt_header,
};
use serde_json::Value;
use tokio::sync::mpsc;

async fn browser() -> Browser {
    Browser::start().await.expect("browser (scripts/install-test-deps.sh installs chromium and puppeteer-core)")
}

fn find<'a>(cookies: &'a [Cookie], name: &str) -> Option<&'a Cookie> {
    cookies.iter().find(|c| c.name == name)
}

fn names(cookies: &[Cookie]) -> Vec<&str> {
    let mut names: Vec<&str> = cookies.iter().map(|c| c.name.as_str()).collect();
    names.sort_unstable();
    names
}

/// The `Cookie` header the echo upstream received, as shown on the page.
async fn cookie_header_seen(page: &Page) -> String {
    let content = page.content().await.expect("content");
    let json = content.json().unwrap_or_else(|| panic!("echo JSON, got {:?}", content.text));
    json["headers"]["cookie"].as_str().unwrap_or("").to_string()
}

/// Opens an HTML page on `origin` (served by the echo upstream) with one link to `target`, and
/// follows it as a user would: a top-level navigation the page starts, so the browser applies
/// its same-site rules.
async fn follow_link(page: &Page, origin: &str, target: &str) -> Navigation {
    let options = GotoOptions::default()
        .header("x-echo-body", &format!("<a id=\"go\" href=\"{target}\">go</a>"))
        .header("x-echo-content-type", "text/html");
    page.goto_with(&format!("{origin}/start"), options).await.expect("page with a link");
    page.click("#go").await.expect("follow link")
}

#[tokio::test]
async fn loads_pages_and_keeps_cookies_as_chromium_does_on_loopback() {
    let echo = Echo::start().await;
    let browser = browser().await;
    assert!(browser.version().contains("Chrome/"), "{}", browser.version());
    let (context, page) = browser.new_page().await.expect("page");

    // Each navigation makes the echo upstream set one cookie.
    let sets = [
        "plain=1; Path=/",
        "secure=1; Secure; Path=/",
        "__Host-host=1; Secure; HttpOnly; Path=/; SameSite=Lax",
        "strict=1; SameSite=Strict; Path=/",
        "none-insecure=1; SameSite=None; Path=/",
        "none-secure=1; SameSite=None; Secure; Path=/",
    ];
    for host in ["localhost", "127.0.0.1"] {
        for set in sets {
            let url = format!("http://{host}:{}/set", echo.port);
            let options = GotoOptions::default().header("x-echo-header", &format!("set-cookie={set}"));
            let nav = page.goto_with(&url, options).await.expect("goto");
            assert_eq!((nav.status, nav.url.as_str()), (Some(200), url.as_str()));
            assert!(nav.redirects.is_empty(), "{nav:?}");
            assert_eq!(nav.header("set-cookie"), Some(set), "{nav:?}");
        }
    }

    // Over plain http, both loopback hosts are trustworthy origins: Secure and __Host- cookies
    // are kept (source scheme "Secure") and sent back. SameSite=None without Secure is refused,
    // and a cookie without SameSite reports none (it acts as Lax).
    for host in ["localhost", "127.0.0.1"] {
        let url = format!("http://{host}:{}/", echo.port);
        let cookies = context.cookies(&[&url]).await.expect("cookies");
        assert_eq!(names(&cookies), ["__Host-host", "none-secure", "plain", "secure", "strict"], "{cookies:#?}");
        let host_cookie = find(&cookies, "__Host-host").expect("__Host- cookie");
        assert_eq!(host_cookie.domain, host);
        assert!(host_cookie.secure && host_cookie.http_only && host_cookie.session, "{host_cookie:?}");
        assert_eq!(host_cookie.same_site.as_deref(), Some("Lax"));
        assert_eq!(host_cookie.source_scheme.as_deref(), Some("Secure"));
        assert_eq!(find(&cookies, "plain").expect("plain").same_site, None);
        assert_eq!(find(&cookies, "plain").expect("plain").source_scheme.as_deref(), Some("NonSecure"));

        page.goto(&format!("{url}read")).await.expect("goto");
        assert_eq!(
            cookie_header_seen(&page).await.split("; ").filter(|c| !c.is_empty()).count(),
            5,
            "{host}: every kept cookie is sent back over http"
        );
    }
    let blocked = page.blocked_cookies().await.expect("blocked cookies");
    assert!(!blocked.is_empty());
    for b in &blocked {
        assert!(b.cookie.starts_with("none-insecure="), "{b:?}");
        assert_eq!(b.reasons, ["SameSiteNoneInsecure"], "{b:?}");
    }

    // localhost and 127.0.0.1 are different sites: following a link from one to the other
    // sends Lax (and default) cookies but not Strict ones.
    let origin = format!("http://127.0.0.1:{}", echo.port);
    let nav = follow_link(&page, &origin, &format!("http://localhost:{}/read", echo.port)).await;
    assert_eq!(nav.status, Some(200));
    let sent = cookie_header_seen(&page).await;
    assert!(sent.contains("__Host-host=1") && sent.contains("plain=1"), "{sent}");
    assert!(!sent.contains("strict=1"), "{sent}");

    // A fetch() from the page: same-origin with cookies, and a redirect left unfollowed.
    let response = page.fetch("/fetched", FetchInit::post("hello").header("x-test", "1")).await.expect("fetch");
    assert_eq!(response.status, 200);
    let json = response.json().expect("echo JSON");
    assert_eq!(json["method"], "POST");
    assert_eq!(json["body"], "hello");
    assert!(json["headers"]["cookie"].as_str().unwrap_or("").contains("strict=1"), "{json}");
    // Fetches from one page run at once.
    let (a, b) = tokio::join!(page.fetch("/a", FetchInit::get()), page.fetch("/b", FetchInit::get()));
    assert_eq!((a.expect("fetch a").status, b.expect("fetch b").status), (200, 200));
    let redirect = FetchInit::get().header("x-echo-status", "302").redirect(RedirectMode::Manual);
    let response = page.fetch("/moved", redirect).await.expect("fetch");
    assert_eq!((response.status, response.kind.as_str()), (0, "opaqueredirect"));

    // Setting and deleting cookies by hand; another context sees none of them.
    let url = format!("http://localhost:{}/", echo.port);
    context.set_cookies(&[gatehouse_testkit::browser::SetCookie::new("made", "by-test", &url)]).await.expect("set");
    assert_eq!(context.cookie(&url, "made").await.expect("cookie").expect("made").value, "by-test");
    context.delete_cookies(&[gatehouse_testkit::browser::DeleteCookie::for_url("made", &url)]).await.expect("delete");
    assert!(context.cookie(&url, "made").await.expect("cookie").is_none());
    let other = browser.new_context().await.expect("context");
    assert!(other.cookies(&[]).await.expect("cookies").is_empty());
    context.clear_cookies().await.expect("clear");
    assert!(context.cookies(&[]).await.expect("cookies").is_empty());

    // Failures come back as errors and the driver goes on.
    let refused = page.goto(&format!("http://127.0.0.1:{}/", gatehouse_testkit::free_port())).await;
    let error = refused.expect_err("nothing listens there");
    assert!(error.message().contains("ERR_CONNECTION_REFUSED"), "{error}");
    let outside = page.goto("http://example.com/").await.expect_err("only loopback resolves");
    assert!(outside.message().contains("ERR_NAME_NOT_RESOLVED"), "{outside}");
    let quick = ClickOptions { timeout: Some(Duration::from_millis(300)), ..ClickOptions::default() };
    let missing = page.click_with("#missing", quick).await.expect_err("no such element");
    assert!(missing.message().contains("#missing"), "{missing}");
    assert_eq!(page.evaluate("1 + 2").await.expect("evaluate"), 3);
}

/// The provider's `code`, `state` and `iss` on the redirect URI, checked against `request`.
fn callback_code(idp: &OidcProvider, request: &AuthorizationRequest, nav: &Navigation) -> String {
    assert!(nav.url.starts_with(&format!("{}?", request.redirect_uri)), "landed at {}: {nav:?}", nav.url);
    assert_eq!(nav.status, Some(200), "{nav:?}");
    assert_eq!(nav.query("state").as_deref(), Some(request.state.as_str()));
    assert_eq!(nav.query("iss").as_deref(), Some(idp.issuer().as_str()));
    nav.query("code").expect("code on the redirect URI")
}

/// Logs `login` in through the browser and answers the code.
async fn browser_login(idp: &OidcProvider, page: &Page, request: &AuthorizationRequest, login: &str) -> String {
    let nav = page.goto(&idp.authorization_url(request)).await.expect("authorization endpoint");
    assert!(nav.url.starts_with(&format!("{}/interaction/", idp.issuer())), "{nav:?}");
    assert_eq!(nav.status, Some(200));
    let nav = page.fill_login(login, "any password").await.expect("log in");
    callback_code(idp, request, &nav)
}

fn rejected_with(result: Result<Value, OidcError>, error: &str) {
    match result {
        Err(OidcError::Rejected { status: 400, body }) if body.contains(error) => {}
        other => panic!("expected 400 {error}, got {other:?}"),
    }
}

#[tokio::test]
async fn logs_in_with_the_code_flow_and_rotates_refresh_tokens() {
    let echo = Echo::start().await;
    let redirect_uri = format!("http://localhost:{}/callback", echo.port);
    let idp = OidcProvider::start_with(OidcOptions::default().redirect_uri(&redirect_uri))
        .await
        .expect("start OIDC provider");
    let browser = browser().await;
    let (context, page) = browser.new_page().await.expect("page");

    let request = AuthorizationRequest::new(WEB_CLIENT_ID, &redirect_uri);
    let code = browser_login(&idp, &page, &request, "alice").await;
    let seen = page.content().await.expect("content").json().expect("echo JSON");
    assert!(seen["path"].as_str().expect("path").starts_with("/callback?code="), "{seen}");

    // The provider's own cookies work over http on 127.0.0.1: Lax, HttpOnly, not Secure, and
    // Chromium refused none of them.
    let idp_cookies = context.cookies(&[&idp.issuer()]).await.expect("cookies");
    let session = find(&idp_cookies, "_session").unwrap_or_else(|| panic!("no _session: {idp_cookies:#?}"));
    assert_eq!(session.same_site.as_deref(), Some("Lax"));
    assert!(session.http_only && !session.secure, "{session:?}");
    assert!(find(&idp_cookies, "_session.legacy").is_none(), "{idp_cookies:#?}");
    assert!(page.blocked_cookies().await.expect("blocked").is_empty());

    // The code, exchanged from the back end with its PKCE verifier.
    let tokens = idp.exchange_code(&request, Some(WEB_CLIENT_SECRET), &code).await.expect("code exchange");
    let id_token = tokens["id_token"].as_str().expect("id_token");
    let claims = jwt_claims(id_token).expect("ID token claims");
    assert_eq!(claims["iss"], idp.issuer());
    assert_eq!(claims["aud"], WEB_CLIENT_ID);
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["email"], "alice@gatehouse.test");
    assert_eq!(claims["name"], "alice");
    assert_eq!(claims["nonce"], request.nonce.as_str());
    assert!(claims["sid"].as_str().is_some_and(|s| !s.is_empty()), "{claims}");
    assert!(claims["at_hash"].is_string(), "{claims}");
    let access_token = tokens["access_token"].as_str().expect("access_token");
    assert_eq!(idp.userinfo(access_token).await.expect("userinfo")["email"], "alice@gatehouse.test");
    let first = tokens["refresh_token"].as_str().expect("a refresh token without offline_access").to_string();

    // A refresh rotates the refresh token: the new one works, the old one is refused.
    let refreshed = idp.refresh(WEB_CLIENT_ID, Some(WEB_CLIENT_SECRET), &first).await.expect("refresh");
    let second = refreshed["refresh_token"].as_str().expect("a new refresh token").to_string();
    assert_ne!(second, first);
    let refreshed_claims = jwt_claims(refreshed["id_token"].as_str().expect("id_token")).expect("claims");
    assert_eq!(refreshed_claims["sid"], claims["sid"]);
    rejected_with(idp.refresh(WEB_CLIENT_ID, Some(WEB_CLIENT_SECRET), &first).await, "invalid_grant");
    // ... and reusing it revoked the grant: the newest refresh token is dead too.
    rejected_with(idp.refresh(WEB_CLIENT_ID, Some(WEB_CLIENT_SECRET), &second).await, "invalid_grant");
    // A code is single-use (and its reuse, too, revokes what it granted).
    rejected_with(idp.exchange_code(&request, Some(WEB_CLIENT_SECRET), &code).await, "invalid_grant");

    let calls = idp.token_calls().await.expect("stats");
    assert_eq!((calls.authorization_code(), calls.refresh_token()), (2, 3), "{calls:?}");
    let events = idp.events().await.expect("events");
    let refused: Vec<&str> = events.token_errors.iter().map(|e| e.grant_type.as_str()).collect();
    assert_eq!(refused, ["refresh_token", "refresh_token", "authorization_code"], "{events:?}");
    idp.reset_stats().await.expect("reset");
    assert_eq!(idp.token_calls().await.expect("stats").refresh_token(), 0);
}

/// A server for back-channel logout POSTs: every `logout_token` goes to the channel.
async fn backchannel_receiver() -> (String, mpsc::UnboundedReceiver<String>) {
    async fn receive(State(tx): State<mpsc::UnboundedSender<String>>, body: String) -> &'static str {
        let url = format!("http://form.invalid/?{body}");
        if let Some(token) = gatehouse_testkit::browser::query_param(&url, "logout_token") {
            let _ = tx.send(token);
        }
        ""
    }
    let (tx, rx) = mpsc::unbounded_channel();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://127.0.0.1:{}/backchannel-logout", listener.local_addr().expect("addr").port());
    let app = axum::Router::new().route("/backchannel-logout", post(receive)).with_state(tx);
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (url, rx)
}

async fn next_logout_token(rx: &mut mpsc::UnboundedReceiver<String>) -> Value {
    let token = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("a back-channel logout within 5 s")
        .expect("receiver open");
    let header = jwt_header(&token).expect("logout token header");
    assert_eq!(header["typ"], "logout+jwt", "{header}");
    jwt_claims(&token).expect("logout token claims")
}

struct LoggedIn {
    context: Context,
    page: Page,
    request: AuthorizationRequest,
    tokens: Value,
}

async fn log_in(idp: &OidcProvider, browser: &Browser, client_id: &str, redirect_uri: &str, login: &str) -> LoggedIn {
    let (context, page) = browser.new_page().await.expect("page");
    let request = AuthorizationRequest::new(client_id, redirect_uri);
    let code = browser_login(idp, &page, &request, login).await;
    let secret = (client_id == WEB_CLIENT_ID).then_some(WEB_CLIENT_SECRET);
    let tokens = idp.exchange_code(&request, secret, &code).await.expect("code exchange");
    LoggedIn { context, page, request, tokens }
}

fn str_of<'a>(json: &'a Value, field: &str) -> &'a str {
    json[field].as_str().unwrap_or_else(|| panic!("no {field} in {json}"))
}

#[tokio::test]
async fn rp_initiated_logout_sends_a_backchannel_logout() {
    let echo = Echo::start().await;
    let (backchannel_uri, mut logouts) = backchannel_receiver().await;
    let redirect_uri = format!("http://localhost:{}/callback", echo.port);
    let after_logout = format!("http://localhost:{}/logged-out", echo.port);
    // The gateway's port is known only later, as in the end-to-end tests: set the URIs then.
    let mut idp = OidcProvider::start().await.expect("start OIDC provider");
    let invalid = CodeClientUris { redirect_uris: vec!["not a URL".into()], ..CodeClientUris::default() };
    let refused = idp.set_code_client_uris(invalid).await;
    assert!(
        matches!(&refused, Err(OidcError::Rejected { status: 400, body }) if body.contains("redirect_uris")),
        "{refused:?}"
    );
    idp.set_code_client_uris(CodeClientUris {
        redirect_uris: vec![redirect_uri.clone()],
        post_logout_redirect_uris: vec![after_logout.clone()],
        backchannel_logout_uri: Some(backchannel_uri),
    })
    .await
    .expect("code-flow client URIs");
    let browser = browser().await;

    let bob = log_in(&idp, &browser, WEB_CLIENT_ID, &redirect_uri, "bob").await;
    let id_token = str_of(&bob.tokens, "id_token");
    let sid = jwt_claims(id_token).expect("claims")["sid"].as_str().expect("sid").to_string();

    // RP-initiated logout: the provider asks, the user confirms.
    let nav = bob.page.goto(&idp.end_session_url(id_token, &after_logout)).await.expect("end_session");
    assert!(nav.url.starts_with(&idp.end_session_endpoint()), "{nav:?}");
    let nav = bob.page.click("button[name=logout]").await.expect("confirm logout");
    assert_eq!(nav.url, after_logout, "{:?}", nav.chain());
    assert_eq!(nav.status, Some(200));

    let claims = next_logout_token(&mut logouts).await;
    assert_eq!(claims["iss"], idp.issuer());
    assert_eq!(claims["aud"], WEB_CLIENT_ID);
    assert_eq!(claims["sub"], "bob");
    assert_eq!(claims["sid"], sid.as_str());
    assert!(claims["events"][BACKCHANNEL_LOGOUT_EVENT].is_object(), "{claims}");
    assert!(claims["jti"].is_string() && claims["nonce"].is_null(), "{claims}");
    let events = idp.events().await.expect("events");
    assert_eq!(events.end_session, 1);
    assert_eq!(events.backchannel_logout.len(), 1, "{events:?}");
    assert!(events.backchannel_logout[0].ok, "{events:?}");

    // The provider's session is gone, and the refresh token bound to it with it.
    let idp_cookies = bob.context.cookies(&[&idp.issuer()]).await.expect("cookies");
    assert!(find(&idp_cookies, "_session").is_none(), "{idp_cookies:#?}");
    let refresh = str_of(&bob.tokens, "refresh_token");
    rejected_with(idp.refresh(WEB_CLIENT_ID, Some(WEB_CLIENT_SECRET), refresh).await, "invalid_grant");
}

#[tokio::test]
async fn admin_logout_ends_one_users_sessions_and_public_clients_get_sso() {
    let echo = Echo::start().await;
    let (backchannel_uri, mut logouts) = backchannel_receiver().await;
    let redirect_uri = format!("http://localhost:{}/callback", echo.port);
    let options = OidcOptions::default().redirect_uri(&redirect_uri).backchannel_logout_uri(&backchannel_uri);
    let idp = OidcProvider::start_with(options).await.expect("start OIDC provider");
    let browser = browser().await;

    let carol = log_in(&idp, &browser, WEB_CLIENT_ID, &redirect_uri, "carol").await;
    // The public client: PKCE and its client_id, no secret.
    let dave = log_in(&idp, &browser, PUBLIC_CLIENT_ID, &redirect_uri, "dave").await;
    assert_eq!(jwt_claims(str_of(&dave.tokens, "id_token")).expect("claims")["aud"], PUBLIC_CLIENT_ID);

    // While the provider's session lives, a new authorization needs no login (SSO).
    let again = AuthorizationRequest::new(PUBLIC_CLIENT_ID, &redirect_uri);
    let nav = dave.page.goto(&idp.authorization_url(&again)).await.expect("authorization endpoint");
    let code = callback_code(&idp, &again, &nav);
    assert!(!nav.redirects.is_empty(), "{nav:?}");
    idp.exchange_code(&again, None, &code).await.expect("code exchange");

    let carol_sid = jwt_claims(str_of(&carol.tokens, "id_token")).expect("claims")["sid"].clone();
    let done = idp.logout_user("carol").await.expect("admin logout");
    assert_eq!(done.sessions, 1, "{done:?}");
    assert_eq!(done.backchannel_logout.len(), 1, "{done:?}");
    let claims = next_logout_token(&mut logouts).await;
    assert_eq!((&claims["sub"], &claims["sid"]), (&Value::from("carol"), &carol_sid));
    assert!(claims["events"][BACKCHANNEL_LOGOUT_EVENT].is_object(), "{claims}");

    // Carol's tokens are dead and she must log in again; Dave is untouched.
    rejected_with(
        idp.refresh(WEB_CLIENT_ID, Some(WEB_CLIENT_SECRET), str_of(&carol.tokens, "refresh_token")).await,
        "invalid_grant",
    );
    let nav = carol.page.goto(&idp.authorization_url(&carol.request)).await.expect("authorization endpoint");
    assert!(nav.url.starts_with(&format!("{}/interaction/", idp.issuer())), "{nav:?}");
    idp.refresh(PUBLIC_CLIENT_ID, None, str_of(&dave.tokens, "refresh_token")).await.expect("Dave still refreshes");
    assert!(logouts.try_recv().is_err(), "only Carol was logged out");
}
