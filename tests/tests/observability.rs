//! The full gateway, observed: one request through real Envoy and all three real services
//! (ext_authz → ext_proc → ratelimit on the reference config's `/full/` route) is one trace,
//! in which each service's server span is the child of Envoy's client span for that call; and
//! every metric the dashboards and alert rules in `dashboards/` query is one the services
//! export.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use gatehouse_testkit::echo::Echo;
use gatehouse_testkit::envoy::{Envoy, default_vars};
use gatehouse_testkit::otlp::{self, Receiver, Span, describe};
use gatehouse_testkit::repo_root;
use gatehouse_testkit::service::{Kind, Service};
use gatehouse_testkit::tls::Pki;

/// The API key the request carries; it must never appear in a span.
const API_KEY: &str = "key-full-gateway-0123456789abcdef";
const SPANS_TIMEOUT: Duration = Duration::from_secs(30);

const CHECK: &str = "envoy.service.auth.v3.Authorization/Check";
const PROCESS: &str = "envoy.service.ext_proc.v3.ExternalProcessor/Process";
const SHOULD_RATE_LIMIT: &str = "envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit";

/// The three services as the gateway runs them, each exporting to `receiver` (if any), with
/// `extra` settings for all of them.
struct Services {
    extauth: Service,
    transform: Service,
    ratelimit: Service,
}

impl Services {
    async fn start(dir: &Path, receiver: Option<&Receiver>, extra: &[(&str, String)]) -> Services {
        let policy = dir.join("extauth.yaml");
        let hash = gatehouse_extauth::hash_key_sha256(API_KEY);
        std::fs::write(
            &policy,
            format!(
                "policies:\n  - name: keys\n    identity:\n      any_of:\n        - name: keys\n          api_key:\n            from: [{{ header: x-api-key }}]\n            keys:\n              - {{ id: team-a, hash: \"{hash}\" }}\n"
            ),
        )
        .unwrap();
        let transformations = dir.join("transformations.yaml");
        std::fs::copy(repo_root().join("examples/transform/transformations.yaml"), &transformations).unwrap();
        let runtime = dir.join("runtime/config");
        std::fs::create_dir_all(&runtime).unwrap();
        std::fs::write(
            runtime.join("gateway.yaml"),
            "domain: gateway\ndescriptors:\n  - key: api_key_id\n    rate_limit: { unit: minute, requests_per_unit: 100 }\n",
        )
        .unwrap();

        let with = |own: Vec<(&'static str, String)>, name: &str| {
            let mut env: Vec<(&str, String)> = own;
            if let Some(receiver) = receiver {
                env.push(("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint()));
                env.push(("OTEL_SERVICE_NAME", name.to_string()));
                // The SDK's batch delay (default 5 s), so the test does not wait for it.
                env.push(("OTEL_BSP_SCHEDULE_DELAY", "100".into()));
            }
            env.extend(extra.iter().map(|(k, v)| (*k, v.clone())));
            env
        };
        let extauth = with(vec![("EXTAUTH_CONFIG", policy.display().to_string())], "gatehouse-extauth");
        let transform = with(
            vec![
                ("TRANSFORM_CONFIG", transformations.display().to_string()),
                ("TRANSFORM_TEMPLATE_ENV", "STAGE".into()),
                ("STAGE", "test".into()),
            ],
            "gatehouse-transform",
        );
        let ratelimit = with(
            vec![("RUNTIME_ROOT", dir.join("runtime").display().to_string()), ("BACKEND_TYPE", "memory".into())],
            "gatehouse-ratelimit",
        );
        Services {
            extauth: Service::start(Kind::Extauth, &extauth, dir).await,
            transform: Service::start(Kind::Transform, &transform, dir).await,
            ratelimit: Service::start(Kind::Ratelimit, &ratelimit, dir).await,
        }
    }

    fn vars(&self, echo: &Echo) -> BTreeMap<String, String> {
        let mut vars = default_vars();
        vars.insert("UPSTREAM_PORT".into(), echo.port.to_string());
        vars.insert("EXTAUTH_PORT".into(), self.extauth.grpc_port.to_string());
        vars.insert("EXTAUTH_HTTP_PORT".into(), self.extauth.http_port.to_string());
        vars.insert("TRANSFORM_PORT".into(), self.transform.grpc_port.to_string());
        vars.insert("RATELIMIT_PORT".into(), self.ratelimit.grpc_port.to_string());
        vars.insert("RATELIMIT_FAILURE_MODE_DENY".into(), "true".into());
        vars
    }

    fn logs(&self) -> String {
        format!(
            "extauth:\n{}\ntransform:\n{}\nratelimit:\n{}",
            self.extauth.log(),
            self.transform.log(),
            self.ratelimit.log()
        )
    }

    /// The `/metrics` text of each service.
    async fn scrape(&self) -> Vec<String> {
        let urls = [
            format!("http://127.0.0.1:{}/metrics", self.extauth.http_port),
            format!("http://127.0.0.1:{}/metrics", self.transform.http_port),
            format!("http://127.0.0.1:{}/metrics", self.ratelimit.debug_port.expect("ratelimit has a debug port")),
        ];
        let mut texts = Vec::new();
        for url in urls {
            let response = reqwest::get(&url).await.unwrap_or_else(|e| panic!("{url}: {e}"));
            assert!(response.status().is_success(), "{url}: {}", response.status());
            texts.push(response.text().await.unwrap());
        }
        texts
    }
}

async fn request(envoy: &Envoy) -> u16 {
    reqwest::Client::new()
        .get(envoy.url("/full/orders"))
        .header("x-api-key", API_KEY)
        .header("x-user", "alice")
        .send()
        .await
        .expect("request through envoy")
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_request_through_the_full_gateway_is_one_trace() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start().await;
    let echo = Echo::start().await;
    let services = Services::start(dir.path(), Some(&receiver), &[]).await;
    let envoy = Envoy::start_edited(&services.vars(&echo), otlp::envoy_tracing(receiver.port())).await;

    assert_eq!(request(&envoy).await, 200, "{}", services.logs());

    // Each server span, and Envoy's client span that is its parent (Envoy flushes on its own
    // interval, so wait for all of them).
    let servers = [CHECK, PROCESS, SHOULD_RATE_LIMIT];
    let joined = gatehouse_testkit::eventually(SPANS_TIMEOUT, || async {
        let spans = receiver.spans();
        let mut pairs = Vec::new();
        for name in servers {
            let server = spans.iter().find(|s| s.name == name)?.clone();
            let parent =
                spans.iter().find(|s| s.span_id == server.parent_span_id && s.service == "gatehouse-envoy")?.clone();
            pairs.push((server, parent));
        }
        Some((spans, pairs))
    })
    .await;
    let Some((spans, pairs)) = joined else {
        panic!(
            "not every service joined Envoy's trace; received:\n{}\n{}",
            describe(&receiver.spans()),
            services.logs()
        )
    };

    let trace_id = &pairs[0].0.trace_id;
    for (server, parent) in &pairs {
        assert_eq!(&server.trace_id, trace_id, "{} is in another trace:\n{}", server.name, describe(&spans));
        assert_eq!(server.kind, Span::KIND_SERVER, "{}", server.name);
        assert_eq!(parent.kind, Span::KIND_CLIENT, "{}'s parent {}", server.name, parent.name);
    }
    let service_of = |name: &str| pairs.iter().find(|(s, _)| s.name == name).map(|(s, p)| (s, p)).unwrap();
    let (check, check_parent) = service_of(CHECK);
    assert_eq!(check.service, "gatehouse-extauth");
    assert!(check_parent.name.contains("envoy.service.auth.v3.Authorization"), "{check_parent:?}");
    let (process, _) = service_of(PROCESS);
    assert_eq!(process.service, "gatehouse-transform");
    let (limit, limit_parent) = service_of(SHOULD_RATE_LIMIT);
    assert_eq!(limit.service, "gatehouse-ratelimit");
    assert!(limit_parent.name.contains("RateLimitService"), "{limit_parent:?}");
    assert_eq!(limit.attribute("ratelimit.domain"), Some("gateway"));

    // Every span this request made, ours and Envoy's, is in the one trace, and the three
    // services' inner spans hang under their server spans.
    for span in &spans {
        assert_eq!(&span.trace_id, trace_id, "a second trace: {span:?}");
    }
    for inner in ["decision", "request_headers", "counter store update"] {
        assert!(spans.iter().any(|s| s.name == inner), "no {inner} span:\n{}", describe(&spans));
    }

    // No credential anywhere, whoever recorded the span.
    otlp::assert_no_secret(&spans, API_KEY);
}

/// The metric names a Prometheus text exposition declares: from each `# TYPE name type` line,
/// the sample names that type produces (`_total` for counters; `_bucket`, `_sum` and `_count`
/// for histograms). Declared families count even before their first sample.
fn exported_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else { continue };
        let mut parts = rest.split_whitespace();
        let (Some(name), Some(kind)) = (parts.next(), parts.next()) else { continue };
        match kind {
            "counter" => {
                names.insert(format!("{}_total", name.trim_end_matches("_total")));
            }
            "histogram" => {
                for suffix in ["_bucket", "_sum", "_count"] {
                    names.insert(format!("{name}{suffix}"));
                }
            }
            _ => {
                names.insert(name.to_string());
            }
        }
    }
    names
}

/// What the dashboards and alert rules query, as tests/deploy/check_dashboards.py reads it.
fn queried_names() -> Vec<String> {
    let root = repo_root();
    let output = std::process::Command::new(root.join(".venv/bin/python"))
        .arg(root.join("tests/deploy/check_dashboards.py"))
        .arg("--list-metrics")
        .output()
        .expect("run tests/deploy/check_dashboards.py (scripts/install-test-deps.sh makes .venv)");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let names: Vec<String> = String::from_utf8(output.stdout).unwrap().lines().map(str::to_string).collect();
    assert!(names.len() > 20, "too few metrics queried: {names:?}");
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_dashboards_and_alerts_query_is_exported() {
    let dir = tempfile::tempdir().unwrap();
    let echo = Echo::start().await;
    let services = Services::start(dir.path(), None, &[]).await;
    let envoy = Envoy::start(&services.vars(&echo)).await;
    assert_eq!(request(&envoy).await, 200, "{}", services.logs());
    // A domain no config defines: the one counter labelled by a domain the rules do not name.
    let mut client = RateLimitServiceClient::connect(format!("http://127.0.0.1:{}", services.ratelimit.grpc_port))
        .await
        .expect("connect to gatehouse-ratelimit");
    let entry = Entry { key: "k".into(), value: "v".into() };
    let descriptor = RateLimitDescriptor { entries: vec![entry], ..Default::default() };
    let unknown = RateLimitRequest { domain: "undefined".into(), descriptors: vec![descriptor], ..Default::default() };
    client.should_rate_limit(unknown).await.expect("an unknown domain is answered");
    // transform counts an exchange when Envoy ends its stream, which can be after the client
    // has its answer: wait for that count before scraping.
    let transform_metrics = format!("http://127.0.0.1:{}/metrics", services.transform.http_port);
    let counted = gatehouse_testkit::eventually(Duration::from_secs(5), || async {
        let text = reqwest::get(&transform_metrics).await.ok()?.text().await.ok()?;
        text.contains("gatehouse_transform_exchanges_total{").then_some(())
    })
    .await;
    assert!(counted.is_some(), "transform never counted the exchange:\n{}", services.logs());

    let mut exported = BTreeSet::new();
    for text in services.scrape().await {
        exported.extend(exported_names(&text));
    }
    // The certificate reload metrics exist only when the gRPC listener has TLS: the same
    // services again, serving TLS (no Envoy needed to read /metrics).
    let tls_dir = dir.path().join("tls");
    std::fs::create_dir_all(&tls_dir).unwrap();
    let pki = Pki::generate(&tls_dir);
    let tls = [
        ("GRPC_SERVER_USE_TLS", "true".to_string()),
        ("GRPC_SERVER_TLS_CERT", pki.server_cert.display().to_string()),
        ("GRPC_SERVER_TLS_KEY", pki.server_key.display().to_string()),
    ];
    let with_tls = Services::start(&tls_dir, None, &tls).await;
    for text in with_tls.scrape().await {
        exported.extend(exported_names(&text));
    }

    let missing: Vec<String> = queried_names().into_iter().filter(|name| !exported.contains(name)).collect();
    assert!(
        missing.is_empty(),
        "queried by dashboards/ but exported by no service: {missing:?}\nexported: {exported:?}"
    );
}

/// The sum of the samples of `name` whose labels contain every `label="value"` pair given.
fn sample(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|line| line.starts_with(&format!("{name}{{")) || line.starts_with(&format!("{name} ")))
        .filter(|line| labels.iter().all(|label| line.contains(label)))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// gatehouse-extauth's calls out, through Envoy: an API key looked up in Redis is a
/// `redis api_key` span under the `identity` span and a timed round trip in the metrics, and
/// the next request is a cache hit without one; a JWT issuer's discovery document and key set
/// are timed IdP calls, and a token verified with the cached keys is a `jwks` cache hit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extauth_reports_its_redis_and_idp_calls() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start().await;
    let echo = Echo::start().await;
    let redis = gatehouse_testkit::redis::RedisServer::start();
    let issuer = gatehouse_testkit::issuer::TestIssuer::start(dir.path()).await;
    const REDIS_KEY: &str = "key-in-redis-0123456789abcdef";
    let digest = &gatehouse_extauth::hash_key_sha256(REDIS_KEY)["sha256:".len()..];
    redis.cli(&["SET", &format!("gatehouse:apikey:{digest}"), r#"{"id":"from-redis"}"#]).unwrap();
    let policy = dir.path().join("extauth.yaml");
    std::fs::write(
        &policy,
        format!(
            r#"policies:
  - name: keys
    identity:
      any_of:
        - name: keys
          api_key:
            from: [{{ header: x-api-key }}]
            redis_prefix: "gatehouse:apikey:"
            redis_cache_ttl: 1m
  - name: jwt
    identity:
      any_of:
        - name: bearer
          jwt: {{ issuer: "{}", audiences: [gatehouse] }}
"#,
            issuer.issuer()
        ),
    )
    .unwrap();
    let env = [
        ("EXTAUTH_CONFIG", policy.display().to_string()),
        ("REDIS_URL", redis.url()),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100".to_string()),
    ];
    let service = Service::start(Kind::Extauth, &env, dir.path()).await;
    let mut vars = default_vars();
    vars.insert("UPSTREAM_PORT".into(), echo.port.to_string());
    vars.insert("EXTAUTH_PORT".into(), service.grpc_port.to_string());
    vars.insert("EXTAUTH_HTTP_PORT".into(), service.http_port.to_string());
    let envoy = Envoy::start_edited(&vars, otlp::envoy_tracing(receiver.port())).await;
    let client = reqwest::Client::new();
    let get =
        |path: &str, header: (&'static str, String)| client.get(envoy.url(path)).header(header.0, header.1).send();

    for _ in 0..2 {
        let status = get("/auth/keys/orders", ("x-api-key", REDIS_KEY.into())).await.unwrap().status();
        assert_eq!(status, 200, "{}", service.log());
    }
    let token = issuer.mint(&issuer.claims("gatehouse"));
    let status = get("/auth/jwt/orders", ("authorization", format!("Bearer {token}"))).await.unwrap().status();
    assert_eq!(status, 200, "{}", service.log());

    // The spans: one Redis round trip, under the API key method's identity span.
    let Ok(spans) = receiver.wait_for_spans(&["redis api_key"], SPANS_TIMEOUT).await else {
        panic!("no redis span; received:\n{}\n{}", describe(&receiver.spans()), service.log())
    };
    let redis_spans: Vec<&Span> = spans.iter().filter(|s| s.name == "redis api_key").collect();
    assert_eq!(redis_spans.len(), 1, "the second request is served from the cache:\n{}", describe(&spans));
    let parent = spans.iter().find(|s| s.span_id == redis_spans[0].parent_span_id).expect("the redis span's parent");
    assert_eq!(parent.name, "identity", "{}", describe(&spans));
    assert_eq!(redis_spans[0].attribute("db.operation.name"), Some("api_key"));
    assert_eq!(redis_spans[0].kind, Span::KIND_CLIENT);

    // The metrics.
    let url = format!("http://127.0.0.1:{}/metrics", service.http_port);
    let text = reqwest::get(&url).await.unwrap().text().await.unwrap();
    let value = |name: &str, labels: &[&str]| sample(&text, name, labels);
    assert_eq!(value("gatehouse_extauth_redis_request_duration_seconds_count", &[r#"op="api_key""#]), 1.0, "{text}");
    assert_eq!(value("gatehouse_extauth_redis_errors_total", &[r#"op="api_key""#]), 0.0);
    assert_eq!(value("gatehouse_extauth_cache_lookups_total", &[r#"cache="api_key""#, r#"result="miss""#]), 1.0);
    assert_eq!(value("gatehouse_extauth_cache_lookups_total", &[r#"cache="api_key""#, r#"result="hit""#]), 1.0);
    assert!(value("gatehouse_extauth_idp_request_duration_seconds_count", &[r#"call="discovery""#]) >= 1.0, "{text}");
    assert!(value("gatehouse_extauth_idp_request_duration_seconds_count", &[r#"call="jwks""#]) >= 1.0, "{text}");
    assert_eq!(value("gatehouse_extauth_idp_errors_total", &[]), 0.0, "{text}");
    assert_eq!(value("gatehouse_extauth_cache_lookups_total", &[r#"cache="jwks""#, r#"result="hit""#]), 1.0);
    assert_eq!(value("gatehouse_extauth_request_duration_seconds_count", &[r#"result="allow""#]), 3.0);
    assert_eq!(value("gatehouse_extauth_decisions_total", &[r#"policy="jwt""#, r#"result="allow""#]), 1.0);
}
