//! OpenTelemetry traces through real Envoy (the reference config with its optional tracer on)
//! and the real gatehouse-ratelimit binary, both exporting to the test kit's OTLP receiver:
//! one request makes one trace, in which Envoy's ratelimit client span is the parent of the
//! service's server span (W3C from Envoy's OpenTelemetry tracer, B3 from its Zipkin tracer); and
//! the service's sampler settings decide whether it exports.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use gatehouse_testkit::echo::Echo;
use gatehouse_testkit::envoy::{Envoy, default_vars};
use gatehouse_testkit::otlp::{self, Receiver, Span, describe};
use gatehouse_testkit::service::{Kind, Service};
use gatehouse_testkit::tls::Pki;

const SERVER_SPAN: &str = "envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit";
/// Sent with the request; it must never appear in a span.
const SECRET: &str = "s3cr3t-bearer-token-9f8e7d";
/// Envoy exports every few seconds; the service's batch delay is lowered below.
const SPANS_TIMEOUT: Duration = Duration::from_secs(30);

async fn start_ratelimit(dir: &Path, receiver: &Receiver, extra: &[(&str, &str)]) -> Service {
    let runtime = dir.join("runtime");
    std::fs::create_dir_all(runtime.join("config")).unwrap();
    std::fs::write(
        runtime.join("config/gateway.yaml"),
        "domain: gateway\ndescriptors:\n  - key: generic_key\n    value: generic\n    rate_limit: { unit: minute, requests_per_unit: 100 }\n",
    )
    .unwrap();
    let mut env = vec![
        ("RUNTIME_ROOT", runtime.display().to_string()),
        ("BACKEND_TYPE", "memory".to_string()),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint()),
        ("OTEL_SERVICE_NAME", "gatehouse-ratelimit".to_string()),
        // The SDK's own batch delay (default 5 s), so the test does not wait for it.
        ("OTEL_BSP_SCHEDULE_DELAY", "100".to_string()),
    ];
    env.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
    Service::start(Kind::Ratelimit, &env, dir).await
}

async fn start_envoy(echo: &Echo, service: &Service, receiver: &Receiver) -> Envoy {
    start_envoy_edited(echo, service, otlp::envoy_tracing(receiver.port())).await
}

async fn start_envoy_edited(echo: &Echo, service: &Service, edit: impl FnOnce(String) -> String) -> Envoy {
    let mut vars: BTreeMap<String, String> = default_vars();
    vars.insert("UPSTREAM_PORT".into(), echo.port.to_string());
    vars.insert("RATELIMIT_PORT".into(), service.grpc_port.to_string());
    vars.insert("RATELIMIT_FAILURE_MODE_DENY".into(), "true".into());
    Envoy::start_edited(&vars, edit).await
}

async fn request(envoy: &Envoy) -> u16 {
    reqwest::Client::new()
        .get(envoy.url("/rl/generic"))
        .header("authorization", format!("Bearer {SECRET}"))
        .header("cookie", format!("session={SECRET}"))
        .send()
        .await
        .expect("request through envoy")
        .status()
        .as_u16()
}

/// Waits for the `wanted` spans, then for Envoy's span that is the parent of `server_name`
/// (Envoy flushes on its own interval). Returns every span received, the server span and that
/// parent.
async fn joined_to_envoy(
    receiver: &Receiver,
    service: &Service,
    wanted: &[&str],
    server_name: &str,
) -> (Vec<Span>, Span, Span) {
    if let Err(spans) = receiver.wait_for_spans(wanted, SPANS_TIMEOUT).await {
        panic!("spans missing; received:\n{}\nservice log:\n{}", describe(&spans), service.log());
    }
    let joined = gatehouse_testkit::eventually(SPANS_TIMEOUT, || async {
        let spans = receiver.spans();
        let server = spans.iter().find(|s| s.name == server_name)?.clone();
        let parent =
            spans.iter().find(|s| s.span_id == server.parent_span_id && s.service == "gatehouse-envoy")?.clone();
        Some((spans, server, parent))
    })
    .await;
    joined.unwrap_or_else(|| {
        panic!(
            "no Envoy parent for {server_name}; received:\n{}\nservice log:\n{}",
            describe(&receiver.spans()),
            service.log()
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_from_envoy_through_gatehouse_ratelimit() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start().await;
    let echo = Echo::start().await;
    let service = start_ratelimit(dir.path(), &receiver, &[]).await;
    let envoy = start_envoy(&echo, &service, &receiver).await;

    assert_eq!(request(&envoy).await, 200);

    let wanted = [SERVER_SPAN, "rule lookup", "counter store update"];
    if let Err(spans) = receiver.wait_for_spans(&wanted, SPANS_TIMEOUT).await {
        panic!("spans missing; received:\n{}\nservice log:\n{}", describe(&spans), service.log());
    }
    // Envoy's own spans arrive on its flush interval.
    let envoy_spans = gatehouse_testkit::eventually(SPANS_TIMEOUT, || async {
        let envoy_spans: Vec<Span> = receiver.spans().into_iter().filter(|s| s.service == "gatehouse-envoy").collect();
        let has_client = envoy_spans.iter().any(|s| s.kind == Span::KIND_CLIENT && s.name.contains("RateLimitService"));
        has_client.then_some(envoy_spans)
    })
    .await
    .unwrap_or_else(|| panic!("no ratelimit client span from Envoy; received:\n{}", describe(&receiver.spans())));
    let spans = receiver.spans();
    let ours: Vec<&Span> = spans.iter().filter(|s| s.service == "gatehouse-ratelimit").collect();

    // One trace: Envoy's and ours.
    let server = ours.iter().find(|s| s.name == SERVER_SPAN).unwrap();
    let trace_ids: std::collections::BTreeSet<&str> =
        ours.iter().map(|s| s.trace_id.as_str()).chain(envoy_spans.iter().map(|s| s.trace_id.as_str())).collect();
    assert_eq!(trace_ids.len(), 1, "one trace expected:\n{}", describe(&spans));

    // Our server span's parent is Envoy's ratelimit client span.
    let parent = envoy_spans
        .iter()
        .find(|s| s.span_id == server.parent_span_id)
        .unwrap_or_else(|| panic!("the server span's parent is not an Envoy span:\n{}", describe(&spans)));
    assert_eq!(parent.kind, Span::KIND_CLIENT, "{parent:?}");
    assert!(parent.name.contains("envoy.service.ratelimit.v3.RateLimitService"), "{parent:?}");

    // The server span: kind, RPC attributes, the decision.
    assert_eq!(server.kind, Span::KIND_SERVER);
    let expected = [
        ("rpc.system", "grpc"),
        ("rpc.service", "envoy.service.ratelimit.v3.RateLimitService"),
        ("rpc.method", "ShouldRateLimit"),
        ("ratelimit.domain", "gateway"),
        ("ratelimit.overall_code", "OK"),
    ];
    for (key, value) in expected {
        assert_eq!(server.attribute(key), Some(value), "{key} on {server:?}");
    }
    // Counts and codes are integers, not text.
    assert_eq!(server.integer("rpc.grpc.status_code"), Some(0), "{server:?}");
    assert_eq!(server.integer("ratelimit.descriptors"), Some(1), "{server:?}");
    assert_eq!(server.resource.get("service.name").map(String::as_str), Some("gatehouse-ratelimit"));

    // Its children: the rule lookup and the store call with its batch.
    let lookup = ours.iter().find(|s| s.name == "rule lookup").unwrap();
    assert_eq!(lookup.parent_span_id, server.span_id);
    assert_eq!(lookup.integer("ratelimit.rules_matched"), Some(1), "{lookup:?}");
    let store = ours.iter().find(|s| s.name == "counter store update").unwrap();
    assert_eq!(store.parent_span_id, server.span_id);
    assert_eq!(store.integer("batch.size"), Some(1), "{store:?}");
    assert_eq!(store.attribute("ratelimit.backend"), Some("memory"));

    // No credential from the request in any span, Envoy's included.
    otlp::assert_no_secret(&spans, SECRET);
}

/// OTEL_TRACES_SAMPLER=always_off: Envoy still traces (its spans arrive), the service
/// exports nothing, and the request is answered as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn always_off_exports_nothing_from_the_service() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start().await;
    let echo = Echo::start().await;
    let service = start_ratelimit(dir.path(), &receiver, &[("OTEL_TRACES_SAMPLER", "always_off")]).await;
    let envoy = start_envoy(&echo, &service, &receiver).await;

    assert_eq!(request(&envoy).await, 200);

    let envoy_span = gatehouse_testkit::eventually(SPANS_TIMEOUT, || async {
        receiver.spans().into_iter().find(|s| s.service == "gatehouse-envoy" && s.name.contains("RateLimitService"))
    })
    .await;
    assert!(envoy_span.is_some(), "Envoy's spans prove the receiver works: {}", describe(&receiver.spans()));
    // Many times the service's batch delay.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let ours: Vec<Span> = receiver.spans().into_iter().filter(|s| s.service == "gatehouse-ratelimit").collect();
    assert!(ours.is_empty(), "always_off, yet:\n{}", describe(&ours));
}

/// Zipkin users: Envoy's Zipkin tracer continues the client's B3 trace and passes it on to the
/// service in `x-b3-*` headers; the service's server span joins that trace, under a span of
/// Envoy's (not the client's).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b3_headers_from_envoys_zipkin_tracer_are_the_parent() {
    const TRACE_ID: &str = "463ac35c9f6413ad48485a3953bb6124";
    const CLIENT_SPAN_ID: &str = "a2fb4a1d1a96d312";
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start().await;
    let echo = Echo::start().await;
    let service = start_ratelimit(dir.path(), &receiver, &[]).await;
    let envoy = start_envoy_edited(&echo, &service, otlp::envoy_zipkin_tracing(receiver.port())).await;

    let status = reqwest::Client::new()
        .get(envoy.url("/rl/generic"))
        .header("x-b3-traceid", TRACE_ID)
        .header("x-b3-spanid", CLIENT_SPAN_ID)
        .header("x-b3-sampled", "1")
        .send()
        .await
        .expect("request through envoy")
        .status()
        .as_u16();
    assert_eq!(status, 200);

    let server = receiver
        .wait_for_span(SERVER_SPAN, SPANS_TIMEOUT)
        .await
        .unwrap_or_else(|| panic!("no server span; received:\n{}\n{}", describe(&receiver.spans()), service.log()));
    assert_eq!(server.trace_id, TRACE_ID, "{server:?}");
    assert!(
        !server.parent_span_id.is_empty() && server.parent_span_id != CLIENT_SPAN_ID,
        "the parent must be Envoy's ratelimit span: {server:?}"
    );
}

/// envoyproxy/ratelimit's way: TRACING_ENABLED=true exports OTLP over HTTP (its default) to
/// OTEL_EXPORTER_OTLP_ENDPOINT, and the trace still joins Envoy's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tracing_enabled_exports_over_http_into_envoys_trace() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start().await;
    let echo = Echo::start().await;
    let http = receiver.http_endpoint();
    let extra = [("TRACING_ENABLED", "true"), ("OTEL_EXPORTER_OTLP_ENDPOINT", http.as_str())];
    let service = start_ratelimit(dir.path(), &receiver, &extra).await;
    let envoy = start_envoy(&echo, &service, &receiver).await;

    assert_eq!(request(&envoy).await, 200);

    let (_, server, parent) = joined_to_envoy(&receiver, &service, &[SERVER_SPAN], SERVER_SPAN).await;
    assert_eq!(server.trace_id, parent.trace_id);
    assert_eq!(parent.kind, Span::KIND_CLIENT);
    assert_eq!(server.service, "gatehouse-ratelimit");
}

/// An `https://` collector that requires a client certificate: the service trusts it through
/// OTEL_EXPORTER_OTLP_CERTIFICATE and presents OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE/_KEY.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exports_to_an_https_collector_over_mtls() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate(dir.path());
    let read = |p: &Path| std::fs::read(p).unwrap();
    let receiver =
        Receiver::start_tls(&read(&pki.server_cert), &read(&pki.server_key), Some(&read(&pki.ca_cert))).await;
    let echo = Echo::start().await;
    let (endpoint, ca, cert, key) = (
        receiver.tls_endpoint(),
        pki.ca_cert.display().to_string(),
        pki.client_cert.display().to_string(),
        pki.client_key.display().to_string(),
    );
    let extra = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_EXPORTER_OTLP_CERTIFICATE", ca.as_str()),
        ("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", cert.as_str()),
        ("OTEL_EXPORTER_OTLP_CLIENT_KEY", key.as_str()),
    ];
    let service = start_ratelimit(dir.path(), &receiver, &extra).await;
    let mut vars: BTreeMap<String, String> = default_vars();
    vars.insert("UPSTREAM_PORT".into(), echo.port.to_string());
    vars.insert("RATELIMIT_PORT".into(), service.grpc_port.to_string());
    let envoy = Envoy::start(&vars).await;

    assert_eq!(request(&envoy).await, 200);
    let span = receiver.wait_for_span(SERVER_SPAN, SPANS_TIMEOUT).await;
    assert!(span.is_some(), "nothing arrived over TLS; service log:\n{}", service.log());
}

const CHECK_SPAN: &str = "envoy.service.auth.v3.Authorization/Check";
/// The API key the extauth test sends; it must never appear in a span.
const API_KEY: &str = "key-trace-0123456789abcdef";

/// gatehouse-extauth (the real binary, OTEL_* set, policy `keys` with [`API_KEY`]) and Envoy
/// with its tracer on, both exporting to `receiver`.
async fn start_extauth(dir: &Path, receiver: &Receiver, echo: &Echo) -> (Service, Envoy) {
    let policy = dir.join("extauth.yaml");
    let hash = gatehouse_extauth::hash_key_sha256(API_KEY);
    std::fs::write(
        &policy,
        format!(
            "policies:\n  - name: keys\n    identity:\n      any_of:\n        - name: keys\n          api_key:\n            from: [{{ header: x-api-key }}]\n            keys:\n              - {{ id: team-a, hash: \"{hash}\" }}\n    authorization:\n      - name: no-deletes\n        cel: request.method != 'DELETE'\n"
        ),
    )
    .unwrap();
    let env = [
        ("EXTAUTH_CONFIG", policy.display().to_string()),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100".to_string()),
    ];
    let service = Service::start(Kind::Extauth, &env, dir).await;
    let mut vars: BTreeMap<String, String> = default_vars();
    vars.insert("UPSTREAM_PORT".into(), echo.port.to_string());
    vars.insert("EXTAUTH_PORT".into(), service.grpc_port.to_string());
    vars.insert("EXTAUTH_HTTP_PORT".into(), service.http_port.to_string());
    let envoy = Envoy::start_edited(&vars, otlp::envoy_tracing(receiver.port())).await;
    (service, envoy)
}

/// GETs `path` through Envoy with [`API_KEY`], which must be let through.
async fn allowed_with_key(envoy: &Envoy, service: &Service, path: &str) {
    let status = reqwest::Client::new()
        .get(envoy.url(path))
        .header("x-api-key", API_KEY)
        .send()
        .await
        .expect("request through envoy")
        .status()
        .as_u16();
    assert_eq!(status, 200, "service log:\n{}", service.log());
}

/// gatehouse-extauth (the real binary, OTEL_* set) behind Envoy's ext_authz on `/auth/keys`:
/// our Check span continues Envoy's ext_authz span, with the policy, identity and decision
/// spans under it, and the API key is in no span.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extauth_check_joins_envoys_ext_authz_span() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start().await;
    let echo = Echo::start().await;
    let (service, envoy) = start_extauth(dir.path(), &receiver, &echo).await;

    allowed_with_key(&envoy, &service, "/auth/keys/orders").await;

    let wanted = [CHECK_SPAN, "policy selection", "identity", "rule", "decision"];
    let (spans, server, parent) = joined_to_envoy(&receiver, &service, &wanted, CHECK_SPAN).await;
    assert_eq!(parent.kind, Span::KIND_CLIENT, "{}", describe(&spans));
    assert!(parent.name.contains("envoy.service.auth.v3.Authorization"), "{parent:?}");
    assert_eq!(server.trace_id, parent.trace_id);
    assert_eq!(server.kind, Span::KIND_SERVER);
    assert_eq!(server.service, "gatehouse-extauth");
    assert_eq!(server.attribute("rpc.method"), Some("Check"));
    assert_eq!(server.integer("rpc.grpc.status_code"), Some(0), "{server:?}");

    let child = |name: &str| {
        let span = spans.iter().find(|s| s.name == name).unwrap();
        assert_eq!(span.trace_id, server.trace_id, "{name}");
        span
    };
    let policy = child("policy selection");
    assert_eq!(policy.parent_span_id, server.span_id);
    assert_eq!(policy.attribute("extauth.policy"), Some("keys"));
    let decision = child("decision");
    assert_eq!(decision.parent_span_id, server.span_id);
    assert_eq!(decision.attribute("extauth.decision"), Some("allowed"));
    assert_eq!(decision.integer("http.response.status_code"), Some(200), "{decision:?}");
    let identity = child("identity");
    assert_eq!(identity.parent_span_id, decision.span_id);
    assert_eq!(identity.attribute("extauth.method.kind"), Some("api_key"));
    assert_eq!(identity.attribute("extauth.outcome"), Some("authenticated"));
    let rule = child("rule");
    assert_eq!(rule.parent_span_id, decision.span_id);
    assert_eq!(rule.attribute("extauth.rule"), Some("no-deletes"));
    assert_eq!(rule.attribute("extauth.rule.kind"), Some("cel"));
    assert_eq!(rule.attribute("extauth.rule.allowed"), Some("true"));

    otlp::assert_no_secret(&spans, API_KEY);
}

/// Envoy's HTTP ext_authz (`/auth/http`, as NGINX or Traefik would call it) sends the trace
/// context in the forward-auth request's headers: the service's `forward-auth` span continues
/// Envoy's trace, with the same check spans under it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_auth_continues_the_callers_trace() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start().await;
    let echo = Echo::start().await;
    let (service, envoy) = start_extauth(dir.path(), &receiver, &echo).await;

    allowed_with_key(&envoy, &service, "/auth/http/orders").await;

    let wanted = ["forward-auth", "policy selection", "identity", "rule", "decision"];
    let (spans, server, parent) = joined_to_envoy(&receiver, &service, &wanted, "forward-auth").await;
    assert_eq!(server.trace_id, parent.trace_id);
    assert_eq!(server.kind, Span::KIND_SERVER);
    assert_eq!(server.integer("http.response.status_code"), Some(200), "{server:?}");
    let decision = spans.iter().find(|s| s.name == "decision").unwrap();
    assert_eq!(decision.parent_span_id, server.span_id, "{}", describe(&spans));
    otlp::assert_no_secret(&spans, API_KEY);
}

const PROCESS_SPAN: &str = "envoy.service.ext_proc.v3.ExternalProcessor/Process";

/// gatehouse-transform (the real binary) behind Envoy's ext_proc on `/tx/json`: the stream's
/// server span continues Envoy's trace, with one span per phase and the bodies' sizes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transform_stream_joins_envoys_trace_with_a_span_per_phase() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start().await;
    let echo = Echo::start().await;
    let config = dir.path().join("transformations.yaml");
    std::fs::copy(gatehouse_testkit::repo_root().join("examples/transform/transformations.yaml"), &config).unwrap();
    let env = [
        ("TRANSFORM_CONFIG", config.display().to_string()),
        ("TRANSFORM_TEMPLATE_ENV", "STAGE".to_string()),
        ("STAGE", "test".to_string()),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100".to_string()),
    ];
    let service = Service::start(Kind::Transform, &env, dir.path()).await;
    let mut vars: BTreeMap<String, String> = default_vars();
    vars.insert("UPSTREAM_PORT".into(), echo.port.to_string());
    vars.insert("TRANSFORM_PORT".into(), service.grpc_port.to_string());
    let envoy = Envoy::start_edited(&vars, otlp::envoy_tracing(receiver.port())).await;

    let body = r#"{"order":{"id":"o-1"}}"#;
    let status = reqwest::Client::new()
        .post(envoy.url("/tx/json"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("request through envoy")
        .status()
        .as_u16();
    assert_eq!(status, 200, "service log:\n{}", service.log());

    let wanted = [PROCESS_SPAN, "request_headers", "request_body", "response_headers", "response_body"];
    let (spans, server, parent) = joined_to_envoy(&receiver, &service, &wanted, PROCESS_SPAN).await;
    assert_eq!(server.trace_id, parent.trace_id);
    assert_eq!(server.kind, Span::KIND_SERVER);
    assert_eq!(server.service, "gatehouse-transform");
    for phase in &wanted[1..] {
        let span = spans.iter().find(|s| s.name == *phase).unwrap();
        assert_eq!(span.parent_span_id, server.span_id, "{phase}: {}", describe(&spans));
        assert_eq!(span.attribute("transform.phase"), Some(*phase));
    }
    let request_body = spans.iter().find(|s| s.name == "request_body").unwrap();
    assert_eq!(request_body.integer("transform.body.size"), Some(body.len() as i64), "{request_body:?}");
}
