//! Drives `gatehouse_common::config`: arbitrary text through `parse_yaml` into a typed struct
//! shaped like the services' config files (spanned strings, Go durations, matchers, nested
//! lists, `deny_unknown_fields`), and through `parse_go_duration`.
//!
//! Asserts: no panic, no stack overflow; every error names the file it came from (the
//! `file:line:column:` prefix users rely on); a parsed duration is what a second parse of
//! the same text gives.
#![no_main]

use std::collections::BTreeMap;
use std::path::Path;

use gatehouse_common::config::{ConfigDuration, ConfigError, Spanned, parse_go_duration, parse_yaml};
use gatehouse_common::matcher::MatchSpec;
use libfuzzer_sys::fuzz_target;
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct File {
    name: Spanned<String>,
    #[serde(default)]
    count: Option<u32>,
    #[serde(default)]
    ratio: Option<f64>,
    #[serde(default)]
    enabled: bool,
    #[serde(default)]
    timeout: Option<ConfigDuration>,
    #[serde(default)]
    matchers: BTreeMap<String, MatchSpec>,
    #[serde(default)]
    items: Vec<Spanned<Item>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct Item {
    key: Spanned<String>,
    #[serde(default)]
    value: Option<String>,
    #[serde(default)]
    tags: Vec<String>,
    #[serde(default)]
    children: Vec<Item>,
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let file = Path::new("fuzz.yaml");
    if let Err(e) = parse_yaml::<File>(file, text) {
        assert!(matches!(e, ConfigError::Invalid { .. }), "{e:?}");
        assert!(e.to_string().starts_with("fuzz.yaml:"), "{e}");
    }
    if let Ok(d) = parse_go_duration(text) {
        assert_eq!(parse_go_duration(text), Ok(d));
    }
});
