//! gatehouse-transform end to end: real Envoy (envoy/gateway.yaml) → ext_proc → the service,
//! with the demo transformations of examples/transform/transformations.yaml, in front of an
//! upstream that echoes what it received. Every test asserts the exact request the upstream
//! saw and the exact response the client got.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use gatehouse_common::config::Env;
use gatehouse_common::server::Shutdown;
use gatehouse_testkit::echo::Echo;
use gatehouse_testkit::envoy::{Envoy, default_vars};
use gatehouse_testkit::{eventually, repo_root};
use gatehouse_transform::config::{DEFAULT_MAX_BODY_BYTES, ENVOY_DEFAULT_BUFFER_LIMIT};
use gatehouse_transform::settings::Settings;
use gatehouse_transform::{App, Listeners};
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::net::TcpListener;

mod support;
use support::{Reply, send, start_ratelimit};

struct Stack {
    envoy: Envoy,
    config: PathBuf,
    transform_http: u16,
    _echo: Echo,
    shutdowns: Vec<Shutdown>,
    _dir: TempDir,
    client: reqwest::Client,
}

impl Drop for Stack {
    fn drop(&mut self) {
        for s in &self.shutdowns {
            s.trigger();
        }
    }
}

impl Stack {
    /// The demo transformations, served by one gatehouse-transform; with `ratelimit_rules`,
    /// a gatehouse-ratelimit replica too.
    async fn start(ratelimit_rules: Option<&str>) -> Stack {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("transformations.yaml");
        std::fs::copy(repo_root().join("examples/transform/transformations.yaml"), &config).unwrap();
        let env = Env::from_pairs([
            ("TRANSFORM_CONFIG", config.display().to_string()),
            ("TRANSFORM_TEMPLATE_ENV", "STAGE".to_string()),
            ("STAGE", "test".to_string()),
            ("LOG_LEVEL", "warn".to_string()),
        ]);
        let app = App::build(Settings::from_env(&env).expect("settings")).expect("transform starts");
        let grpc = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (grpc_port, http_port) = (grpc.local_addr().unwrap().port(), http.local_addr().unwrap().port());
        let shutdown = Shutdown::new();
        tokio::spawn(app.serve(Listeners { grpc, http: Some(http) }, shutdown.clone()));
        let mut shutdowns = vec![shutdown];

        let echo = Echo::start().await;
        let mut vars: BTreeMap<String, String> = default_vars();
        vars.insert("UPSTREAM_PORT".into(), echo.port.to_string());
        vars.insert("TRANSFORM_PORT".into(), grpc_port.to_string());
        if let Some(rules) = ratelimit_rules {
            let (port, shutdown) = start_ratelimit(dir.path(), rules).await;
            vars.insert("RATELIMIT_PORT".into(), port.to_string());
            vars.insert("RATELIMIT_FAILURE_MODE_DENY".into(), "true".into());
            shutdowns.push(shutdown);
        }
        let envoy = Envoy::start(&vars).await;
        Stack {
            envoy,
            config,
            transform_http: http_port,
            _echo: echo,
            shutdowns,
            _dir: dir,
            client: reqwest::Client::new(),
        }
    }

    async fn request(&self, method: &str, path: &str, headers: &[(&str, &str)], body: Option<&[u8]>) -> Reply {
        send(&self.client, method, &self.envoy.url(path), headers, body.map(<[u8]>::to_vec)).await
    }

    async fn get(&self, path: &str, headers: &[(&str, &str)]) -> Reply {
        self.request("GET", path, headers, None).await
    }

    /// Envoy's ext_proc counter `name` (streams_started, stream_msgs_sent, ...).
    async fn ext_proc_stat(&self, name: &str) -> u64 {
        self.envoy.stat(&format!("http.gateway.ext_proc.{name}")).await.unwrap_or(0)
    }
}

/// The request the upstream saw.
fn upstream(reply: &Reply) -> Value {
    assert_eq!(reply.status, 200, "{reply:?}");
    reply.json()
}

fn upstream_body(reply: &Reply) -> Value {
    let seen = upstream(reply);
    let body = seen["body"].as_str().unwrap();
    let parsed: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("upstream body not JSON ({e}): {body}"));
    // A body written on the headers message goes on chunked (Envoy drops the length); one
    // written on the body message carries the content-length the service set.
    if let Some(length) = seen["headers"]["content-length"].as_str() {
        assert_eq!(length, body.len().to_string(), "content-length matches the new body");
    }
    parsed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_path_method_and_query_are_rewritten() {
    let s = Stack::start(None).await;

    let r = s
        .get(
            "/tx/headers/a?b=1",
            &[
                ("x-user", "ann"),
                ("x-internal-debug", "1"),
                ("x-legacy-token", "t0k"),
                ("x-trace", "client"),
                ("x-echo-header", "x-powered-by=php"),
            ],
        )
        .await;
    let seen = upstream(&r);
    let h = &seen["headers"];
    assert_eq!(h["x-user-id"], "ann");
    assert_eq!(h["x-forwarded-by"], "gatehouse");
    assert_eq!(h["x-api-token"], "t0k", "renamed");
    assert!(h.get("x-legacy-token").is_none() && h.get("x-internal-debug").is_none(), "{h}");
    assert_eq!(h["x-trace"], "client,GET /tx/headers/a", "appended to the client's value");
    assert_eq!(r.header("x-transformed"), "true", "response header set");
    assert_eq!(r.header("x-powered-by"), "", "response header removed");
    assert_eq!(s.get("/tx/headers/a", &[]).await.upstream_header("x-user-id").as_deref(), Some("anonymous"));

    let r = s.get("/tx/rewrite/orders/42?debug=1&keep=yes", &[("x-http-method-override", "PUT")]).await;
    let seen = upstream(&r);
    assert_eq!(seen["method"], "PUT");
    assert_eq!(seen["path"], "/tx/rewrite/v2/orders?keep=yes&id=42&source=gateway");
    // No rule matches: the request goes through as it was.
    let seen = upstream(&s.get("/tx/rewrite/other?debug=1", &[]).await);
    assert_eq!((seen["method"].as_str(), seen["path"].as_str()), (Some("GET"), Some("/tx/rewrite/other?debug=1")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_phases_a_route_needs_are_sent_to_the_service() {
    let s = Stack::start(None).await;
    let exchange = |path: &'static str, method: &'static str, body: Option<&'static [u8]>| {
        let s = &s;
        async move {
            let (streams, msgs) = (s.ext_proc_stat("streams_started").await, s.ext_proc_stat("stream_msgs_sent").await);
            let r = s.request(method, path, &[("content-type", "application/json")], body).await;
            assert_eq!(r.status, 200, "{path}: {r:?}");
            (s.ext_proc_stat("streams_started").await - streams, s.ext_proc_stat("stream_msgs_sent").await - msgs)
        }
    };
    assert_eq!(exchange("/rl/generic", "GET", None).await, (0, 0), "no transformation on the route: no stream");
    assert_eq!(exchange("/tx/rewrite/orders/1", "GET", None).await, (1, 1), "request headers only");
    assert_eq!(exchange("/tx/headers", "GET", None).await, (1, 2), "request and response headers");
    assert_eq!(exchange("/tx/json", "POST", Some(b"{}")).await, (1, 4), "headers and bodies both ways");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_bodies_are_patched_within_the_size_limit() {
    let s = Stack::start(None).await;
    let body = json!({"order": {"id": "o-1"}, "password": "secret", "legacy_name": "n", "keep": [1, 2]});
    let r = s
        .request(
            "POST",
            "/tx/json?page=3",
            &[("x-user", "ann"), ("content-type", "application/json")],
            Some(body.to_string().as_bytes()),
        )
        .await;
    // The response was patched too: a key added, one removed, so its length changed.
    let response = r.json();
    assert_eq!(response["gateway"], "gatehouse");
    assert!(response.get("headers").is_none(), "{response}");
    assert_eq!(r.header("content-length"), r.body.len().to_string());
    assert_eq!(response["method"], "POST");
    let sent: Value = serde_json::from_str(response["body"].as_str().unwrap()).unwrap();
    assert_eq!(
        sent,
        json!({"order": {"id": "o-1"}, "name": "n", "keep": [1, 2],
               "meta": {"user": "ann", "page": 3, "source": "gateway", "version": 2}})
    );

    // Not JSON: 400 with a JSON error, and the upstream never sees it.
    let r = s.request("POST", "/tx/json", &[("content-type", "application/json")], Some(b"{not json")).await;
    assert_eq!(r.status, 400, "{r:?}");
    assert_eq!(r.json()["error"], "invalid_body");
    assert_eq!(r.header("content-type"), "application/json");

    // max_body_bytes is 65536 on this transformation.
    let padded = |size: usize| {
        let filler = "x".repeat(size - r#"{"pad":""}"#.len());
        json!({ "pad": filler }).to_string().into_bytes()
    };
    let near = padded(65_000);
    let r = s.request("POST", "/tx/json", &[("content-type", "application/json")], Some(&near)).await;
    assert_eq!(r.status, 200, "{}", &r.body[..200.min(r.body.len())]);
    let sent: Value = serde_json::from_str(r.json()["body"].as_str().unwrap()).unwrap();
    assert_eq!(sent["pad"].as_str().unwrap().len(), 65_000 - 10);
    assert_eq!(sent["meta"]["user"], "anonymous");
    let over = padded(70_000);
    let r = s.request("POST", "/tx/json", &[("content-type", "application/json")], Some(&over)).await;
    assert_eq!(r.status, 413, "{}", &r.body[..200.min(r.body.len())]);
    assert_eq!(r.json()["error"], "body_too_large");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_field_becomes_a_header() {
    let s = Stack::start(None).await;
    // /tx/json's request rule copies /order/id into x-order-id. Its response rule (which
    // drops the echoed headers) applies to 200s only, so the echo answers 201 here.
    let body = json!({"order": {"id": "o-77"}}).to_string();
    let r = s
        .request(
            "POST",
            "/tx/json",
            &[("content-type", "application/json"), ("x-echo-status", "201")],
            Some(body.as_bytes()),
        )
        .await;
    // 201 does not match the response rule (status 200 only): the echo's answer is intact.
    assert_eq!(r.status, 201, "{r:?}");
    let seen = r.json();
    assert_eq!(seen["headers"]["x-order-id"], "o-77");
    assert_eq!(seen["headers"]["content-length"], seen["body"].as_str().unwrap().len().to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_less_requests_get_a_body() {
    let s = Stack::start(None).await;
    let r = s.get("/tx/create?q=red%20shoes", &[("x-user", "ann")]).await;
    let seen = upstream(&r);
    assert_eq!(seen["method"], "POST");
    assert_eq!(seen["headers"]["content-type"], "application/json");
    assert_eq!(upstream_body(&r), json!({"user": "ann", "search": "red shoes", "stage": "test"}));

    // The AWS-style envelope, on a GET (no body) and on a POST.
    let r = s.get("/tx/envelope/items?id=1&id=2", &[]).await;
    let seen = upstream(&r);
    let request_id = seen["headers"]["x-request-id"].clone();
    assert_eq!((seen["method"].as_str(), seen["path"].as_str()), (Some("POST"), Some("/invoke")));
    let event = upstream_body(&r);
    assert_eq!(event["httpMethod"], "GET");
    assert_eq!(event["path"], "/tx/envelope/items");
    assert_eq!(event["queryStringParameters"], json!({"id": "2"}));
    assert_eq!(event["multiValueQueryStringParameters"], json!({"id": ["1", "2"]}));
    assert_eq!(event["requestContext"]["requestId"], request_id, "Envoy's request id");
    assert_eq!(event["body"], Value::Null);
    assert_eq!(event["isBase64Encoded"], false);
    let r = s.request("POST", "/tx/envelope", &[("content-type", "text/plain")], Some(b"hello")).await;
    let event = upstream_body(&r);
    assert_eq!((event["httpMethod"].as_str(), event["body"].as_str()), (Some("POST"), Some("hello")));
    assert_eq!(event["headers"]["content-type"], "text/plain");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soap_backends_and_standard_error_envelopes() {
    let s = Stack::start(None).await;
    let r = s
        .request(
            "POST",
            "/tx/soap",
            &[("content-type", "application/json")],
            Some(br#"{"GetOrder": {"id": 7, "@v": "2"}}"#),
        )
        .await;
    let seen = upstream(&r);
    assert_eq!(seen["headers"]["content-type"], "text/xml");
    assert_eq!(seen["headers"]["soapaction"], "urn:GetOrder");
    assert_eq!(
        seen["body"],
        r#"<?xml version="1.0" encoding="UTF-8"?><soap:Envelope><GetOrder v="2"><id>7</id></GetOrder></soap:Envelope>"#
    );
    let xml = r#"<order id="7"><item>a</item><total currency="EUR">9.50</total></order>"#;
    let r = s
        .request(
            "POST",
            "/tx/soap",
            &[("content-type", "application/json"), ("x-echo-body", xml), ("x-echo-content-type", "application/xml")],
            Some(b"{\"Ping\": null}"),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("content-type"), "application/json");
    assert_eq!(r.json(), json!({"order": {"@id": "7", "item": ["a"], "total": {"@currency": "EUR", "#text": "9.50"}}}));

    let r = s.get("/tx/errors", &[("x-echo-status", "503"), ("x-echo-body", "upstream stack trace")]).await;
    assert_eq!(r.status, 502, "{r:?}");
    assert_eq!(r.header("content-type"), "application/json");
    let error = r.json();
    assert_eq!(error["error"]["code"], "upstream_unavailable");
    assert_eq!(error["error"]["status"], 503);
    assert!(!error["error"]["request_id"].as_str().unwrap().is_empty(), "{error}");
    assert_eq!(s.get("/tx/errors", &[("x-echo-status", "404"), ("x-echo-body", "nope")]).await.body, "nope");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_json_errors_without_details() {
    let s = Stack::start(None).await;
    let r = s.get("/tx/strict", &[]).await;
    assert_eq!(r.status, 500, "{r:?}");
    assert_eq!(r.json()["error"], "transformation_failed");
    assert!(!r.body.contains("strict/") && !r.body.contains("x-required"), "no template name in {}", r.body);
    assert_eq!(upstream(&s.get("/tx/strict", &[("x-required", "v")]).await)["headers"]["x-required-copy"], "v");

    // gzip: decoded, patched, compressed again.
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(br#"{"a": 1}"#).unwrap();
    let gz = encoder.finish().unwrap();
    let r = s
        .request("POST", "/tx/gzip", &[("content-type", "application/json"), ("content-encoding", "gzip")], Some(&gz))
        .await;
    let seen = upstream(&r);
    assert_eq!(seen["gzip"], true);
    assert_eq!(
        serde_json::from_str::<Value>(seen["body"].as_str().unwrap()).unwrap(),
        json!({"a": 1, "patched": true})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_key_on_metadata_from_the_body() {
    let rules =
        "domain: gateway\ndescriptors:\n  - key: tenant\n    rate_limit: { unit: minute, requests_per_unit: 2 }\n";
    let s = Stack::start(Some(rules)).await;
    let post = |tenant: &'static str| {
        let s = &s;
        async move {
            let body = json!({ "tenant": tenant }).to_string();
            s.request("POST", "/tx/limited", &[("content-type", "application/json")], Some(body.as_bytes()))
                .await
                .status
        }
    };
    assert_eq!((post("t1").await, post("t1").await), (200, 200));
    assert_eq!(post("t1").await, 429, "t1 is over its limit");
    assert_eq!(post("t2").await, 200, "t2 has its own counter");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_changes_apply_and_bad_files_are_rejected() {
    let s = Stack::start(None).await;
    let original = std::fs::read_to_string(&s.config).unwrap();
    let changed = original.replace("x-forwarded-by: gatehouse", "x-forwarded-by: gatehouse-v2");
    let tmp = s.config.with_extension("tmp");
    std::fs::write(&tmp, &changed).unwrap();
    std::fs::rename(&tmp, &s.config).unwrap();
    let applied = eventually(Duration::from_secs(10), || async {
        (s.get("/tx/headers", &[]).await.upstream_header("x-forwarded-by").as_deref() == Some("gatehouse-v2"))
            .then_some(())
    })
    .await;
    assert!(applied.is_some(), "the new config was not applied");

    // A template with an unknown variable: rejected, reported, and the old config serves.
    std::fs::write(&tmp, changed.replace("{{ method }} {{ path }}", "{{ methd }}")).unwrap();
    std::fs::rename(&tmp, &s.config).unwrap();
    let health = reqwest::get(format!("http://127.0.0.1:{}/healthcheck", s.transform_http)).await.unwrap();
    assert_eq!(health.status(), 200);
    let status_url = format!("http://127.0.0.1:{}/config-status", s.transform_http);
    let rejected = eventually(Duration::from_secs(10), || async {
        let status: Value = reqwest::get(&status_url).await.ok()?.json().await.ok()?;
        status["last_error"].as_str().filter(|e| e.contains("methd")).map(str::to_string)
    })
    .await
    .expect("the broken config was not reported");
    assert!(rejected.contains("transformations.yaml:") && rejected.contains("headers.append.x-trace"), "{rejected}");
    assert_eq!(s.get("/tx/headers", &[]).await.upstream_header("x-forwarded-by").as_deref(), Some("gatehouse-v2"));

    // A route naming a transformation the config no longer has: 500, not an untransformed request.
    std::fs::write(&tmp, changed.replace("- name: strict", "- name: strict-renamed")).unwrap();
    std::fs::rename(&tmp, &s.config).unwrap();
    let unknown = eventually(Duration::from_secs(10), || async {
        let r = s.get("/tx/strict", &[("x-required", "v")]).await;
        (r.status == 500).then_some(r)
    })
    .await
    .expect("the route kept its removed transformation");
    assert_eq!(unknown.json()["error"], "unknown_transformation");
}

/// Envoy's buffer limit in envoy/gateway.yaml. The reference config keeps Envoy's default
/// (the listener's `per_connection_buffer_limit_bytes`); this fails if it ever sets one, so
/// that the tests below are changed to read it.
fn envoy_buffer_limit() -> usize {
    let config = std::fs::read_to_string(repo_root().join("envoy/gateway.yaml")).unwrap();
    for setting in ["per_connection_buffer_limit_bytes", "request_body_buffer_limit", "per_request_buffer_limit_bytes"]
    {
        assert!(!config.contains(setting), "envoy/gateway.yaml sets {setting}: use its value here");
    }
    ENVOY_DEFAULT_BUFFER_LIMIT
}

/// How a raw request sends its body.
#[derive(Clone, Copy, Debug)]
enum Framing {
    /// With `content-length`: the headers and the whole body in one write.
    Length,
    /// `transfer-encoding: chunked`, no `content-length`: 64 KiB chunks, one write each.
    Chunked,
}

/// A response read off a raw HTTP/1.1 connection, and how long it took to come.
#[derive(Debug)]
struct RawReply {
    status: u16,
    headers: BTreeMap<String, String>,
    body: String,
    elapsed: Duration,
}

impl RawReply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", &self.body[..self.body.len().min(200)]))
    }
}

/// Sends a request over a plain socket, so the test decides how the body is framed and
/// written; reqwest would choose for it. The body is written on the side: Envoy may answer,
/// and stop reading, before it has all been sent.
async fn raw_request(port: u16, path: &str, headers: &[(&str, &str)], body: &[u8], framing: Framing) -> RawReply {
    use tokio::io::AsyncWriteExt;
    let started = std::time::Instant::now();
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    let mut head = format!("POST {path} HTTP/1.1\r\nhost: gateway\r\nconnection: close\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    let writes: Vec<Vec<u8>> = match framing {
        Framing::Length => vec![[format!("{head}content-length: {}\r\n\r\n", body.len()).as_bytes(), body].concat()],
        Framing::Chunked => std::iter::once(format!("{head}transfer-encoding: chunked\r\n\r\n").into_bytes())
            .chain(body.chunks(64 * 1024).map(|c| [format!("{:x}\r\n", c.len()).as_bytes(), c, b"\r\n"].concat()))
            .chain(std::iter::once(b"0\r\n\r\n".to_vec()))
            .collect(),
    };
    let writing = tokio::spawn(async move {
        for bytes in writes {
            if writer.write_all(&bytes).await.is_err() {
                break;
            }
        }
        // Half-closing would end the request for Envoy: hold the socket until aborted.
        std::future::pending::<()>().await;
        drop(writer);
    });
    let read = tokio::time::timeout(Duration::from_secs(60), read_reply(&mut reader)).await;
    writing.abort();
    let (status, headers, body) = read.unwrap_or_else(|_| panic!("{path}: no answer within 60 s"));
    RawReply { status, headers, body: String::from_utf8_lossy(&body).into_owned(), elapsed: started.elapsed() }
}

async fn read_reply(reader: &mut tokio::net::tcp::OwnedReadHalf) -> (u16, BTreeMap<String, String>, Vec<u8>) {
    use tokio::io::AsyncReadExt;
    let mut received = Vec::new();
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        // A reset after the response (Envoy closing on an unread body) ends it like EOF.
        let n = reader.read(&mut buffer).await.unwrap_or(0);
        received.extend_from_slice(&buffer[..n]);
        if let Some(reply) = parse_reply(&received, n == 0) {
            return reply;
        }
        assert!(n > 0, "the connection closed before a whole response: {:?}", String::from_utf8_lossy(&received));
    }
}

/// The response in `received`, once it is whole (or the connection has ended).
fn parse_reply(received: &[u8], ended: bool) -> Option<(u16, BTreeMap<String, String>, Vec<u8>)> {
    let end = received.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&received[..end]).ok()?;
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers: BTreeMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let rest = &received[end + 4..];
    let body = match (headers.get("content-length"), headers.get("transfer-encoding")) {
        (Some(length), _) => rest.get(..length.parse().ok()?)?.to_vec(),
        (None, Some(coding)) if coding == "chunked" => {
            let mut body = Vec::new();
            let mut at = rest;
            loop {
                let line_end = at.windows(2).position(|w| w == b"\r\n")?;
                let size = usize::from_str_radix(std::str::from_utf8(&at[..line_end]).ok()?.trim(), 16).ok()?;
                if size == 0 {
                    break body;
                }
                body.extend_from_slice(at.get(line_end + 2..line_end + 2 + size)?);
                at = at.get(line_end + 4 + size..)?;
            }
        }
        _ if ended => rest.to_vec(),
        _ => return None,
    };
    Some((status, headers, body))
}

/// A JSON body of exactly `size` bytes (at least 10).
fn json_of_size(size: usize) -> Vec<u8> {
    let filler = "x".repeat(size - r#"{"pad":""}"#.len());
    json!({ "pad": filler }).to_string().into_bytes()
}

/// The e2e tests allow 10 s where the answer takes milliseconds: the defect was 300 s.
const PROMPT: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_bodies_over_envoys_buffer_get_a_prompt_413() {
    let s = Stack::start(None).await;
    let limit = envoy_buffer_limit();
    // /tx/gzip reads the JSON body with the default max_body_bytes.
    for size in [limit + limit / 100, 2 * limit] {
        for framing in [Framing::Length, Framing::Chunked] {
            let body = json_of_size(size);
            let r =
                raw_request(s.envoy.port, "/tx/gzip", &[("content-type", "application/json")], &body, framing).await;
            let case = format!("{size} bytes, {framing:?}");
            assert_eq!(r.status, 413, "{case}: {r:?}");
            assert_eq!(r.headers.get("content-type").map(String::as_str), Some("application/json"), "{case}");
            assert_eq!(r.json()["error"], "body_too_large", "{case}: the service's JSON, not Envoy's text");
            assert!(r.elapsed < PROMPT, "{case}: answered after {:?}", r.elapsed);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_body_bytes_is_below_envoys_buffer_limit() {
    let s = Stack::start(None).await;
    let limit = envoy_buffer_limit();
    assert!(DEFAULT_MAX_BODY_BYTES < limit, "max_body_bytes must be below Envoy's buffer limit");
    // With equal limits, a body just over both got Envoy's plain-text 413 or the service's
    // JSON one depending on the framing; now every body over max_body_bytes gets the latter.
    // (size, status)
    let cases = [(DEFAULT_MAX_BODY_BYTES, 200), (DEFAULT_MAX_BODY_BYTES + 1, 413), (limit, 413), (limit + 1, 413)];
    for (size, status) in cases {
        for framing in [Framing::Length, Framing::Chunked] {
            let body = json_of_size(size);
            let r =
                raw_request(s.envoy.port, "/tx/gzip", &[("content-type", "application/json")], &body, framing).await;
            let case = format!("{size} bytes, {framing:?}");
            assert_eq!(r.status, status, "{case}: {}", &r.body[..r.body.len().min(200)]);
            if status == 200 {
                let sent: Value = serde_json::from_str(r.json()["body"].as_str().unwrap()).unwrap();
                assert_eq!(
                    (sent["patched"].as_bool(), sent["pad"].as_str().map(str::len)),
                    (Some(true), Some(size - 10))
                );
            } else {
                assert_eq!(r.json()["error"], "body_too_large", "{case}");
            }
            assert!(r.elapsed < PROMPT, "{case}: answered after {:?}", r.elapsed);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_bodies_over_the_limit_get_a_prompt_502() {
    let s = Stack::start(None).await;
    let limit = envoy_buffer_limit();
    // A GET on /tx/json: no request rule; the response rule reads JSON, max_body_bytes 65536.
    // (size, status)
    let cases = [(65_536, 200), (65_537, 502), (limit + limit / 100, 502), (2 * limit, 502)];
    for (size, status) in cases {
        for chunked in [false, true] {
            let started = std::time::Instant::now();
            let size_header = size.to_string();
            let mut headers = vec![("x-echo-size", size_header.as_str())];
            if chunked {
                headers.push(("x-echo-chunked", "true"));
            }
            let r = s.get("/tx/json", &headers).await;
            let case = format!("{size} bytes, chunked: {chunked}");
            assert_eq!(r.status, status, "{case}: {}", &r.body[..r.body.len().min(200)]);
            if status == 200 {
                assert_eq!(r.json()["gateway"], "gatehouse", "{case}: transformed");
            } else {
                assert_eq!(r.json()["error"], "bad_upstream_response", "{case}");
            }
            assert!(started.elapsed() < PROMPT, "{case}: answered after {:?}", started.elapsed());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deeply_nested_xml_is_refused_in_both_directions() {
    let s = Stack::start(None).await;
    let nested = |levels: usize| format!("{}{}", "<e>".repeat(levels), "</e>".repeat(levels));
    // The report: 140 KB of 20,000 nested elements grew the process to ~900 MiB and then
    // overflowed its stack.
    let deep = nested(20_000);
    assert_eq!(deep.len(), 140_000);
    let started = std::time::Instant::now();
    let r = s.request("POST", "/tx/xml", &[("content-type", "application/xml")], Some(deep.as_bytes())).await;
    assert_eq!(r.status, 400, "{r:?}");
    assert_eq!(r.json()["error"], "invalid_body");
    // The same document from the upstream.
    let reflect =
        [("content-type", "text/plain"), ("x-echo-reflect", "true"), ("x-echo-content-type", "application/xml")];
    let r = s.request("POST", "/tx/xml", &reflect, Some(deep.as_bytes())).await;
    assert_eq!(r.status, 502, "{r:?}");
    assert_eq!(r.json()["error"], "bad_upstream_response");
    assert!(started.elapsed() < PROMPT, "{:?}", started.elapsed());

    // The service is still there, and XML within serde_json's limit converts both ways.
    let r = s.request("POST", "/tx/xml", &[("content-type", "application/xml")], Some(nested(127).as_bytes())).await;
    let sent: Value = serde_json::from_str(upstream(&r)["body"].as_str().unwrap()).unwrap();
    assert_eq!(sent.pointer(&"/e".repeat(127)), Some(&Value::Null), "127 levels, the innermost empty");
    let order = r#"<order id="7"><item>a</item></order>"#;
    let r = s.request("POST", "/tx/xml", &reflect, Some(order.as_bytes())).await;
    assert_eq!((r.status, r.json()), (200, json!({"order": {"@id": "7", "item": "a"}})));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_without_a_body_keep_their_headers_and_get_no_body() {
    let s = Stack::start(None).await;
    // /tx/wrap wraps every JSON response in {"data": ...}.
    let r = s.get("/tx/wrap", &[("x-echo-size", "100")]).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["data"]["pad"].as_str().map(str::len), Some(90));
    assert_eq!(r.header("content-length"), r.body.len().to_string());

    let r = s.request("HEAD", "/tx/wrap", &[("x-echo-size", "100")], None).await;
    assert_eq!((r.status, r.body.as_str()), (200, ""), "{r:?}");
    assert_eq!(r.header("content-length"), "100", "the upstream's content-length: {r:?}");
    assert_eq!(r.header("x-wrapped"), "true", "the rule's other operations apply");

    for status in ["204", "304"] {
        let r = s.get("/tx/wrap", &[("x-echo-status", status)]).await;
        assert_eq!((r.status.to_string(), r.body.as_str()), (status.to_string(), ""), "{r:?}");
        assert_eq!(r.header("x-wrapped"), "true", "{r:?}");
        assert!(matches!(r.header("content-length"), "" | "0"), "{r:?}");
    }

    // A rule that writes a body without reading one, and changes the status: on HEAD the
    // status changes, and the body is not invented.
    let r = s.request("HEAD", "/tx/errors", &[("x-echo-status", "503"), ("x-echo-size", "50")], None).await;
    assert_eq!((r.status, r.body.as_str()), (502, ""), "{r:?}");
    assert_eq!(r.header("content-length"), "50", "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_headers_and_query_parameters_give_their_first_value() {
    let s = Stack::start(None).await;
    let r = s.get("/tx/headers", &[("x-user", "ann"), ("x-user", "bob")]).await;
    assert_eq!(r.upstream_header("x-user-id").as_deref(), Some("ann"), "{r:?}");
    let r = s.get("/tx/create?q=first&q=second", &[]).await;
    assert_eq!(upstream_body(&r)["search"], "first");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_that_does_not_answer_in_time_gets_504_and_an_unreachable_one_500() {
    let echo = Echo::start().await;
    // Accepts the gRPC connection and never answers on it.
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    let holding = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((connection, _)) = silent.accept().await {
            held.push(connection);
        }
    });
    let client = reqwest::Client::new();
    // (transform port, status): message_timeout is 1s; port 1 refuses connections.
    for (port, status) in [(silent_port, 504), (1, 500)] {
        let mut vars = default_vars();
        vars.insert("UPSTREAM_PORT".into(), echo.port.to_string());
        vars.insert("TRANSFORM_PORT".into(), port.to_string());
        let envoy = Envoy::start(&vars).await;
        let started = std::time::Instant::now();
        let r = send(&client, "GET", &envoy.url("/tx/headers"), &[], None).await;
        assert_eq!(r.status, status, "{r:?}");
        assert!(started.elapsed() < PROMPT, "{:?}", started.elapsed());
    }
    holding.abort();
}
