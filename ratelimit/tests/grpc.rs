//! In-process tests of the served protocol: a real gRPC client against `App::serve` on
//! loopback listeners, the memory store, and a rule directory in a temp dir.

use std::time::Duration;

use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::{Entry, RateLimitOverride};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use envoy_types::pb::google::protobuf::UInt64Value;
use envoy_types::pb::google::protobuf::value::Kind;
use gatehouse_common::config::Env;
use gatehouse_common::server::Shutdown;
use gatehouse_ratelimit::clock::Clock;
use gatehouse_ratelimit::settings::Settings;
use gatehouse_ratelimit::{App, Listeners};
use tokio::net::TcpListener;
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;

const RULES: &str = r#"
domain: test
descriptors:
  - key: k
    value: limited
    rate_limit: { unit: minute, requests_per_unit: 2, name: k_limited }
  - key: k
    value: free
    rate_limit: { unlimited: true }
  - key: k
    value: general
    rate_limit: { unit: minute, requests_per_unit: 1, name: general }
  - key: k
    value: specific
    rate_limit:
      unit: minute
      requests_per_unit: 100
      replaces: [{ name: general }]
  - key: k
    value: vip
    rate_limit:
      unlimited: true
      replaces: [{ name: k_limited }]
  - key: bucket
    rate_limit: { unit: second, requests_per_unit: 1, algorithm: token_bucket, burst: 3, name: tb }
  - key: service
    value: s1
    quota_mode: true
    rate_limit: { unit: minute, requests_per_unit: 1 }
    metadata: { route_to: { cluster: s1 }, weight: 1 }
  - key: service
    value: s2
    quota_mode: true
    rate_limit: { unit: minute, requests_per_unit: 2 }
    metadata: { route_to: { cluster: s2, zone: b }, weight: 2 }
"#;

struct Server {
    grpc: u16,
    http: u16,
    shutdown: Shutdown,
    _rules: tempfile::TempDir,
}

impl Server {
    async fn start(extra_env: &[(&str, &str)]) -> Server {
        let rules = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(rules.path().join("config")).unwrap();
        std::fs::write(rules.path().join("config/test.yaml"), RULES).unwrap();
        let mut env = vec![
            ("RUNTIME_ROOT".to_string(), rules.path().display().to_string()),
            ("RUNTIME_WATCH_ROOT".to_string(), "false".to_string()),
        ];
        env.extend(extra_env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let settings = Settings::from_env(&Env::from_pairs(env)).unwrap();
        let grpc = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let ports = (grpc.local_addr().unwrap().port(), http.local_addr().unwrap().port());
        let app = App::build(settings, Clock::System).await.unwrap();
        let shutdown = Shutdown::new();
        let listeners = Listeners { grpc: grpc.into(), http: Some(http), debug: None, prometheus: None };
        tokio::spawn(app.serve(listeners, shutdown.clone()));
        Server { grpc: ports.0, http: ports.1, shutdown, _rules: rules }
    }

    async fn client(&self) -> RateLimitServiceClient<Channel> {
        RateLimitServiceClient::connect(format!("http://127.0.0.1:{}", self.grpc)).await.unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown.trigger();
    }
}

fn descriptor(pairs: &[(&str, &str)]) -> RateLimitDescriptor {
    RateLimitDescriptor {
        entries: pairs.iter().map(|(k, v)| Entry { key: k.to_string(), value: v.to_string() }).collect(),
        ..Default::default()
    }
}

fn request(descriptors: Vec<RateLimitDescriptor>) -> RateLimitRequest {
    RateLimitRequest { domain: "test".into(), descriptors, hits_addend: 0 }
}

async fn call(client: &mut RateLimitServiceClient<Channel>, req: RateLimitRequest) -> RateLimitResponse {
    client.should_rate_limit(req).await.unwrap().into_inner()
}

fn header(resp: &RateLimitResponse, name: &str) -> Option<String> {
    resp.response_headers_to_add.iter().find(|h| h.key == name).map(|h| h.value.clone())
}

#[tokio::test]
async fn statuses_limits_and_headers() {
    let server = Server::start(&[("LIMIT_RESPONSE_HEADERS_ENABLED", "true")]).await;
    let mut client = server.client().await;

    let limited = || request(vec![descriptor(&[("k", "limited")])]);
    let first = call(&mut client, limited()).await;
    assert_eq!(first.overall_code, Code::Ok as i32);
    let status = &first.statuses[0];
    let limit = status.current_limit.as_ref().unwrap();
    assert_eq!((limit.name.as_str(), limit.requests_per_unit, limit.unit), ("k_limited", 2, 2));
    assert_eq!(status.limit_remaining, 1);
    let reset = status.duration_until_reset.as_ref().unwrap().seconds;
    assert!((0..=60).contains(&reset), "{reset}");
    assert_eq!(header(&first, "RateLimit-Limit").as_deref(), Some("2"));
    assert_eq!(header(&first, "RateLimit-Remaining").as_deref(), Some("1"));

    call(&mut client, limited()).await;
    let third = call(&mut client, limited()).await;
    assert_eq!(third.overall_code, Code::OverLimit as i32);
    assert_eq!(third.statuses[0].code, Code::OverLimit as i32);

    // Unlimited: OK, no current_limit, remaining u32::MAX. Unknown descriptors: plain OK.
    let resp = call(&mut client, request(vec![descriptor(&[("k", "free")]), descriptor(&[("nope", "x")])])).await;
    assert_eq!(resp.overall_code, Code::Ok as i32);
    assert_eq!(resp.statuses[0].limit_remaining, u32::MAX);
    assert!(resp.statuses[0].current_limit.is_none() && resp.statuses[1].current_limit.is_none());

    // An unknown domain is not an error: everything is OK.
    let mut other = limited();
    other.domain = "unknown".into();
    assert_eq!(call(&mut client, other).await.overall_code, Code::Ok as i32);
}

#[tokio::test]
async fn hits_addend_override_and_replaces() {
    let server = Server::start(&[]).await;
    let mut client = server.client().await;

    // Request-level hits_addend 3 against a limit of 2; per-descriptor 0 only checks.
    let mut req = request(vec![descriptor(&[("k", "limited")])]);
    req.hits_addend = 3;
    assert_eq!(call(&mut client, req).await.overall_code, Code::OverLimit as i32);
    let mut check = descriptor(&[("k", "other-key")]);
    check.limit = Some(RateLimitOverride { requests_per_unit: 1, unit: 4 });
    check.hits_addend = Some(UInt64Value { value: 0 });
    for _ in 0..3 {
        let resp = call(&mut client, request(vec![check.clone()])).await;
        assert_eq!((resp.overall_code, resp.statuses[0].limit_remaining), (Code::Ok as i32, 1), "0 hits never count");
    }
    // The override applies its own limit (1 per day) to descriptors no rule matches.
    check.hits_addend = None;
    let first = call(&mut client, request(vec![check.clone()])).await;
    assert_eq!(first.statuses[0].current_limit.as_ref().unwrap().unit, 4);
    assert_eq!(call(&mut client, request(vec![check])).await.overall_code, Code::OverLimit as i32);

    // `specific` replaces `general`: with both in one request, only specific's 100 applies.
    for _ in 0..3 {
        let resp =
            call(&mut client, request(vec![descriptor(&[("k", "general")]), descriptor(&[("k", "specific")])])).await;
        assert_eq!(resp.overall_code, Code::Ok as i32);
        assert!(resp.statuses[0].current_limit.is_none(), "replaced rule is not applied");
    }
    // An unlimited rule's replaces apply too: with `vip`, `limited` (2 per minute) is dropped.
    let mut vip = request(vec![descriptor(&[("k", "limited")]), descriptor(&[("k", "vip")])]);
    vip.hits_addend = 5;
    let resp = call(&mut client, vip).await;
    assert_eq!(resp.overall_code, Code::Ok as i32, "{resp:?}");
    assert_eq!(resp.statuses[1].limit_remaining, u32::MAX);

    // Alone, general's limit of 1 applies.
    let alone = || request(vec![descriptor(&[("k", "general")])]);
    call(&mut client, alone()).await;
    assert_eq!(call(&mut client, alone()).await.overall_code, Code::OverLimit as i32);
}

/// Found by the `ratelimit_request` fuzz target: a `hits_addend` of 2^64-1 panicked the
/// memory store (an overflow). It is over the limit, and the counter keeps working.
#[tokio::test]
async fn huge_hits_addend_is_over_limit() {
    let server = Server::start(&[]).await;
    let mut client = server.client().await;
    let mut huge = descriptor(&[("k", "limited")]);
    huge.hits_addend = Some(UInt64Value { value: u64::MAX });
    for _ in 0..2 {
        let resp = call(&mut client, request(vec![huge.clone()])).await;
        assert_eq!((resp.overall_code, resp.statuses[0].limit_remaining), (Code::OverLimit as i32, 0), "{resp:?}");
    }
    let mut check = descriptor(&[("k", "limited")]);
    check.hits_addend = Some(UInt64Value { value: 0 });
    assert_eq!(call(&mut client, request(vec![check])).await.overall_code, Code::OverLimit as i32);
}

#[tokio::test]
async fn ietf_headers_metadata_and_token_bucket() {
    let server = Server::start(&[
        ("LIMIT_RESPONSE_HEADERS_ENABLED", "true"),
        ("LIMIT_RESPONSE_HEADERS_FORMAT", "ietf"),
        ("RESPONSE_DYNAMIC_METADATA", "true"),
    ])
    .await;
    let mut client = server.client().await;
    let resp = call(&mut client, request(vec![descriptor(&[("bucket", "tenant-a")])])).await;
    assert_eq!(header(&resp, "RateLimit-Policy").as_deref(), Some("\"tb\";q=1;w=1"));
    assert_eq!(header(&resp, "RateLimit").as_deref(), Some("\"tb\";r=2;t=1"));
    let metadata = resp.dynamic_metadata.unwrap();
    let domain = metadata.fields.get("domain").and_then(|v| v.kind.clone());
    assert_eq!(domain, Some(envoy_types::pb::google::protobuf::value::Kind::StringValue("test".into())));
    // Burst of 3, then refused with the time until the next token.
    call(&mut client, request(vec![descriptor(&[("bucket", "tenant-a")])])).await;
    call(&mut client, request(vec![descriptor(&[("bucket", "tenant-a")])])).await;
    let refused = call(&mut client, request(vec![descriptor(&[("bucket", "tenant-a")])])).await;
    assert_eq!(refused.overall_code, Code::OverLimit as i32);
    let wait = refused.statuses[0].duration_until_reset.as_ref().unwrap();
    assert!(wait.seconds == 0 || (wait.seconds == 1 && wait.nanos == 0), "{wait:?}");
}

/// The `metadata` field of the response's dynamic metadata, as JSON.
fn passed_metadata(resp: &RateLimitResponse) -> Option<serde_json::Value> {
    let field = resp.dynamic_metadata.as_ref()?.fields.get("metadata")?;
    let Some(Kind::StructValue(s)) = &field.kind else { return None };
    Some(serde_json::Value::Object(gatehouse_common::pbjson::from_struct(s)))
}

/// Quota descriptors refuse only together; while any has room, the request passes and the
/// metadata of those within their limits comes back, the first descriptor's value winning.
#[tokio::test]
async fn quota_mode_and_descriptor_metadata() {
    let server =
        Server::start(&[("RESPONSE_DYNAMIC_METADATA", "true"), ("LIMIT_RESPONSE_HEADERS_ENABLED", "true")]).await;
    let mut client = server.client().await;
    let both = || request(vec![descriptor(&[("service", "s1")]), descriptor(&[("service", "s2")])]);

    // A descriptor outside quota mode over its limit refuses whatever the quotas say (s2 is
    // only checked here: 0 hits).
    let mut exhausted = request(vec![descriptor(&[("k", "limited")])]);
    exhausted.hits_addend = 3;
    assert_eq!(call(&mut client, exhausted).await.overall_code, Code::OverLimit as i32);
    let mut s2_check = descriptor(&[("service", "s2")]);
    s2_check.hits_addend = Some(UInt64Value { value: 0 });
    let resp = call(&mut client, request(vec![descriptor(&[("k", "limited")]), s2_check])).await;
    assert_eq!(resp.overall_code, Code::OverLimit as i32);

    let resp = call(&mut client, both()).await;
    assert_eq!(resp.overall_code, Code::Ok as i32);
    let first_wins = serde_json::json!({ "route_to": { "cluster": "s1", "zone": "b" }, "weight": 1.0 });
    assert_eq!(passed_metadata(&resp), Some(first_wins));

    // s1 is over its quota, s2 is not: OK, s1's status says OVER_LIMIT, and only s2's metadata.
    let resp = call(&mut client, both()).await;
    assert_eq!(resp.overall_code, Code::Ok as i32);
    let codes: Vec<i32> = resp.statuses.iter().map(|s| s.code).collect();
    assert_eq!(codes, [Code::OverLimit as i32, Code::Ok as i32]);
    let s2 = serde_json::json!({ "route_to": { "cluster": "s2", "zone": "b" }, "weight": 2.0 });
    assert_eq!(passed_metadata(&resp), Some(s2));
    // Headers: an exhausted quota is not a refusal, so the least remaining decides (the first
    // of equals).
    assert_eq!(
        (header(&resp, "RateLimit-Limit").as_deref(), header(&resp, "RateLimit-Remaining").as_deref()),
        (Some("1"), Some("0"))
    );

    // Both over: refused, no metadata passed.
    let resp = call(&mut client, both()).await;
    assert_eq!(resp.overall_code, Code::OverLimit as i32);
    assert_eq!(passed_metadata(&resp), None);
    assert!(resp.dynamic_metadata.unwrap().fields.contains_key("domain"));
}

/// QUOTA_MODE puts every descriptor in quota mode, matched or not: a request is refused only
/// when all of them are over.
#[tokio::test]
async fn global_quota_mode() {
    let server = Server::start(&[("QUOTA_MODE", "true")]).await;
    let mut client = server.client().await;
    let mut over = request(vec![descriptor(&[("k", "limited")])]);
    over.hits_addend = 3;
    assert_eq!(call(&mut client, over).await.overall_code, Code::OverLimit as i32);
    // With a descriptor no rule matches (within, so to speak), the request passes.
    let resp = call(&mut client, request(vec![descriptor(&[("k", "limited")]), descriptor(&[("nope", "x")])])).await;
    assert_eq!(resp.overall_code, Code::Ok as i32);
    assert_eq!(resp.statuses[0].code, Code::OverLimit as i32);
}

#[tokio::test]
async fn malformed_requests_get_invalid_argument() {
    let server = Server::start(&[]).await;
    let mut client = server.client().await;
    let err = client.should_rate_limit(request(vec![])).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert_eq!(err.message(), "rate limit descriptor list must not be empty");
    let mut req = request(vec![descriptor(&[("k", "limited")])]);
    req.domain.clear();
    let err = client.should_rate_limit(req).await.unwrap_err();
    assert_eq!((err.code(), err.message()), (tonic::Code::InvalidArgument, "rate limit domain must not be empty"));
}

#[tokio::test]
async fn json_endpoint_and_healthcheck() {
    let server = Server::start(&[]).await;
    let http = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{}", server.http);
    let body = r#"{"domain":"test","descriptors":[{"entries":[{"key":"k","value":"limited"}]}]}"#;
    let mut codes = Vec::new();
    for _ in 0..3 {
        let resp = http.post(format!("{url}/json")).body(body).send().await.unwrap();
        codes.push(resp.status().as_u16());
        let json: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(json["statuses"][0]["currentLimit"]["unit"], "MINUTE", "{json}");
    }
    assert_eq!(codes, vec![200, 200, 429]);
    let bad = http.post(format!("{url}/json")).body("{not json").send().await.unwrap();
    assert_eq!(bad.status().as_u16(), 400);
    assert_eq!(bad.text().await.unwrap(), "Bad Request\n");

    let health = http.get(format!("{url}/healthcheck")).send().await.unwrap();
    assert_eq!((health.status().as_u16(), health.text().await.unwrap().as_str()), (200, "OK"));

    // On shutdown, health fails at once, before the listeners close (SHUTDOWN_DRAIN).
    let draining = Server::start(&[("SHUTDOWN_DRAIN", "2s")]).await;
    let url = format!("http://127.0.0.1:{}/healthcheck", draining.http);
    let channel = Channel::from_shared(format!("http://127.0.0.1:{}", draining.grpc)).unwrap().connect().await.unwrap();
    let mut grpc_health = tonic_health::pb::health_client::HealthClient::new(channel);
    let mut grpc_status = async || {
        let request = tonic_health::pb::HealthCheckRequest { service: "ratelimit".into() };
        let status = grpc_health.check(request).await.unwrap().into_inner().status;
        ServingStatus::try_from(status).unwrap()
    };
    assert_eq!(grpc_status().await, ServingStatus::Serving);
    draining.shutdown.trigger();
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(http.get(&url).send().await.unwrap().status().as_u16(), 500);
    assert_eq!(grpc_status().await, ServingStatus::NotServing);
}

/// GRPC_SERVER_USE_TLS with GRPC_CLIENT_TLS_CACERT: clients need a certificate from the CA.
#[tokio::test]
async fn tls_and_mtls_listener() {
    let dir = tempfile::tempdir().unwrap();
    let pki = gatehouse_testkit::tls::Pki::generate(dir.path());
    let server = Server::start(&[
        ("GRPC_SERVER_USE_TLS", "true"),
        ("GRPC_SERVER_TLS_CERT", pki.server_cert.to_str().unwrap()),
        ("GRPC_SERVER_TLS_KEY", pki.server_key.to_str().unwrap()),
        ("GRPC_CLIENT_TLS_CACERT", pki.ca_cert.to_str().unwrap()),
    ])
    .await;
    use tonic::transport::{Certificate, ClientTlsConfig, Identity};
    let ca = Certificate::from_pem(std::fs::read(&pki.ca_cert).unwrap());
    let endpoint = || Channel::from_shared(format!("https://localhost:{}", server.grpc)).unwrap();

    let identity =
        Identity::from_pem(std::fs::read(&pki.client_cert).unwrap(), std::fs::read(&pki.client_key).unwrap());
    let tls = ClientTlsConfig::new().ca_certificate(ca.clone()).domain_name("localhost").identity(identity);
    let channel = endpoint().tls_config(tls).unwrap().connect().await.unwrap();
    let mut client = RateLimitServiceClient::new(channel);
    let resp = call(&mut client, request(vec![descriptor(&[("k", "limited")])])).await;
    assert_eq!(resp.overall_code, Code::Ok as i32);

    // Without a client certificate the handshake is refused.
    let tls = ClientTlsConfig::new().ca_certificate(ca).domain_name("localhost");
    let refused = match endpoint().tls_config(tls).unwrap().connect().await {
        Err(_) => true,
        Ok(channel) => RateLimitServiceClient::new(channel)
            .should_rate_limit(request(vec![descriptor(&[("k", "limited")])]))
            .await
            .is_err(),
    };
    assert!(refused, "a client without a certificate was served");
}
