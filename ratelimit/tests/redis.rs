//! The REDIS_* variables end to end: a served App on real Redis processes (testkit fixtures on
//! loopback ports), asserting on the answers and on what each Redis holds.

mod support;

use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code;
use gatehouse_testkit::redis::{RedisSentinel, RedisServer};
use support::{call, request, request_of, serve};

const RULES: &str = r#"
domain: shop
descriptors:
  - key: user
    rate_limit: { unit: minute, requests_per_unit: 2 }
"#;

/// REDIS_SENTINEL_AUTH: the sentinels' `requirepass`, apart from REDIS_AUTH (the master's).
#[tokio::test]
async fn sentinels_with_a_password() {
    let sentinel = RedisSentinel::start_with_password("sentinel-secret");
    let url = sentinel.url();
    let env = |auth: Option<&'static str>| {
        let mut env = vec![
            ("BACKEND_TYPE", "redis"),
            ("REDIS_TYPE", "sentinel"),
            ("REDIS_URL", url.as_str()),
            ("REDIS_TIMEOUT", "1s"),
            ("BACKEND_FAILURE_MODE", "closed"),
        ];
        env.extend(auth.map(|a| ("REDIS_SENTINEL_AUTH", a)));
        env
    };

    let served = serve(RULES, &env(Some("sentinel-secret"))).await;
    let mut client = served.client().await;
    for expected in [Code::Ok, Code::Ok, Code::OverLimit] {
        let resp = call(&mut client, request("shop", &[("user", "alice")])).await.unwrap();
        assert_eq!(resp.overall_code, expected as i32);
    }
    let keys = sentinel.master.cli(&["KEYS", "shop_user_alice_*"]).unwrap();
    assert!(keys.starts_with("shop_user_alice_"), "master holds {keys:?}");

    // Without it the sentinels refuse to name the master, and nothing is counted.
    let served = serve(RULES, &env(None)).await;
    let mut client = served.client().await;
    let err = call(&mut client, request("shop", &[("user", "bob")])).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    assert_eq!(sentinel.master.cli(&["KEYS", "shop_user_bob_*"]).as_deref(), Some(""));
}

const SPLIT_RULES: &str = r#"
domain: shop
descriptors:
  - key: user
    rate_limit: { unit: minute, requests_per_unit: 10 }
  - key: ip
    rate_limit: { unit: second, requests_per_unit: 10 }
  - key: api
    rate_limits:
      - { unit: second, requests_per_unit: 100 }
      - { unit: minute, requests_per_unit: 2 }
"#;

/// The sum of the counters under `pattern` in `redis`.
fn counted(redis: &RedisServer, pattern: &str) -> u64 {
    let keys = redis.cli(&["KEYS", pattern]).unwrap();
    keys.lines().filter(|k| !k.is_empty()).map(|k| redis.cli(&["GET", k]).unwrap().parse::<u64>().unwrap()).sum()
}

/// REDIS_PERSECOND: limits with unit SECOND are counted in REDIS_PERSECOND_URL's Redis, the
/// others in REDIS_URL's, one request touching both.
#[tokio::test]
async fn per_second_limits_in_their_own_redis() {
    let (main, fast) = (RedisServer::start(), RedisServer::start());
    let (main_addr, fast_addr) = (main.addr(), fast.addr());
    let served = serve(
        SPLIT_RULES,
        &[("REDIS_URL", &main_addr), ("REDIS_PERSECOND", "true"), ("REDIS_PERSECOND_URL", &fast_addr)],
    )
    .await;
    let mut client = served.client().await;
    for _ in 0..3 {
        let resp = call(&mut client, request_of("shop", &[&[("user", "alice")], &[("ip", "10.0.0.1")]])).await.unwrap();
        assert_eq!(resp.overall_code, Code::Ok as i32);
    }
    assert_eq!((counted(&main, "shop_user_alice_*"), counted(&fast, "shop_user_alice_*")), (3, 0));
    assert_eq!((counted(&main, "shop_ip_10.0.0.1_*"), counted(&fast, "shop_ip_10.0.0.1_*")), (0, 3));
}

/// With STOP_CACHE_KEY_INCREMENT_WHEN_OVERLIMIT, a request over its per-minute limit consumes
/// nothing in the per-second Redis either.
#[tokio::test]
async fn all_or_nothing_across_both_redis() {
    let (main, fast) = (RedisServer::start(), RedisServer::start());
    let (main_addr, fast_addr) = (main.addr(), fast.addr());
    let served = serve(
        SPLIT_RULES,
        &[
            ("REDIS_URL", &main_addr),
            ("REDIS_PERSECOND", "true"),
            ("REDIS_PERSECOND_URL", &fast_addr),
            ("STOP_CACHE_KEY_INCREMENT_WHEN_OVERLIMIT", "true"),
        ],
    )
    .await;
    let mut client = served.client().await;
    for expected in [Code::Ok, Code::Ok, Code::OverLimit, Code::OverLimit] {
        let resp = call(&mut client, request("shop", &[("api", "orders")])).await.unwrap();
        assert_eq!(resp.overall_code, expected as i32);
    }
    assert_eq!(counted(&main, "shop_api_orders_*"), 2);
    assert_eq!(counted(&fast, "shop_api_orders_*"), 2);
}
