//! What the admin API reads from the rule tree: every rule, the key prefix a descriptor
//! prefix writes, and a stored counter key read back into the descriptor that wrote it.

use std::sync::Arc;

use super::{Children, Domain, EntryRef, NodeKind, Rule, RuleSet};

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

/// The start of the counter keys of every descriptor that begins with some entries: what the
/// service writes for them, so that a store can list those keys by prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyPrefix {
    /// `key_value_` per entry, as [`super::Matched::write_cache_key`] writes it (a
    /// `share_threshold` wildcard writes itself); only `key_` for a last entry without value.
    pub key: String,
    /// The entries as written, `None` for "any value".
    entries: Vec<(String, Option<String>)>,
}

impl KeyPrefix {
    /// Whether a descriptor read back from a key under this prefix really starts with its
    /// entries: a prefix of key text also matches longer keys and values (`user_` is the start
    /// of `user_id_...`).
    pub fn matches(&self, descriptor: &[(String, String)]) -> bool {
        descriptor.len() >= self.entries.len()
            && self
                .entries
                .iter()
                .zip(descriptor)
                .all(|((key, value), (k, v))| key == k && value.as_ref().is_none_or(|value| value == v))
    }
}

impl Domain {
    /// The key prefix of the descriptors that start with `entries`, matched as requests are
    /// (exact value, then wildcards, then the key-only default). The last entry's value may
    /// be empty: any value of that key. `None` when no rule's descriptor starts this way, so
    /// no counter can exist.
    pub fn key_prefix<E: EntryRef>(&self, entries: &[E]) -> Option<KeyPrefix> {
        let mut prefix = KeyPrefix { key: String::new(), entries: Vec::with_capacity(entries.len()) };
        let mut level = &self.children;
        for (i, entry) in entries.iter().enumerate() {
            let group = level.get(entry.key())?;
            prefix.key.push_str(entry.key());
            prefix.key.push('_');
            if entry.value().is_empty() && i + 1 == entries.len() {
                prefix.entries.push((entry.key().to_string(), None));
                break;
            }
            let node = group.find(entry.value())?;
            let written = match node.kind {
                NodeKind::Wildcard { share_threshold: true, .. } => node.value.as_str(),
                _ => entry.value(),
            };
            prefix.key.push_str(written);
            prefix.key.push('_');
            prefix.entries.push((entry.key().to_string(), Some(written.to_string())));
            level = &node.children;
        }
        Some(prefix)
    }

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
    // Longest key first: `user_id_u1_` is `user_id=u1` before it is `user=id_u1`. Both
    // descriptors write that one key (and share its counter, as in envoyproxy/ratelimit); the
    // reading must at least not depend on a hash map's order.
    let mut groups: Vec<(&String, &super::KeyGroup)> = level
        .iter()
        .filter(|(name, _)| key.strip_prefix(name.as_str()).is_some_and(|rest| rest.starts_with('_')))
        .collect();
    groups.sort_unstable_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.0.cmp(b.0)));
    for (name, group) in groups {
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

    /// A key read back: the descriptor, the rule's full key, what follows the descriptor.
    type Reading = (Vec<(String, String)>, String, String);

    /// Reads `key` back, the rest being what follows the descriptor.
    fn read(set: &RuleSet, key: &str) -> Option<Reading> {
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
    fn a_key_two_descriptors_write_reads_as_the_longer_key() {
        const TWO: &str = "
domain: shop
descriptors:
  - key: user
    rate_limit: { unit: minute, requests_per_unit: 1 }
  - key: user_id
    rate_limit: { unit: minute, requests_per_unit: 1 }
";
        let accept = |_: &Rule, rest: &str| (rest == "1700000000").then_some(());
        // Every build seeds its hash maps anew.
        for _ in 0..20 {
            let stats = Stats::new(&gatehouse_common::metrics::Metrics::new());
            let set = RuleSet::from_yaml("rules.yaml", TWO, &stats).unwrap();
            let read = set.domain("shop").unwrap().read_cache_key("user_id_u1_1700000000", accept).unwrap();
            assert_eq!(read.entries, [("user_id".to_string(), "u1".to_string())]);
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
    fn descriptor_prefixes_write_what_the_service_writes() {
        let set = rules();
        let domain = set.domain("shop").unwrap();
        let prefix = |entries: &[(&str, &str)]| domain.key_prefix(entries).map(|p| p.key);
        for (entries, expected) in [
            (&[][..], Some("")),
            (&[("generic_key", "a_b")][..], Some("generic_key_a_b_")),
            (&[("generic_key", "a_b"), ("user_id", "")], Some("generic_key_a_b_user_id_")),
            (&[("user_id", "")], Some("user_id_")),
            (&[("user_id", "alice")], Some("user_id_alice_")),
            // A shared wildcard writes itself; a plain one the request's value.
            (&[("path", "/api_users")], Some("path_/api_*_")),
            (&[("path", "/v1_users")], Some("path_/v1_users_")),
            (&[("other", "")], None),
            (&[("generic_key", "c")], None),
            (&[("user_id", "alice"), ("more", "")], None),
        ] {
            assert_eq!(prefix(entries).as_deref(), expected, "{entries:?}");
        }
        // `user_` is a text prefix of `user_id_...`, not a descriptor prefix.
        let user = domain.key_prefix(&[("user_id", "")]).unwrap();
        let read = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
        };
        assert!(user.matches(&read(&[("user_id", "bob")])));
        assert!(!user.matches(&read(&[("user_idx", "bob")])));
        let shared = domain.key_prefix(&[("path", "/api_x")]).unwrap();
        assert!(shared.matches(&read(&[("path", "/api_*")])));
        assert!(!shared.matches(&read(&[("path", "/api_x")])));
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
