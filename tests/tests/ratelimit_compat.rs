//! envoyproxy/ratelimit's remaining options, each through real Envoy (the reference config)
//! and the real gatehouse-ratelimit binary: gRPC on a Unix socket with statsd output, mTLS
//! with GRPC_CLIENT_TLS_SAN and a server certificate rotated under a running service, a second
//! Redis for per-second limits, and the rule format's newer features (wildcards inside values,
//! `quota_mode`, descriptor `metadata`).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use gatehouse_testkit::echo::Echo;
use gatehouse_testkit::envoy::{Envoy, default_vars, ratelimit_mtls};
use gatehouse_testkit::eventually;
use gatehouse_testkit::redis::RedisServer;
use gatehouse_testkit::service::{Kind, Service};
use gatehouse_testkit::tls::Pki;
use tokio::net::UdpSocket;

/// The ratelimit cluster's endpoint in the rendered reference config, found by a host no other
/// endpoint has, so that an edit can replace it (the Unix socket test).
const ENDPOINT_HOST: &str = "127.0.0.254";

fn endpoint(port: u16) -> String {
    format!("socket_address:\n                address: {ENDPOINT_HOST}\n                port_value: {port}")
}

/// Writes `yaml` as envoyproxy/ratelimit lays rules out (RUNTIME_ROOT/config/*.yaml) and
/// returns the RUNTIME_ROOT.
fn rules(dir: &Path, yaml: &str) -> String {
    std::fs::create_dir_all(dir.join("runtime/config")).unwrap();
    std::fs::write(dir.join("runtime/config/gateway.yaml"), yaml).unwrap();
    dir.join("runtime").display().to_string()
}

fn vars(echo: &Echo, ratelimit_port: u16) -> BTreeMap<String, String> {
    let mut vars = default_vars();
    vars.insert("UPSTREAM_PORT".into(), echo.port.to_string());
    vars.insert("RATELIMIT_PORT".into(), ratelimit_port.to_string());
    // A service Envoy cannot reach answers 500, not a silent 200.
    vars.insert("RATELIMIT_FAILURE_MODE_DENY".into(), "true".into());
    vars
}

async fn statuses(envoy: &Envoy, path: &str, headers: &[(&str, &str)], n: usize) -> Vec<u16> {
    let client = reqwest::Client::new();
    let mut out = Vec::new();
    for _ in 0..n {
        let mut request = client.get(envoy.url(path));
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        out.push(request.send().await.expect("request through envoy").status().as_u16());
    }
    out
}

/// GRPC_UDS: Envoy's ratelimit cluster reaches the service over a Unix socket (a `pipe`
/// address), and USE_STATSD reports what it decided to a statsd socket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_over_a_unix_socket_with_statsd() {
    let dir = tempfile::tempdir().unwrap();
    let echo = Echo::start().await;
    let statsd = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let socket = dir.path().join("ratelimit.sock");
    let root = rules(
        dir.path(),
        "domain: gateway\ndescriptors:\n  - key: generic_key\n    value: generic\n    rate_limit: { unit: minute, requests_per_unit: 2 }\n",
    );
    let env = [
        ("RUNTIME_ROOT", root),
        ("GRPC_UDS", socket.display().to_string()),
        ("USE_STATSD", "true".into()),
        ("STATSD_HOST", "127.0.0.1".into()),
        ("STATSD_PORT", statsd.local_addr().unwrap().port().to_string()),
        ("STATS_FLUSH_INTERVAL", "100ms".into()),
    ];
    let mut service = Service::start(Kind::Ratelimit, &env, dir.path()).await;
    let pipe = format!("pipe:\n                path: {}", socket.display());
    let mut vars = vars(&echo, 1);
    vars.insert("RATELIMIT_HOST".into(), ENDPOINT_HOST.into());
    let envoy = Envoy::start_edited(&vars, |config| config.replace(&endpoint(1), &pipe)).await;

    assert_eq!(statuses(&envoy, "/rl/generic", &[], 3).await, [200, 200, 429]);

    let mut over_limit = 0;
    let mut buf = vec![0u8; 65536];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while over_limit == 0 {
        let n = tokio::time::timeout_at(deadline, statsd.recv(&mut buf)).await.expect("a statsd line").unwrap();
        for line in std::str::from_utf8(&buf[..n]).unwrap().lines() {
            if let Some(value) =
                line.strip_prefix("ratelimit.service.rate_limit.gateway.generic_key_generic.over_limit:")
            {
                over_limit += value.trim_end_matches("|c").parse::<u64>().unwrap();
            }
        }
    }
    assert_eq!(over_limit, 1);

    // The socket goes with the service, so that the next start finds its path free.
    service.signal("TERM");
    assert!(service.wait_exit(Duration::from_secs(10)).await.is_some_and(|s| s.success()));
    assert!(!socket.exists(), "the socket file is removed on exit");
}

/// mTLS between Envoy and the service. GRPC_CLIENT_TLS_SAN refuses a client certificate
/// without the name (Envoy's calls fail: 500 with failure_mode_deny). The service's
/// certificate is rotated while it runs: Envoy, which insists on the new certificate's name,
/// is refused until the files change, then served on its next connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_with_a_client_san_and_a_certificate_rotated_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let echo = Echo::start().await;
    let pki = Pki::generate(dir.path());
    let (envoy_cert, envoy_key) =
        pki.issue("envoy", "subjectAltName=DNS:envoy.gatehouse.test\nextendedKeyUsage=clientAuth");
    let (rotated_cert, rotated_key) =
        pki.issue("rotated", "subjectAltName=DNS:ratelimit.gatehouse.test,IP:127.0.0.1\nextendedKeyUsage=serverAuth");
    // The files the service reads: the first certificate is `localhost`'s.
    let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    std::fs::copy(&pki.server_cert, &cert).unwrap();
    std::fs::copy(&pki.server_key, &key).unwrap();
    let root = rules(
        dir.path(),
        "domain: gateway\ndescriptors:\n  - key: generic_key\n    value: generic\n    rate_limit: { unit: minute, requests_per_unit: 2 }\n",
    );
    let path = |p: &Path| p.display().to_string();
    let env = [
        ("RUNTIME_ROOT", root),
        ("GRPC_SERVER_USE_TLS", "true".into()),
        ("GRPC_SERVER_TLS_CERT", path(&cert)),
        ("GRPC_SERVER_TLS_KEY", path(&key)),
        ("GRPC_CLIENT_TLS_CACERT", path(&pki.ca_cert)),
        ("GRPC_CLIENT_TLS_SAN", "envoy.gatehouse.test".into()),
    ];
    let service = Service::start(Kind::Ratelimit, &env, dir.path()).await;

    let vars = vars(&echo, service.grpc_port);
    let named = Envoy::start_edited(
        &vars,
        ratelimit_mtls((&envoy_cert, &envoy_key), &pki.ca_cert, Some("ratelimit.gatehouse.test")),
    )
    .await;
    let unnamed =
        Envoy::start_edited(&vars, ratelimit_mtls((&pki.client_cert, &pki.client_key), &pki.ca_cert, None)).await;

    // The SPIFFE-only client certificate lacks envoy.gatehouse.test: refused.
    assert_eq!(statuses(&unnamed, "/rl/generic", &[], 2).await, [500, 500]);
    // The right client certificate, but the service still presents `localhost`'s.
    assert_eq!(statuses(&named, "/rl/generic", &[], 2).await, [500, 500]);

    std::fs::copy(&rotated_cert, &cert).unwrap();
    std::fs::copy(&rotated_key, &key).unwrap();
    let served = eventually(Duration::from_secs(10), || async {
        (statuses(&named, "/rl/generic", &[], 1).await == [200]).then_some(())
    })
    .await;
    assert!(served.is_some(), "the rotated certificate is presented without a restart");
    assert_eq!(statuses(&named, "/rl/generic", &[], 2).await, [200, 429]);
    assert_eq!(statuses(&unnamed, "/rl/generic", &[], 1).await, [500], "the SAN check outlives the reload");
}

/// REDIS_PERSECOND: limits whose unit is SECOND are counted in the second Redis, the others
/// in REDIS_URL's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_second_limits_live_in_their_own_redis() {
    let dir = tempfile::tempdir().unwrap();
    let echo = Echo::start().await;
    let (main, per_second) = (RedisServer::start(), RedisServer::start());
    let root = rules(
        dir.path(),
        r#"domain: gateway
descriptors:
  - key: generic_key
    value: generic
    rate_limit: { unit: second, requests_per_unit: 1000 }
  - key: api_key
    rate_limit: { unit: minute, requests_per_unit: 2 }
"#,
    );
    let env = [
        ("RUNTIME_ROOT", root),
        ("REDIS_URL", main.addr()),
        ("REDIS_PERSECOND", "true".into()),
        ("REDIS_PERSECOND_URL", per_second.addr()),
    ];
    let service = Service::start(Kind::Ratelimit, &env, dir.path()).await;
    let envoy = Envoy::start(&vars(&echo, service.grpc_port)).await;

    assert_eq!(statuses(&envoy, "/rl/generic", &[], 3).await, [200; 3]);
    assert_eq!(statuses(&envoy, "/rl/header", &[("x-api-key", "k1")], 3).await, [200, 200, 429]);
    let keys = |redis: &RedisServer| {
        let mut keys: Vec<String> = redis.cli(&["--scan"]).unwrap_or_default().lines().map(String::from).collect();
        keys.sort();
        keys
    };
    let (in_main, in_per_second) = (keys(&main), keys(&per_second));
    assert!(
        in_per_second.iter().all(|k| k.starts_with("gateway_generic_key_generic_")) && !in_per_second.is_empty(),
        "{in_per_second:?}"
    );
    assert!(in_main.iter().all(|k| k.starts_with("gateway_api_key_k1_")) && !in_main.is_empty(), "{in_main:?}");
}

/// The rule format's newer features through Envoy: a wildcard inside a value
/// (`team-*-key-*`), `quota_mode` over two descriptors of one request (refused only when both
/// are spent), and a rule's `metadata` in the dynamic metadata Envoy gets back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wildcards_inside_values_quota_mode_and_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let echo = Echo::start().await;
    let root = rules(
        dir.path(),
        r#"domain: gateway
descriptors:
  - key: api_key
    value: team-*-key-*
    rate_limit: { unit: minute, requests_per_unit: 2 }
    metadata:
      plan: teams
      limits: { per_minute: 2 }
  - key: generic_key
    value: multi_a
    quota_mode: true
    rate_limit: { unit: minute, requests_per_unit: 1 }
  - key: generic_key
    value: multi_b
    quota_mode: true
    rate_limit: { unit: minute, requests_per_unit: 2 }
"#,
    );
    let env = [("RUNTIME_ROOT", root), ("RESPONSE_DYNAMIC_METADATA", "true".into())];
    let service = Service::start(Kind::Ratelimit, &env, dir.path()).await;
    // The ratelimit filter's dynamic metadata, echoed in a response header of /rl/header.
    let echo_metadata = |config: String| {
        config.replacen(
            "              - match: { prefix: /rl/header }\n",
            "              - match: { prefix: /rl/header }\n                response_headers_to_add:\n                - header: { key: x-rl-metadata, value: \"%DYNAMIC_METADATA(envoy.filters.http.ratelimit:metadata)%\" }\n",
            1,
        )
    };
    let envoy = Envoy::start_edited(&vars(&echo, service.grpc_port), echo_metadata).await;

    // Each key matching the pattern has its own counter; other keys match nothing.
    let team = [("x-api-key", "team-blue-key-1")];
    assert_eq!(statuses(&envoy, "/rl/header", &team, 3).await, [200, 200, 429]);
    assert_eq!(statuses(&envoy, "/rl/header", &[("x-api-key", "team-red-key-9")], 3).await, [200, 200, 429]);
    assert_eq!(statuses(&envoy, "/rl/header", &[("x-api-key", "team-blue-kez-1")], 3).await, [200; 3]);

    let response = reqwest::Client::new()
        .get(envoy.url("/rl/header"))
        .header("x-api-key", "team-green-key-2")
        .send()
        .await
        .unwrap();
    let metadata = response.headers().get("x-rl-metadata").expect("metadata header").to_str().unwrap();
    let metadata: serde_json::Value = serde_json::from_str(metadata).unwrap();
    assert_eq!(metadata["plan"], "teams", "{metadata}");
    assert_eq!(metadata["limits"]["per_minute"].as_f64(), Some(2.0), "{metadata}");

    // multi_a has 1, multi_b 2: the second request passes on multi_b's quota alone.
    assert_eq!(statuses(&envoy, "/rl/multi", &[], 3).await, [200, 200, 429]);
}

/// REDIS_HEALTH_CHECK_ACTIVE_CONNECTION: while Redis does not answer, the service reports
/// itself unhealthy on `/healthcheck` and to Envoy's gRPC health checks, and healthy again
/// once Redis is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_follows_redis_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let echo = Echo::start().await;
    let mut redis = RedisServer::start();
    let root = rules(
        dir.path(),
        "domain: gateway\ndescriptors:\n  - key: generic_key\n    value: generic\n    rate_limit: { unit: minute, requests_per_unit: 100 }\n",
    );
    let env =
        [("RUNTIME_ROOT", root), ("REDIS_URL", redis.addr()), ("REDIS_HEALTH_CHECK_ACTIVE_CONNECTION", "true".into())];
    let service = Service::start(Kind::Ratelimit, &env, dir.path()).await;
    let envoy = Envoy::start(&vars(&echo, service.grpc_port)).await;
    let health = format!("http://127.0.0.1:{}/healthcheck", service.http_port);
    let follows = |status: u16, envoy_healthy: u64| {
        let (health, envoy) = (health.clone(), &envoy);
        async move {
            eventually(Duration::from_secs(10), || async {
                let answer = reqwest::get(&health).await.ok()?.status().as_u16();
                let healthy = envoy.stat("cluster.gatehouse_ratelimit.membership_healthy").await?;
                (answer == status && healthy == envoy_healthy).then_some(())
            })
            .await
            .is_some()
        }
    };

    assert!(follows(200, 1).await, "healthy while Redis answers");
    assert_eq!(statuses(&envoy, "/rl/generic", &[], 1).await, [200]);
    redis.stop();
    assert!(follows(500, 0).await, "unhealthy, for /healthcheck and Envoy, while Redis is down");
    redis.restart();
    assert!(follows(200, 1).await, "healthy again once Redis is back");
    assert_eq!(statuses(&envoy, "/rl/generic", &[], 1).await, [200]);
}
