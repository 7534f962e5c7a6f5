//! The REDIS_* variables end to end: a served App on real Redis processes (testkit fixtures on
//! loopback ports), asserting on the answers and on what each Redis holds.

mod support;

use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code;
use gatehouse_testkit::redis::RedisSentinel;
use support::{call, request, serve};

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
