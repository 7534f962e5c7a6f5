//! What the login flow needs to know about browsers: whether a request is a navigation (and
//! may be redirected to the IdP) or a script's call (which gets a 401 it can act on), which
//! redirect targets from outside are safe, and how Gatehouse's cookies are written and kept
//! away from the upstream.

use openidconnect::url::Url;

use crate::request::AuthRequest;

/// A top-level navigation a browser would follow to the IdP and back: GET or HEAD, and
/// `Sec-Fetch-Mode: navigate`; without Fetch Metadata (older browsers, some proxies), an
/// `Accept` that asks for HTML. `fetch()` sends `Accept: */*` and `Sec-Fetch-Mode: cors`, so
/// neither rule mistakes it for a navigation; nor a favicon (`no-cors`, `image/*`).
pub fn is_navigation(request: &AuthRequest) -> bool {
    if !matches!(request.method.as_str(), "GET" | "HEAD") {
        return false;
    }
    if let Some(mode) = request.header("sec-fetch-mode") {
        return mode.eq_ignore_ascii_case("navigate");
    }
    if request.header("x-requested-with").is_some_and(|v| v.eq_ignore_ascii_case("XMLHttpRequest")) {
        return false;
    }
    request.header("accept").is_some_and(accepts_html)
}

/// `text/html` (or `application/xhtml+xml`) listed with a non-zero quality.
fn accepts_html(accept: &str) -> bool {
    accept.split(',').any(|item| {
        let mut parts = item.split(';').map(str::trim);
        let media = parts.next().unwrap_or_default();
        let zero = parts.any(|p| p.strip_prefix("q=").is_some_and(|q| q.trim().parse::<f32>().is_ok_and(|q| q <= 0.0)));
        (media.eq_ignore_ascii_case("text/html") || media.eq_ignore_ascii_case("application/xhtml+xml")) && !zero
    })
}

/// Checks a redirect target that came from outside (`rd=`, `after_logout_url`): a path on the
/// gateway's own host (one leading `/`, never `//` or `/\`, which browsers read as another
/// host), or an absolute `http(s)` URL whose `host[:port]` is allow-listed, without userinfo.
/// Control characters and backslashes are refused anywhere, because browsers strip or
/// rewrite them before resolving.
pub fn safe_redirect(target: &str, allowed_hosts: &[String]) -> Result<String, &'static str> {
    if target.is_empty() {
        return Err("empty");
    }
    if target.chars().any(|c| c.is_control() || c == '\\') {
        return Err("control character or backslash");
    }
    if let Some(rest) = target.strip_prefix('/') {
        return if rest.starts_with('/') { Err("starts with //") } else { Ok(target.to_string()) };
    }
    let url = Url::parse(target).map_err(|_| "neither a path nor an absolute URL")?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err("not http(s)");
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("carries userinfo");
    }
    let host = url.host_str().ok_or("no host")?;
    let authority = match url.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_string(),
    };
    if allowed_hosts.iter().any(|h| h.eq_ignore_ascii_case(&authority)) {
        Ok(url.to_string())
    } else {
        Err("host not allow-listed")
    }
}

/// The URL of the request being checked, as the browser asked for it: where to come back to
/// after login. Only this request supplies it, never a parameter.
pub fn request_url(request: &AuthRequest) -> String {
    let scheme = if request.scheme.is_empty() { "http" } else { &request.scheme };
    let mut url = format!("{scheme}://{}{}", request.host, request.path);
    if !request.query.is_empty() {
        url.push('?');
        url.push_str(&request.query);
    }
    url
}

/// A request the browser says came from a page of this very site: `Sec-Fetch-Site:
/// same-origin`, or, from browsers without Fetch Metadata, an `Origin` equal to the request's
/// own scheme and host. What state-changing endpoints (logout) require, against CSRF.
pub fn is_same_origin(request: &AuthRequest) -> bool {
    if let Some(site) = request.header("sec-fetch-site") {
        return site.eq_ignore_ascii_case("same-origin");
    }
    let scheme = if request.scheme.is_empty() { "http" } else { &request.scheme };
    request.header("origin").is_some_and(|origin| origin.eq_ignore_ascii_case(&format!("{scheme}://{}", request.host)))
}

/// A `Set-Cookie` value for one of Gatehouse's cookies: `__Host-` names need `Secure`,
/// `Path=/` and no `Domain`, and every cookie is `HttpOnly` and `SameSite=Lax` (sent on the
/// IdP's top-level redirect back, not on cross-site subrequests). `max_age: Some(0)` deletes.
pub fn set_cookie(name: &str, value: &str, max_age: Option<u64>) -> String {
    let mut cookie = format!("{name}={value}; Path=/; Secure; HttpOnly; SameSite=Lax");
    if let Some(age) = max_age {
        cookie.push_str(&format!("; Max-Age={age}"));
    }
    cookie
}

/// The request's cookies in order, as `(name, value)`.
pub fn cookies(request: &AuthRequest) -> impl Iterator<Item = (&str, &str)> {
    request.header("cookie").into_iter().flat_map(|h| h.split(';')).filter_map(|pair| pair.trim().split_once('='))
}

/// The `Cookie` header without the cookies whose names start with `prefix`: what the upstream
/// may see. `None` when nothing is left.
pub fn cookie_header_without(request: &AuthRequest, prefix: &str) -> Option<String> {
    let kept: Vec<String> =
        cookies(request).filter(|(name, _)| !name.starts_with(prefix)).map(|(n, v)| format!("{n}={v}")).collect();
    (!kept.is_empty()).then(|| kept.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(method: &str, headers: &[(&str, &str)]) -> AuthRequest {
        AuthRequest {
            method: method.into(),
            headers: headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn navigations_and_script_calls() {
        let html = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8";
        type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], bool);
        let cases: &[Case] = &[
            ("GET", &[("sec-fetch-mode", "navigate"), ("accept", html)], true),
            ("HEAD", &[("sec-fetch-mode", "navigate")], true),
            ("POST", &[("sec-fetch-mode", "navigate"), ("accept", html)], false),
            // fetch(): Accept */*, and the same with Accept: text/html set by the script.
            ("GET", &[("sec-fetch-mode", "cors"), ("accept", "*/*")], false),
            ("GET", &[("sec-fetch-mode", "cors"), ("accept", "text/html")], false),
            // favicon, images
            ("GET", &[("sec-fetch-mode", "no-cors"), ("accept", "image/avif,image/webp,*/*")], false),
            // No Fetch Metadata: Accept decides.
            ("GET", &[("accept", html)], true),
            ("GET", &[("accept", "*/*")], false),
            ("GET", &[("accept", "text/html;q=0")], false),
            ("GET", &[("accept", html), ("x-requested-with", "XMLHttpRequest")], false),
            ("GET", &[], false),
            ("POST", &[("content-type", "application/grpc-web+proto")], false),
        ];
        for (method, headers, expected) in cases {
            assert_eq!(is_navigation(&request(method, headers)), *expected, "{method} {headers:?}");
        }
    }

    #[test]
    fn redirect_targets_from_outside() {
        let allowed = vec!["app.example.com".to_string(), "localhost:8080".to_string()];
        for ok in ["/", "/orders?id=1#x", "/%2F%2Fevil.com", "https://app.example.com/x", "http://localhost:8080/"] {
            assert!(safe_redirect(ok, &allowed).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "//evil.com",
            "/\\evil.com",
            "/\t/evil.com",
            "/x\r\nSet-Cookie: a=b",
            "https://evil.com/",
            "https://app.example.com@evil.com/",
            "https://user:pw@app.example.com/",
            "http://localhost:8081/",
            "javascript:alert(1)",
            "evil.com",
            "\\\\evil.com",
            "https:evil.com",
        ] {
            assert!(safe_redirect(bad, &allowed).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn same_origin_requests() {
        let with = |headers: &[(&str, &str)]| {
            let mut r = request("POST", headers);
            r.scheme = "http".into();
            r.host = "localhost:8080".into();
            is_same_origin(&r)
        };
        assert!(with(&[("sec-fetch-site", "same-origin")]));
        assert!(!with(&[("sec-fetch-site", "same-site")]));
        assert!(!with(&[("sec-fetch-site", "cross-site"), ("origin", "http://localhost:8080")]));
        assert!(with(&[("origin", "http://localhost:8080")]));
        assert!(!with(&[("origin", "http://evil.test")]));
        assert!(!with(&[]));
    }

    #[test]
    fn own_cookies_are_kept_from_the_upstream() {
        let r = request("GET", &[("cookie", "a=1; __Host-gatehouse-session=s; b=2; __Host-gatehouse-login-x=y")]);
        assert_eq!(cookie_header_without(&r, "__Host-gatehouse-").as_deref(), Some("a=1; b=2"));
        let r = request("GET", &[("cookie", "__Host-gatehouse-session=s")]);
        assert_eq!(cookie_header_without(&r, "__Host-gatehouse-"), None);
        assert_eq!(
            set_cookie("__Host-gatehouse-session", "v", None),
            "__Host-gatehouse-session=v; Path=/; Secure; HttpOnly; SameSite=Lax"
        );
    }
}
