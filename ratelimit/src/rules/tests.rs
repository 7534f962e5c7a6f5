use gatehouse_common::metrics::Metrics;

use super::*;

const CONFIG: &str = r#"
domain: gateway
descriptors:
  - key: remote_address
    rate_limit: { unit: second, requests_per_unit: 10 }
  - key: database
    value: users
    rate_limit: { unit: MINUTE, requests_per_unit: 500 }
    descriptors:
      - key: user
        rate_limit: { unit: hour, requests_per_unit: 20 }
  - key: path
    value: "/api/*"
    share_threshold: true
    rate_limit: { unit: day, requests_per_unit: 1000 }
  - key: path
    value: "/static/*"
    rate_limit: { unit: day, requests_per_unit: 5 }
  - key: path
    value: "/api/health"
    rate_limit: { unlimited: true }
  - key: plan
    value: premium
    rate_limits:
      - { unit: second, requests_per_unit: 10 }
      - { unit: day, requests_per_unit: 1000 }
      - { unit: minute, requests_per_unit: 100, algorithm: token_bucket, burst: 20 }
  - key: tenant
    value_to_metric: true
    rate_limit: { unit: second, requests_per_unit: 1, name: tenant_limit }
"#;

fn rules() -> RuleSet {
    RuleSet::from_yaml("gateway.yaml", CONFIG, &Stats::new(&Metrics::new())).unwrap()
}

/// Matches `entries` and returns (rule full key, cache key, stats key), or None.
fn lookup(set: &RuleSet, entries: &[(&str, &str)]) -> Option<(String, String, Option<String>)> {
    let m = set.domain("gateway")?.find(entries)?;
    let mut key = String::new();
    m.write_cache_key(&mut key, "", "gateway", entries);
    Some((m.rule.full_key.clone(), key, m.stats_key("gateway", entries)))
}

/// Request entries, and the expected (rule full key, cache key).
type MatchCase<'a> = (&'a [(&'a str, &'a str)], Option<(&'a str, &'a str)>);

#[test]
fn descriptor_matching() {
    let set = rules();
    #[rustfmt::skip]
    let cases: &[MatchCase<'_>] = &[
        // key-only: one counter per value
        (&[("remote_address", "10.0.0.1")], Some(("gateway.remote_address", "gateway_remote_address_10.0.0.1_"))),
        (&[("remote_address", "10.0.0.2")], Some(("gateway.remote_address", "gateway_remote_address_10.0.0.2_"))),
        // exact value, and nested
        (&[("database", "users")], Some(("gateway.database_users", "gateway_database_users_"))),
        (&[("database", "users"), ("user", "alice")], Some(("gateway.database_users.user", "gateway_database_users_user_alice_"))),
        (&[("database", "orders")], None),
        // depth must match: too deep or unknown child
        (&[("remote_address", "1.2.3.4"), ("x", "y")], None),
        // exact beats wildcard; share_threshold shares one counter; plain wildcard does not
        (&[("path", "/api/health")], Some(("gateway.path_/api/health", "gateway_path_/api/health_"))),
        (&[("path", "/api/orders")], Some(("gateway.path_/api/*", "gateway_path_/api/*_"))),
        (&[("path", "/api/users")], Some(("gateway.path_/api/*", "gateway_path_/api/*_"))),
        (&[("path", "/static/a.css")], Some(("gateway.path_/static/*", "gateway_path_/static/a.css_"))),
        (&[("path", "/other")], None),
        (&[("unknown", "x")], None),
    ];
    for (entries, expected) in cases {
        let got = lookup(&set, entries);
        let got = got.as_ref().map(|(rule, key, _)| (rule.as_str(), key.as_str()));
        assert_eq!(got, *expected, "entries {entries:?}");
    }
}

#[test]
fn unknown_domain_matches_nothing() {
    assert!(rules().domain("other").is_none());
}

#[test]
fn unlimited_and_multi_limit_rules() {
    let set = rules();
    let m = set.domain("gateway").unwrap();
    let health = m.find(&[("path", "/api/health")]).unwrap();
    assert!(health.rule.unlimited && health.rule.limits.is_empty());

    let premium = m.find(&[("plan", "premium")]).unwrap();
    let limits: Vec<_> = premium
        .rule
        .limits
        .iter()
        .map(|l| (l.requests_per_unit, l.unit, l.algorithm, l.burst, l.key_suffix.as_str()))
        .collect();
    assert_eq!(
        limits,
        vec![
            (10, Unit::Second, Algorithm::FixedWindow, 10, "fw1_"),
            (1000, Unit::Day, Algorithm::FixedWindow, 1000, "fw86400_"),
            (100, Unit::Minute, Algorithm::TokenBucket, 20, "tb60_"),
        ]
    );
    // A lone fixed-window limit keeps envoyproxy/ratelimit's key exactly.
    let single = m.find(&[("remote_address", "x")]).unwrap();
    assert_eq!(single.rule.limits[0].key_suffix, "");
}

#[test]
fn stats_keys_follow_value_to_metric_and_detailed_metric() {
    let set = rules();
    let (_, _, stats) = lookup(&set, &[("tenant", "acme")]).unwrap();
    assert_eq!(stats.as_deref(), Some("gateway.tenant_acme"));
    let (_, _, stats) = lookup(&set, &[("remote_address", "1.2.3.4")]).unwrap();
    assert_eq!(stats, None, "static rules use their full key");
}

#[test]
fn dump_lists_every_rule_like_rlconfig() {
    let dump = rules().dump();
    assert!(dump.contains("gateway.database_users: unit=MINUTE requests_per_unit=500, shadow_mode: false\n"), "{dump}");
    assert!(dump.contains("gateway.path_/api/health: unlimited, shadow_mode: false"), "{dump}");
    assert!(dump.contains("unit=MINUTE requests_per_unit=100 algorithm=token_bucket burst=20"), "{dump}");
    assert!(dump.contains("name: tenant_limit"), "{dump}");
}

/// Each invalid config and the error it must produce: (yaml, line, message fragment).
#[test]
fn validation_errors_name_line_and_problem() {
    #[rustfmt::skip]
    let cases: &[(&str, u64, &str)] = &[
        ("domain: d\ndescriptors:\n  - key: a\n    rate_limit: { unit: second, requests_per_unit: 1 }\n  - key: a\n    rate_limit: { unit: second, requests_per_unit: 2 }\n",
         5, "duplicate descriptor composite key 'd.a'"),
        ("domain: d\ndescriptors:\n  - key: a\n    value: b\n    rate_limit:\n      unit: fortnight\n      requests_per_unit: 1\n",
         6, "invalid rate limit unit 'fortnight'"),
        ("domain: d\ndescriptors:\n  - key: a\n    rate_limit:\n      unit: second\n      requests_per_unt: 1\n",
         6, "unknown field `requests_per_unt`, expected one of unit, requests_per_unit"),
        ("domain: d\ndescriptors:\n  - key: a\n    rate_limit: { unlimited: true, unit: second }\n",
         4, "should not specify rate limit unit when unlimited"),
        ("domain: d\ndescriptors:\n  - key: \"\"\n",
         3, "descriptor has empty key"),
        ("descriptors: []\n", 1, "config file cannot have empty domain"),
        ("domain: d\ndescriptors:\n  - key: a\n    value: b\n    share_threshold: true\n",
         5, "share_threshold can only be used with wildcard values"),
        ("domain: d\ndescriptors:\n  - key: a\n    rate_limit: { unit: second, requests_per_unit: 1, algorithm: leaky }\n",
         4, "unknown algorithm 'leaky'"),
        ("domain: d\ndescriptors:\n  - key: a\n    rate_limit: { unit: second, requests_per_unit: 1, burst: 5 }\n",
         4, "burst only applies to algorithm: token_bucket"),
        ("domain: d\ndescriptors:\n  - key: a\n    rate_limit:\n      name: x\n      unit: second\n      requests_per_unit: 1\n      replaces: [{ name: x }]\n",
         8, "replaces should not contain name of same descriptor"),
        ("domain: d\ndescriptors:\n  - key: a\n    rate_limits:\n      - { unit: second, requests_per_unit: 1 }\n      - { unit: second, requests_per_unit: 2 }\n",
         6, "two limits with unit SECOND"),
        ("domain: d\ndescriptors:\n  - key: a\n    rate_limit: { unit: second, requests_per_unit: -1 }\n",
         4, ""),
    ];
    for (yaml, line, fragment) in cases {
        let err = RuleSet::from_yaml("bad.yaml", yaml, &Stats::new(&Metrics::new())).unwrap_err();
        let first = &err.0[0];
        let text = first.to_string();
        assert!(text.starts_with(&format!("bad.yaml:{line}:")), "expected line {line}: {text}\n{yaml}");
        assert!(text.contains(fragment), "expected {fragment:?}: {text}");
    }
}

#[test]
fn duplicate_domain_across_files_unless_merged() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.yaml");
    let b = dir.path().join("b.yaml");
    std::fs::write(&a, "domain: d\ndescriptors:\n  - key: x\n    rate_limit: { unit: second, requests_per_unit: 1 }\n")
        .unwrap();
    std::fs::write(&b, "domain: d\ndescriptors:\n  - key: y\n    rate_limit: { unit: second, requests_per_unit: 1 }\n")
        .unwrap();
    let stats = Stats::new(&Metrics::new());
    let files = config_files(dir.path(), false).unwrap();
    let err = RuleSet::load(&files, false, &stats).unwrap_err();
    assert!(err.to_string().contains("duplicate domain 'd'"), "{err}");
    assert!(err.to_string().contains("b.yaml:1:"), "{err}");

    let merged = RuleSet::load(&files, true, &stats).unwrap();
    let d = merged.domain("d").unwrap();
    assert!(d.find(&[("x", "1")]).is_some() && d.find(&[("y", "1")]).is_some());
}
