//! Drives the extauth policy file (`gatehouse_extauth::config::load`): arbitrary text as the
//! YAML file, built into `Policies` with a key-set registry that cannot reach the network
//! (see `gatehouse_fuzz::registry`; `config::load` contacts no IdP, and the refresh tasks a
//! `jwt` method spawns end without fetching once the config is dropped).
//!
//! Asserts: no panic or stack overflow on any input (CEL, Rego, matchers, hashes, durations
//! included); every error names the policy file; a config that loads never panics at
//! policy selection, and selects each of its policies by name and by each of its hosts.
#![no_main]

use std::path::PathBuf;
use std::sync::LazyLock;

use gatehouse_extauth::config::{self, BuildContext};
use gatehouse_extauth::policy::{POLICY_CONTEXT_KEY, Selection};
use gatehouse_extauth::request::AuthRequest;
use libfuzzer_sys::fuzz_target;

/// The file the input is written to, in a directory of its own (relative paths in the
/// config resolve there).
static FILE: LazyLock<(tempfile::TempDir, PathBuf)> = LazyLock::new(|| {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let file = dir.path().join("policies.yaml");
    (dir, file)
});

fuzz_target!(|data: &[u8]| {
    let file = &FILE.1;
    std::fs::write(file, data).expect("the temporary file is writable");
    let registry = gatehouse_fuzz::registry();
    let ctx = BuildContext { jwks: &registry, redis: None, check_only: false };
    match config::load(file, &ctx) {
        Ok(policies) => {
            let mut request = AuthRequest::default();
            for (name, policy) in &policies.by_name {
                request.context.insert(POLICY_CONTEXT_KEY.into(), name.clone());
                let Selection::Found(found) = policies.select(&request) else { panic!("policy {name} not found") };
                assert_eq!(found.name, policy.name);
            }
            request.context.clear();
            for host in policies.hosts.keys() {
                request.host = format!("{host}:8443");
                assert!(matches!(policies.select(&request), Selection::Found(_)), "host {host}");
            }
            for (suffix, _) in &policies.wildcard_hosts {
                request.host = format!("api{suffix}");
                assert!(matches!(policies.select(&request), Selection::Found(_)), "host *{suffix}");
            }
            request.host = "unknown.fuzz.invalid".into();
            let _ = policies.select(&request);
        }
        Err(errors) => {
            assert!(!errors.0.is_empty());
            for e in &errors.0 {
                assert!(e.file().is_some(), "{e}");
            }
        }
    }
    gatehouse_fuzz::finish_spawned_tasks();
});
