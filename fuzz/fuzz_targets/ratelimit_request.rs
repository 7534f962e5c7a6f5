//! Drives ShouldRateLimit end to end without a network: arbitrary bytes are decoded as a
//! protobuf `RateLimitRequest` (as tonic would) and handled by `RateLimiter` over the
//! in-memory store, with the demo rules or `fuzz/fixtures/ratelimit_rules.yaml`. The first two
//! bytes choose the options (store mode, shadow mode, header format, metadata, rule file) and
//! the clock's position in the window. Every input gets a fresh limiter, so a crash replays
//! from its input alone; each request is handled twice, the second time over the counters the
//! first one wrote.
//!
//! Asserts: no panic (counter arithmetic on any `hits_addend`, any limit); an error only for
//! an empty domain or an empty descriptor list; one status per descriptor; the overall code
//! is OVER_LIMIT exactly when some descriptor is, unless global shadow mode is on.
#![no_main]

use std::sync::LazyLock;

use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code;
use gatehouse_common::metrics::Metrics;
use gatehouse_common::reload::Reloader;
use gatehouse_ratelimit::clock::Clock;
use gatehouse_ratelimit::rules::RuleSet;
use gatehouse_ratelimit::service::{Options, RateLimiter};
use gatehouse_ratelimit::settings::{FailureMode, HeaderFormat, ResponseHeaders};
use gatehouse_ratelimit::stats::Stats;
use gatehouse_ratelimit::storage::Mode;
use gatehouse_ratelimit::storage::memory::MemoryStore;
use libfuzzer_sys::fuzz_target;
use prost::Message;
use tokio::runtime::Runtime;

const DEMO: &str = include_str!("../../examples/ratelimit/config/gateway.yaml");
const EXTRA: &str = include_str!("../fixtures/ratelimit_rules.yaml");

static RUNTIME: LazyLock<Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_current_thread().enable_time().build().expect("a current-thread runtime")
});

fuzz_target!(|data: &[u8]| {
    let [flags, time, bytes @ ..] = data else { return };
    let Ok(request) = RateLimitRequest::decode(bytes) else { return };
    let bit = |n: u8| flags & (1 << n) != 0;

    let metrics = Metrics::new();
    let stats = Stats::new(&metrics);
    let (name, text) = if bit(0) { ("ratelimit_rules.yaml", EXTRA) } else { ("gateway.yaml", DEMO) };
    let rules = RuleSet::from_yaml(name, text, &stats).expect("the fuzz rules are valid");
    let clock = Clock::manual(1_700_000_000_000 + u64::from(*time) * 7_919);
    let store = MemoryStore::new(1024, clock.clone());
    let shadow_mode = bit(2);
    let options = Options {
        cache_key_prefix: if bit(6) { "rl:".into() } else { String::new() },
        near_limit_ratio: 0.8,
        mode: if bit(1) { Mode::AllOrNothing } else { Mode::Independent },
        shadow_mode,
        quota_mode: false,
        headers: ResponseHeaders {
            enabled: bit(3),
            format: if bit(4) { HeaderFormat::Ietf } else { HeaderFormat::Split },
            limit: "RateLimit-Limit".into(),
            remaining: "RateLimit-Remaining".into(),
            reset: "RateLimit-Reset".into(),
        },
        dynamic_metadata: bit(5),
        failure_mode: FailureMode::Closed,
    };
    let limiter = RateLimiter::new(Reloader::new(rules, &metrics, "fuzz"), store, clock, stats, options);

    for _ in 0..2 {
        match RUNTIME.block_on(limiter.should_rate_limit(&request)) {
            Ok(response) => {
                assert_eq!(response.statuses.len(), request.descriptors.len());
                let over = response.statuses.iter().any(|s| s.code == Code::OverLimit as i32);
                let overall_over = response.overall_code == Code::OverLimit as i32;
                assert_eq!(overall_over, over && !shadow_mode, "{response:?}");
            }
            Err(e) => assert!(
                request.domain.is_empty() || request.descriptors.is_empty(),
                "a valid request failed on the memory store: {e}"
            ),
        }
    }
});
