//! Every storage behaviour, written once and run against memory, Redis, Redis Cluster and
//! Redis through Sentinel.

use std::sync::Arc;
use std::time::Duration;

use gatehouse_common::redis::{RedisConn, RedisSettings, Topology};
use gatehouse_testkit::redis::{RedisCluster, RedisSentinel, RedisServer};

use super::memory::MemoryStore;
use super::redis::RedisStore;
use super::*;
use crate::clock::Clock;

/// What a case gets: a store, the clock it runs on, and a key prefix unique to the run.
struct Ctx {
    store: Arc<dyn CounterStore>,
    clock: Clock,
    prefix: String,
}

impl Ctx {
    fn counter(&self, name: &str, algorithm: Algorithm, limit: u64, period_secs: u64, hits: u64) -> CounterUpdate {
        let key = format!("{}_{name}_", self.prefix);
        CounterUpdate { tag_len: key.len(), key, algorithm, limit, period_secs, burst: limit, hits }
    }

    async fn one(&self, counter: &CounterUpdate) -> CounterState {
        self.batch(vec![counter.clone()], Mode::Independent).await[0]
    }

    async fn batch(&self, counters: Vec<CounterUpdate>, mode: Mode) -> Vec<CounterState> {
        let batch = Batch { counters, mode };
        self.store.update(&batch, self.clock.now_ms()).await.expect("store update")
    }

    /// (over_limit, remaining) for each of `n` single-hit calls.
    async fn run(&self, counter: &CounterUpdate, n: usize) -> Vec<(bool, u64)> {
        let mut out = Vec::new();
        for _ in 0..n {
            let s = self.one(counter).await;
            out.push((s.over_limit, s.remaining));
        }
        out
    }
}

async fn fixed_window_counts_and_resets(ctx: Ctx) {
    let c = ctx.counter("fixed", Algorithm::FixedWindow, 3, 60, 1);
    assert_eq!(ctx.run(&c, 4).await, vec![(false, 2), (false, 1), (false, 0), (true, 0)]);
    let s = ctx.one(&c).await;
    assert_eq!(s.reset_after, Duration::from_secs(60), "window started at the clock's start");
    ctx.clock.advance_ms(60_000);
    assert_eq!(ctx.run(&c, 1).await, vec![(false, 2)], "a new window starts fresh");
}

async fn fixed_window_hits_addend(ctx: Ctx) {
    let c = ctx.counter("addend", Algorithm::FixedWindow, 10, 60, 4);
    assert_eq!(ctx.one(&c).await.remaining, 6);
    assert_eq!(ctx.one(&c).await.remaining, 2);
    let s = ctx.one(&c).await;
    assert!(s.over_limit, "4 more would be 12 > 10");
    // Like envoyproxy/ratelimit's INCRBY, the over-limit hits were counted...
    let check = CounterUpdate { hits: 0, ..c.clone() };
    let s = ctx.one(&check).await;
    assert_eq!((s.over_limit, s.used), (true, 12), "hits 0 checks without counting");
    assert_eq!(ctx.one(&check).await.used, 12);
}

async fn all_or_nothing_counts_nothing_when_one_is_over(ctx: Ctx) {
    let wide = ctx.counter("aon_wide", Algorithm::FixedWindow, 5, 60, 1);
    let narrow = ctx.counter("aon_narrow", Algorithm::FixedWindow, 1, 60, 1);
    let first = ctx.batch(vec![wide.clone(), narrow.clone()], Mode::AllOrNothing).await;
    assert!(!first[0].over_limit && !first[1].over_limit);
    let second = ctx.batch(vec![wide.clone(), narrow.clone()], Mode::AllOrNothing).await;
    assert!(!second[0].over_limit && second[1].over_limit);
    let check = CounterUpdate { hits: 0, ..wide.clone() };
    assert_eq!(ctx.one(&check).await.used, 1, "the refused request consumed nothing");

    // Independent mode counts the wide limit even though the request is refused.
    ctx.batch(vec![wide.clone(), narrow], Mode::Independent).await;
    assert_eq!(ctx.one(&check).await.used, 2);
}

async fn sliding_window_weighs_the_previous_window(ctx: Ctx) {
    let c = ctx.counter("sliding", Algorithm::SlidingWindow, 10, 10, 1);
    let states = ctx.run(&c, 11).await;
    assert_eq!(states.iter().filter(|(over, _)| !over).count(), 10);
    assert!(states[10].0);
    // Half-way into the next window, half of the previous window still counts.
    ctx.clock.advance_ms(15_000);
    let states = ctx.run(&c, 6).await;
    assert_eq!(
        states,
        vec![(false, 4), (false, 3), (false, 2), (false, 1), (false, 0), (true, 0)],
        "floor(10 * 0.5) = 5 already used"
    );
    // Refused hits are not counted: a later window sees only the 5 admitted.
    ctx.clock.advance_ms(10_000);
    let s = ctx.one(&CounterUpdate { hits: 0, ..c.clone() }).await;
    assert_eq!(s.used, 2, "floor(5 * 0.5) = 2");
}

async fn token_bucket_refills_continuously(ctx: Ctx) {
    // 10 per second: one token every 100 ms, bucket of 5.
    let c = CounterUpdate { burst: 5, ..ctx.counter("bucket", Algorithm::TokenBucket, 10, 1, 1) };
    let states = ctx.run(&c, 6).await;
    assert_eq!(states, vec![(false, 4), (false, 3), (false, 2), (false, 1), (false, 0), (true, 0)]);
    let s = ctx.one(&c).await;
    assert!(s.over_limit);
    assert_eq!(s.reset_after, Duration::from_millis(100), "next token in 100 ms");
    ctx.clock.advance_ms(100);
    assert_eq!(ctx.run(&c, 2).await, vec![(false, 0), (true, 0)]);
    ctx.clock.advance_ms(2_000);
    let s = ctx.one(&c).await;
    assert_eq!((s.over_limit, s.remaining), (false, 4), "refilled to the burst, not beyond");
    assert_eq!(s.reset_after, Duration::from_millis(100), "full again in one token's time");
}

async fn concurrent_callers_never_exceed_the_limit(ctx: Ctx) {
    let c = ctx.counter("exact", Algorithm::FixedWindow, 1000, 3600, 1);
    let mut tasks = Vec::new();
    for _ in 0..32 {
        let store = ctx.store.clone();
        let batch = Batch { counters: vec![c.clone()], mode: Mode::Independent };
        let now = ctx.clock.now_ms();
        tasks.push(tokio::spawn(async move {
            let mut admitted = 0;
            for _ in 0..50 {
                if !store.update(&batch, now).await.expect("update")[0].over_limit {
                    admitted += 1;
                }
            }
            admitted
        }));
    }
    let mut admitted = 0;
    for t in tasks {
        admitted += t.await.expect("task");
    }
    assert_eq!(admitted, 1000, "1600 calls at limit 1000");
}

/// What the admin API asks of a store: keys by prefix a page at a time, a peek that counts
/// nothing, and a reset of the current windows. Redis Cluster cannot list (SCAN walks one
/// node) and says so; it resets like the others.
async fn scan_peek_and_reset(ctx: Ctx) {
    let fixed: Vec<CounterUpdate> =
        (0..10).map(|i| ctx.counter(&format!("scan_{i}"), Algorithm::FixedWindow, 5, 60, 1)).collect();
    let sliding = ctx.counter("scan_sw", Algorithm::SlidingWindow, 5, 60, 1);
    let bucket = ctx.counter("scan_tb", Algorithm::TokenBucket, 5, 60, 1);
    let outside = ctx.counter("other", Algorithm::FixedWindow, 5, 60, 1);
    for c in fixed.iter().chain([&sliding, &bucket, &outside]) {
        ctx.one(c).await;
    }
    let now = ctx.clock.now_ms();
    let window = Window::of(now, 60).start_secs;

    let prefix = format!("{}_scan_", ctx.prefix);
    let (mut keys, mut cursor, mut pages) = (Vec::new(), String::new(), 0);
    let listed = loop {
        match ctx.store.scan(&prefix, &cursor, 3).await {
            Ok(page) => {
                keys.extend(page.keys);
                pages += 1;
                match page.next {
                    Some(next) => cursor = next,
                    None => break true,
                }
            }
            Err(StorageError::Unsupported(_)) => break false,
            Err(e) => panic!("scan: {e}"),
        }
        assert!(pages < 1_000, "the scan never ends");
    };
    if listed {
        // A key may come twice (Redis, while it rehashes); every key comes.
        keys.sort();
        keys.dedup();
        let mut expected: Vec<String> = fixed.iter().map(|c| format!("{}{window}", c.key)).collect();
        expected.extend([format!("{}{window}", sliding.key), bucket.key.clone()]);
        expected.sort();
        assert_eq!(keys, expected);
        assert!(pages > 1, "12 keys in pages of 3 took {pages} page(s)");
        assert!(matches!(ctx.store.scan(&prefix, "garbage", 3).await, Err(StorageError::BadCursor(_))));
    }

    let peek = Batch { counters: vec![CounterUpdate { hits: 0, ..fixed[0].clone() }], mode: Mode::Independent };
    for _ in 0..2 {
        assert_eq!(ctx.store.peek(&peek, now).await.expect("peek")[0].used, 1, "a peek counts nothing");
    }

    let reset = [fixed[0].clone(), sliding.clone(), bucket.clone()];
    assert_eq!(ctx.store.reset(&reset, now).await.expect("reset"), 3);
    assert_eq!(ctx.store.reset(&reset, now).await.expect("reset"), 0, "nothing left to delete");
    assert_eq!(ctx.one(&fixed[0]).await.remaining, 4, "the next hit starts from zero");
    assert_eq!(ctx.one(&sliding).await.remaining, 4);
    assert_eq!(ctx.one(&fixed[1]).await.remaining, 3, "other counters are untouched");
}

type Case = fn(Ctx) -> futures::future::BoxFuture<'static, ()>;

fn cases() -> Vec<(&'static str, Case)> {
    vec![
        ("fixed_window_counts_and_resets", |c| Box::pin(fixed_window_counts_and_resets(c))),
        ("fixed_window_hits_addend", |c| Box::pin(fixed_window_hits_addend(c))),
        ("all_or_nothing", |c| Box::pin(all_or_nothing_counts_nothing_when_one_is_over(c))),
        ("sliding_window", |c| Box::pin(sliding_window_weighs_the_previous_window(c))),
        ("token_bucket", |c| Box::pin(token_bucket_refills_continuously(c))),
        ("concurrent_exact", |c| Box::pin(concurrent_callers_never_exceed_the_limit(c))),
        ("scan_peek_and_reset", |c| Box::pin(scan_peek_and_reset(c))),
    ]
}

/// A manual clock at a minute boundary near real time, so Redis TTLs stay meaningful.
fn aligned_clock() -> Clock {
    let now = Clock::System.now_ms();
    Clock::manual(now - now % 60_000 + 3_600_000)
}

async fn run_all(backend: &str, make: impl Fn(Clock) -> Arc<dyn CounterStore>) {
    for (name, case) in cases() {
        let clock = aligned_clock();
        let ctx =
            Ctx { store: make(clock.clone()), clock, prefix: format!("{backend}_{name}_{}", Clock::System.now_ms()) };
        eprintln!("{backend}: {name}");
        case(ctx).await;
    }
}

#[tokio::test]
async fn memory_store() {
    run_all("memory", |clock| MemoryStore::new(10_000, clock) as Arc<dyn CounterStore>).await;
}

/// Runs every case against a Redis store on `topology` at `urls` (comma-separated).
async fn run_all_on_redis(backend: &str, topology: Topology, urls: &str) {
    let settings = RedisSettings {
        topology,
        urls: urls.split(',').map(str::to_string).collect(),
        pool_size: 2,
        ..RedisSettings::single("")
    };
    let conn = RedisConn::connect(&settings).await.unwrap();
    run_all(backend, |_| Arc::new(RedisStore::new(conn.clone(), Duration::from_secs(2), 0)) as Arc<dyn CounterStore>)
        .await;
}

#[tokio::test]
async fn redis_store() {
    let redis = RedisServer::start();
    run_all_on_redis("redis", Topology::Single, &redis.addr()).await;
}

#[tokio::test]
async fn redis_cluster_store() {
    let cluster = RedisCluster::start();
    run_all_on_redis("cluster", Topology::Cluster, &cluster.addrs()).await;
}

#[tokio::test]
async fn redis_sentinel_store() {
    let sentinel = RedisSentinel::start();
    run_all_on_redis("sentinel", Topology::Sentinel, &sentinel.url()).await;
    // The counters live on the master the sentinel named.
    let keys = sentinel.master.cli(&["DBSIZE"]).unwrap_or_default();
    assert_ne!(keys, "0", "counters written to the master");
}

/// REDIS_TLS with a private CA and a client certificate, plus REDIS_AUTH.
#[tokio::test]
async fn redis_tls_with_client_certificate_and_auth() {
    let dir = tempfile::tempdir().unwrap();
    let pki = gatehouse_testkit::tls::Pki::generate(dir.path());
    let redis = RedisServer::start_tls(&pki, "s3cret");
    let tls = gatehouse_common::redis::RedisTls {
        ca_cert: Some(pki.ca_cert.clone()),
        client_cert: Some(pki.client_cert.clone()),
        client_key: Some(pki.client_key.clone()),
        skip_hostname_verification: false,
    };
    let settings = RedisSettings { auth: Some("s3cret".into()), tls: Some(tls), ..RedisSettings::single(redis.addr()) };
    let conn = RedisConn::connect(&settings).await.unwrap();
    conn.ping().await.expect("TLS + AUTH ping");
    let store = RedisStore::new(conn, Duration::from_secs(2), 0);
    let clock = aligned_clock();
    let ctx = Ctx { store: Arc::new(store), clock, prefix: "tls".into() };
    fixed_window_counts_and_resets(ctx).await;

    let wrong = RedisSettings { auth: Some("wrong".into()), ..settings };
    let conn = RedisConn::connect(&wrong).await.unwrap();
    assert!(conn.ping().await.is_err(), "a wrong password is refused");
}

#[tokio::test]
async fn memory_store_is_bounded_and_swept() {
    let clock = Clock::manual(1_000_000);
    let store = MemoryStore::new(64 * 16, clock.clone());
    for i in 0..5_000 {
        let batch = Batch {
            counters: vec![CounterUpdate {
                key: format!("k{i}_"),
                tag_len: 1,
                algorithm: Algorithm::FixedWindow,
                limit: 10,
                period_secs: 1,
                burst: 10,
                hits: 1,
            }],
            mode: Mode::Independent,
        };
        store.update(&batch, clock.now_ms()).await.unwrap();
    }
    assert!(store.len() <= 64 * 16, "bounded: {}", store.len());
    clock.advance_ms(1_000);
    store.sweep();
    assert!(store.is_empty(), "expired windows reclaimed");
}

#[tokio::test]
async fn redis_outage_fails_within_the_timeout_and_recovers() {
    let mut redis = RedisServer::start();
    let conn = RedisConn::connect(&RedisSettings::single(redis.addr())).await.unwrap();
    let store = RedisStore::new(conn, Duration::from_millis(300), 0);
    let batch = Batch {
        counters: vec![CounterUpdate {
            key: "outage_".into(),
            tag_len: 7,
            algorithm: Algorithm::FixedWindow,
            limit: 100,
            period_secs: 60,
            burst: 100,
            hits: 1,
        }],
        mode: Mode::Independent,
    };
    let now = || Clock::System.now_ms();
    store.update(&batch, now()).await.unwrap();
    redis.stop();
    let started = std::time::Instant::now();
    let err = store.update(&batch, now()).await.unwrap_err();
    assert!(err.is_transient(), "{err}");
    assert!(started.elapsed() < Duration::from_millis(1_000), "failed in {:?}", started.elapsed());
    redis.restart();
    let recovered =
        gatehouse_testkit::eventually(Duration::from_secs(10), || async { store.update(&batch, now()).await.ok() })
            .await;
    assert!(recovered.is_some(), "store reconnects by itself");
}

/// Once a fixed window is over its limit, the local cache answers until the window ends,
/// without asking Redis (here, Redis has forgotten the counter and would admit).
#[tokio::test]
async fn local_over_limit_cache_answers_without_the_store() {
    let redis = RedisServer::start();
    let conn = RedisConn::connect(&RedisSettings::single(redis.addr())).await.unwrap();
    let store = super::local_cache::OverLimitCache::new(RedisStore::new(conn, Duration::from_secs(2), 0), 1 << 20);
    let clock = aligned_clock();
    let ctx = Ctx { store: Arc::new(store), clock: clock.clone(), prefix: "local_cache".into() };
    let c = ctx.counter("hot", Algorithm::FixedWindow, 2, 60, 1);
    assert_eq!(ctx.run(&c, 3).await, vec![(false, 1), (false, 0), (true, 0)]);
    redis.cli(&["FLUSHALL"]);
    let s = ctx.one(&c).await;
    assert!(s.over_limit && s.from_local_cache, "{s:?}");
    clock.advance_ms(60_000);
    let s = ctx.one(&c).await;
    assert!(!s.over_limit && !s.from_local_cache, "a new window asks Redis again: {s:?}");
}
