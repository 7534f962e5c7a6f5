//! What the admin API reads from the rule tree: every rule, and a stored counter key read back
//! into the descriptor that wrote it.

use std::sync::Arc;

use super::{Children, Domain, NodeKind, Rule, RuleSet};

/// A descriptor read back from a counter key, and what follows it in the key.
#[derive(Debug)]
pub struct ReadKey<'a, T> {
    pub entries: Vec<(String, String)>,
    pub rule: &'a Arc<Rule>,
    /// What `accept` made of the rest of the key.
    pub tail: T,
}

impl RuleSet {
    /// Every rule with its domain, or only `domain`'s when given; sorted by full key.
    pub fn rules(&self, domain: Option<&str>) -> Vec<(&str, &Arc<Rule>)> {
        let mut rules = Vec::new();
        for d in self.domains.values().filter(|d| domain.is_none_or(|name| d.name == name)) {
            collect(&d.children, &mut |rule| rules.push((d.name.as_str(), rule)));
        }
        rules.sort_by(|a, b| a.1.full_key.cmp(&b.1.full_key));
        rules
    }
}

fn collect<'a>(children: &'a Children, f: &mut impl FnMut(&'a Arc<Rule>)) {
    for group in children.values() {
        for node in &group.nodes {
            if let Some(rule) = &node.rule {
                f(rule);
            }
            collect(&node.children, f);
        }
    }
}

impl Domain {
    /// Reads back `key`, a counter key without its `prefix + domain + "_"` (what
    /// [`super::Matched::write_cache_key`] writes, then the limit's suffix and window): the
    /// descriptor and rule of the first reading whose rest `accept` takes. Keys and values
    /// may hold `_` themselves, so every split is tried, guided by the keys the tree holds,
    /// and a reading holds only if the descriptor would write this very key.
    pub fn read_cache_key<'a, T>(
        &'a self,
        key: &str,
        accept: impl Fn(&Rule, &str) -> Option<T>,
    ) -> Option<ReadKey<'a, T>> {
        let mut entries = Vec::new();
        let (rule, tail) = walk(&self.children, key, &mut entries, &accept)?;
        Some(ReadKey { entries, rule, tail })
    }
}

fn walk<'a, T>(
    level: &'a Children,
    key: &str,
    entries: &mut Vec<(String, String)>,
    accept: &impl Fn(&Rule, &str) -> Option<T>,
) -> Option<(&'a Arc<Rule>, T)> {
    for (name, group) in level {
        let Some(after) = key.strip_prefix(name.as_str()).and_then(|rest| rest.strip_prefix('_')) else {
            continue;
        };
        // Every `_` may end the value.
        for (at, _) in after.match_indices('_') {
            let (value, rest) = (&after[..at], &after[at + 1..]);
            let Some(node) = group.find(value) else { continue };
            // A `share_threshold` wildcard writes itself, not the request's value.
            if matches!(node.kind, NodeKind::Wildcard { share_threshold: true, .. }) && value != node.value {
                continue;
            }
            entries.push((name.clone(), value.to_string()));
            if let Some(rule) = &node.rule
                && let Some(tail) = accept(rule, rest)
            {
                return Some((rule, tail));
            }
            if let Some(found) = walk(&node.children, rest, entries, accept) {
                return Some(found);
            }
            entries.pop();
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Stats;

    const RULES: &str = r#"
domain: shop
descriptors:
  - key: generic_key
    value: a_b
    rate_limit: { unit: minute, requests_per_unit: 5 }
    descriptors:
      - key: user_id
        rate_limit: { unit: second, requests_per_unit: 1 }
  - key: user_id
    rate_limits:
      - { unit: minute, requests_per_unit: 10 }
      - { unit: hour, requests_per_unit: 100, algorithm: token_bucket }
  - key: path
    value: /api_*
    share_threshold: true
    rate_limit: { unit: minute, requests_per_unit: 3 }
  - key: path
    value: /v1_*
    rate_limit: { unit: minute, requests_per_unit: 3 }
"#;

    fn rules() -> RuleSet {
        RuleSet::from_yaml("rules.yaml", RULES, &Stats::new(&gatehouse_common::metrics::Metrics::new())).unwrap()
    }

    /// The key the service writes for `entries`, without the prefix and domain.
    fn written(set: &RuleSet, entries: &[(&str, &str)]) -> String {
        let domain = set.domain("shop").unwrap();
        let matched = domain.find(entries).unwrap();
        let mut key = String::new();
        matched.write_cache_key(&mut key, "", "shop", entries);
        key["shop_".len()..].to_string()
    }

    /// Reads `key` back, the rest being what follows the descriptor.
    fn read(set: &RuleSet, key: &str) -> Option<(Vec<(String, String)>, String, String)> {
        let domain = set.domain("shop").unwrap();
        // A limit's suffix, then a window's start (none for a token bucket).
        let accept = |rule: &Rule, rest: &str| {
            let window = |w: &str| w.is_empty() || w.bytes().all(|b| b.is_ascii_digit());
            rule.limits
                .iter()
                .any(|l| rest.strip_prefix(l.key_suffix.as_str()).is_some_and(window))
                .then(|| rest.to_string())
        };
        domain.read_cache_key(key, accept).map(|r| (r.entries, r.rule.full_key.clone(), r.tail))
    }

    #[test]
    fn keys_read_back_into_their_descriptors() {
        let set = rules();
        let entries = |list: &[(&str, &str)]| -> Vec<(String, String)> {
            list.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
        };
        for (descriptor, window, full_key, expected) in [
            // `_` inside keys and values: the tree's keys guide the split.
            (&[("generic_key", "a_b")][..], "1700000000", "shop.generic_key_a_b", None),
            (&[("generic_key", "a_b"), ("user_id", "x_y_z")], "1700000000", "shop.generic_key_a_b.user_id", None),
            (&[("user_id", "alice_1")], "fw60_1700000000", "shop.user_id", None),
            (&[("user_id", "alice_1")], "tb3600_", "shop.user_id", None),
            // A shared wildcard writes itself; a plain one the request's value.
            (&[("path", "/api_users")], "1700000000", "shop.path_/api_*", Some(&[("path", "/api_*")][..])),
            (&[("path", "/v1_users")], "1700000000", "shop.path_/v1_*", None),
        ] {
            let key = format!("{}{window}", written(&set, descriptor));
            let read = read(&set, &key).unwrap_or_else(|| panic!("{key} not read"));
            assert_eq!(
                read,
                (entries(expected.unwrap_or(descriptor)), full_key.to_string(), window.to_string()),
                "{key}"
            );
        }
    }

    #[test]
    fn keys_no_rule_writes_are_not_read() {
        let set = rules();
        for key in ["", "other_x_1700000000", "user_id", "generic_key_c_1700000000", "path_/api_x_1700000000"] {
            assert_eq!(read(&set, key), None, "{key}");
        }
    }

    #[test]
    fn every_rule_sorted_with_its_source() {
        let set = rules();
        let listed: Vec<_> =
            set.rules(None).iter().map(|(d, r)| format!("{d} {} {}", r.full_key, r.source.display())).collect();
        assert_eq!(
            listed,
            [
                "shop shop.generic_key_a_b rules.yaml",
                "shop shop.generic_key_a_b.user_id rules.yaml",
                "shop shop.path_/api_* rules.yaml",
                "shop shop.path_/v1_* rules.yaml",
                "shop shop.user_id rules.yaml",
            ]
        );
        assert!(set.rules(Some("other")).is_empty());
    }
}
