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
