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
    assert!(
        dump.contains(
            "gateway.database_users: unit=MINUTE requests_per_unit=500, shadow_mode: false, quota_mode: false\n"
        ),
        "{dump}"
    );
    assert!(dump.contains("gateway.path_/api/health: unlimited, shadow_mode: false, quota_mode: false"), "{dump}");
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
         5, "share_threshold can only be used with wildcard values (containing '*'), but found key 'a_b'"),
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
        // The failures of envoyproxy/ratelimit's own test files, in our words.
        ("descriptors:\n", 1, "config file cannot have empty domain"),
        ("domain: d\ndescriptors:\n  - value: v\n", 3, "missing field `key`"),
        ("domain: d\ndescriptors:\n  - key: a\n    rate_limit:\n      name: x\n      replaces:\n        - name:\n      unit: second\n      requests_per_unit: 1\n",
         7, "should not have an empty replaces entry"),
        ("domain: d\ndescriptors:\n  - key: a\n    ratelimit: { unit: day, requests_per_unit: 5 }\n",
         4, "unknown field `ratelimit`"),
        ("0.25: d\ndescriptors: []\n", 1, "unknown field `0.25`"),
        ("domain: d\ndescriptors:\n  - a\n  - b\n", 3, ""),
        ("'''\n", 1, ""),
        ("domain: d\ndescriptors:\n  - key: a\n    metadata: just-a-string\n", 4, ""),
        ("domain: d\ndescriptors:\n  - key: a\n    value: \"a*\"\n  - key: a\n    value: \"a*\"\n",
         5, "duplicate descriptor composite key 'd.a_a*'"),
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

#[test]
fn merged_files_cannot_repeat_a_descriptor() {
    let dir = tempfile::tempdir().unwrap();
    let rule = "domain: d\ndescriptors:\n  - key: x\n    value: \"1*\"\n    rate_limit: { unit: second, requests_per_unit: 1 }\n";
    std::fs::write(dir.path().join("a.yaml"), rule).unwrap();
    std::fs::write(dir.path().join("b.yaml"), rule).unwrap();
    let files = config_files(dir.path(), false).unwrap();
    let err = RuleSet::load(&files, true, &Stats::new(&Metrics::new())).unwrap_err();
    assert!(err.to_string().contains("b.yaml:3:"), "{err}");
    assert!(err.to_string().contains("duplicate descriptor composite key 'd.x_1*'"), "{err}");
}

/// (pattern, value, matches): `*` is any run of characters, the empty one included.
#[test]
fn wildcard_patterns() {
    #[rustfmt::skip]
    let cases: &[(&str, &str, bool)] = &[
        ("foo*", "foo", true), ("foo*", "foobar", true), ("foo*", "fo", false), ("foo*", "xfoo", false),
        ("*foo", "xfoo", true), ("*foo", "foox", false),
        ("*", "", true), ("**", "anything", true), ("a**b", "ab", true),
        ("bar*b", "barb", true), ("bar*b", "bar123b", true), ("bar*b", "bara", false), ("bar*b", "xbarb", false),
        // Prefix and suffix may not share characters.
        ("a*a", "a", false), ("a*a", "aa", true), ("ab*ba", "aba", false), ("ab*ba", "abba", true),
        // Middles in order, none overlapping another or the ends.
        ("foo*bar*baz", "foobarbaz", true), ("foo*bar*baz", "foo1bar2baz", true),
        ("foo*bar*baz", "foo123baz", false), ("foo*bar*baz", "foobazbar", false),
        ("*a*a*", "a", false), ("*a*a*", "xaya", true), ("x*y*z", "xzyz", true),
        ("/api/*/action", "/api/action", false), ("/api/*/action", "/api//action", true),
        ("é*ü", "éxü", true), ("é*", "e", false),
    ];
    for &(pattern, value, expected) in cases {
        let wildcard = Wildcard::parse(pattern).unwrap();
        assert_eq!(wildcard.matches(value), expected, "{pattern:?} against {value:?}");
    }
    assert!(Wildcard::parse("no-star").is_none());
}

const WILDCARDS: &str = r#"
domain: w
descriptors:
  - key: path
    value: /api/health
    rate_limit: { unit: second, requests_per_unit: 1 }
  - key: path
    value: /api/*/action
    rate_limit: { unit: second, requests_per_unit: 2 }
  - key: path
    value: /api/*
    rate_limit: { unit: second, requests_per_unit: 3 }
  - key: path
    rate_limit: { unit: second, requests_per_unit: 4 }
  - key: multi
    value: a*b*c
    rate_limit: { unit: second, requests_per_unit: 5 }
  - key: multi
    value: "*x*"
    rate_limit: { unit: second, requests_per_unit: 6 }
  # File order decides between wildcards, however specific.
  - key: order
    value: a*
    rate_limit: { unit: second, requests_per_unit: 7 }
  - key: order
    value: ab*
    rate_limit: { unit: second, requests_per_unit: 8 }
  - key: literal
    value: foo
    rate_limit: { unit: second, requests_per_unit: 9 }
  - key: nested
    value: v1
    descriptors:
      - key: file
        value: "*.css"
        rate_limit: { unit: second, requests_per_unit: 10 }
  - key: strict
    value: x*
    descriptors:
      - key: child
        rate_limit: { unit: second, requests_per_unit: 11 }
  - key: strict
    descriptors:
      - key: other
        rate_limit: { unit: second, requests_per_unit: 12 }
  - key: flag
    value: v*
    value_to_metric: true
    rate_limit: { unit: second, requests_per_unit: 13 }
  - key: wild
    value: foo*
    descriptors:
      - key: other
        value_to_metric: true
        descriptors:
          - key: limit
            rate_limit: { unit: second, requests_per_unit: 14 }
"#;

/// Request entries, and the expected (rule full key, cache key, stats key if not the full key).
type KeyCase<'a> = (&'a [(&'a str, &'a str)], Option<(&'a str, &'a str, Option<&'a str>)>);

fn check_keys(yaml: &str, domain: &str, cases: &[KeyCase<'_>]) {
    let set = RuleSet::from_yaml("keys.yaml", yaml, &Stats::new(&Metrics::new())).unwrap();
    let domain_rules = set.domain(domain).unwrap();
    for (entries, expected) in cases {
        let got = domain_rules.find(entries).map(|m| {
            let mut key = String::new();
            m.write_cache_key(&mut key, "", domain, entries);
            (m.rule.full_key.clone(), key, m.stats_key(domain, entries))
        });
        let got = got.as_ref().map(|(rule, key, stats)| (rule.as_str(), key.as_str(), stats.as_deref()));
        assert_eq!(got, *expected, "entries {entries:?}");
    }
}

#[test]
fn wildcards_anywhere_in_a_value() {
    #[rustfmt::skip]
    check_keys(WILDCARDS, "w", &[
        // Exact, then the first wildcard in file order, then the default.
        (&[("path", "/api/health")], Some(("w.path_/api/health", "w_path_/api/health_", None))),
        (&[("path", "/api/users/action")], Some(("w.path_/api/*/action", "w_path_/api/users/action_", None))),
        (&[("path", "/api//action")], Some(("w.path_/api/*/action", "w_path_/api//action_", None))),
        (&[("path", "/api/action")], Some(("w.path_/api/*", "w_path_/api/action_", None))),
        (&[("path", "/api/users/other")], Some(("w.path_/api/*", "w_path_/api/users/other_", None))),
        (&[("path", "/apix")], Some(("w.path", "w_path_/apix_", None))),
        (&[("multi", "abc")], Some(("w.multi_a*b*c", "w_multi_abc_", None))),
        (&[("multi", "a-x-b-c")], Some(("w.multi_a*b*c", "w_multi_a-x-b-c_", None))),
        (&[("multi", "zxz")], Some(("w.multi_*x*", "w_multi_zxz_", None))),
        (&[("multi", "acb")], None),
        (&[("order", "abc")], Some(("w.order_a*", "w_order_abc_", None))),
        // A request value that is a wildcard as written finds that wildcard first.
        (&[("order", "ab*")], Some(("w.order_ab*", "w_order_ab*_", None))),
        // A value without `*` matches only itself.
        (&[("literal", "foo1")], None),
        (&[("nested", "v1"), ("file", "site.css")], Some(("w.nested_v1.file_*.css", "w_nested_v1_file_site.css_", None))),
        (&[("nested", "v1"), ("file", "site.js")], None),
        // A matched wildcard is not given up for the default when the next level misses.
        (&[("strict", "x1"), ("child", "c")], Some(("w.strict_x*.child", "w_strict_x1_child_c_", None))),
        (&[("strict", "x1"), ("other", "o")], None),
        (&[("strict", "y1"), ("other", "o")], Some(("w.strict.other", "w_strict_y1_other_o_", None))),
        // value_to_metric shows the request's value; elsewhere a wildcard shows itself.
        (&[("flag", "v42")], Some(("w.flag_v*", "w_flag_v42_", Some("w.flag_v42")))),
        (&[("wild", "foo1"), ("other", "bar"), ("limit", "X")],
         Some(("w.wild_foo*.other.limit", "w_wild_foo1_other_bar_limit_X_", Some("w.wild_foo*.other_bar.limit")))),
    ]);
}

const SHARED: &str = r#"
domain: s
descriptors:
  - key: doc
    value: docs/*
    share_threshold: true
    rate_limit: { unit: minute, requests_per_unit: 100 }
  - key: team
    value: eng
    descriptors:
      - key: doc
        value: drafts/*
        share_threshold: true
        rate_limit: { unit: minute, requests_per_unit: 200 }
  - key: doc
    value: top/*
    share_threshold: true
    descriptors:
      - key: doc
        value: sub/*
        share_threshold: true
        rate_limit: { unit: minute, requests_per_unit: 300 }
  - key: route
    value: v1/*
    share_threshold: true
    value_to_metric: true
    descriptors:
      - key: verb
        rate_limit: { unit: minute, requests_per_unit: 60 }
  - key: svc
    value: svc-*
    share_threshold: true
    descriptors:
      - key: op
        detailed_metric: true
        rate_limit: { unit: minute, requests_per_unit: 80 }
  - key: bucket
    value: b/*
    share_threshold: true
    descriptors:
      - key: obj
        value: o/*
        share_threshold: false
        descriptors:
          - key: kind
            rate_limit: { unit: minute, requests_per_unit: 120 }
  - key: name
    value: report1
    rate_limit: { unit: minute, requests_per_unit: 50 }
  - key: name
    value: report*
    share_threshold: true
    rate_limit: { unit: minute, requests_per_unit: 100 }
  - key: mid
    value: /v*/users
    share_threshold: true
    value_to_metric: true
    rate_limit: { unit: minute, requests_per_unit: 80 }
  - key: many
    value: r*g*n
    share_threshold: true
    rate_limit: { unit: minute, requests_per_unit: 50 }
  - key: tenant
    descriptors:
      - key: user
        detailed_metric: true
        rate_limit: { unit: minute, requests_per_unit: 10 }
"#;

/// share_threshold: every value a wildcard matches counts against one counter, named by the
/// wildcard in both the cache key and the stats key, whatever value_to_metric and
/// detailed_metric say.
#[test]
fn share_threshold_keys() {
    #[rustfmt::skip]
    check_keys(SHARED, "s", &[
        (&[("doc", "docs/a.pdf")], Some(("s.doc_docs/*", "s_doc_docs/*_", None))),
        (&[("doc", "docs/b.csv")], Some(("s.doc_docs/*", "s_doc_docs/*_", None))),
        (&[("team", "eng"), ("doc", "drafts/x")], Some(("s.team_eng.doc_drafts/*", "s_team_eng_doc_drafts/*_", None))),
        // The same key at two levels: each level keeps its own wildcard.
        (&[("doc", "top/1"), ("doc", "sub/2")], Some(("s.doc_top/*.doc_sub/*", "s_doc_top/*_doc_sub/*_", None))),
        (&[("route", "v1/users"), ("verb", "GET")], Some(("s.route_v1/*.verb", "s_route_v1/*_verb_GET_", Some("s.route_v1/*.verb")))),
        (&[("svc", "svc-billing"), ("op", "get")], Some(("s.svc_svc-*.op", "s_svc_svc-*_op_get_", Some("s.svc_svc-*.op_get")))),
        // detailed_metric next to a shared wildcard drops the `_` of an empty value...
        (&[("svc", "svc-billing"), ("op", "")], Some(("s.svc_svc-*.op", "s_svc_svc-*_op__", Some("s.svc_svc-*.op")))),
        // ...and keeps it otherwise.
        (&[("tenant", ""), ("user", "u1")], Some(("s.tenant.user", "s_tenant__user_u1_", Some("s.tenant_.user_u1")))),
        // Only the sharing level is folded; a plain wildcard below it counts per value.
        (&[("bucket", "b/1"), ("obj", "o/2"), ("kind", "pdf")],
         Some(("s.bucket_b/*.obj_o/*.kind", "s_bucket_b/*_obj_o/2_kind_pdf_", None))),
        // An exact value keeps its own counter next to a sharing wildcard.
        (&[("name", "report1")], Some(("s.name_report1", "s_name_report1_", None))),
        (&[("name", "report23")], Some(("s.name_report*", "s_name_report*_", None))),
        (&[("mid", "/v2/users")], Some(("s.mid_/v*/users", "s_mid_/v*/users_", Some("s.mid_/v*/users")))),
        (&[("mid", "/v2/teams")], None),
        (&[("many", "region")], Some(("s.many_r*g*n", "s_many_r*g*n_", None))),
        (&[("many", "running")], None),
    ]);
}

#[test]
fn metadata_and_quota_mode_are_kept_on_the_rule() {
    let yaml = r#"
domain: q
descriptors:
  - key: service
    value: s1
    quota_mode: true
    rate_limit: { unit: minute, requests_per_unit: 1 }
    metadata:
      service_with_quota: { name: s1, weight: 3, tags: [a, b], canary: false, note: null }
  - key: service
    value: s2
    rate_limit: { unit: minute, requests_per_unit: 2 }
    metadata: {}
  - key: service
    value: s3
    metadata: { ignored: "no rate_limit, no rule" }
    descriptors:
      - key: user
        rate_limit: { unit: minute, requests_per_unit: 3 }
        metadata:
"#;
    let set = RuleSet::from_yaml("q.yaml", yaml, &Stats::new(&Metrics::new())).unwrap();
    let domain = set.domain("q").unwrap();
    let s1 = domain.find(&[("service", "s1")]).unwrap().rule;
    assert!(s1.quota_mode);
    let metadata = gatehouse_common::pbjson::from_struct(s1.metadata.as_ref().unwrap());
    let expected = serde_json::json!({
        "service_with_quota": { "name": "s1", "weight": 3.0, "tags": ["a", "b"], "canary": false, "note": null }
    });
    assert_eq!(serde_json::Value::Object(metadata), expected);

    let s2 = domain.find(&[("service", "s2")]).unwrap().rule;
    assert!(!s2.quota_mode && s2.metadata.is_none(), "an empty mapping is no metadata");
    let user = domain.find(&[("service", "s3"), ("user", "u")]).unwrap().rule;
    assert!(user.metadata.is_none());
    assert!(set.dump().contains("q.service_s1: unit=MINUTE requests_per_unit=1, shadow_mode: false, quota_mode: true"));
}

/// A key written without a value means its default, as envoyproxy/ratelimit reads it.
#[test]
fn keys_without_values_mean_their_defaults() {
    let yaml = "domain: d\ndescriptors:\n  - key: a\n    shadow_mode:\n    quota_mode:\n    descriptors:\n  - key: b\n    rate_limit:\n      unit: second\n      requests_per_unit: 1\n      replaces:\n";
    let set = RuleSet::from_yaml("d.yaml", yaml, &Stats::new(&Metrics::new())).unwrap();
    let b = set.domain("d").unwrap().find(&[("b", "x")]).unwrap().rule;
    assert!(!b.shadow_mode && b.replaces.is_empty());
    let empty = RuleSet::from_yaml("e.yaml", "domain: e\ndescriptors:\n", &Stats::new(&Metrics::new())).unwrap();
    assert!(empty.domain("e").is_some());
}
