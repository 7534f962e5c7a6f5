//! gatehouse-extauth's browser sessions (`oidc_login`) end to end: refresh, concurrency across
//! replicas, script and navigation answers, tabs, logout (RP-initiated and back-channel),
//! tampered and replayed cookies and callbacks, open redirects, and an IdP outage. Each test
//! runs its own stack (gatehouse_testkit's `login_stack`: real Envoy, Redis, the real OpenID
//! provider) and its own headless Chromium.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use gatehouse_testkit::browser::{
    Browser, Context, FetchInit, GotoOptions, Navigation, Page, RedirectMode, SetCookie, query_param,
};
use gatehouse_testkit::login_stack::{LoginStack, LoginStackOptions, SESSION_COOKIE, http_client};
use gatehouse_testkit::oidc::{BACKCHANNEL_LOGOUT_EVENT, OidcOptions, WEB_CLIENT_ID, random_token};
use serde_json::{Value, json};

async fn browser() -> Browser {
    Browser::start().await.expect("browser (scripts/install-test-deps.sh installs chromium and puppeteer-core)")
}

/// What the echo upstream received for the page's current document.
async fn upstream_saw(page: &Page) -> Value {
    let content = page.content().await.expect("page content");
    content.json().unwrap_or_else(|| panic!("not the echo upstream's JSON: {:?}", content.text))
}

/// The page's text, for the JSON of a deny or a failed login.
async fn text(page: &Page) -> String {
    page.content().await.expect("page content").text
}

/// `value` with the character at `at` replaced by another base64url character.
fn flip(value: &str, at: usize) -> String {
    let mut chars: Vec<char> = value.chars().collect();
    chars[at] = if chars[at] == 'A' { 'B' } else { 'A' };
    chars.into_iter().collect()
}

/// `url` with the query parameter `name` set to `value` (replaced, or appended).
fn with_param(url: &str, name: &str, value: &str) -> String {
    let mut url = reqwest::Url::parse(url).expect("URL");
    let mut pairs: Vec<(String, String)> = url.query_pairs().into_owned().filter(|(k, _)| k != name).collect();
    pairs.push((name.to_string(), value.to_string()));
    url.query_pairs_mut().clear().extend_pairs(pairs);
    url.to_string()
}

/// The origin of `url`, `scheme://host:port`.
fn origin(url: &str) -> String {
    reqwest::Url::parse(url).map(|u| u.origin().ascii_serialization()).unwrap_or_default()
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Puts a session cookie into the browser as the gateway would have set it.
async fn set_session_cookie(s: &LoginStack, context: &Context, value: &str) {
    let cookie = SetCookie {
        secure: Some(true),
        http_only: Some(true),
        same_site: Some("Lax".into()),
        path: Some("/".into()),
        ..SetCookie::new(SESSION_COOKIE, value, s.gateway())
    };
    context.set_cookies(&[cookie]).await.expect("set the session cookie");
}

/// A GET with only the session cookie, as a non-browser client holding it would send.
async fn get_with_session(client: &reqwest::Client, url: &str, session: &str) -> (u16, String) {
    let response = client
        .get(url)
        .header("cookie", format!("{SESSION_COOKIE}={session}"))
        .header("accept", "application/json")
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = response.status().as_u16();
    (status, response.text().await.unwrap_or_default())
}

/// A `fetch()` of `path` from the page (which must be on the gateway's origin): its status.
async fn fetch_status(s: &LoginStack, page: &Page, path: &str) -> u16 {
    page.fetch(&s.url(path), FetchInit::get()).await.expect("fetch").status
}

/// Sleeps until `since + after`.
async fn sleep_until(since: Instant, after: Duration) {
    tokio::time::sleep_until((since + after).into()).await;
}

/// The callback URL of a login that went through, from its redirect chain.
fn callback_in(s: &LoginStack, nav: &Navigation) -> String {
    let prefix = s.url("/app/callback?");
    nav.redirects
        .iter()
        .map(|r| r.url.as_str())
        .chain(std::iter::once(nav.url.as_str()))
        .find(|u| u.starts_with(&prefix))
        .unwrap_or_else(|| panic!("no callback in {:?}", nav.chain()))
        .to_string()
}

/// Starts a login at `path` on `page` and completes it at the IdP, but holds the IdP's
/// redirect to the callback in the browser: answers the callback URL, unsent.
async fn held_callback(s: &LoginStack, page: &Page, path: &str, login: &str) -> String {
    let callback = s.url("/app/callback");
    page.hold_requests(&callback).await.expect("hold the callback");
    let nav = page.goto(&s.url(path)).await.expect("navigation");
    let nav = if nav.url.starts_with(&s.idp.issuer()) {
        page.fill_login(login, "any-password").await.expect("login at the IdP")
    } else {
        nav // The IdP's session let the browser straight through.
    };
    page.release_requests().await.expect("release requests");
    assert!(nav.url.starts_with(&format!("{callback}?")), "not held at the callback: {:?}", nav.chain());
    nav.url
}

// Refresh ------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_lived_access_token_is_refreshed_without_the_user_noticing() {
    let s = LoginStack::start_with(
        LoginStackOptions::default()
            .idp(OidcOptions::default().access_token_ttl(Duration::from_secs(5)))
            .oidc_login("refresh_ahead: 2s")
            .oidc_login("access_token_header: x-access-token"),
    )
    .await;
    let browser = browser().await;
    let (context, page) = browser.new_page().await.expect("page");
    let app = s.url("/app/dashboard");
    s.log_in(&page, &app, "ann").await;
    let logged_in = Instant::now();
    let first_token = upstream_saw(&page).await["headers"]["x-access-token"].clone();
    assert!(first_token.is_string(), "no access token upstream");
    let cookie = s.session_cookie(&context).await.expect("session cookie");
    assert_eq!(s.idp.token_calls().await.expect("stats").refresh_token(), 0);

    // Under 2 s left on the 5 s token (from 2-3 s after login: expiry is in whole seconds),
    // still valid (until 4-5 s): the next request refreshes it, and goes through.
    sleep_until(logged_in, Duration::from_millis(3200)).await;
    let nav = page.goto(&app).await.expect("navigation");
    assert_eq!((nav.status, nav.url.as_str()), (Some(200), app.as_str()), "{:?}", nav.chain());
    let seen = upstream_saw(&page).await;
    assert_eq!(seen["headers"]["x-user-id"], "ann", "{seen}");
    assert!(seen["headers"]["x-access-token"].is_string(), "{seen}");
    assert_ne!(seen["headers"]["x-access-token"], first_token, "the upstream still gets the old access token");
    assert_eq!(fetch_status(&s, &page, "/app/api").await, 200);
    assert_eq!(s.idp.token_calls().await.expect("stats").refresh_token(), 1, "{}", s.logs());
    assert!(s.idp.events().await.expect("events").token_errors.is_empty());

    // The cookie never changed: the refresh happened inside the session.
    let after = s.session_cookie(&context).await.expect("session cookie");
    assert_eq!(after.value, cookie.value);
}

// One refresh across replicas ----------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_requests_due_for_a_refresh_on_two_replicas_refresh_once_and_keep_the_session() {
    let s = LoginStack::start_with(
        LoginStackOptions::default()
            .idp(OidcOptions::default().access_token_ttl(Duration::from_secs(5)).rotate_refresh_tokens(true))
            .oidc_login("refresh_ahead: 2s")
            .replicas(2),
    )
    .await;
    let browser = browser().await;
    let (context, page) = browser.new_page().await.expect("page");
    s.log_in(&page, &s.url("/app/home"), "ann").await;
    let logged_in = Instant::now();
    let session = s.session_cookie(&context).await.expect("session cookie").value;
    // The browser's cookie works through the other replica's gateway too (one Redis).
    let nav = page.goto(&format!("{}/app/home", s.gateways[1])).await.expect("navigation");
    assert_eq!(nav.status, Some(200), "{:?}", nav.chain());

    // When the token needs its refresh, 20 requests at once, 10 through each replica, while
    // the IdP takes 600 ms to answer: they all overlap the one refresh.
    s.idp.set_token_delay(Duration::from_millis(600)).await.expect("token delay");
    sleep_until(logged_in, Duration::from_millis(3200)).await;
    let client = http_client();
    let burst = Instant::now();
    let mut requests = tokio::task::JoinSet::new();
    for i in 0..20 {
        let (client, session) = (client.clone(), session.clone());
        let url = format!("{}/app/api/{i}", s.gateways[i % 2]);
        requests.spawn(async move { (url.clone(), get_with_session(&client, &url, &session).await) });
    }
    while let Some(done) = requests.join_next().await {
        let (url, (status, body)) = done.expect("request task");
        assert_eq!(status, 200, "{url}: {body}\n{}", s.logs());
        let seen: Value = serde_json::from_str(&body).expect("echo JSON");
        assert_eq!(seen["headers"]["x-user-id"], "ann", "{seen}");
    }
    assert!(burst.elapsed() >= Duration::from_millis(600), "no request waited for the refresh");
    // One refresh: with rotation, a second one with the consumed refresh token would have
    // revoked the grant, and the session with it.
    let calls = s.idp.token_calls().await.expect("stats");
    assert_eq!(calls.refresh_token(), 1, "{calls:?}\n{}", s.logs());
    let events = s.idp.events().await.expect("events");
    assert!(events.token_errors.is_empty(), "{events:?}");
    for gateway in &s.gateways {
        let (status, body) = get_with_session(&client, &format!("{gateway}/app/after"), &session).await;
        assert_eq!(status, 200, "{gateway}: {body}");
    }
    let nav = page.goto(&s.url("/app/home")).await.expect("navigation");
    assert_eq!(nav.status, Some(200), "{:?}", nav.chain());
}

// Scripts and navigations --------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripts_images_and_grpc_web_get_401_while_navigations_get_302() {
    let s = LoginStack::start().await;
    let browser = browser().await;
    let (context, page) = browser.new_page().await.expect("page");
    page.goto(&s.url("/nothing-here")).await.expect("a page on the gateway's origin");

    // fetch(), even one asking for HTML: 401 with the URL to navigate to.
    for accept in ["*/*", "text/html"] {
        let r = page.fetch(&s.url("/app/api?x=1"), FetchInit::get().header("accept", accept)).await.expect("fetch");
        assert_eq!(r.status, 401, "Accept {accept}: {r:?}");
        assert_eq!(r.json().expect("JSON body")["login_url"], s.url("/app/api?x=1"), "{r:?}");
    }
    // An image, as the browser loads a favicon (no-cors, Accept: image/*).
    let image_status = page
        .evaluate(
            r#"new Promise((resolve) => {
                const url = location.origin + '/app/favicon.ico';
                const done = () => setTimeout(() => {
                    const entry = performance.getEntriesByName(url).pop();
                    resolve(entry ? entry.responseStatus : -1);
                }, 100);
                const img = new Image();
                img.onload = done;
                img.onerror = done;
                img.src = url;
            })"#,
        )
        .await
        .expect("image load");
    assert_eq!(image_status, 401);
    // gRPC-web: a POST, never redirected.
    let grpc_web = FetchInit::post("AAAAAAA=")
        .header("content-type", "application/grpc-web-text")
        .header("x-grpc-web", "1")
        .redirect(RedirectMode::Manual);
    let r = page.fetch(&s.url("/app/orders.v1.Orders/List"), grpc_web).await.expect("fetch");
    assert_eq!((r.status, r.kind.as_str()), (401, "basic"), "{r:?}");
    // None of them started a login.
    assert!(s.login_cookies(&context).await.is_empty());

    // Without Fetch Metadata (an older browser), Accept decides.
    let client = http_client();
    for (accept, status) in [("image/avif,image/webp,*/*;q=0.8", 401), ("text/html,*/*;q=0.8", 302)] {
        let r = client.get(s.url("/app/page")).header("accept", accept).send().await.expect("GET");
        assert_eq!(r.status().as_u16(), status, "Accept {accept}");
    }

    // A navigation: 302 to the IdP, with a login cookie.
    let nav = page.goto(&s.url("/app/page")).await.expect("navigation");
    assert_eq!(nav.redirects.first().and_then(|r| r.status), Some(302), "{:?}", nav.chain());
    assert!(nav.url.starts_with(&s.idp.issuer()), "{:?}", nav.chain());
    assert_eq!(s.login_cookies(&context).await.len(), 1);
}

// Tabs ---------------------------------------------------------------------------------------

/// A public client (PKCE, no secret) logs in like the confidential one; and however many tabs
/// start a login, at most `max_login_attempts` login cookies live (the oldest go).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_public_client_logs_in_and_login_cookies_are_capped() {
    let s =
        LoginStack::start_with(LoginStackOptions::default().public_client().oidc_login("max_login_attempts: 2")).await;
    let browser = browser().await;
    let (context, first) = browser.new_page().await.expect("page");
    first.goto(&s.url("/app/one")).await.expect("navigation");
    let second = context.new_page().await.expect("page");
    second.goto(&s.url("/app/two")).await.expect("navigation");
    let third = context.new_page().await.expect("page");
    third.goto(&s.url("/app/three")).await.expect("navigation");
    assert_eq!(s.login_cookies(&context).await.len(), 2, "{}", s.logs());
    let landed = third.fill_login("ann", "any-password").await.expect("login");
    assert_eq!((landed.url.as_str(), landed.status), (s.url("/app/three").as_str(), Some(200)), "{}", s.logs());
    assert_eq!(upstream_saw(&third).await["headers"]["x-user-id"], "ann");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_tabs_logging_in_at_once_each_land_on_their_own_url() {
    let s = LoginStack::start().await;
    let browser = browser().await;
    let context = browser.new_context().await.expect("context");
    let (tab1, tab2) = (context.new_page().await.expect("tab"), context.new_page().await.expect("tab"));
    let (one, two) = (s.url("/app/one?tab=1"), s.url("/app/two?tab=2"));

    let nav1 = tab1.goto(&one).await.expect("navigation");
    let nav2 = tab2.goto(&two).await.expect("navigation");
    for nav in [&nav1, &nav2] {
        assert!(nav.url.starts_with(&s.idp.issuer()), "{:?}", nav.chain());
    }
    assert_eq!(s.login_cookies(&context).await.len(), 2, "one login cookie per tab");

    // The tab that started last finishes first; the other's login is still there.
    let landed2 = tab2.fill_login("ann", "pw").await.expect("login in tab 2");
    assert_eq!((landed2.status, landed2.url.as_str()), (Some(200), two.as_str()), "{:?}", landed2.chain());
    let landed1 = tab1.fill_login("ann", "pw").await.expect("login in tab 1");
    assert_eq!((landed1.status, landed1.url.as_str()), (Some(200), one.as_str()), "{:?}", landed1.chain());
    assert_eq!(upstream_saw(&tab1).await["path"], "/app/one?tab=1");
    assert_eq!(upstream_saw(&tab2).await["path"], "/app/two?tab=2");
    assert!(s.login_cookies(&context).await.is_empty(), "login cookies left behind");
    for tab in [&tab1, &tab2] {
        assert_eq!(fetch_status(&s, tab, "/app/api").await, 200);
    }
}

// Logout -------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_ends_the_session_here_and_at_the_idp() {
    let s =
        LoginStack::start_with(LoginStackOptions::default().oidc_login("access_token_header: x-access-token")).await;
    let browser = browser().await;
    let (context, page) = browser.new_page().await.expect("page");
    s.log_in(&page, &s.url("/app/home"), "ann").await;
    let access_token = upstream_saw(&page).await["headers"]["x-access-token"].as_str().expect("token").to_string();
    assert_eq!(s.idp.introspect(&access_token).await.expect("introspection")["active"], true);

    // The app's page with a logout button (the upstream serves it).
    let form = r#"<form method="post" action="/app/logout"><button id="logout">Log out</button></form>"#;
    let options = GotoOptions::default().header("x-echo-body", form).header("x-echo-content-type", "text/html");
    let nav = page.goto_with(&s.url("/app/home"), options).await.expect("app page");
    assert_eq!(nav.status, Some(200));
    let nav = page.click("#logout").await.expect("log out");
    assert_eq!(
        nav.redirects.first().map(|r| (r.status, r.url.as_str())),
        Some((Some(303), s.url("/app/logout").as_str()))
    );
    assert!(nav.url.starts_with(&s.idp.end_session_endpoint()), "{:?}", nav.chain());
    assert!(s.session_cookie(&context).await.is_none(), "the session cookie survived logout");
    // The IdP asks; the user confirms and lands on post_logout_redirect_uri.
    let nav = page.click("button[name=logout]").await.expect("confirm at the IdP");
    assert_eq!((nav.status, nav.url.as_str()), (Some(200), s.url("/bye").as_str()), "{:?}", nav.chain());
    let events = s.idp.events().await.expect("events");
    assert_eq!(events.end_session, 1);
    // Its back-channel logout reached extauth through Envoy (and found nothing left to end).
    assert!(events.backchannel_logout.iter().all(|b| b.ok) && events.backchannel_logout.len() == 1, "{events:?}");

    // The IdP's session ended too: the next navigation asks for the password again.
    let nav = page.goto(&s.url("/app/home")).await.expect("navigation");
    assert!(nav.url.starts_with(&format!("{}/interaction/", s.idp.issuer())), "{:?}", nav.chain());
    assert_eq!(page.evaluate("!!document.querySelector('input[name=login]')").await.expect("eval"), true);
}

/// Logout revokes the session's tokens at the IdP (RFC 7009), which advertises a
/// `revocation_endpoint` at `http://127.0.0.1:<port>/token/revocation`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_revokes_the_sessions_tokens_at_the_idp() {
    let s =
        LoginStack::start_with(LoginStackOptions::default().oidc_login("access_token_header: x-access-token")).await;
    let browser = browser().await;
    let (_context, page) = browser.new_page().await.expect("page");
    s.log_in(&page, &s.url("/app/home"), "ann").await;
    let access_token = upstream_saw(&page).await["headers"]["x-access-token"].as_str().expect("token").to_string();
    assert_eq!(s.idp.introspect(&access_token).await.expect("introspection")["active"], true);
    let r = page.fetch(&s.url("/app/logout"), FetchInit::post("").redirect(RedirectMode::Manual)).await;
    assert_eq!(r.expect("logout").kind, "opaqueredirect");
    assert_eq!(fetch_status(&s, &page, "/app/api").await, 401);
    let introspected = s.idp.introspect(&access_token).await.expect("introspection");
    assert_eq!(introspected["active"], false, "the access token outlived logout: {introspected}\n{}", s.logs());
}

// Back-channel logout ------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backchannel_logout_ends_sessions_in_other_browsers() {
    let s = LoginStack::start_with(LoginStackOptions::default().oidc_login("id_token_header: x-id-token").replicas(2))
        .await;
    let browser = browser().await;
    // (context, page, the IdP's sid, the session cookie)
    let mut browsers = Vec::new();
    for login in ["xavier", "xavier", "yvonne"] {
        let (context, page) = browser.new_page().await.expect("page");
        s.log_in(&page, &s.url("/app/home"), login).await;
        let id_token = upstream_saw(&page).await["headers"]["x-id-token"].as_str().expect("ID token").to_string();
        let sid =
            gatehouse_testkit::oidc::jwt_claims(&id_token).expect("claims")["sid"].as_str().expect("sid").to_string();
        let session = s.session_cookie(&context).await.expect("session cookie").value;
        browsers.push((context, page, sid, session));
    }
    // Each browser's fetch through gateway 0 (whose replica gets the logout token), and its
    // cookie through gateway 1 (the other replica, which has the session in its cache and
    // learns of ended sessions within 100 ms).
    let client = http_client();
    let statuses = async |browsers: &[(Context, Page, String, String)]| {
        let mut out = Vec::new();
        for (_, page, _, _) in browsers {
            out.push(fetch_status(&s, page, "/app/api").await);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
        for (_, _, _, session) in browsers {
            out.push(get_with_session(&client, &format!("{}/app/api", s.gateways[1]), session).await.0);
        }
        out
    };
    assert_eq!(statuses(&browsers).await, [200, 200, 200, 200, 200, 200]);
    assert_ne!(browsers[0].2, browsers[1].2, "two browsers, two IdP sessions");

    // The IdP ends Xavier's first session: its logout token comes through Envoy.
    let done = s.idp.logout_session(&browsers[0].2).await.expect("IdP logout");
    assert!(done.backchannel_logout.len() == 1 && done.backchannel_logout[0].ok, "{done:?}\n{}", s.logs());
    assert_eq!(statuses(&browsers).await, [401, 200, 200, 401, 200, 200]);
    // Then all of Xavier's.
    let done = s.idp.logout_user("xavier").await.expect("IdP logout");
    assert!(done.backchannel_logout.iter().all(|b| b.ok), "{done:?}");
    assert_eq!(statuses(&browsers).await, [401, 401, 200, 401, 401, 200]);

    // Logout tokens the IdP would not send: signed with its key, refused for their content.
    let post = async |token: &str| {
        let response = client
            .post(s.backchannel_logout_url())
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("logout_token={token}"))
            .send()
            .await
            .expect("POST logout token");
        (response.status().as_u16(), response.text().await.unwrap_or_default())
    };
    let claims = |jti: &str| {
        json!({
            "iss": s.idp.issuer(), "aud": WEB_CLIENT_ID, "iat": unix_now(), "exp": unix_now() + 120,
            "jti": jti, "sub": "yvonne", "events": { BACKCHANNEL_LOGOUT_EVENT: {} },
        })
    };
    let header = json!({ "typ": "logout+jwt" });
    let mut with_nonce = claims(&random_token());
    with_nonce["nonce"] = json!("n-0S6_WzA2Mj");
    let (status, body) = post(&s.idp.sign(header.clone(), with_nonce).await.expect("sign")).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("nonce"), "{body}");
    assert_eq!(statuses(&browsers).await, [401, 401, 200, 401, 401, 200]);
    // A good one ends Yvonne's session; the same token again is a replay.
    let token = s.idp.sign(header, claims(&random_token())).await.expect("sign");
    let (status, body) = post(&token).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(statuses(&browsers).await, [401, 401, 401, 401, 401, 401]);
    let (status, body) = post(&token).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("replayed"), "{body}");
}

// Session and login cookies ------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_and_logged_out_session_cookies_are_refused() {
    let s = LoginStack::start().await;
    let browser = browser().await;
    let (context, page) = browser.new_page().await.expect("page");
    let home = s.url("/app/home");
    s.log_in(&page, &home, "ann").await;
    let cookie = s.session_cookie(&context).await.expect("session cookie").value;
    assert_eq!(cookie.len(), 64, "{cookie}");

    // One character changed in the key half: the session is found but does not open.
    set_session_cookie(&s, &context, &flip(&cookie, 40)).await;
    let r = page.fetch(&s.url("/app/api"), FetchInit::get()).await.expect("fetch");
    assert_eq!(r.status, 401, "{r:?}");
    assert!(s.session_cookie(&context).await.is_none(), "the refused cookie was not cleared");
    // Not a session handle at all.
    set_session_cookie(&s, &context, "not-a-session").await;
    assert_eq!(fetch_status(&s, &page, "/app/api").await, 401);
    // One character changed in the id, on a navigation: to the IdP, whose session brings the
    // browser straight back with a new session (never the one it brought).
    let tampered = flip(&cookie, 3);
    set_session_cookie(&s, &context, &tampered).await;
    let nav = page.goto(&home).await.expect("navigation");
    let first = nav.redirects.first().expect("redirected");
    assert_eq!(first.status, Some(302), "{:?}", nav.chain());
    assert!(first.location.as_deref().unwrap_or("").starts_with(&s.idp.issuer()), "{:?}", nav.chain());
    assert_eq!((nav.status, nav.url.as_str()), (Some(200), home.as_str()), "{:?}", nav.chain());
    let renewed = s.session_cookie(&context).await.expect("session cookie").value;
    assert!(renewed != cookie && renewed != tampered);

    // The original still works, until it is logged out; replayed after that, it is refused.
    set_session_cookie(&s, &context, &cookie).await;
    assert_eq!(fetch_status(&s, &page, "/app/api").await, 200);
    let r = page.fetch(&s.url("/app/logout"), FetchInit::post("").redirect(RedirectMode::Manual)).await;
    assert_eq!(r.expect("logout").kind, "opaqueredirect");
    set_session_cookie(&s, &context, &cookie).await;
    let r = page.fetch(&s.url("/app/api"), FetchInit::get()).await.expect("fetch");
    assert_eq!(r.status, 401, "{r:?}");
    assert_eq!(r.json().expect("JSON")["reason"], "session expired or ended", "{r:?}");
    // The same from a client outside the browser.
    let (status, _) = get_with_session(&http_client(), &s.url("/app/api"), &cookie).await;
    assert_eq!(status, 401);
}

/// The idle timeout in Redis itself, without the replicas' session cache (the next test has
/// both).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_session_ends_and_an_active_one_does_not() {
    let s =
        LoginStack::start_with(LoginStackOptions::default().oidc_login("session: { idle_timeout: 2s, cache_ttl: 0s }"))
            .await;
    let browser = browser().await;
    let (_context, page) = browser.new_page().await.expect("page");
    s.log_in(&page, &s.url("/app/home"), "ann").await;

    // A request every 700 ms for 3.5 s: never idle for 2 s.
    let active = Instant::now();
    let mut statuses = Vec::new();
    while active.elapsed() < Duration::from_millis(3500) {
        tokio::time::sleep(Duration::from_millis(700)).await;
        statuses.push(fetch_status(&s, &page, "/app/api").await);
    }
    assert!(statuses.iter().all(|s| *s == 200), "an active session ended: {statuses:?}");

    // Idle for 2.5 s: over.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let r = page.fetch(&s.url("/app/api"), FetchInit::get()).await.expect("fetch");
    assert_eq!(r.status, 401, "{r:?}");
}

/// `idle_timeout` shorter than a replica keeps a session in memory (`session.cache_ttl`, 5 s
/// by default): requests answered from that cache must count as activity, and a session idle
/// for longer than its timeout must not be answered from it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_session_cache_honours_the_idle_timeout() {
    let s = LoginStack::start_with(LoginStackOptions::default().oidc_login("session: { idle_timeout: 3s }")).await;
    let browser = browser().await;
    let (_active, active) = browser.new_page().await.expect("page");
    let (_idle, idle) = browser.new_page().await.expect("page");
    // The idle one first: its last request is its login's landing page.
    s.log_in(&idle, &s.url("/app/home"), "bob").await;
    let idle_since = Instant::now();
    s.log_in(&active, &s.url("/app/home"), "ann").await;
    let since = Instant::now();
    let mut statuses = Vec::new();
    let mut idle_status = None;
    // Past cache_ttl (5 s): answered from the cache, then from Redis again.
    while since.elapsed() < Duration::from_secs(8) {
        tokio::time::sleep(Duration::from_millis(700)).await;
        statuses.push((since.elapsed().as_millis(), fetch_status(&s, &active, "/app/api").await));
        if idle_status.is_none() && idle_since.elapsed() > Duration::from_millis(3500) {
            idle_status = Some(fetch_status(&s, &idle, "/app/api").await);
        }
    }
    let ended = statuses.iter().any(|(_, s)| *s != 200);
    assert!(
        !ended && idle_status == Some(401),
        "active session (ms since login, status): {statuses:?}; idle for 3 s: {idle_status:?}\n{}",
        s.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_login_cookies_and_replayed_callbacks_are_refused() {
    let s = LoginStack::start().await;
    let browser = browser().await;

    // A login whose cookie was changed on the way: the callback cannot open it.
    let (context, page) = browser.new_page().await.expect("page");
    let nav = page.goto(&s.url("/app/home")).await.expect("navigation");
    assert!(nav.url.starts_with(&s.idp.issuer()), "{:?}", nav.chain());
    let login = context.cookies(&[s.gateway()]).await.expect("cookies");
    let login = login.iter().find(|c| c.name.starts_with("__Host-gatehouse-login-")).expect("login cookie");
    let cookie = SetCookie {
        secure: Some(true),
        http_only: Some(true),
        path: Some("/".into()),
        ..SetCookie::new(&login.name, &flip(&login.value, 20), s.gateway())
    };
    context.set_cookies(&[cookie]).await.expect("set cookie");
    let nav = page.fill_login("ann", "pw").await.expect("login at the IdP");
    assert!(nav.url.starts_with(&s.url("/app/callback?")), "{:?}", nav.chain());
    assert_eq!(nav.status, Some(401));
    assert!(text(&page).await.contains("login failed"), "{}", text(&page).await);
    assert!(s.session_cookie(&context).await.is_none());
    assert_eq!(s.idp.token_calls().await.expect("stats").authorization_code(), 0, "the code was used");

    // A login that went through; its callback URL again, in the same browser and in another.
    let (_context, page) = browser.new_page().await.expect("page");
    let landed = s.log_in(&page, &s.url("/app/home"), "bob").await;
    let callback = callback_in(&s, &landed);
    let nav = page.goto(&callback).await.expect("replayed callback");
    assert_eq!(nav.status, Some(401), "{:?}", nav.chain());
    assert!(text(&page).await.contains("login failed"), "{}", text(&page).await);
    assert_eq!(fetch_status(&s, &page, "/app/api").await, 200, "the replay cost the real session");
    let (other, page) = browser.new_page().await.expect("page");
    let nav = page.goto(&callback).await.expect("replayed callback");
    assert_eq!(nav.status, Some(401), "{:?}", nav.chain());
    assert!(s.session_cookie(&other).await.is_none());
    assert_eq!(s.idp.token_calls().await.expect("stats").authorization_code(), 1, "a replay reached the IdP");
}

// Callbacks ----------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callbacks_with_a_wrong_state_iss_or_nonce_are_refused() {
    let s = LoginStack::start().await;
    let browser = browser().await;
    let (_context, page) = browser.new_page().await.expect("page");
    let refused = async |url: &str, why: &str| {
        let nav = page.goto(url).await.expect("callback");
        let body = text(&page).await;
        assert_eq!(nav.status, Some(401), "{why}: {:?}\n{body}\n{}", nav.chain(), s.logs());
        assert!(body.contains("login failed"), "{why}: {body}");
        body
    };

    let callback = held_callback(&s, &page, "/app/orders", "ann").await;
    assert_eq!(query_param(&callback, "iss"), Some(s.idp.issuer()), "RFC 9207 iss");
    let body = refused(&with_param(&callback, "state", "AAAAAAAAAAAAAAAAAAAAAA"), "state").await;
    assert!(body.contains("no login in progress"), "{body}");
    let body = refused(&with_param(&callback, "iss", "http://127.0.0.1:1"), "iss").await;
    assert!(body.contains("issuer"), "{body}");
    assert_eq!(s.idp.token_calls().await.expect("stats").authorization_code(), 0, "refused after the code was used");

    // An ID token with another nonce, validly signed.
    let callback = held_callback(&s, &page, "/app/orders", "ann").await;
    s.idp.forge_next_id_token(json!({ "nonce": "not-the-logins-nonce" })).await.expect("forge");
    let body = refused(&callback, "nonce").await;
    assert!(body.contains("nonce"), "{body}");

    // Two logins under way, their callbacks crossed: login B's code with login A's state
    // (nonce and PKCE verifier of A, a code issued for B's).
    let a = held_callback(&s, &page, "/app/a", "ann").await;
    let b = held_callback(&s, &page, "/app/b", "ann").await;
    let code_b = query_param(&b, "code").expect("code");
    let body = refused(&with_param(&a, "code", &code_b), "crossed").await;
    assert!(body.contains("refused the code"), "{body}");

    // None of that left a session, and an untouched callback still works.
    assert_eq!(fetch_status(&s, &page, "/app/api").await, 401);
    let nav = page.goto(&b).await.expect("callback");
    assert_eq!((nav.status, nav.url.as_str()), (Some(200), s.url("/app/b").as_str()), "{:?}", nav.chain());
}

// Open redirects -----------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn return_urls_never_leave_the_gateway() {
    let s = LoginStack::start().await;
    let browser = browser().await;
    let (context, page) = browser.new_page().await.expect("page");
    let gateway = origin(s.gateway());

    // Paths that read as another host once a slash goes missing, and parameters that name
    // one: the browser comes back to exactly what it asked for, on the gateway.
    let first = s.url("/app//evil.example/x");
    s.log_in(&page, &first, "ann").await;
    for path in
        ["/app/%2F%2Fevil.example", "/app/x?next=//evil.example&return_to=http://evil.example/&rd=//evil.example"]
    {
        context
            .delete_cookies(&[gatehouse_testkit::browser::DeleteCookie::for_url(SESSION_COOKIE, s.gateway())])
            .await
            .expect("delete session cookie");
        let nav = page.goto(&s.url(path)).await.expect("navigation");
        assert!(nav.redirects.iter().any(|r| r.url.starts_with(&s.idp.issuer())), "{:?}", nav.chain());
        assert_eq!((nav.status, nav.url.as_str()), (Some(200), s.url(path).as_str()), "{:?}", nav.chain());
    }
    // X-Forwarded-Host from the client does not name the way back.
    context
        .delete_cookies(&[gatehouse_testkit::browser::DeleteCookie::for_url(SESSION_COOKIE, s.gateway())])
        .await
        .expect("delete session cookie");
    let nav = page
        .goto_with(&s.url("/app/fwd"), GotoOptions::default().header("x-forwarded-host", "evil.example"))
        .await
        .expect("navigation");
    assert_eq!((nav.status, origin(&nav.url)), (Some(200), gateway.clone()), "{:?}", nav.chain());

    // A Host header only a non-browser client can forge: the login it starts belongs to that
    // client (its cookie). A victim sent to its IdP URL logs in and is refused at the
    // callback, on the gateway.
    let r = http_client()
        .get(s.url("/app/x"))
        .header("host", "evil.example")
        .header("accept", "text/html")
        .send()
        .await
        .expect("GET");
    assert_eq!(r.status().as_u16(), 302);
    let to_idp = r.headers()["location"].to_str().expect("location").to_string();
    assert!(to_idp.starts_with(&s.idp.issuer()), "{to_idp}");
    let (_victim, page) = browser.new_page().await.expect("page");
    page.goto(&to_idp).await.expect("IdP");
    let nav = page.fill_login("vic", "pw").await.expect("login at the IdP");
    assert_eq!((nav.status, origin(&nav.url)), (Some(401), gateway.clone()), "{:?}", nav.chain());
    assert!(!nav.chain().iter().any(|(_, u)| u.contains("evil.example")), "{:?}", nav.chain());

    // A login started from a page's link (/oidc/start, extauth's HTTP port behind Envoy):
    // `rd` must be a path on this site.
    let client = http_client();
    for rd in ["//evil.example/", "http://evil.example/", "/\\evil.example/", "https://localhost.evil.example/"] {
        let url = reqwest::Url::parse_with_params(&s.url("/oidc/start/app"), [("rd", rd)]).expect("URL");
        let r = client.get(url).header("accept", "text/html").send().await.expect("GET");
        let status = r.status().as_u16();
        let body = r.text().await.unwrap_or_default();
        assert_eq!(status, 400, "rd={rd}: {body}");
        assert!(body.contains("rd is not a safe redirect"), "rd={rd}: {body}");
    }
    let (_linked, page) = browser.new_page().await.expect("page");
    let nav = page.goto(&s.url("/oidc/start/app?rd=/app/linked%3Fx%3D1")).await.expect("start");
    assert!(nav.url.starts_with(&s.idp.issuer()), "{:?}", nav.chain());
    let nav = page.fill_login("ann", "pw").await.expect("login at the IdP");
    assert_eq!((nav.status, nav.url.as_str()), (Some(200), s.url("/app/linked?x=1").as_str()), "{:?}", nav.chain());

    // Logout goes only where the policy says: an unsafe `rd` is refused (and the session
    // kept); other parameters are ignored.
    let session = s.session_cookie(&context).await.expect("session cookie").value;
    let logout = async |query: &str| {
        client
            .post(s.url(&format!("/app/logout?{query}")))
            .header("origin", s.gateway())
            .header("cookie", format!("{SESSION_COOKIE}={session}"))
            .send()
            .await
            .expect("logout")
    };
    let evil = "http%3A%2F%2Fevil.example%2F";
    let r = logout(&format!("rd={evil}")).await;
    assert_eq!(r.status().as_u16(), 400);
    assert!(r.text().await.unwrap_or_default().contains("rd is not a safe redirect"));
    assert_eq!(
        get_with_session(&client, &s.url("/app/api"), &session).await.0,
        200,
        "a refused logout ended the session"
    );
    let r = logout(&format!("after={evil}&post_logout_redirect_uri={evil}&next={evil}")).await;
    assert_eq!(r.status().as_u16(), 303);
    let location = r.headers()["location"].to_str().expect("location").to_string();
    assert!(location.starts_with(&s.idp.end_session_endpoint()), "{location}");
    assert_eq!(query_param(&location, "post_logout_redirect_uri"), Some(s.url("/bye")), "{location}");
    assert!(!location.contains("evil"), "{location}");
    assert_eq!(get_with_session(&client, &s.url("/app/api"), &session).await.0, 401);
}

// IdP outage ---------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_the_idp_is_down_sessions_go_on_until_their_token_expires() {
    let mut s = LoginStack::start_with(
        LoginStackOptions::default()
            .idp(OidcOptions::default().access_token_ttl(Duration::from_secs(6)))
            .oidc_login("refresh_ahead: 3s")
            .replicas(2),
    )
    .await;
    let browser = browser().await;
    let (context, page) = browser.new_page().await.expect("page");
    s.log_in(&page, &s.url("/app/home"), "ann").await;
    let logged_in = Instant::now();
    let session = s.session_cookie(&context).await.expect("session cookie").value;
    // Another browser is at the IdP, its login done, on its way back to the callback.
    let (_other, pending) = browser.new_page().await.expect("page");
    let callback = held_callback(&s, &pending, "/app/pending", "bob").await;

    s.idp.stop();
    let client = http_client();

    // The login under way cannot finish: 503, with a reason a person can read.
    let nav = pending.goto(&callback).await.expect("callback");
    let body = text(&pending).await;
    assert_eq!(nav.status, Some(503), "{body}");
    let json: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
    assert_eq!(json["retry"], true, "{json}");
    assert!(json["reason"].as_str().is_some_and(|r| r.contains("try again")), "{json}");
    // A new login through the replica that never reached the IdP: 503 too.
    let nav = pending.goto(&format!("{}/app/new", s.gateways[1])).await.expect("navigation");
    let body = text(&pending).await;
    assert_eq!(nav.status, Some(503), "{:?}\n{body}", nav.chain());
    assert!(body.contains("\"retry\":true"), "{body}");
    // Nor does the replica that discovered the IdP before the outage send a navigation there
    // (the browser could not connect): it saw the code exchange fail, and asks the IdP
    // before a login redirect.
    let nav = pending.goto(&s.url("/app/new")).await.expect("navigation");
    let body = text(&pending).await;
    assert_eq!(nav.status, Some(503), "{:?}\n{body}", nav.chain());

    // The session goes on, through both replicas, while its access token is valid...
    for gateway in &s.gateways {
        let (status, body) = get_with_session(&client, &format!("{gateway}/app/api"), &session).await;
        assert_eq!(status, 200, "{body}");
    }
    // ... even once it needs a refresh the IdP cannot give (under 3 s left).
    sleep_until(logged_in, Duration::from_millis(3800)).await;
    assert_eq!(fetch_status(&s, &page, "/app/api").await, 200, "{}", s.logs());
    // Expired and still no IdP: the request cannot be decided (not a logout).
    sleep_until(logged_in, Duration::from_millis(6500)).await;
    let (status, body) = get_with_session(&client, &s.url("/app/api"), &session).await;
    assert_eq!(status, 503, "{body}\n{}", s.logs());
    assert!(body.contains("\"retry\":true"), "a page that says to retry: {body}");

    // The IdP comes back (it has forgotten its grants: state is in memory): the refresh is
    // refused, the session ends, and a navigation logs in again.
    s.idp.restart().await.expect("IdP restart");
    let (status, body) = get_with_session(&client, &s.url("/app/api"), &session).await;
    assert_eq!(status, 401, "{body}\n{}", s.logs());
    s.log_in(&page, &s.url("/app/home"), "ann").await;
}

// The cookie store ---------------------------------------------------------------------------

/// `session: {store: cookie}`: the session lives in the browser's cookies (nothing in Redis),
/// under 4 KB a cookie; a refresh rewrites them, once for a burst of requests that all carry
/// the old cookies; tampering and logout end it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cookie_store_keeps_the_session_in_the_browser() {
    let s = LoginStack::start_with(
        LoginStackOptions::default()
            .idp(OidcOptions::default().access_token_ttl(Duration::from_secs(5)).rotate_refresh_tokens(true))
            .oidc_login("session: { store: cookie }")
            .oidc_login("refresh_ahead: 2s")
            .oidc_login("access_token_header: x-access-token"),
    )
    .await;
    let browser = browser().await;
    let (context, page) = browser.new_page().await.expect("page");
    s.log_in(&page, &s.url("/app/home"), "ann").await;
    let logged_in = Instant::now();
    let seen = upstream_saw(&page).await;
    assert_eq!(seen["headers"]["x-user-id"], "ann", "{seen}");
    assert!(!seen["headers"]["cookie"].as_str().unwrap_or("").contains("__Host-gatehouse"), "{seen}");
    let first_token = seen["headers"]["x-access-token"].clone();

    // The session is the cookies: sealed, HttpOnly, Secure, each under 4 KB; Redis holds none.
    let cookies = context.cookies(&[&s.gateways[0]]).await.expect("cookies");
    let session: Vec<_> = cookies.iter().filter(|c| c.name.starts_with(SESSION_COOKIE)).collect();
    assert!(!session.is_empty(), "{cookies:?}");
    for c in &session {
        assert!(c.secure && c.http_only && c.name.len() + c.value.len() < 4000, "{c:?}");
        assert!(!c.value.contains(first_token.as_str().unwrap_or("-")), "a token in clear");
    }
    let keys = s.redis.cli(&["KEYS", "gatehouse:session:*"]).unwrap_or_default();
    assert!(keys.trim().is_empty(), "Redis holds sessions: {keys}");
    let cookie_header = session.iter().map(|c| format!("{}={}", c.name, c.value)).collect::<Vec<_>>().join("; ");

    // Due for a refresh: 10 requests at once with the same (old) cookies, against a slow IdP.
    // One refresh; every request goes through, and the answers rewrite the cookies.
    s.idp.set_token_delay(Duration::from_millis(400)).await.expect("token delay");
    sleep_until(logged_in, Duration::from_millis(3200)).await;
    let client = http_client();
    let mut requests = tokio::task::JoinSet::new();
    for i in 0..10 {
        let (client, cookie, url) = (client.clone(), cookie_header.clone(), s.url(&format!("/app/api/{i}")));
        requests.spawn(async move {
            let response = client.get(&url).header("cookie", cookie).send().await.expect("request");
            let set_cookies: Vec<String> = response
                .headers()
                .get_all("set-cookie")
                .iter()
                .map(|v| v.to_str().unwrap_or_default().to_string())
                .collect();
            (response.status().as_u16(), set_cookies, response.text().await.unwrap_or_default())
        });
    }
    while let Some(done) = requests.join_next().await {
        let (status, set_cookies, body) = done.expect("request task");
        assert_eq!(status, 200, "{body}\n{}", s.logs());
        assert!(set_cookies.iter().any(|c| c.starts_with(&format!("{SESSION_COOKIE}="))), "{set_cookies:?}");
        let seen: Value = serde_json::from_str(&body).expect("echo JSON");
        assert_ne!(seen["headers"]["x-access-token"], first_token, "the old access token went upstream");
    }
    assert_eq!(s.idp.token_calls().await.expect("stats").refresh_token(), 1, "{}", s.logs());

    // The browser's own request gets the refreshed session too, and keeps it.
    let nav = page.goto(&s.url("/app/home")).await.expect("navigation");
    assert_eq!(nav.status, Some(200), "{:?}", nav.chain());
    assert_eq!(fetch_status(&s, &page, "/app/api").await, 200);

    // A flipped byte: 401, and the cookies are cleared.
    let (status, _) = get_with_session(&client, &s.url("/app/api"), &flip(&session[0].value, 20)).await;
    assert_eq!(status, 401);

    // Logout clears the cookies; the next call has no session.
    let mut logout = FetchInit::post("");
    logout.redirect = RedirectMode::Manual;
    page.fetch(&s.url("/app/logout"), logout).await.expect("logout");
    let left = context.cookies(&[&s.gateways[0]]).await.expect("cookies");
    assert!(!left.iter().any(|c| c.name.starts_with(SESSION_COOKIE)), "{left:?}");
    assert_eq!(fetch_status(&s, &page, "/app/api").await, 401);
}

// HTTP forward-auth -----------------------------------------------------------------------

/// The same policy through forward-auth, as NGINX and Traefik call it: Envoy's ext_authz in
/// HTTP mode on `/app-http/` (envoy/gateway.yaml) asks `/forward-auth/app/<path>`. A script
/// gets the 401 with `login_url`, a navigation the redirect with its login cookie, and after
/// the login the upstream gets the identity and no Gatehouse cookie. `/oidc/start` with a
/// path `rd` (what NGINX's `error_page 401` sends the browser to) logs in and lands on `rd`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_auth_logs_in_through_envoys_http_mode() {
    let s = LoginStack::start().await;
    let browser = browser().await;
    let (context, page) = browser.new_page().await.expect("page");
    page.goto(&s.url("/nothing-here")).await.expect("navigation");
    let app = s.url("/app-http/orders?id=7");
    let r = page.fetch(&app, FetchInit::get()).await.expect("fetch");
    assert_eq!(r.status, 401, "{r:?}");
    let body: Value = serde_json::from_str(&r.body).expect("JSON body");
    assert_eq!(body["login_url"], app.as_str(), "{body}");

    // Theirs is the navigation's first redirect: a 302 with the login cookie, through Envoy's
    // HTTP mode.
    let landed = s.log_in(&page, &app, "ann").await;
    assert_eq!(landed.status, Some(200));
    let seen = upstream_saw(&page).await;
    assert_eq!(seen["headers"]["x-user-id"], "ann", "{seen}");
    assert!(!seen["headers"]["cookie"].as_str().unwrap_or("").contains("__Host-gatehouse"), "{seen}");
    assert!(s.session_cookie(&context).await.is_some());

    // The start endpoint, in a browser without a session.
    let (_fresh, fresh) = browser.new_page().await.expect("page");
    let nav = fresh.goto(&s.url("/oidc/start/app?rd=/app-http/next")).await.expect("navigation");
    assert!(nav.url.starts_with(&s.idp.issuer()), "not at the IdP: {:?}", nav.chain());
    let landed = fresh.fill_login("bob", "any-password").await.expect("login");
    assert_eq!(landed.url, s.url("/app-http/next"), "{:?}", landed.chain());
    assert_eq!(upstream_saw(&fresh).await["headers"]["x-user-id"], "bob");
}
