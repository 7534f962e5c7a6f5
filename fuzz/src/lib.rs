//! What several fuzz targets share: a runtime that cannot reach the network, and the demo
//! extauth policies (`examples/extauth/policies.yaml`) ready to decide requests.
//!
//! **Invariant:** no fuzz target reaches the network. The runtime here has neither an IO nor
//! a time driver, so any socket or timer a library tries to use panics (and the fuzzer
//! reports it) instead of sending traffic.

use std::path::Path;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use gatehouse_common::metrics::Metrics;
use gatehouse_common::reload::Reloader;
use gatehouse_extauth::config::{self, BuildContext};
use gatehouse_extauth::identity::jwks::Registry;
use gatehouse_extauth::policy::Policies;
use gatehouse_extauth::service::Authorizer;
use gatehouse_extauth::signer::Signer;
use gatehouse_extauth::stats::Stats;
use tokio::runtime::Runtime;

/// A current-thread runtime without drivers, built once per process.
pub fn runtime() -> &'static Runtime {
    static RUNTIME: LazyLock<Runtime> =
        LazyLock::new(|| tokio::runtime::Builder::new_current_thread().build().expect("a current-thread runtime"));
    &RUNTIME
}

/// A key-set registry on [`runtime`]. The refresh tasks it spawns run only when a target
/// drives the runtime, which targets do after dropping every config that uses them, so each
/// task finds its key set gone and ends without a fetch.
pub fn registry() -> Registry {
    let http = reqwest::Client::builder().no_proxy().build().expect("a client without TLS or proxies builds");
    Registry::new(http, runtime().handle().clone())
}

/// Runs the tasks configs spawned, once their configs are gone; see [`registry`].
pub fn finish_spawned_tasks() {
    runtime().block_on(async {
        for _ in 0..64 {
            if tokio::runtime::Handle::current().metrics().num_alive_tasks() == 0 {
                return;
            }
            tokio::task::yield_now().await;
        }
        panic!("a task spawned by a config outlived it");
    });
}

/// An authorizer over the demo policies, with fresh metrics: the policies and signer are
/// built once, the counters per call so that label sets from fuzz input do not pile up.
pub fn demo_authorizer() -> Authorizer {
    static DEMO: LazyLock<(Reloader<Policies>, Arc<Signer>)> = LazyLock::new(|| {
        let file = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/extauth/policies.yaml"));
        let registry = registry();
        let ctx = BuildContext { jwks: &registry, redis: None, check_only: false };
        let policies = config::load(file, &ctx).expect("the demo policies load");
        let signer = Signer::new("https://gatehouse.fuzz.invalid".into(), None, Duration::from_secs(30))
            .expect("a generated signing key");
        (Reloader::new(policies, &Metrics::new(), "fuzz"), Arc::new(signer))
    });
    let (policies, signer) = &*DEMO;
    Authorizer { policies: policies.clone(), signer: signer.clone(), stats: Stats::new(&Metrics::new()) }
}

/// The XML mappings the transform targets try, chosen by a byte of the input: the default,
/// the demo `soap` transformation's, other prefixes, and the degenerate empty ones a config
/// may still name. Each passes `XmlMapping::validate`, as a config's must.
pub fn xml_mapping(choice: u8) -> gatehouse_transform::xml::XmlMapping {
    use gatehouse_transform::xml::XmlMapping;
    let mut m = XmlMapping::default();
    match choice % 4 {
        0 => {}
        1 => {
            m.arrays = ["order/item".to_string(), "a/b/c".to_string()].into();
        }
        2 => {
            m.attribute_prefix = "-".into();
            m.text_key = "$".into();
            m.declaration = false;
        }
        _ => {
            m.attribute_prefix = String::new();
            m.text_key = String::new();
        }
    }
    if let Err(problems) = m.validate() {
        panic!("fuzz mapping {} would be refused at config load: {problems:?}", choice % 4);
    }
    m
}
