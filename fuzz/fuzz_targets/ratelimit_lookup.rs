//! Drives the descriptor → rule lookup and key building of `gatehouse_ratelimit::rules`. The
//! input is lines of text: the cache-key prefix, the domain, then one `key=value` descriptor
//! entry per line. The descriptor is looked up in the demo rules
//! (`examples/ratelimit/config/gateway.yaml`) and `fuzz/fixtures/ratelimit_rules.yaml`; a match
//! writes its cache key and stats key.
//!
//! Asserts: no panic; the cache key starts with `prefix + domain + "_"` and ends with `_`, and
//! without `share_threshold` it is exactly envoyproxy/ratelimit's `prefix + domain + "_" +
//! (key + "_" + value + "_")*`; the stats key, when there is one, starts with the domain.
#![no_main]

use std::sync::LazyLock;

use gatehouse_common::metrics::Metrics;
use gatehouse_ratelimit::rules::RuleSet;
use gatehouse_ratelimit::stats::Stats;
use libfuzzer_sys::fuzz_target;

const DEMO: &str = include_str!("../../examples/ratelimit/config/gateway.yaml");
const EXTRA: &str = include_str!("../fixtures/ratelimit_rules.yaml");

static RULES: LazyLock<(RuleSet, RuleSet)> = LazyLock::new(|| {
    let stats = Stats::new(&Metrics::new());
    let load = |name, text| RuleSet::from_yaml(name, text, &stats).expect("the fuzz rules are valid");
    (load("gateway.yaml", DEMO), load("ratelimit_rules.yaml", EXTRA))
});

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let mut lines = text.split('\n');
    let prefix = lines.next().unwrap_or_default();
    let domain_name = lines.next().unwrap_or_default();
    let entries: Vec<(String, String)> = lines
        .map(|line| line.split_once('=').unwrap_or((line, "")))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let (demo, extra) = &*RULES;
    for rules in [demo, extra] {
        let Some(domain) = rules.domain(domain_name) else { continue };
        let Some(matched) = domain.find(&entries) else { continue };
        assert!(!entries.is_empty());
        let mut key = String::new();
        matched.write_cache_key(&mut key, prefix, domain_name, &entries);
        let head = format!("{prefix}{domain_name}_");
        assert!(key.starts_with(&head), "{key:?}");
        assert!(key.ends_with('_'), "{key:?}");
        if std::ptr::eq(rules, demo) {
            // No `share_threshold` in the demo rules: the key holds the request's values.
            let mut plain = head.clone();
            for (k, v) in &entries {
                plain.push_str(&format!("{k}_{v}_"));
            }
            assert_eq!(key, plain);
        }
        if let Some(stats_key) = matched.stats_key(domain_name, &entries) {
            assert!(stats_key.starts_with(domain_name), "{stats_key:?}");
        }
    }
});
