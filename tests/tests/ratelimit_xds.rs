//! gatehouse-ratelimit with its rules over xDS (`CONFIG_TYPE=GRPC_XDS_SOTW`), as Envoy Gateway
//! runs it: the real binary takes `RateLimitConfig` resources from a fake control plane
//! (gatehouse_testkit's `xds`) while real Envoy (the reference config, `/rl/generic`) sends
//! traffic through it. Good updates are ACKed and applied, bad ones NACKed with the previous
//! rules kept, and the rules outlive a control-plane restart.

use std::time::Duration;

use envoy_types::pb::ratelimit::config::ratelimit::v3::RateLimitUnit;
use gatehouse_testkit::echo::Echo;
use gatehouse_testkit::envoy::{Envoy, default_vars};
use gatehouse_testkit::service::{Kind, Service};
use gatehouse_testkit::xds::{ControlPlane, Snapshot, config, limit};
use gatehouse_testkit::{eventually, free_port};
use serde_json::Value;

/// The reference config's `/rl/generic` sends `generic_key=generic` in domain `gateway`.
/// Counters are per unit window, so each step of a test uses a unit of its own.
fn generic(version: &str, unit: RateLimitUnit, requests: u32) -> Snapshot {
    Snapshot {
        version: version.into(),
        resources: vec![config("gateway", "gateway", vec![limit("generic_key", "generic", unit, requests)])],
    }
}

fn xds_env(plane: &ControlPlane) -> Vec<(&'static str, String)> {
    vec![
        ("CONFIG_TYPE", "GRPC_XDS_SOTW".into()),
        ("CONFIG_GRPC_XDS_SERVER_URL", plane.url()),
        ("CONFIG_GRPC_XDS_NODE_ID", "gatehouse-test".into()),
        ("CONFIG_GRPC_XDS_CLIENT_ADDITIONAL_HEADERS", "x-tenant:blue".into()),
        ("XDS_CLIENT_BACKOFF_INITIAL_INTERVAL", "100ms".into()),
        ("XDS_CLIENT_BACKOFF_MAX_INTERVAL", "400ms".into()),
        ("BACKEND_TYPE", "memory".into()),
        ("HEALTHY_WITH_AT_LEAST_ONE_CONFIG_LOADED", "true".into()),
    ]
}

async fn statuses(envoy: &Envoy, path: &str, n: usize) -> Vec<u16> {
    let client = reqwest::Client::new();
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(client.get(envoy.url(path)).send().await.expect("request").status().as_u16());
    }
    out
}

async fn debug(service: &Service, path: &str) -> String {
    let url = format!("http://127.0.0.1:{}{path}", service.debug_port.expect("debug port"));
    reqwest::get(url).await.expect("debug port").text().await.unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_over_xds_through_envoy_with_acks_nacks_and_a_control_plane_restart() {
    let dir = tempfile::tempdir().unwrap();
    let echo = Echo::start().await;
    let plane = ControlPlane::start().await;
    plane.push(generic("1", RateLimitUnit::Minute, 3));
    let service = Service::start(Kind::Ratelimit, &xds_env(&plane), dir.path()).await;
    let mut vars = default_vars();
    vars.insert("UPSTREAM_PORT".into(), echo.port.to_string());
    vars.insert("RATELIMIT_PORT".into(), service.grpc_port.to_string());
    vars.insert("RATELIMIT_FAILURE_MODE_DENY".into(), "true".into());
    let envoy = Envoy::start(&vars).await;

    // Version 1 arrived before the service served (no FORCE_START): ACKed, node and headers
    // as configured, and in effect for Envoy's traffic.
    let ack = plane.wait_for("the ACK of version 1", |r| r.is_ack_of("1")).await;
    assert_eq!(ack.node_id.as_deref(), Some("gatehouse-test"));
    assert!(ack.headers.contains(&("x-tenant".into(), "blue".into())), "{:?}", ack.headers);
    assert_eq!(statuses(&envoy, "/rl/generic", 4).await, [200, 200, 200, 429]);
    assert!(debug(&service, "/rlconfig").await.starts_with("# xds version: 1\n"));

    // Version 2 changes the limit to 6 an hour: applied and ACKed.
    plane.push(generic("2", RateLimitUnit::Hour, 6));
    plane.wait_for("the ACK of version 2", |r| r.is_ack_of("2")).await;
    assert_eq!(statuses(&envoy, "/rl/generic", 7).await, [200, 200, 200, 200, 200, 200, 429]);

    // Version 3 is invalid (a limit without a unit): NACKed with the reason and the version
    // still in effect; version 2's rules and counters go on.
    let mut bad = generic("3", RateLimitUnit::Day, 100);
    bad.resources[0].descriptors[0].rate_limit.as_mut().unwrap().unit = RateLimitUnit::Unknown as i32;
    plane.push(bad);
    let nack = plane.wait_for("the NACK of version 3", |r| r.error.is_some()).await;
    assert_eq!(nack.version_info, "2", "a NACK names the version still in effect");
    let reason = nack.error.unwrap();
    assert!(reason.contains("xds:gateway:") && reason.contains("unit"), "{reason}");
    assert_eq!(statuses(&envoy, "/rl/generic", 1).await, [429]);
    let status: Value = serde_json::from_str(&debug(&service, "/config-status").await).unwrap();
    assert_eq!(status["xds"]["version"], "2", "{status}");
    assert!(status["xds"]["last_nack"].as_str().is_some_and(|e| e.contains("unit")), "{status}");

    // The control plane goes away mid-traffic: the rules stay, Envoy's answers do not change.
    let port = plane.addr.port();
    drop(plane);
    let during: Vec<u16> = statuses(&envoy, "/rl/generic", 5).await;
    assert_eq!(during, [429; 5], "the rules in effect must outlive the control plane");
    let health = reqwest::get(format!("http://127.0.0.1:{}/healthcheck", service.http_port)).await.unwrap();
    assert_eq!(health.status().as_u16(), 200, "a config is loaded, so the service stays healthy");

    // It comes back (knowing nothing: a new process) with version 4: the client reconnects,
    // says it has version 2, gets 4 and ACKs it.
    let plane = ControlPlane::start_on(port, Some(generic("4", RateLimitUnit::Day, 2))).await;
    let hello = plane.wait_for("the reconnecting client's first request", |r| r.response_nonce.is_empty()).await;
    assert_eq!(hello.version_info, "2");
    plane.wait_for("the ACK of version 4", |r| r.is_ack_of("4")).await;
    assert_eq!(statuses(&envoy, "/rl/generic", 3).await, [200, 200, 429]);
    let status: Value = serde_json::from_str(&debug(&service, "/config-status").await).unwrap();
    assert_eq!(status["xds"]["version"], "4", "{status}");
    assert!(status["xds"]["reconnects"].as_u64().is_some_and(|n| n >= 1), "{status}");
}

/// FORCE_START_WITHOUT_INITIAL_CONFIG serves before any config; with
/// HEALTHY_WITH_AT_LEAST_ONE_CONFIG_LOADED the service reports unhealthy until one arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn force_start_serves_at_once_and_health_follows_the_first_config() {
    let dir = tempfile::tempdir().unwrap();
    let plane = ControlPlane::start().await;
    let mut env = xds_env(&plane);
    env.push(("FORCE_START_WITHOUT_INITIAL_CONFIG", "true".into()));
    env.retain(|(k, _)| *k != "HEALTHY_WITH_AT_LEAST_ONE_CONFIG_LOADED");
    let service = Service::start(Kind::Ratelimit, &env, dir.path()).await;
    // Served with no rules yet; now a second instance that also requires a config.
    let mut strict = env.clone();
    strict.push(("HEALTHY_WITH_AT_LEAST_ONE_CONFIG_LOADED", "true".into()));
    let debug_port = free_port();
    strict.push(("DEBUG_PORT", debug_port.to_string()));
    let http_port = free_port();
    let strict_dir = tempfile::tempdir().unwrap();
    let mut command = std::process::Command::new(gatehouse_testkit::service::bin_dir().join("gatehouse-ratelimit"));
    command
        .env_clear()
        .envs(strict.iter().map(|(k, v)| (*k, v.as_str())))
        .env("GRPC_HOST", "127.0.0.1")
        .env("GRPC_PORT", free_port().to_string())
        .env("HOST", "127.0.0.1")
        .env("PORT", http_port.to_string())
        .env("DEBUG_HOST", "127.0.0.1")
        .stderr(std::fs::File::create(strict_dir.path().join("log")).unwrap());
    // Stopped when dropped, whatever happens below.
    let _strict = gatehouse_testkit::Process::spawn("gatehouse-ratelimit", &mut command).expect("start ratelimit");
    let health = format!("http://127.0.0.1:{http_port}/healthcheck");
    let unhealthy = eventually(Duration::from_secs(10), || {
        let health = health.clone();
        async move { reqwest::get(&health).await.ok().filter(|r| r.status().as_u16() == 500).map(|_| ()) }
    })
    .await;
    assert!(unhealthy.is_some(), "no config yet: /healthcheck must answer 500");
    plane.push(generic("1", RateLimitUnit::Minute, 3));
    let healthy = eventually(Duration::from_secs(10), || {
        let health = health.clone();
        async move { reqwest::get(&health).await.ok().filter(|r| r.status().is_success()).map(|_| ()) }
    })
    .await;
    assert!(healthy.is_some(), "a config arrived: /healthcheck must answer 200");
    plane.wait_for("ACKs of version 1 from both", |r| r.is_ack_of("1")).await;
    assert!(debug(&service, "/rlconfig").await.contains("gateway.generic_key_generic"));
}

/// The container as Envoy Gateway runs it: its exact environment (mTLS to the control plane
/// with one certificate for both directions, TLS on the gRPC port, FORCE_START, statsd off),
/// and the resource Envoy Gateway generates for a `BackendTrafficPolicy` rule with `shared:
/// true` and a `Distinct` header selector (docs/integrations/envoy-gateway.md).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_gateways_environment_over_mtls() {
    let dir = tempfile::tempdir().unwrap();
    let pki = gatehouse_testkit::tls::Pki::generate(dir.path());
    let plane = ControlPlane::start_mtls(&pki).await;
    let path = |p: &std::path::Path| p.display().to_string();
    let env = vec![
        ("REDIS_SOCKET_TYPE", "tcp".to_string()),
        ("BACKEND_TYPE", "memory".into()),
        ("RUNTIME_ROOT", "/data".into()),
        ("RUNTIME_SUBDIRECTORY", "ratelimit".into()),
        ("RUNTIME_IGNOREDOTFILES", "true".into()),
        ("RUNTIME_WATCH_ROOT", "false".into()),
        ("LOG_LEVEL", "info".into()),
        ("USE_STATSD", "false".into()),
        ("CONFIG_TYPE", "GRPC_XDS_SOTW".into()),
        ("CONFIG_GRPC_XDS_SERVER_URL", format!("localhost:{}", plane.addr.port())),
        ("CONFIG_GRPC_XDS_NODE_ID", "envoy-ratelimit".into()),
        ("GRPC_SERVER_USE_TLS", "true".into()),
        ("GRPC_SERVER_TLS_CERT", path(&pki.server_cert)),
        ("GRPC_SERVER_TLS_KEY", path(&pki.server_key)),
        ("GRPC_SERVER_TLS_CA_CERT", path(&pki.ca_cert)),
        ("CONFIG_GRPC_XDS_SERVER_USE_TLS", "true".into()),
        ("CONFIG_GRPC_XDS_CLIENT_TLS_CERT", path(&pki.client_cert)),
        ("CONFIG_GRPC_XDS_CLIENT_TLS_KEY", path(&pki.client_key)),
        ("CONFIG_GRPC_XDS_SERVER_TLS_CACERT", path(&pki.ca_cert)),
        ("FORCE_START_WITHOUT_INITIAL_CONFIG", "true".into()),
        ("XDS_CLIENT_BACKOFF_INITIAL_INTERVAL", "100ms".into()),
    ];
    let service = Service::start(Kind::Ratelimit, &env, dir.path()).await;
    let rule = "gatehouse-demo/orders-ratelimit/rule/0";
    let mut first = limit(rule, rule, RateLimitUnit::Minute, 5);
    first.rate_limit = None;
    first.descriptors = vec![limit("rule-0-match-0", "", RateLimitUnit::Minute, 5)];
    plane.push(Snapshot {
        version: "eg-1".into(),
        resources: vec![config("gatehouse-demo/orders-ratelimit", "gatehouse-demo/orders-ratelimit", vec![first])],
    });
    let ack = plane.wait_for("the ACK over mTLS", |r| r.is_ack_of("eg-1")).await;
    assert_eq!(ack.node_id.as_deref(), Some("envoy-ratelimit"));
    let rules = debug(&service, "/rlconfig").await;
    assert!(
        rules.contains(
            "gatehouse-demo/orders-ratelimit.gatehouse-demo/orders-ratelimit/rule/0_gatehouse-demo/orders-ratelimit/rule/0.rule-0-match-0: unit=MINUTE requests_per_unit=5"
        ),
        "{rules}"
    );
}
