//! Hot functions of the request path: descriptor matching and cache-key building, and a
//! whole ShouldRateLimit on the memory store. `cargo bench -p gatehouse-ratelimit`

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest;
use gatehouse_common::metrics::Metrics;
use gatehouse_common::reload::Reloader;
use gatehouse_ratelimit::clock::Clock;
use gatehouse_ratelimit::rules::RuleSet;
use gatehouse_ratelimit::service::{Options, RateLimiter};
use gatehouse_ratelimit::settings::{FailureMode, HeaderFormat, ResponseHeaders};
use gatehouse_ratelimit::stats::Stats;
use gatehouse_ratelimit::storage::Mode;
use gatehouse_ratelimit::storage::memory::MemoryStore;

/// A domain with a few hundred rules, like a gateway serving many teams.
fn config() -> String {
    let mut yaml = String::from("domain: gateway\ndescriptors:\n");
    for i in 0..200 {
        yaml.push_str(&format!(
            "  - key: api\n    value: service-{i}\n    rate_limit: {{ unit: second, requests_per_unit: 100 }}\n    descriptors:\n      - key: user\n        rate_limit: {{ unit: minute, requests_per_unit: 10 }}\n"
        ));
    }
    yaml.push_str("  - key: path\n    value: \"/static/*\"\n    rate_limit: { unit: second, requests_per_unit: 5 }\n");
    // Wildcards inside values: tried in file order after the exact values miss.
    for i in 0..20 {
        yaml.push_str(&format!(
            "  - key: route\n    value: \"/api/v{i}/*/action\"\n    rate_limit: {{ unit: second, requests_per_unit: 5 }}\n"
        ));
    }
    yaml.push_str(
        "  - key: route\n    value: \"/svc/*/res/*/op*\"\n    rate_limit: { unit: second, requests_per_unit: 5 }\n",
    );
    yaml.push_str("  - key: remote_address\n    rate_limit: { unit: second, requests_per_unit: 5 }\n");
    yaml
}

fn entries(pairs: &[(&str, &str)]) -> Vec<Entry> {
    pairs.iter().map(|(k, v)| Entry { key: k.to_string(), value: v.to_string() }).collect()
}

fn matching(c: &mut Criterion) {
    let stats = Stats::new(&Metrics::new());
    let rules = RuleSet::from_yaml("bench.yaml", &config(), &stats).expect("valid bench config");
    let domain = rules.domain("gateway").expect("domain");
    let nested = entries(&[("api", "service-150"), ("user", "alice")]);
    let wildcard = entries(&[("path", "/static/app.js")]);
    let key_only = entries(&[("remote_address", "10.1.2.3")]);
    // The 20th of 21 wildcards of its key, and the 21st with three `*`.
    let middle = entries(&[("route", "/api/v19/users-42/action")]);
    let multi = entries(&[("route", "/svc/billing/res/invoice-7/op-read")]);
    for matching in [&nested, &wildcard, &key_only, &middle, &multi] {
        assert!(domain.find(matching).is_some(), "bench descriptor must match: {matching:?}");
    }

    let mut group = c.benchmark_group("match");
    group.bench_function("nested_exact", |b| b.iter(|| domain.find(black_box(&nested)).is_some()));
    group.bench_function("wildcard", |b| b.iter(|| domain.find(black_box(&wildcard)).is_some()));
    group.bench_function("key_only", |b| b.iter(|| domain.find(black_box(&key_only)).is_some()));
    group.bench_function("wildcard_middle_20th", |b| b.iter(|| domain.find(black_box(&middle)).is_some()));
    group.bench_function("wildcard_multi_21st", |b| b.iter(|| domain.find(black_box(&multi)).is_some()));
    group.finish();

    let matched = domain.find(&nested).expect("match");
    c.bench_function("cache_key/nested", |b| {
        b.iter(|| {
            let mut key = String::with_capacity(64);
            matched.write_cache_key(&mut key, "", "gateway", black_box(&nested));
            key
        })
    });
}

fn should_rate_limit(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
    let metrics = Metrics::new();
    let stats = Stats::new(&metrics);
    let rules = RuleSet::from_yaml("bench.yaml", &config(), &stats).expect("valid bench config");
    let limiter = RateLimiter::new(
        Reloader::new(rules, &metrics, "config"),
        MemoryStore::new(1_000_000, Clock::System) as Arc<_>,
        Clock::System,
        stats,
        Options {
            cache_key_prefix: String::new(),
            near_limit_ratio: 0.8,
            mode: Mode::Independent,
            shadow_mode: false,
            quota_mode: false,
            headers: ResponseHeaders {
                enabled: true,
                format: HeaderFormat::Split,
                limit: "RateLimit-Limit".into(),
                remaining: "RateLimit-Remaining".into(),
                reset: "RateLimit-Reset".into(),
            },
            dynamic_metadata: false,
            failure_mode: FailureMode::Closed,
        },
    );
    let request = RateLimitRequest {
        domain: "gateway".into(),
        descriptors: vec![
            RateLimitDescriptor {
                entries: entries(&[("api", "service-150"), ("user", "alice")]),
                ..Default::default()
            },
            RateLimitDescriptor { entries: entries(&[("remote_address", "10.1.2.3")]), ..Default::default() },
        ],
        hits_addend: 0,
    };
    c.bench_function("should_rate_limit/memory/2_descriptors", |b| {
        b.iter(|| runtime.block_on(limiter.should_rate_limit(black_box(&request))).is_ok())
    });
}

criterion_group!(benches, matching, should_rate_limit);
criterion_main!(benches);
