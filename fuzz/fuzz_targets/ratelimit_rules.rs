//! Drives `gatehouse_ratelimit::rules`: arbitrary text as a rule file, parsed and validated
//! into the rule tree by `RuleSet::from_yaml`, then dumped as /rlconfig shows it.
//!
//! Asserts: no panic or stack overflow on any input; a rejected file reports at least one
//! error, each naming the file; a loaded file dumps one line per rule, and a dump is
//! deterministic.
#![no_main]

use gatehouse_common::config::ConfigError;
use gatehouse_common::metrics::Metrics;
use gatehouse_ratelimit::rules::RuleSet;
use gatehouse_ratelimit::stats::Stats;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let stats = Stats::new(&Metrics::new());
    match RuleSet::from_yaml("fuzz.yaml", text, &stats) {
        Ok(rules) => {
            let dump = rules.dump();
            assert_eq!(dump, rules.dump());
            assert!(dump.is_empty() || dump.ends_with('\n'));
        }
        Err(errors) => {
            assert!(!errors.0.is_empty());
            for e in &errors.0 {
                assert!(matches!(e, ConfigError::Invalid { .. }), "{e:?}");
                assert!(e.to_string().starts_with("fuzz.yaml:"), "{e}");
            }
        }
    }
});
