//! Applying an xDS update: 10,000 descriptors in `RateLimitConfig` resources, decoded,
//! validated and swapped in, as one DiscoveryResponse is. `cargo bench -p gatehouse-ratelimit --bench xds`

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use envoy_types::pb::google::protobuf::Any;
use envoy_types::pb::ratelimit::config::ratelimit::v3::{
    RateLimitConfig, RateLimitDescriptor, RateLimitPolicy, RateLimitUnit,
};
use gatehouse_common::metrics::Metrics;
use gatehouse_common::reload::Reloader;
use gatehouse_ratelimit::rules::RuleSet;
use gatehouse_ratelimit::stats::Stats;
use gatehouse_ratelimit::xds::{TYPE_URL, rules_from_resources};
use prost::Message;

/// `domains` resources of `per_domain` descriptors each: `tenant=<i>` at 100/s, with a
/// nested `user` at 10/min under every tenth (Envoy Gateway's shape: one resource per
/// domain, one descriptor per rule).
fn resources(domains: usize, per_domain: usize) -> Vec<Any> {
    let policy = |unit: RateLimitUnit, n| {
        Some(RateLimitPolicy { unit: unit as i32, requests_per_unit: n, ..Default::default() })
    };
    (0..domains)
        .map(|d| {
            let descriptors = (0..per_domain)
                .map(|i| RateLimitDescriptor {
                    key: "tenant".into(),
                    value: format!("tenant-{i}"),
                    rate_limit: policy(RateLimitUnit::Second, 100),
                    descriptors: if i % 10 == 0 {
                        vec![RateLimitDescriptor {
                            key: "user".into(),
                            rate_limit: policy(RateLimitUnit::Minute, 10),
                            ..Default::default()
                        }]
                    } else {
                        Vec::new()
                    },
                    ..Default::default()
                })
                .collect();
            let config = RateLimitConfig { name: format!("domain-{d}"), domain: format!("domain-{d}"), descriptors };
            Any { type_url: TYPE_URL.into(), value: config.encode_to_vec() }
        })
        .collect()
}

fn apply_update(c: &mut Criterion) {
    let metrics = Metrics::new();
    let stats = Stats::new(&metrics);
    let rules = Reloader::new(RuleSet::default(), &metrics, "config");
    // 10 domains x 1,000 tenants, plus 1,000 nested user descriptors: 11,000 descriptors.
    let update = resources(10, 1_000);
    c.bench_function("xds_apply_10k_descriptors", |b| {
        b.iter(|| {
            let set = rules_from_resources(black_box(&update), false, &stats).expect("valid update");
            rules.apply(Ok(set))
        })
    });
    let one_domain = resources(1, 10_000);
    c.bench_function("xds_apply_10k_descriptors_one_domain", |b| {
        b.iter(|| {
            let set = rules_from_resources(black_box(&one_domain), false, &stats).expect("valid update");
            rules.apply(Ok(set))
        })
    });
}

criterion_group!(benches, apply_update);
criterion_main!(benches);
