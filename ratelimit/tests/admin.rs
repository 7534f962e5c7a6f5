//! The admin API in process: `App::serve` on loopback with ADMIN_API_ENABLED, ShouldRateLimit
//! calls to make counters, then `RateLimitAdminService` over gRPC and `/admin/*` on the debug
//! port. Every behaviour runs against the memory store and Redis (`every_backend!`); the
//! per-second split runs against two Redis servers.

mod support;

use std::net::SocketAddr;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code as RlCode;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use gatehouse_common::server::Shutdown;
use gatehouse_ratelimit::admin::proto::rate_limit_admin_service_client::RateLimitAdminServiceClient;
use gatehouse_ratelimit::admin::proto::{
    Algorithm, Counter, Entry, GetCountersRequest, ListLimitsRequest, ResetCountersRequest, Unit,
};
use gatehouse_ratelimit::clock::Clock;
use gatehouse_ratelimit::{App, Listeners};
use gatehouse_testkit::redis::RedisServer;
use gatehouse_testkit::tls::Pki;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

const RULES: &str = r#"
domain: shop
descriptors:
  - key: user
    rate_limit: { unit: minute, requests_per_unit: 2 }
  # A key whose name starts like another's: `user_` is a text prefix of its keys.
  - key: user_id
    rate_limit: { unit: minute, requests_per_unit: 100 }
  - key: plan
    value: gold
    descriptors:
      - key: user
        rate_limits:
          - { unit: minute, requests_per_unit: 5, algorithm: sliding_window }
          - { unit: hour, requests_per_unit: 10, algorithm: token_bucket }
  - key: path
    value: /api_*
    share_threshold: true
    rate_limit: { unit: second, requests_per_unit: 1 }
  - key: free
    rate_limit: { unlimited: true }
"#;

#[derive(Clone, Copy, Debug)]
enum Backend {
    Memory,
    Redis,
    /// REDIS_PERSECOND: unit-SECOND limits in a second Redis.
    RedisPerSecond,
}

/// A served App with the admin API, on a manual clock 10 s into an hour.
struct Harness {
    grpc: SocketAddr,
    debug: SocketAddr,
    clock: Clock,
    shutdown: Shutdown,
    _redis: Vec<RedisServer>,
    _rules: tempfile::TempDir,
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.shutdown.trigger();
    }
}

/// A minute boundary an hour ahead (Redis TTLs stay meaningful), plus 10 s.
fn clock() -> Clock {
    let now = Clock::System.now_ms();
    Clock::manual(now - now % 3_600_000 + 3_600_000 + 10_000)
}

impl Harness {
    async fn start(backend: Backend) -> Harness {
        Harness::start_with(backend, &[("ADMIN_API_ENABLED", "true")]).await
    }

    async fn start_with(backend: Backend, extra: &[(&str, &str)]) -> Harness {
        audit_log();
        let mut redis = Vec::new();
        let mut env: Vec<(String, String)> = Vec::new();
        match backend {
            Backend::Memory => env.push(("BACKEND_TYPE".into(), "memory".into())),
            Backend::Redis | Backend::RedisPerSecond => {
                redis.push(RedisServer::start());
                env.push(("BACKEND_TYPE".into(), "redis".into()));
                env.push(("REDIS_URL".into(), redis[0].addr()));
                if let Backend::RedisPerSecond = backend {
                    redis.push(RedisServer::start());
                    env.push(("REDIS_PERSECOND".into(), "true".into()));
                    env.push(("REDIS_PERSECOND_URL".into(), redis[1].addr()));
                }
            }
        }
        env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let (settings, dir) = support::settings(RULES, &env);
        let grpc = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let debug = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (grpc_addr, debug_addr) = (grpc.local_addr().unwrap(), debug.local_addr().unwrap());
        let clock = clock();
        let app = App::build(settings, clock.clone()).await.unwrap();
        let shutdown = Shutdown::new();
        let listeners = Listeners { grpc: grpc.into(), http: None, debug: Some(debug), prometheus: None };
        tokio::spawn(app.serve(listeners, shutdown.clone()));
        Harness { grpc: grpc_addr, debug: debug_addr, clock, shutdown, _redis: redis, _rules: dir }
    }

    async fn channel(&self) -> Channel {
        let url = format!("http://{}", self.grpc);
        Channel::from_shared(url).unwrap().connect().await.unwrap()
    }

    async fn admin(&self) -> RateLimitAdminServiceClient<Channel> {
        RateLimitAdminServiceClient::new(self.channel().await)
    }

    /// One ShouldRateLimit call in `shop` with one descriptor.
    async fn hit(&self, entries: &[(&str, &str)]) -> RlCode {
        let mut client = RateLimitServiceClient::new(self.channel().await);
        let response = support::call(&mut client, support::request("shop", entries)).await.unwrap();
        RlCode::try_from(response.overall_code).unwrap()
    }

    /// Every counter of `shop` under `entries`, all pages of `page_size` read; each page's
    /// counters sorted by store key.
    async fn counters(&self, entries: &[(&str, &str)], page_size: u32) -> (Vec<Counter>, usize) {
        let mut admin = self.admin().await;
        let (mut counters, mut pages, mut token) = (Vec::new(), 0, String::new());
        loop {
            let page = admin
                .get_counters(GetCountersRequest {
                    domain: "shop".into(),
                    entries: entries_of(entries),
                    page_size,
                    page_token: token,
                })
                .await
                .unwrap()
                .into_inner();
            pages += 1;
            let mut listed = page.counters;
            listed.sort_by(|a, b| a.store_key.cmp(&b.store_key));
            counters.extend(listed);
            if page.next_page_token.is_empty() {
                return (counters, pages);
            }
            token = page.next_page_token;
            assert!(pages < 1_000, "paging never ends");
        }
    }

    async fn debug_get(&self, path: &str) -> (u16, Value) {
        let response = reqwest::get(format!("http://{}{path}", self.debug)).await.unwrap();
        (response.status().as_u16(), response.json().await.unwrap_or(Value::Null))
    }

    async fn debug_post(&self, path: &str, body: &str) -> (u16, Value) {
        let response =
            reqwest::Client::new().post(format!("http://{}{path}", self.debug)).body(body.to_string()).send().await;
        let response = response.unwrap();
        (response.status().as_u16(), response.json().await.unwrap_or(Value::Null))
    }
}

fn entries_of(entries: &[(&str, &str)]) -> Vec<Entry> {
    entries.iter().map(|(k, v)| Entry { key: k.to_string(), value: v.to_string() }).collect()
}

fn reset_request(entries: &[(&str, &str)]) -> ResetCountersRequest {
    ResetCountersRequest { domain: "shop".into(), entries: entries_of(entries) }
}

/// The WARN lines of this test binary, captured once for every test (they run in threads of
/// one process; each test looks for its own descriptor values).
fn audit_log() -> &'static Mutex<Vec<u8>> {
    static LOG: OnceLock<&'static Mutex<Vec<u8>>> = OnceLock::new();
    LOG.get_or_init(|| {
        let log: &'static Mutex<Vec<u8>> = Box::leak(Box::new(Mutex::new(Vec::new())));
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::WARN)
            .with_ansi(false)
            .with_writer(move || Capture(log))
            .finish();
        let _ = tracing::subscriber::set_global_default(subscriber);
        log
    })
}

struct Capture(&'static Mutex<Vec<u8>>);

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The captured lines that contain `needle`.
fn logged(needle: &str) -> Vec<String> {
    let log = audit_log().lock().unwrap();
    String::from_utf8_lossy(&log).lines().filter(|l| l.contains(needle)).map(str::to_string).collect()
}

/// A user id unique to the backend, so that parallel tests' audit lines do not mix.
fn user(backend: Backend, name: &str) -> String {
    format!("{name}-{backend:?}").to_lowercase()
}

macro_rules! every_backend {
    ($($case:ident),* $(,)?) => {
        mod memory {
            $( #[tokio::test] async fn $case() { super::$case(super::Backend::Memory).await } )*
        }
        mod redis {
            $( #[tokio::test] async fn $case() { super::$case(super::Backend::Redis).await } )*
        }
    };
}

every_backend!(
    limits_are_listed_sorted_with_their_source,
    counters_show_the_window_state,
    pages_return_every_counter_once,
    a_sliding_window_is_listed_once_across_its_two_keys,
    reset_lets_the_descriptor_through_and_is_audited,
    bad_requests_get_clear_statuses,
    http_mirrors_grpc,
);

async fn limits_are_listed_sorted_with_their_source(backend: Backend) {
    let h = Harness::start(backend).await;
    let mut admin = h.admin().await;
    let listed = admin.list_limits(ListLimitsRequest::default()).await.unwrap().into_inner();
    let keys: Vec<&str> = listed.rules.iter().map(|r| r.full_key.as_str()).collect();
    assert_eq!(
        keys,
        ["shop.free", "shop.path_/api_*", "shop.plan_gold.user", "shop.user", "shop.user_id"],
        "sorted by full key"
    );
    assert_eq!(listed.sources.len(), 1);
    assert!(listed.sources[0].ends_with("config/rules.yaml"), "{:?}", listed.sources);
    assert!(listed.rules.iter().all(|r| r.source == listed.sources[0] && r.domain == "shop"));
    assert_eq!(listed.version, "", "rules from files have no xDS version");

    let plan = &listed.rules[2];
    let limits: Vec<(Unit, u32, Algorithm, u32)> =
        plan.limits.iter().map(|l| (l.unit(), l.requests_per_unit, l.algorithm(), l.burst)).collect();
    assert_eq!(limits, [(Unit::Minute, 5, Algorithm::SlidingWindow, 5), (Unit::Hour, 10, Algorithm::TokenBucket, 10)]);
    assert!(listed.rules[0].unlimited && listed.rules[0].limits.is_empty());

    let only = admin.list_limits(ListLimitsRequest { domain: "shop".into() }).await.unwrap().into_inner();
    assert_eq!(only.rules.len(), 5);
    let err = admin.list_limits(ListLimitsRequest { domain: "nope".into() }).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
}

async fn counters_show_the_window_state(backend: Backend) {
    let h = Harness::start(backend).await;
    let alice = user(backend, "alice");
    let alice = alice.as_str();
    let codes = [h.hit(&[("user", alice)]).await, h.hit(&[("user", alice)]).await, h.hit(&[("user", alice)]).await];
    assert_eq!(codes, [RlCode::Ok, RlCode::Ok, RlCode::OverLimit]);
    h.hit(&[("user", "bob")]).await;
    h.hit(&[("plan", "gold"), ("user", "carol")]).await;
    h.hit(&[("plan", "gold"), ("user", "carol")]).await;
    h.hit(&[("path", "/api_orders")]).await;
    let now_secs = (h.clock.now_ms() / 1000) as i64;

    let (counters, _) = h.counters(&[("user", alice)], 0).await;
    assert_eq!(counters.len(), 1, "{counters:?}");
    let c = &counters[0];
    assert_eq!(c.entries, entries_of(&[("user", alice)]));
    assert_eq!(c.full_key, "shop.user");
    let limit = c.limit.unwrap();
    assert_eq!((limit.unit(), limit.requests_per_unit, limit.algorithm()), (Unit::Minute, 2, Algorithm::FixedWindow));
    // A fixed window counts refused hits too, as envoyproxy/ratelimit's INCRBY.
    assert_eq!((c.value, c.remaining, c.over_limit), (3, 0, true));
    assert_eq!(c.reset_after.unwrap().seconds, 50, "the minute started 10 s ago");
    assert_eq!(c.reset_time.unwrap().seconds, now_secs + 50);
    assert_eq!(c.store_key, format!("shop_user_{alice}_"));

    let (counters, _) = h.counters(&[("user", "bob")], 0).await;
    assert_eq!((counters[0].value, counters[0].remaining, counters[0].over_limit), (1, 1, false));

    // One descriptor, two limits: a counter each.
    let (counters, _) = h.counters(&[("plan", "gold")], 0).await;
    let seen: Vec<(String, u64, u64, i64)> =
        counters.iter().map(|c| (c.store_key.clone(), c.value, c.remaining, c.reset_after.unwrap().seconds)).collect();
    assert_eq!(
        seen,
        [
            // A sliding window: 2 of 5 in the window ending in 50 s.
            ("shop_plan_gold_user_carol_sw60_".to_string(), 2, 3, 50),
            // A token bucket of 10 an hour: 2 tokens taken, refilled in 2 × 6 minutes.
            ("shop_plan_gold_user_carol_tb3600_".to_string(), 2, 8, 720),
        ]
    );
    assert!(counters.iter().all(|c| c.entries == entries_of(&[("plan", "gold"), ("user", "carol")])));

    // A shared wildcard counts under itself, and any value it matches finds it.
    let (counters, _) = h.counters(&[("path", "/api_users")], 0).await;
    assert_eq!(counters.len(), 1);
    assert_eq!((counters[0].entries[0].value.as_str(), counters[0].value), ("/api_*", 1));
    assert_eq!(counters[0].full_key, "shop.path_/api_*");

    // The window ends: its counter is gone from the listing, though its key may live on.
    h.clock.advance_ms(50_000);
    let (counters, _) = h.counters(&[("user", "")], 0).await;
    assert!(counters.is_empty(), "{counters:?}");
}

async fn pages_return_every_counter_once(backend: Backend) {
    let h = Harness::start(backend).await;
    let users: Vec<String> = (0..25).map(|i| format!("u{i:02}")).collect();
    for u in &users {
        h.hit(&[("user", u)]).await;
    }
    // Keys under other prefixes: another key that starts with `user_`, and a nested user.
    h.hit(&[("user_id", "u00")]).await;
    h.hit(&[("plan", "gold"), ("user", "u00")]).await;
    if let Backend::Redis = backend {
        // Let Redis finish growing its hash table: SCAN may repeat keys while it rehashes.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    let (counters, pages) = h.counters(&[("user", "")], 4).await;
    assert!(pages > 2, "25 counters in pages of 4 keys took {pages} pages");
    let mut keys: Vec<String> = counters.iter().map(|c| c.entries[0].value.clone()).collect();
    keys.sort();
    assert_eq!(keys, users, "every counter once, nothing under another prefix");
    assert!(counters.iter().all(|c| c.full_key == "shop.user" && c.entries.len() == 1));

    // One value, and the whole domain.
    let (counters, _) = h.counters(&[("user", "u07")], 4).await;
    assert_eq!(counters.len(), 1);
    let (counters, _) = h.counters(&[], 10_000).await;
    assert_eq!(counters.len(), 25 + 1 + 2, "{counters:?}");
    let (counters, _) = h.counters(&[("user_id", "")], 0).await;
    assert_eq!(counters.iter().map(|c| c.full_key.as_str()).collect::<Vec<_>>(), ["shop.user_id"]);
    // No rule's descriptor starts this way: nothing, at once.
    let (counters, pages) = h.counters(&[("plan", "silver")], 0).await;
    assert_eq!((counters.len(), pages), (0, 1));
}

async fn a_sliding_window_is_listed_once_across_its_two_keys(backend: Backend) {
    let h = Harness::start(backend).await;
    let sliding = |counters: &[Counter]| -> Vec<u64> {
        counters.iter().filter(|c| c.store_key.ends_with("_sw60_")).map(|c| c.value).collect()
    };
    for _ in 0..3 {
        h.hit(&[("plan", "gold"), ("user", "dora")]).await;
    }
    // The next window: only the previous window's key holds hits, weighed by the 50 s of it
    // the sliding window still covers: floor(3 × 50/60) = 2.
    h.clock.advance_ms(60_000);
    for page_size in [1, 100] {
        let (counters, _) = h.counters(&[("plan", "gold")], page_size).await;
        assert_eq!(sliding(&counters), [2], "page_size {page_size}: {counters:?}");
    }
    // Both keys hold hits: still one counter.
    h.hit(&[("plan", "gold"), ("user", "dora")]).await;
    for page_size in [1, 100] {
        let (counters, _) = h.counters(&[("plan", "gold")], page_size).await;
        assert_eq!(sliding(&counters), [3], "page_size {page_size}: {counters:?}");
    }
}

async fn reset_lets_the_descriptor_through_and_is_audited(backend: Backend) {
    let h = Harness::start(backend).await;
    let erin = user(backend, "erin");
    let erin = erin.as_str();
    for _ in 0..3 {
        h.hit(&[("user", erin)]).await;
    }
    assert_eq!(h.hit(&[("user", erin)]).await, RlCode::OverLimit);
    let mut admin = h.admin().await;
    let reset = admin.reset_counters(reset_request(&[("user", erin)])).await.unwrap().into_inner();
    assert_eq!((reset.full_key.as_str(), reset.deleted), ("shop.user", 1));
    assert_eq!(h.hit(&[("user", erin)]).await, RlCode::Ok, "the next request starts from zero");
    let (counters, _) = h.counters(&[("user", erin)], 0).await;
    assert_eq!(counters[0].value, 1);

    let line = logged(&format!("user={erin}"));
    assert_eq!(line.len(), 1, "{line:?}");
    for expected in
        ["gatehouse::audit", "rate limit counters reset", "transport=\"grpc\"", "peer=127.0.0.1:", "domain=shop"]
    {
        assert!(line[0].contains(expected), "{expected} not in {}", line[0]);
    }
    assert!(line[0].contains("full_key=shop.user") && line[0].contains("deleted=1"), "{}", line[0]);

    // Every limit of the descriptor: the sliding window's key and the bucket.
    let frank = user(backend, "frank");
    let frank = frank.as_str();
    h.hit(&[("plan", "gold"), ("user", frank)]).await;
    let reset = admin.reset_counters(reset_request(&[("plan", "gold"), ("user", frank)])).await.unwrap().into_inner();
    assert_eq!((reset.full_key.as_str(), reset.deleted), ("shop.plan_gold.user", 2));
    let (counters, _) = h.counters(&[("plan", "gold"), ("user", frank)], 0).await;
    assert!(counters.is_empty(), "{counters:?}");
    // Nothing left to delete is no error.
    let reset = admin.reset_counters(reset_request(&[("plan", "gold"), ("user", frank)])).await.unwrap();
    assert_eq!(reset.into_inner().deleted, 0);

    // A refused reset is audited too.
    let ghost = user(backend, "ghost");
    let ghost = ghost.as_str();
    let err = admin.reset_counters(reset_request(&[("nobody", ghost)])).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    let line = logged(&format!("nobody={ghost}"));
    assert!(line.len() == 1 && line[0].contains("reset refused"), "{line:?}");
}

async fn bad_requests_get_clear_statuses(backend: Backend) {
    let h = Harness::start(backend).await;
    h.hit(&[("user", "x")]).await;
    let mut admin = h.admin().await;
    let counters = |domain: &str, entries: &[(&str, &str)], page_size: u32, token: &str| GetCountersRequest {
        domain: domain.into(),
        entries: entries_of(entries),
        page_size,
        page_token: token.into(),
    };
    let huge = "v".repeat(1 << 20);
    for (request, code, message) in [
        (counters("", &[], 0, ""), Code::InvalidArgument, "domain must not be empty"),
        (counters("nope", &[], 0, ""), Code::NotFound, "no rate limit domain 'nope'"),
        (counters("shop", &[], 10_001, ""), Code::InvalidArgument, "page_size 10001 is over the maximum, 10000"),
        (counters("shop", &[], 0, "garbage"), Code::InvalidArgument, "invalid page token \"garbage\""),
        (counters("shop", &[("", "x")], 0, ""), Code::InvalidArgument, "entry 0 has an empty key"),
        (counters("shop", &[("user", ""), ("x", "y")], 0, ""), Code::InvalidArgument, "only the last entry"),
    ] {
        let err = admin.get_counters(request).await.unwrap_err();
        assert_eq!((err.code(), err.message().contains(message)), (code, true), "{err:?}");
    }
    // Odd but valid: answered, never a panic.
    for entries in [vec![("user", huge.as_str())], vec![("user", "x"), ("more", "")], vec![("\u{0}*[?", "]\\")]] {
        let page = admin.get_counters(counters("shop", &entries, 10_000, "")).await.unwrap().into_inner();
        assert!(page.counters.is_empty() && page.next_page_token.is_empty(), "{entries:?}");
    }

    for (request, code, message) in [
        (reset_request(&[]), Code::InvalidArgument, "at least one entry"),
        (reset_request(&[("", "x")]), Code::InvalidArgument, "entry 0 has an empty key"),
        (reset_request(&[("user", "x"), ("extra", "y")]), Code::NotFound, "[user=x, extra=y]"),
        (reset_request(&[("user", huge.as_str())]), Code::Ok, ""),
        (ResetCountersRequest { domain: "nope".into(), entries: entries_of(&[("user", "x")]) }, Code::NotFound, "nope"),
    ] {
        match admin.reset_counters(request).await {
            Ok(_) => assert_eq!(code, Code::Ok),
            Err(err) => assert_eq!((err.code(), err.message().contains(message)), (code, true), "{err:?}"),
        }
    }
    // An unlimited rule counts nothing, so there is nothing to delete.
    let reset = admin.reset_counters(reset_request(&[("free", "x")])).await.unwrap().into_inner();
    assert_eq!((reset.full_key.as_str(), reset.deleted), ("shop.free", 0));
}

async fn http_mirrors_grpc(backend: Backend) {
    let h = Harness::start(backend).await;
    let hana = user(backend, "hana");
    let hana = hana.as_str();
    for _ in 0..3 {
        h.hit(&[("user", hana)]).await;
    }

    let (status, limits) = h.debug_get("/admin/limits?domain=shop").await;
    assert_eq!(status, 200, "{limits}");
    assert_eq!(limits["rules"][3]["fullKey"], "shop.user");
    assert_eq!(
        limits["rules"][3]["limits"][0],
        json!({"unit": "UNIT_MINUTE", "requestsPerUnit": 2, "algorithm": "ALGORITHM_FIXED_WINDOW", "burst": 2})
    );
    assert_eq!(limits["version"], "");

    let (status, page) = h.debug_get(&format!("/admin/counters?domain=shop&entry=user={hana}&page_size=10")).await;
    assert_eq!(status, 200, "{page}");
    let counter = &page["counters"][0];
    assert_eq!(counter["entries"], json!([{"key": "user", "value": hana}]));
    // proto3 JSON: 64-bit integers are strings.
    assert_eq!(
        (&counter["value"], &counter["remaining"], &counter["overLimit"]),
        (&json!("3"), &json!("0"), &json!(true))
    );
    assert_eq!(counter["resetAfter"], "50s");
    assert!(counter["resetTime"].as_str().is_some_and(|t| t.ends_with(":01:00Z")), "{counter}");
    assert_eq!(page["nextPageToken"], "");
    assert!(page["backend"].as_str().is_some_and(|b| b.starts_with(if let Backend::Memory = backend {
        "memory"
    } else {
        "redis"
    })));

    let body = json!({"domain": "shop", "entries": [{"key": "user", "value": hana}]}).to_string();
    let (status, reset) = h.debug_post("/admin/counters/reset", &body).await;
    assert_eq!((status, reset), (200, json!({"fullKey": "shop.user", "deleted": "1"})));
    assert_eq!(h.hit(&[("user", hana)]).await, RlCode::Ok);
    let line = logged(&format!("user={hana}"));
    assert!(line.len() == 1 && line[0].contains("transport=\"http\""), "{line:?}");

    for (path, status, code) in [
        ("/admin/counters?domain=nope", 404, "NOT_FOUND"),
        ("/admin/counters?domain=shop&page_size=lots", 400, "INVALID_ARGUMENT"),
        ("/admin/counters?domain=shop&page_token=x", 400, "INVALID_ARGUMENT"),
        ("/admin/counters?domain=shop&entri=user=a", 400, "INVALID_ARGUMENT"),
        ("/admin/limits?domain=nope", 404, "NOT_FOUND"),
    ] {
        let (got, body) = h.debug_get(path).await;
        assert_eq!((got, &body["code"]), (status, &json!(code)), "{path}: {body}");
    }
    for (body, status, code) in [
        ("{", 400, "INVALID_ARGUMENT"),
        (r#"{"domain": "shop", "entries": [{"key": "user", "value": "x"}], "extra": 1}"#, 400, "INVALID_ARGUMENT"),
        (r#"{"domain": "shop", "entries": [{"key": "nope", "value": "x"}]}"#, 404, "NOT_FOUND"),
    ] {
        let (got, answer) = h.debug_post("/admin/counters/reset", body).await;
        assert_eq!((got, &answer["code"]), (status, &json!(code)), "{body}: {answer}");
    }
}

/// REDIS_PERSECOND: per-second counters live in their own Redis. One cursor pages through
/// both, and a reset deletes from the right one.
#[tokio::test]
async fn per_second_split_lists_and_resets_both_stores() {
    let h = Harness::start(Backend::RedisPerSecond).await;
    // Everything below reads one per-second window: start it at the beginning of a second.
    let into_second = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_millis();
    tokio::time::sleep(std::time::Duration::from_millis(u64::from(1005 - into_second))).await;
    h.hit(&[("path", "/api_a")]).await;
    assert_eq!(h.hit(&[("path", "/api_b")]).await, RlCode::OverLimit, "one a second, shared");
    h.hit(&[("user", "ivan")]).await;
    h.hit(&[("user", "jane")]).await;
    for page_size in [1, 100] {
        let (counters, _) = h.counters(&[], page_size).await;
        let mut seen: Vec<(String, u64)> = counters.iter().map(|c| (c.full_key.clone(), c.value)).collect();
        seen.sort();
        assert_eq!(
            seen,
            [("shop.path_/api_*".to_string(), 2), ("shop.user".to_string(), 1), ("shop.user".to_string(), 1)],
            "page_size {page_size}"
        );
    }
    assert_eq!(h._redis[1].cli(&["DBSIZE"]).as_deref(), Some("1"), "the per-second counter in its own Redis");
    let mut admin = h.admin().await;
    let reset = admin.reset_counters(reset_request(&[("path", "/api_c")])).await.unwrap().into_inner();
    assert_eq!((reset.full_key.as_str(), reset.deleted), ("shop.path_/api_*", 1));
    assert_eq!(h.hit(&[("path", "/api_a")]).await, RlCode::Ok);
    let err = admin
        .get_counters(GetCountersRequest {
            domain: "shop".into(),
            page_token: "s:notanumber".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
}

/// ADMIN_API_ENABLED is off by default: neither port serves the admin API.
#[tokio::test]
async fn the_admin_api_is_off_by_default() {
    let h = Harness::start_with(Backend::Memory, &[]).await;
    let err = h.admin().await.list_limits(ListLimitsRequest::default()).await.unwrap_err();
    assert_eq!(err.code(), Code::Unimplemented, "{err:?}");
    let response = reqwest::get(format!("http://{}/admin/limits", h.debug)).await.unwrap();
    assert_eq!(response.status(), 404);
    assert_eq!(h.hit(&[("user", "x")]).await, RlCode::Ok, "the rate limiter itself serves");
}

/// Under mTLS, the audit line names the client certificate.
#[tokio::test]
async fn resets_over_mtls_name_the_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate(dir.path());
    let path = |p: &std::path::Path| p.to_str().unwrap().to_string();
    let (cert, key, ca) = (path(&pki.server_cert), path(&pki.server_key), path(&pki.ca_cert));
    let h = Harness::start_with(
        Backend::Memory,
        &[
            ("ADMIN_API_ENABLED", "true"),
            ("GRPC_SERVER_USE_TLS", "true"),
            ("GRPC_SERVER_TLS_CERT", &cert),
            ("GRPC_SERVER_TLS_KEY", &key),
            ("GRPC_CLIENT_TLS_CACERT", &ca),
        ],
    )
    .await;
    let identity =
        Identity::from_pem(std::fs::read(&pki.client_cert).unwrap(), std::fs::read(&pki.client_key).unwrap());
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(std::fs::read(&pki.ca_cert).unwrap()))
        .domain_name("localhost")
        .identity(identity);
    let endpoint = Channel::from_shared(format!("https://localhost:{}", h.grpc.port())).unwrap();
    let channel = endpoint.tls_config(tls).unwrap().connect().await.unwrap();
    let mut admin = RateLimitAdminServiceClient::new(channel);
    admin.reset_counters(reset_request(&[("user", "mtls-kim")])).await.unwrap();
    let line = logged("user=mtls-kim");
    assert_eq!(line.len(), 1, "{line:?}");
    assert!(line[0].contains("client_subject=\"CN=client\""), "{}", line[0]);
    assert!(line[0].contains("client_sans=spiffe://gatehouse.test/envoy"), "{}", line[0]);
}
