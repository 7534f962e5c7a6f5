//! The HTTP port: forward-auth for proxies that are not Envoy (or Envoy's HTTP ext_authz
//! mode), the JWKS of the JWTs this service signs, health, metrics and config status.
//!
//! Forward-auth: `ANY /forward-auth/{policy}[/original/path]`, or `/forward-auth` to pick the
//! policy by host. The original request comes from `X-Forwarded-Method`, `-Proto`, `-Host`
//! and `-Uri` (Traefik, HAProxy) or `X-Original-Method` / `X-Original-URI` (NGINX
//! `auth_request`), else from the path after the policy (Envoy's HTTP mode with `path_prefix`).
//! 200 allows and carries the identity headers; 401/403 deny with the same JSON body as gRPC;
//! 503 means the service cannot decide.
//!
//! A request line and headers over [`MAX_HEADER_BYTES`] never reach a policy: they are denied
//! with 401 and a JSON body, never hyper's 431, which NGINX `auth_request` turns into a 500.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use gatehouse_common::metrics::Metrics;
use gatehouse_common::server::HttpApp;
use serde_json::json;
use tracing::Instrument as _;

use crate::policy::{Decision, Deny, POLICY_CONTEXT_KEY};
use crate::request::AuthRequest;
use crate::service::Authorizer;

#[derive(Clone)]
struct AppState {
    authorizer: Authorizer,
}

/// The most bytes of request line and headers the HTTP port reads: four times the largest
/// token any identity method accepts by default (introspection, 16 KiB), so an oversized token
/// reaches its method and is denied there, with the policy in the body.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;

/// The service's own endpoints; `common::server` adds `/healthcheck`.
pub fn router(authorizer: Authorizer, metrics: &Metrics) -> HttpApp {
    let router = Router::new()
        .route("/.well-known/jwks.json", get(jwks))
        .route("/config-status", get(config_status))
        .route("/forward-auth", any(forward_auth_by_host))
        .route("/forward-auth/{*rest}", any(forward_auth))
        .route("/oidc/backchannel-logout/{policy}", axum::routing::post(backchannel_logout))
        .route("/oidc/start/{policy}", get(start_login))
        .with_state(AppState { authorizer })
        .merge(metrics.router("/metrics"));
    HttpApp::from(router).max_header_bytes(MAX_HEADER_BYTES).head_too_large(head_too_large())
}

/// The deny for a request hyper rejects before routing, so without a policy or request id.
fn head_too_large() -> axum::http::Response<String> {
    let body = json!({
        "error": "unauthorized",
        "reason": format!("request headers too large (over {} KiB)", MAX_HEADER_BYTES / 1024),
    });
    let mut response = axum::http::Response::new(body.to_string());
    *response.status_mut() = StatusCode::UNAUTHORIZED;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

async fn jwks(State(state): State<AppState>) -> Response {
    let body = state.authorizer.signer.jwks().to_string();
    ([(header::CONTENT_TYPE, "application/json"), (header::CACHE_CONTROL, "max-age=300")], body).into_response()
}

async fn config_status(State(state): State<AppState>) -> Response {
    let mut body = state.authorizer.policies.status().to_json();
    let mut names: Vec<String> = state.authorizer.policies.load().by_name.keys().cloned().collect();
    names.sort();
    body["policies"] = json!(names);
    ([(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

async fn forward_auth_by_host(
    State(state): State<AppState>,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    decide(&state, None, "/", method, headers, body).await
}

async fn forward_auth(
    State(state): State<AppState>,
    Path(rest): Path<String>,
    RawQuery(query): RawQuery,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (policy, path) = match rest.split_once('/') {
        Some((policy, path)) => (policy.to_string(), format!("/{path}")),
        None => (rest, "/".to_string()),
    };
    decide(&state, Some(policy), &with_query(path, query), method, headers, body).await
}

/// OpenID Connect Back-Channel Logout: `POST /oidc/backchannel-logout/{policy}` with a form
/// field `logout_token`, from the IdP (register this URL as the client's
/// `backchannel_logout_uri`). 200 once every named session has ended; 400 for a token to
/// refuse; 503 when Redis cannot be reached (the IdP may retry).
async fn backchannel_logout(State(state): State<AppState>, Path(policy): Path<String>, body: Bytes) -> Response {
    let no_store = || [(header::CACHE_CONTROL, "no-store"), (header::CONTENT_TYPE, "application/json")];
    let refuse = |status: StatusCode, error: &str, description: String| {
        (status, no_store(), json!({ "error": error, "error_description": description }).to_string()).into_response()
    };
    let Some(token) = form_urlencoded::parse(&body).find(|(k, _)| k == "logout_token").map(|(_, v)| v.into_owned())
    else {
        return refuse(StatusCode::BAD_REQUEST, "invalid_request", "no logout_token".into());
    };
    let policies = state.authorizer.policies.load();
    let Some(login) = policies.by_name.get(&policy).and_then(|p| p.browser_login()) else {
        return refuse(StatusCode::NOT_FOUND, "invalid_request", format!("no browser login in policy {policy:?}"));
    };
    match login.backchannel_logout(&token).await {
        Ok(Ok(ended)) => (StatusCode::OK, no_store(), json!({ "ended": ended }).to_string()).into_response(),
        Ok(Err(reason)) => {
            tracing::warn!(policy = %policy, %reason, "back-channel logout token refused");
            refuse(StatusCode::BAD_REQUEST, "invalid_request", reason)
        }
        Err(e) => refuse(StatusCode::SERVICE_UNAVAILABLE, "temporarily_unavailable", e.to_string()),
    }
}

/// `GET /oidc/start/{policy}?rd=<path or allowed URL>`: starts a browser login that returns to
/// `rd`. Proxied on the application's own host (the login cookie is set there): NGINX sends
/// `auth_request`'s 401 here with `error_page 401 =302 /oidc/start/app?rd=$request_uri`.
async fn start_login(
    State(state): State<AppState>,
    Path(policy): Path<String>,
    RawQuery(query): RawQuery,
    method: Method,
    headers: HeaderMap,
) -> Response {
    let path = with_query(format!("/oidc/start/{policy}"), query);
    let request = forwarded_request(Some(policy.clone()), &path, &method, &headers, Bytes::new());
    let policies = state.authorizer.policies.load();
    let Some(login) = policies.by_name.get(&policy).and_then(|p| p.browser_login()) else {
        let deny = Deny { status: 404, reason: format!("no browser login in policy {policy:?}"), ..Default::default() };
        return deny_response(&deny, &policy, &request);
    };
    match login.start(&request).await {
        Ok(deny) => deny_response(&deny, &policy, &request),
        Err(e) => {
            tracing::warn!(error = %e, "starting a browser login");
            cannot_decide(&policy)
        }
    }
}

fn with_query(path: String, query: Option<String>) -> String {
    match query {
        Some(q) if !q.is_empty() => format!("{path}?{q}"),
        _ => path,
    }
}

async fn decide(
    state: &AppState,
    policy: Option<String>,
    path: &str,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    // The server span of the proxy's call, continuing the trace its headers carry, as the gRPC
    // Check's does; the same policy, identity and decision spans go under it.
    let span = tracing::info_span!(
        "extauth.forward_auth",
        otel.name = "forward-auth",
        otel.kind = "server",
        http.request.method = %method,
        http.response.status_code = tracing::field::Empty,
    );
    gatehouse_common::telemetry::grpc::continue_http_trace(&span, &headers);
    let request = forwarded_request(policy, path, &method, &headers, body);
    let (policy, decision) = state.authorizer.check(&request).instrument(span.clone()).await;
    let response = answer(decision, &policy, &request);
    if !span.is_disabled() {
        span.record("http.response.status_code", i64::from(response.status().as_u16()));
    }
    response
}

/// The forward-auth answer to a check's decision.
fn answer(decision: Result<Decision, crate::Error>, policy: &str, request: &AuthRequest) -> Response {
    match decision {
        Ok(Decision::Allow(allow)) => {
            let mut response = StatusCode::OK.into_response();
            let out = response.headers_mut();
            for (name, value) in &allow.upstream_headers {
                if let Some((name, value)) = header_pair(name, value) {
                    out.insert(name, value);
                }
            }
            // Forward-auth cannot remove a header from the upstream request, only set one: an
            // empty Cookie keeps the browser login's cookies from the upstream when no other
            // cookie is left.
            if allow.remove_headers.iter().any(|h| h == "cookie") {
                out.insert(header::COOKIE, HeaderValue::from_static(""));
            }
            // Client headers may repeat (Set-Cookie).
            for (name, value) in &allow.client_headers {
                if let Some((name, value)) = header_pair(name, value) {
                    out.append(name, value);
                }
            }
            response
        }
        Ok(Decision::Deny(deny)) => deny_response(&deny, policy, request),
        Err(_) => cannot_decide(policy),
    }
}

fn header_pair(name: &str, value: &str) -> Option<(header::HeaderName, HeaderValue)> {
    Some((header::HeaderName::try_from(name).ok()?, HeaderValue::from_str(value).ok()?))
}

/// A deny as forward-auth answers it: the status, the JSON body, challenges, and the extra
/// headers (each appended: two `Set-Cookie`s must both arrive).
fn deny_response(deny: &Deny, policy: &str, request: &AuthRequest) -> Response {
    let status = StatusCode::from_u16(deny.status).unwrap_or(StatusCode::FORBIDDEN);
    let mut response = (status, deny.body(policy, request.header("x-request-id"))).into_response();
    let out = response.headers_mut();
    out.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    for challenge in &deny.challenges {
        if let Ok(v) = HeaderValue::from_str(challenge) {
            out.append(header::WWW_AUTHENTICATE, v);
        }
    }
    for (name, value) in &deny.headers {
        if let Some((name, value)) = header_pair(name, value) {
            out.append(name, value);
        }
    }
    response
}

fn cannot_decide(policy: &str) -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [(header::CONTENT_TYPE, "application/json")],
        json!({"error": "unavailable", "reason": "authorization cannot be decided now", "policy": policy}).to_string(),
    )
        .into_response()
}

/// The original request, from forwarding headers where the proxy sends them.
pub fn forwarded_request(
    policy: Option<String>,
    path: &str,
    method: &Method,
    headers: &HeaderMap,
    body: Bytes,
) -> AuthRequest {
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
    let mut request = AuthRequest {
        method: get("x-forwarded-method").or_else(|| get("x-original-method")).unwrap_or_else(|| method.to_string()),
        scheme: get("x-forwarded-proto").unwrap_or_else(|| "http".into()),
        host: get("x-forwarded-host").or_else(|| get("host")).unwrap_or_default(),
        ..Default::default()
    };
    let uri = get("x-forwarded-uri").or_else(|| get("x-original-uri")).unwrap_or_else(|| path.to_string());
    request.set_path_and_query(&uri);
    for (name, value) in headers {
        if let Ok(v) = value.to_str() {
            request
                .headers
                .entry(name.as_str().to_string())
                .and_modify(|existing| {
                    existing.push(',');
                    existing.push_str(v)
                })
                .or_insert_with(|| v.to_string());
        }
    }
    if let Some(forwarded_for) = get("x-forwarded-for") {
        request.source.address = forwarded_for.split(',').next().unwrap_or_default().trim().to_string();
    }
    if !body.is_empty() {
        request.body = Some(body.to_vec());
    }
    if let Some(policy) = policy {
        request.context.insert(POLICY_CONTEXT_KEY.into(), policy);
    }
    request
}
