//! gatehouse-ratelimit end to end: HTTP requests through real Envoy (the reference config),
//! whose ratelimit filter calls the service, backed by memory, Redis or Redis Cluster.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use gatehouse_common::config::Env;
use gatehouse_common::server::Shutdown;
use gatehouse_ratelimit::clock::Clock;
use gatehouse_ratelimit::settings::Settings;
use gatehouse_ratelimit::{App, Listeners};
use gatehouse_testkit::echo::Echo;
use gatehouse_testkit::envoy::{Envoy, default_vars};
use gatehouse_testkit::eventually;
use gatehouse_testkit::redis::{RedisCluster, RedisSentinel, RedisServer};
use tokio::net::TcpListener;

/// One gatehouse-ratelimit replica, in process, on loopback ports.
struct Replica {
    grpc_port: u16,
    debug_port: u16,
    shutdown: Shutdown,
}

impl Replica {
    async fn start(env: &[(&str, String)]) -> Replica {
        let settings = Settings::from_env(&Env::from_pairs(env.iter().cloned())).expect("settings");
        let grpc = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let debug = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let grpc_port = grpc.local_addr().unwrap().port();
        let debug_port = debug.local_addr().unwrap().port();
        let app = App::build(settings, Clock::System).await.expect("build app");
        let shutdown = Shutdown::new();
        let listeners = Listeners { grpc: grpc.into(), http: Some(http), debug: Some(debug), prometheus: None };
        tokio::spawn(app.serve(listeners, shutdown.clone()));
        Replica { grpc_port, debug_port, shutdown }
    }

    async fn debug(&self, path: &str) -> String {
        let url = format!("http://127.0.0.1:{}{path}", self.debug_port);
        reqwest::get(url).await.unwrap().text().await.unwrap()
    }

    /// One Prometheus sample, e.g. `ratelimit_service_rate_limit_shadow_mode_total{domain="gateway",key="generic_key_shadow"}`.
    async fn metric(&self, sample: &str) -> Option<f64> {
        let text = self.debug("/metrics").await;
        text.lines().find_map(|l| l.strip_prefix(sample)?.strip_prefix(' ')?.trim().parse().ok())
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.shutdown.trigger();
    }
}

/// A rule directory laid out as envoyproxy/ratelimit expects: RUNTIME_ROOT/config/*.yaml.
struct RuleDir {
    root: tempfile::TempDir,
}

impl RuleDir {
    fn new(yaml: &str) -> RuleDir {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("current/config")).unwrap();
        let dir = RuleDir { root };
        dir.write("gateway.yaml", yaml);
        dir
    }

    fn runtime_root(&self) -> String {
        self.root.path().join("current").display().to_string()
    }

    fn path(&self, name: &str) -> PathBuf {
        self.root.path().join("current/config").join(name)
    }

    /// Replaces a file atomically, as editors and config management tools do.
    fn write(&self, name: &str, yaml: &str) {
        let tmp = self.root.path().join(format!(".{name}.tmp"));
        std::fs::write(&tmp, yaml).unwrap();
        std::fs::rename(&tmp, self.path(name)).unwrap();
    }
}

fn env(rules: &RuleDir, extra: &[(&str, &str)]) -> Vec<(&'static str, String)> {
    let mut env: Vec<(&'static str, String)> = vec![
        ("RUNTIME_ROOT", rules.runtime_root()),
        ("LIMIT_RESPONSE_HEADERS_ENABLED", "true".into()),
        ("LOG_LEVEL", "warn".into()),
    ];
    for (k, v) in extra {
        let k: &'static str = Box::leak(k.to_string().into_boxed_str());
        env.push((k, v.to_string()));
    }
    env
}

async fn envoy_for(replica_grpc_port: u16, echo: &Echo, failure_mode_deny: bool) -> Envoy {
    let mut vars: BTreeMap<String, String> = default_vars();
    vars.insert("UPSTREAM_PORT".into(), echo.port.to_string());
    vars.insert("RATELIMIT_PORT".into(), replica_grpc_port.to_string());
    vars.insert("RATELIMIT_FAILURE_MODE_DENY".into(), failure_mode_deny.to_string());
    Envoy::start(&vars).await
}

struct Reply {
    status: u16,
    headers: reqwest::header::HeaderMap,
}

async fn get(client: &reqwest::Client, url: &str, headers: &[(&str, &str)]) -> Reply {
    let mut req = client.get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.expect("request through envoy");
    Reply { status: resp.status().as_u16(), headers: resp.headers().clone() }
}

fn header<'a>(reply: &'a Reply, name: &str) -> &'a str {
    reply.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
}

const ROUTE_RULES: &str = r#"
domain: gateway
descriptors:
  - key: remote_address
    rate_limit: { unit: minute, requests_per_unit: 2 }
  - key: api_key
    rate_limit: { unit: minute, requests_per_unit: 2 }
  - key: generic_key
    value: generic
    rate_limit: { unit: minute, requests_per_unit: 2 }
  - key: header_match
    value: premium
    rate_limit: { unit: minute, requests_per_unit: 2 }
  - key: generic_key
    value: nested
    descriptors:
      - key: user
        rate_limit: { unit: minute, requests_per_unit: 2 }
  - key: generic_key
    value: shadow
    shadow_mode: true
    rate_limit: { unit: minute, requests_per_unit: 1 }
  - key: generic_key
    value: multi_a
    rate_limit: { unit: minute, requests_per_unit: 100 }
  - key: generic_key
    value: multi_b
    rate_limits:
      - { unit: second, requests_per_unit: 50 }
      - { unit: minute, requests_per_unit: 3 }
  - key: generic_key
    value: default
    rate_limit: { unit: minute, requests_per_unit: 1000 }
"#;

/// Third request on each route is refused with 429 and the service's headers.
#[tokio::test]
async fn route_actions_are_limited_through_envoy() {
    let echo = Echo::start().await;
    let rules = RuleDir::new(ROUTE_RULES);
    let replica = Replica::start(&env(&rules, &[])).await;
    let envoy = envoy_for(replica.grpc_port, &echo, false).await;
    let client = reqwest::Client::new();

    let cases: &[(&str, &[(&str, &str)])] = &[
        ("/rl/remote", &[]),
        ("/rl/header", &[("x-api-key", "k-123")]),
        ("/rl/generic", &[]),
        ("/rl/match", &[("x-plan", "premium")]),
        ("/rl/nested", &[("x-user", "alice")]),
    ];
    for (path, headers) in cases {
        let url = envoy.url(path);
        let first = get(&client, &url, headers).await;
        assert_eq!(first.status, 200, "{path}: first request");
        assert_eq!(header(&first, "ratelimit-limit"), "2", "{path}");
        assert_eq!(header(&first, "ratelimit-remaining"), "1", "{path}");
        assert_eq!(get(&client, &url, headers).await.status, 200, "{path}: second request");
        let third = get(&client, &url, headers).await;
        assert_eq!(third.status, 429, "{path}: third request");
        assert_eq!(header(&third, "ratelimit-limit"), "2", "{path}");
        assert_eq!(header(&third, "ratelimit-remaining"), "0", "{path}");
        let reset: u64 = header(&third, "ratelimit-reset").parse().unwrap_or(0);
        assert!((1..=60).contains(&reset), "{path}: reset {reset}");
        assert_eq!(header(&third, "x-envoy-ratelimited"), "true", "{path}");
    }

    // Other values get their own counters: another API key, another user.
    assert_eq!(get(&client, &envoy.url("/rl/header"), &[("x-api-key", "k-456")]).await.status, 200);
    assert_eq!(get(&client, &envoy.url("/rl/nested"), &[("x-user", "bob")]).await.status, 200);
    // Without x-plan: premium, header_value_match produces no descriptor: not limited.
    for _ in 0..3 {
        assert_eq!(get(&client, &envoy.url("/rl/match"), &[]).await.status, 200);
    }

    // Two descriptors in one call; multi_b has two limits and the per-minute one decides.
    let statuses: Vec<u16> = {
        let mut v = Vec::new();
        for _ in 0..4 {
            v.push(get(&client, &envoy.url("/rl/multi"), &[]).await.status);
        }
        v
    };
    assert_eq!(statuses, vec![200, 200, 200, 429]);
    let stat = envoy.stat("cluster.upstream.ratelimit.over_limit").await.unwrap_or(0);
    assert!(stat >= 6, "envoy counted over-limit responses: {stat}");
}

#[tokio::test]
async fn shadow_mode_lets_traffic_through_while_counting() {
    let echo = Echo::start().await;
    let rules = RuleDir::new(ROUTE_RULES);
    let replica = Replica::start(&env(&rules, &[])).await;
    let envoy = envoy_for(replica.grpc_port, &echo, false).await;
    let client = reqwest::Client::new();
    for _ in 0..4 {
        assert_eq!(get(&client, &envoy.url("/rl/shadow"), &[]).await.status, 200);
    }
    let labels = r#"{domain="gateway",key="generic_key_shadow"}"#;
    let shadowed = replica.metric(&format!("ratelimit_service_rate_limit_shadow_mode_total{labels}")).await;
    let total = replica.metric(&format!("ratelimit_service_rate_limit_total_hits_total{labels}")).await;
    assert_eq!((shadowed, total), (Some(3.0), Some(4.0)));
}

#[tokio::test]
async fn config_changes_apply_without_restart_and_bad_files_are_rejected() {
    let echo = Echo::start().await;
    let rules = RuleDir::new(ROUTE_RULES);
    let replica = Replica::start(&env(&rules, &[])).await;
    let envoy = envoy_for(replica.grpc_port, &echo, false).await;
    let client = reqwest::Client::new();
    let url = envoy.url("/anything");
    assert_eq!(get(&client, &url, &[]).await.status, 200);

    // Tighten the catch-all route's limit to 1 per minute.
    rules.write("gateway.yaml", &ROUTE_RULES.replace("requests_per_unit: 1000", "requests_per_unit: 1"));
    let limited = eventually(Duration::from_secs(10), || {
        let client = client.clone();
        let url = url.clone();
        async move { (get(&client, &url, &[]).await.status == 429).then_some(()) }
    })
    .await;
    assert!(limited.is_some(), "the new limit applied without a restart");

    // A broken file is rejected, named with its line, and the last good rules keep serving.
    rules.write(
        "broken.yaml",
        "domain: other\ndescriptors:\n  - key: a\n    rate_limit: { unit: fortnight, requests_per_unit: 1 }\n",
    );
    let status = eventually(Duration::from_secs(10), || async {
        let s = replica.debug("/config-status").await;
        s.contains("fortnight").then_some(s)
    })
    .await
    .expect("rejection visible on /config-status");
    assert!(status.contains("broken.yaml:4:"), "{status}");
    assert_eq!(get(&client, &url, &[]).await.status, 429, "old rules still apply");
    assert!(replica.metric("ratelimit_service_config_load_error_total").await >= Some(1.0));
    assert!(replica.debug("/rlconfig").await.contains("gateway.generic_key_default: unit=MINUTE requests_per_unit=1,"));
}

/// Kills Redis under traffic: every call is answered within REDIS_TIMEOUT by the configured
/// failure mode, and the service recovers by itself when Redis is back.
#[tokio::test]
async fn redis_outage_follows_the_failure_mode_and_recovers() {
    let echo = Echo::start().await;
    let mut redis = RedisServer::start();
    let rules = RuleDir::new(ROUTE_RULES);
    let client = reqwest::Client::new();
    for (mode, envoy_deny, expected_during_outage) in [("closed", true, 500), ("open", true, 200)] {
        let replica = Replica::start(&env(
            &rules,
            &[("REDIS_URL", &redis.addr()), ("REDIS_TIMEOUT", "200ms"), ("BACKEND_FAILURE_MODE", mode)],
        ))
        .await;
        let envoy = envoy_for(replica.grpc_port, &echo, envoy_deny).await;
        let url = envoy.url("/rl/multi");
        assert_eq!(get(&client, &url, &[]).await.status, 200, "{mode}: before the outage");

        redis.stop();
        for _ in 0..5 {
            let started = Instant::now();
            let status = get(&client, &url, &[]).await.status;
            let took = started.elapsed();
            assert_eq!(status, expected_during_outage, "{mode}: during the outage");
            assert!(took < Duration::from_millis(600), "{mode}: answered in {took:?}");
        }
        redis.restart();
        let recovered = eventually(Duration::from_secs(15), || {
            let client = client.clone();
            let url = url.clone();
            async move { (get(&client, &url, &[]).await.status == 200).then_some(()) }
        })
        .await;
        assert!(recovered.is_some(), "{mode}: recovered after Redis restarted");
        // Counting works again: multi_b allows 3 per minute, and this window has seen 1 or 2.
        let mut statuses = Vec::new();
        for _ in 0..3 {
            statuses.push(get(&client, &url, &[]).await.status);
        }
        assert!(statuses.contains(&429), "{mode}: limited again: {statuses:?}");
        redis.cli(&["FLUSHALL"]);
    }
}

/// Two replicas, each behind its own Envoy, sharing one Redis (or Cluster): 1500 concurrent
/// requests at a limit of 1000 admit exactly 1000.
async fn exactly_the_limit_across_replicas(redis_env: &[(&str, &str)]) {
    let echo = Echo::start().await;
    let rules = RuleDir::new(&ROUTE_RULES.replace(
        "value: default\n    rate_limit: { unit: minute, requests_per_unit: 1000 }",
        "value: default\n    rate_limit: { unit: hour, requests_per_unit: 1000 }",
    ));
    let a = Replica::start(&env(&rules, redis_env)).await;
    let b = Replica::start(&env(&rules, redis_env)).await;
    let envoy_a = envoy_for(a.grpc_port, &echo, true).await;
    let envoy_b = envoy_for(b.grpc_port, &echo, true).await;
    let client = reqwest::Client::builder().pool_max_idle_per_host(64).build().unwrap();
    let mut tasks = Vec::new();
    for worker in 0..30 {
        let url = if worker % 2 == 0 { envoy_a.url("/hammer") } else { envoy_b.url("/hammer") };
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let mut counts = [0u32; 3];
            for _ in 0..50 {
                match get(&client, &url, &[]).await.status {
                    200 => counts[0] += 1,
                    429 => counts[1] += 1,
                    _ => counts[2] += 1,
                }
            }
            counts
        }));
    }
    let mut totals = [0u32; 3];
    for t in tasks {
        let c = t.await.unwrap();
        for i in 0..3 {
            totals[i] += c[i];
        }
    }
    assert_eq!(totals, [1000, 500, 0], "[admitted, limited, errors]");
}

#[tokio::test]
async fn two_replicas_on_one_redis_admit_exactly_the_limit() {
    let redis = RedisServer::start();
    exactly_the_limit_across_replicas(&[("REDIS_URL", &redis.addr())]).await;
}

#[tokio::test]
async fn two_replicas_on_redis_cluster_admit_exactly_the_limit() {
    let cluster = RedisCluster::start();
    exactly_the_limit_across_replicas(&[("REDIS_URL", &cluster.addrs()), ("REDIS_TYPE", "cluster")]).await;
}

#[tokio::test]
async fn two_replicas_through_redis_sentinel_admit_exactly_the_limit() {
    let sentinel = RedisSentinel::start();
    exactly_the_limit_across_replicas(&[("REDIS_URL", &sentinel.url()), ("REDIS_TYPE", "sentinel")]).await;
}

/// REDIS_SENTINEL_AUTH: sentinels with their own password, apart from the master's.
#[tokio::test]
async fn two_replicas_through_password_protected_sentinels_admit_exactly_the_limit() {
    let sentinel = RedisSentinel::start_with_password("sentinel-secret");
    exactly_the_limit_across_replicas(&[
        ("REDIS_URL", &sentinel.url()),
        ("REDIS_TYPE", "sentinel"),
        ("REDIS_SENTINEL_AUTH", "sentinel-secret"),
    ])
    .await;
}
