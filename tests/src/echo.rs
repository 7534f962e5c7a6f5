//! An upstream that answers every request with what it received, as JSON:
//! `{"method", "path", "headers": {name: value}, "body"}` (repeated headers joined with `,`); a gzip body is decompressed and
//! marked `"gzip": true`.
//!
//! Tests make it answer otherwise with request headers: `x-echo-status` (the status),
//! `x-echo-body` (the body, instead of the JSON), `x-echo-reflect: true` (the request body
//! itself), `x-echo-size: N` (a JSON body of exactly N bytes, N ≥ 10), `x-echo-content-type`,
//! `x-echo-chunked: true` (no `content-length`: the body goes chunked), and
//! `x-echo-header: name=value` (a response header to add). A 204 or 304 has no body.

use std::collections::BTreeMap;

use std::io::Read;

use axum::body::Bytes;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use tokio::net::TcpListener;

/// A running echo server; stops when dropped.
#[derive(Debug)]
pub struct Echo {
    pub port: u16,
    task: tokio::task::JoinHandle<()>,
}

impl Echo {
    /// Starts on a free loopback port.
    pub async fn start() -> Echo {
        Echo::bind("127.0.0.1:0").await.expect("bind echo")
    }

    pub async fn bind(addr: &str) -> std::io::Result<Echo> {
        let listener = TcpListener::bind(addr).await?;
        let port = listener.local_addr()?.port();
        let app = axum::Router::new().fallback(echo);
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Echo { port, task })
    }

    /// Serves until the process ends.
    pub async fn run(mut self) {
        let _ = (&mut self.task).await;
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn echo(method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
    let status = header("x-echo-status").and_then(|s| s.parse().ok()).unwrap_or(StatusCode::OK);
    let content_type = header("x-echo-content-type");
    let chunked = header("x-echo-chunked").is_some_and(|v| v == "true");
    let fixed = if let Some(text) = header("x-echo-body") {
        Some((Bytes::from(text), content_type.unwrap_or_else(|| "text/plain".into())))
    } else if header("x-echo-reflect").is_some_and(|v| v == "true") {
        Some((body.clone(), content_type.unwrap_or_else(|| "application/octet-stream".into())))
    } else {
        header("x-echo-size").and_then(|n| n.parse().ok()).map(|size: usize| {
            let pad = "x".repeat(size.saturating_sub(r#"{"pad":""}"#.len()));
            (Bytes::from(serde_json::json!({ "pad": pad }).to_string()), "application/json".to_string())
        })
    };
    if let Some((body, content_type)) = fixed {
        let body = if chunked {
            // A stream has no known length, so hyper sends it chunked.
            axum::body::Body::from_stream(axum::body::Body::from(body).into_data_stream())
        } else {
            axum::body::Body::from(body)
        };
        return (status, [(axum::http::header::CONTENT_TYPE, content_type)], body).into_response();
    }
    if matches!(status, StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED) {
        // These never carry a body (Envoy calls one a protocol error); the JSON type is what
        // a JSON API would send.
        return (status, [(axum::http::header::CONTENT_TYPE, "application/json")]).into_response();
    }
    let extra = header("x-echo-header").and_then(|h| h.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())));
    let mut response = answer(status, &headers, uri, method, body);
    if let Some((name, value)) = extra
        && let (Ok(name), Ok(value)) = (HeaderName::try_from(name), HeaderValue::try_from(value))
    {
        response.headers_mut().insert(name, value);
    }
    response
}

fn answer(status: StatusCode, headers: &HeaderMap, uri: Uri, method: Method, body: Bytes) -> Response {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
    let gzip = header("content-encoding").is_some_and(|e| e == "gzip");
    let body = if gzip {
        let mut out = Vec::new();
        match flate2::read::GzDecoder::new(&body[..]).read_to_end(&mut out) {
            Ok(_) => Bytes::from(out),
            Err(e) => Bytes::from(format!("<invalid gzip: {e}>")),
        }
    } else {
        body
    };
    // A repeated header is one entry, its values joined with ",".
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    for (k, v) in headers {
        let v = String::from_utf8_lossy(v.as_bytes());
        seen.entry(k.to_string()).and_modify(|e| *e = format!("{e},{v}")).or_insert_with(|| v.into_owned());
    }
    let headers = seen;
    let mut json = serde_json::json!({
        "method": method.as_str(),
        "path": uri.to_string(),
        "headers": headers,
        "body": String::from_utf8_lossy(&body),
    });
    if gzip {
        json["gzip"] = true.into();
    }
    (status, axum::Json(json)).into_response()
}
