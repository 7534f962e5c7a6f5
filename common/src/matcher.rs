//! String matchers shared by every service's config: `equals`, `prefix`, `suffix`, `contains`,
//! `regex`, `in` and `present`, written in YAML as a one-key map (`{ prefix: /admin }`).
//!
//! Regexes match the whole value, as Envoy's `safe_regex` does, and are compiled once at load.
//! A matcher tests one value, or a list of values (a JSON array claim, the scopes of a token):
//! on a list, `contains` and `in` test membership and the others match if any element does.

use regex::Regex;
use serde::Deserialize;

/// A matcher as written in a config file.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum MatchSpec {
    Equals(String),
    Prefix(String),
    Suffix(String),
    Contains(String),
    Regex(String),
    In(Vec<String>),
    /// `present: true` matches any value that exists; `present: false` only a missing one.
    Present(bool),
}

/// A compiled [`MatchSpec`].
#[derive(Clone, Debug)]
pub enum StringMatcher {
    Equals(String),
    Prefix(String),
    Suffix(String),
    Contains(String),
    Regex(Regex),
    In(Vec<String>),
    Present(bool),
}

impl MatchSpec {
    /// Compiles the matcher; the error is the regex's own message.
    pub fn compile(&self) -> Result<StringMatcher, String> {
        Ok(match self {
            MatchSpec::Equals(s) => StringMatcher::Equals(s.clone()),
            MatchSpec::Prefix(s) => StringMatcher::Prefix(s.clone()),
            MatchSpec::Suffix(s) => StringMatcher::Suffix(s.clone()),
            MatchSpec::Contains(s) => StringMatcher::Contains(s.clone()),
            MatchSpec::Regex(r) => StringMatcher::Regex(
                Regex::new(&format!("^(?:{r})$")).map_err(|e| format!("invalid regex {r:?}: {e}"))?,
            ),
            MatchSpec::In(values) => StringMatcher::In(values.clone()),
            MatchSpec::Present(p) => StringMatcher::Present(*p),
        })
    }
}

impl StringMatcher {
    /// Tests one value; `None` is a missing value, which only `present: false` matches.
    pub fn matches(&self, value: Option<&str>) -> bool {
        let Some(value) = value else {
            return matches!(self, StringMatcher::Present(false));
        };
        match self {
            StringMatcher::Equals(s) => value == s,
            StringMatcher::Prefix(s) => value.starts_with(s.as_str()),
            StringMatcher::Suffix(s) => value.ends_with(s.as_str()),
            StringMatcher::Contains(s) => value.contains(s.as_str()),
            StringMatcher::Regex(r) => r.is_match(value),
            StringMatcher::In(values) => values.iter().any(|v| v == value),
            StringMatcher::Present(p) => *p,
        }
    }

    /// Tests a list of values: `contains` means "has this element", `in` means "has an element
    /// from this set", and the others match if any element matches.
    pub fn matches_list<'a>(&self, values: impl IntoIterator<Item = &'a str>) -> bool {
        let mut values = values.into_iter().peekable();
        match self {
            StringMatcher::Present(p) => values.peek().is_some() == *p,
            StringMatcher::Contains(s) => values.any(|v| v == s),
            other => values.any(|v| other.matches(Some(v))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(spec: MatchSpec, value: Option<&str>, expected: bool) {
        let m = spec.compile().unwrap();
        assert_eq!(m.matches(value), expected, "{spec:?} on {value:?}");
    }

    #[test]
    fn single_values() {
        use MatchSpec::*;
        check(Equals("GET".into()), Some("GET"), true);
        check(Equals("GET".into()), Some("get"), false);
        check(Prefix("/admin".into()), Some("/admin/users"), true);
        check(Prefix("/admin".into()), Some("/public"), false);
        check(Suffix(".json".into()), Some("/a.json"), true);
        check(Contains("bc".into()), Some("abcd"), true);
        check(Regex("/orders/[0-9]+".into()), Some("/orders/42"), true);
        // Whole-value match, as Envoy's safe_regex.
        check(Regex("/orders/[0-9]+".into()), Some("/orders/42/items"), false);
        check(In(vec!["GET".into(), "HEAD".into()]), Some("HEAD"), true);
        check(In(vec!["GET".into(), "HEAD".into()]), Some("POST"), false);
        check(Present(true), Some(""), true);
        check(Present(true), None, false);
        check(Present(false), None, true);
        check(Equals("x".into()), None, false);
    }

    #[test]
    fn lists() {
        let scopes = ["read", "write"];
        let contains = MatchSpec::Contains("write".into()).compile().unwrap();
        assert!(contains.matches_list(scopes));
        assert!(!contains.matches_list(["writer"]));
        let any_of = MatchSpec::In(vec!["admin".into(), "write".into()]).compile().unwrap();
        assert!(any_of.matches_list(scopes));
        assert!(!any_of.matches_list(["read"]));
        assert!(MatchSpec::Prefix("wr".into()).compile().unwrap().matches_list(scopes));
        assert!(!MatchSpec::Present(true).compile().unwrap().matches_list([]));
    }

    #[test]
    fn bad_regex_is_reported() {
        let err = MatchSpec::Regex("(".into()).compile().unwrap_err();
        assert!(err.starts_with("invalid regex \"(\""), "{err}");
    }
}
