//! OpenTelemetry traces through real Envoy (the reference config with its optional tracer on)
//! and the real gatehouse-ratelimit binary, both exporting to the test kit's OTLP receiver:
//! one request makes one trace, in which Envoy's ratelimit client span is the parent of the
//! service's server span; and the service's sampler settings decide whether it exports.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use gatehouse_testkit::echo::Echo;
use gatehouse_testkit::envoy::{Envoy, default_vars};
use gatehouse_testkit::otlp::{self, Receiver, Span};
use gatehouse_testkit::service::{Kind, Service};

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
    let mut vars: BTreeMap<String, String> = default_vars();
    vars.insert("UPSTREAM_PORT".into(), echo.port.to_string());
    vars.insert("RATELIMIT_PORT".into(), service.grpc_port.to_string());
    vars.insert("RATELIMIT_FAILURE_MODE_DENY".into(), "true".into());
    Envoy::start_edited(&vars, otlp::envoy_tracing(receiver.port())).await
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

fn describe(spans: &[Span]) -> String {
    spans
        .iter()
        .map(|s| format!("{}: {} {}<-{} {:?}\n", s.service, s.name, s.span_id, s.parent_span_id, s.attributes))
        .collect()
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
        ("rpc.grpc.status_code", "0"),
        ("ratelimit.domain", "gateway"),
        ("ratelimit.descriptors", "1"),
        ("ratelimit.overall_code", "OK"),
    ];
    for (key, value) in expected {
        assert_eq!(server.attribute(key), Some(value), "{key} on {server:?}");
    }
    assert_eq!(server.resource.get("service.name").map(String::as_str), Some("gatehouse-ratelimit"));

    // Its children: the rule lookup and the store call with its batch.
    let lookup = ours.iter().find(|s| s.name == "rule lookup").unwrap();
    assert_eq!(lookup.parent_span_id, server.span_id);
    assert_eq!(lookup.attribute("ratelimit.rules_matched"), Some("1"));
    let store = ours.iter().find(|s| s.name == "counter store update").unwrap();
    assert_eq!(store.parent_span_id, server.span_id);
    assert_eq!(store.attribute("batch.size"), Some("1"));
    assert_eq!(store.attribute("ratelimit.backend"), Some("memory"));

    // No credential from the request in any span, Envoy's included.
    for span in &spans {
        for (key, value) in span.attributes.iter().chain(&span.resource) {
            assert!(!value.contains(SECRET), "{key}={value} in {}", span.name);
        }
    }
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

    let joined = gatehouse_testkit::eventually(SPANS_TIMEOUT, || async {
        let spans = receiver.spans();
        let server = spans.iter().find(|s| s.name == SERVER_SPAN)?;
        let parent = spans.iter().find(|s| s.span_id == server.parent_span_id && s.service == "gatehouse-envoy")?;
        Some((server.clone(), parent.clone()))
    })
    .await;
    let (server, parent) = joined.unwrap_or_else(|| {
        panic!("no joined server span; received:\n{}\nservice log:\n{}", describe(&receiver.spans()), service.log())
    });
    assert_eq!(server.trace_id, parent.trace_id);
    assert_eq!(parent.kind, Span::KIND_CLIENT);
    assert_eq!(server.service, "gatehouse-ratelimit");
}
