//! Drives the forward-auth mapping of `gatehouse_extauth::http`: the input is an HTTP request
//! as a proxy sends it to the HTTP port (`GET /forward-auth/keys/orders?x=1`, header lines, a
//! blank line, the body). The target is split into policy and path as the routes do, and
//! `forwarded_request` maps method, headers and body to an `AuthRequest`, which the demo
//! policies (`examples/extauth/policies.yaml`) then decide.
//!
//! Asserts: no panic; `X-Forwarded-*` / `X-Original-*` headers win over the request's own
//! method, host and path when present; header names are lower-case and repeated headers are
//! joined with `,`; the path holds no query; the policy named in the URL is the one selected;
//! the demo policies always decide.
#![no_main]

use axum::body::Bytes;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method};
use gatehouse_extauth::http::forwarded_request;
use gatehouse_extauth::policy::POLICY_CONTEXT_KEY;
use libfuzzer_sys::fuzz_target;

/// What the routes pass on: the policy named in the path, and the original path with query.
fn route(target: &str) -> (Option<String>, String) {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let with_query = |p: String| if query.is_empty() { p } else { format!("{p}?{query}") };
    match path.strip_prefix("/forward-auth/") {
        Some(rest) => match rest.split_once('/') {
            Some((policy, path)) => (Some(policy.to_string()), with_query(format!("/{path}"))),
            None => (Some(rest.to_string()), with_query("/".into())),
        },
        None => (None, "/".into()),
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let (head, body) = text.split_once("\r\n\r\n").or_else(|| text.split_once("\n\n")).unwrap_or((text, ""));
    let mut lines = head.lines();
    let mut request_line = lines.next().unwrap_or_default().split(' ');
    let Ok(method) = Method::from_bytes(request_line.next().unwrap_or_default().as_bytes()) else { return };
    let (policy, path) = route(request_line.next().unwrap_or("/"));
    let mut headers = HeaderMap::new();
    for (name, value) in lines.filter_map(|l| l.split_once(':')) {
        if let (Ok(name), Ok(value)) = (HeaderName::try_from(name.trim()), HeaderValue::from_str(value.trim())) {
            headers.append(name, value);
        }
    }
    let request = forwarded_request(policy.clone(), &path, &method, &headers, Bytes::copy_from_slice(body.as_bytes()));

    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let expected_method = text("x-forwarded-method").or(text("x-original-method")).unwrap_or(method.as_str());
    assert_eq!(request.method, expected_method);
    if let Some(host) = text("x-forwarded-host") {
        assert_eq!(request.host, host);
    }
    let uri = text("x-forwarded-uri").or(text("x-original-uri")).unwrap_or(&path);
    assert!(uri.starts_with(request.path.as_str()), "{uri:?} -> {:?}", request.path);
    assert!(!request.path.contains('?'), "{:?}", request.path);
    for (name, value) in &request.headers {
        assert_eq!(*name, name.to_ascii_lowercase());
        let values: Vec<&str> = headers.get_all(name.as_str()).iter().filter_map(|v| v.to_str().ok()).collect();
        assert_eq!(*value, values.join(","), "header {name}");
    }
    assert_eq!(request.context.get(POLICY_CONTEXT_KEY), policy.as_ref());

    let authorizer = gatehouse_fuzz::demo_authorizer();
    let (selected, decision) = gatehouse_fuzz::runtime().block_on(authorizer.check(&request));
    decision.expect("the demo policies always decide");
    if let Some(named) = &policy {
        assert_eq!(&selected, named);
    }
});
