//! Prometheus metrics: one registry per process, encoded in the text exposition format.
//!
//! Metrics are registered while a service is being built; the request path only touches the
//! metric handles (atomics), never the registry.
//!
//! Names follow one scheme (docs/observability.md#metrics): `gatehouse_<service>_<what>`,
//! from [`Metrics::name`]. The shapes every service shares live here: request durations
//! ([`durations`]), errors by kind ([`ErrorStats`]), calls to a dependency such as Redis or an
//! identity provider ([`CallStats`]) and cache lookups ([`CacheStats`]).

use std::future::Future;
use std::hash::Hash;
use std::sync::Arc;
use std::time::Instant;

use parking_lot::RwLock;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Metric, Registry};

/// The buckets of every `_duration_seconds` histogram, 100 µs to 5 s: the services answer in
/// tens to hundreds of microseconds without network calls, in milliseconds with a Redis or IdP
/// round trip, and past Envoy's usual filter timeouts only when something is wrong.
pub const DURATION_BUCKETS: [f64; 15] =
    [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];

/// A family of duration histograms with [`DURATION_BUCKETS`].
pub type Durations<L> = Family<L, Histogram, fn() -> Histogram>;

/// A new, unregistered [`Durations`] family.
pub fn durations<L: Clone + Hash + Eq>() -> Durations<L> {
    Family::new_with_constructor(duration_histogram)
}

/// One histogram with [`DURATION_BUCKETS`].
fn duration_histogram() -> Histogram {
    Histogram::new(DURATION_BUCKETS)
}

#[derive(Clone, Default)]
pub struct Metrics {
    registry: Arc<RwLock<Registry>>,
    /// `gatehouse_<service>`, the start of every name from [`Metrics::name`].
    prefix: Arc<str>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// A registry whose [`Metrics::name`]s start with `gatehouse_`, for tests and tools.
    pub fn new() -> Self {
        Self::for_service("")
    }

    /// The registry of one service: [`Metrics::name`]s start with `gatehouse_<service>_`.
    pub fn for_service(service: &str) -> Self {
        let prefix = if service.is_empty() { "gatehouse".to_string() } else { format!("gatehouse_{service}") };
        Metrics { registry: Arc::default(), prefix: prefix.into() }
    }

    /// The scheme's name for `what`: `gatehouse_<service>_<what>`. Counters get `_total`
    /// when encoded.
    pub fn name(&self, what: &str) -> String {
        format!("{}_{what}", self.prefix)
    }

    /// Registers `metric` under `name` and returns it, so callers can keep the handle.
    pub fn register<M: Metric + Clone>(&self, name: &str, help: &str, metric: M) -> M {
        self.registry.write().register(name, help, metric.clone());
        metric
    }

    /// The text exposition of every registered metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail; an error would only come from a broken encoder.
        if let Err(e) = encode(&mut out, &self.registry.read()) {
            tracing::error!(error = %e, "failed to encode metrics");
        }
        out
    }

    /// An axum route serving [`Metrics::encode`] with the OpenMetrics content type.
    pub fn router(&self, path: &str) -> axum::Router {
        let metrics = self.clone();
        axum::Router::new().route(
            path,
            axum::routing::get(move || {
                let body = metrics.encode();
                async move {
                    (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        body,
                    )
                }
            }),
        )
    }
}

/// The label of [`ErrorStats`].
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: &'static str,
}

/// `gatehouse_<service>_errors_total{kind}`: what the service could not answer as asked.
#[derive(Clone, Debug)]
pub struct ErrorStats {
    errors: Family<KindLabels, Counter>,
}

impl ErrorStats {
    /// Registers the counter with a zero series for each of `kinds`, so that dashboards and
    /// alerts see every kind before its first error.
    pub fn register(metrics: &Metrics, help: &str, kinds: &[&'static str]) -> Self {
        let errors: Family<KindLabels, Counter> = metrics.register(&metrics.name("errors"), help, Family::default());
        for &kind in kinds {
            errors.get_or_create_owned(&KindLabels { kind });
        }
        ErrorStats { errors }
    }

    pub fn count(&self, kind: &'static str) {
        self.errors.get_or_create(&KindLabels { kind }).inc();
    }
}

/// Latency and failures of the calls to one dependency (Redis, identity providers), by a
/// label naming the call: `gatehouse_<service>_<dependency>_request_duration_seconds` and
/// `gatehouse_<service>_<dependency>_errors_total`.
#[derive(Clone, Debug)]
pub struct CallStats<L: Clone + Hash + Eq> {
    duration: Durations<L>,
    errors: Family<L, Counter>,
}

impl<L: Clone + Hash + Eq + EncodeLabelSet + std::fmt::Debug + Send + Sync + 'static> CallStats<L> {
    /// `dependency` is the name's middle part (`redis`, `idp`); `what` completes the help
    /// texts, e.g. "Redis round trips". Each of `calls` starts with zero series.
    pub fn register(metrics: &Metrics, dependency: &str, what: &str, calls: impl IntoIterator<Item = L>) -> Self {
        let stats = CallStats {
            duration: metrics.register(
                &metrics.name(&format!("{dependency}_request_duration_seconds")),
                &format!("Duration of {what}"),
                durations(),
            ),
            errors: metrics.register(
                &metrics.name(&format!("{dependency}_errors")),
                &format!("{what} that failed or timed out"),
                Family::default(),
            ),
        };
        for labels in calls {
            stats.duration.get_or_create_owned(&labels);
            stats.errors.get_or_create_owned(&labels);
        }
        stats
    }

    /// Awaits `call`, recording its duration and, if it fails, an error.
    pub async fn time<T, E>(&self, labels: L, call: impl Future<Output = Result<T, E>>) -> Result<T, E> {
        let started = Instant::now();
        let result = call.await;
        self.record(&labels, started, result.is_ok());
        result
    }

    /// Records a call that began at `started`, for callers that cannot wrap it in a future.
    pub fn record(&self, labels: &L, started: Instant, ok: bool) {
        self.duration.get_or_create(labels).observe(started.elapsed().as_secs_f64());
        if !ok {
            self.errors.get_or_create(labels).inc();
        }
    }
}

/// The labels of [`CacheStats`].
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CacheLabels {
    pub cache: &'static str,
    /// `hit` (no network call was needed) or `miss`.
    pub result: &'static str,
}

/// `gatehouse_<service>_cache_lookups_total{cache, result}`: the hit ratio of each cache.
#[derive(Clone, Debug)]
pub struct CacheStats {
    lookups: Family<CacheLabels, Counter>,
}

impl CacheStats {
    /// Registers the counter with zero series for each of `caches`.
    pub fn register(metrics: &Metrics, caches: &[&'static str]) -> Self {
        let lookups: Family<CacheLabels, Counter> = metrics.register(
            &metrics.name("cache_lookups"),
            "Cache lookups by cache and result; a hit needed no network call",
            Family::default(),
        );
        for &cache in caches {
            for result in ["hit", "miss"] {
                lookups.get_or_create_owned(&CacheLabels { cache, result });
            }
        }
        CacheStats { lookups }
    }

    pub fn lookup(&self, cache: &'static str, hit: bool) {
        self.lookups.get_or_create(&CacheLabels { cache, result: if hit { "hit" } else { "miss" } }).inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
    struct Op {
        op: &'static str,
    }

    #[tokio::test]
    async fn names_follow_the_scheme() {
        let metrics = Metrics::for_service("demo");
        assert_eq!(metrics.name("errors"), "gatehouse_demo_errors");
        let calls = CallStats::register(&metrics, "redis", "Redis round trips", [Op { op: "set" }]);
        let _ = calls.time(Op { op: "get" }, async { Ok::<_, ()>(()) }).await;
        let _ = calls.time(Op { op: "get" }, async { Err::<(), _>(()) }).await;
        ErrorStats::register(&metrics, "Errors", &["invalid_request", "internal"]).count("invalid_request");
        CacheStats::register(&metrics, &["jwks"]).lookup("jwks", true);
        let text = metrics.encode();
        for line in [
            "gatehouse_demo_redis_request_duration_seconds_count{op=\"get\"} 2",
            "gatehouse_demo_redis_request_duration_seconds_bucket{le=\"0.0001\",op=\"get\"}",
            "gatehouse_demo_redis_errors_total{op=\"get\"} 1",
            "gatehouse_demo_errors_total{kind=\"invalid_request\"} 1",
            "gatehouse_demo_cache_lookups_total{cache=\"jwks\",result=\"hit\"} 1",
            // Declared label values are there before their first event.
            "gatehouse_demo_redis_errors_total{op=\"set\"} 0",
            "gatehouse_demo_errors_total{kind=\"internal\"} 0",
            "gatehouse_demo_cache_lookups_total{cache=\"jwks\",result=\"miss\"} 0",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
    }
}
