//! Drives `gatehouse_common::matcher`: the first line of the input is a matcher as policy files
//! write it (`{ regex: "/orders/[0-9]+" }`, parsed as YAML into a `MatchSpec`), compiled and
//! tested against every following line, against a missing value, and against the lines as one
//! list.
//!
//! Asserts: no panic; only `regex` can fail to compile; the documented semantics hold: a
//! missing value matches only `present: false`; `equals`/`prefix`/`suffix`/`contains` agree
//! with `str`'s own methods and `in` is membership; on a one-element list, `contains` and `in`
//! are membership and the others match as on the element alone; on a list, `present` means
//! non-empty and the others (but `contains`) mean "some element matches".
#![no_main]

use std::path::Path;

use gatehouse_common::config::parse_yaml;
use gatehouse_common::matcher::MatchSpec;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let (spec, values) = text.split_once('\n').unwrap_or((text, ""));
    let Ok(spec) = parse_yaml::<MatchSpec>(Path::new("fuzz.yaml"), spec) else { return };
    let values: Vec<&str> = values.split('\n').collect();
    let matcher = match spec.compile() {
        Ok(m) => m,
        Err(e) => {
            assert!(matches!(spec, MatchSpec::Regex(_)), "{spec:?} failed to compile: {e}");
            return;
        }
    };
    assert_eq!(matcher.matches(None), spec == MatchSpec::Present(false), "{spec:?} on a missing value");
    for value in &values {
        let one = matcher.matches(Some(value));
        match &spec {
            MatchSpec::Equals(s) => assert_eq!(one, value == s),
            MatchSpec::Prefix(s) => assert_eq!(one, value.starts_with(s.as_str())),
            MatchSpec::Suffix(s) => assert_eq!(one, value.ends_with(s.as_str())),
            MatchSpec::Contains(s) => assert_eq!(one, value.contains(s.as_str())),
            MatchSpec::In(v) => assert_eq!(one, v.iter().any(|s| s == value)),
            MatchSpec::Present(p) => assert_eq!(one, *p),
            MatchSpec::Regex(_) => {}
        }
        let single = matcher.matches_list([*value]);
        match &spec {
            MatchSpec::Contains(s) => assert_eq!(single, value == s, "{spec:?} on [{value:?}]"),
            MatchSpec::Present(p) => assert_eq!(single, *p),
            _ => assert_eq!(single, one, "{spec:?} on [{value:?}]"),
        }
    }
    let many = matcher.matches_list(values.iter().copied());
    match &spec {
        MatchSpec::Present(p) => assert_eq!(many, values.is_empty() != *p),
        MatchSpec::Contains(s) => assert_eq!(many, values.contains(&s.as_str())),
        _ => assert_eq!(many, values.iter().any(|v| matcher.matches(Some(v)))),
    }
});
