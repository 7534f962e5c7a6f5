//! Prometheus metrics: decisions and their durations, errors by kind, and the calls to
//! identity providers and the caches in front of them (docs/observability.md#gatehouse-extauth).

use std::future::Future;
use std::time::Instant;

use gatehouse_common::metrics::{CacheStats, CallStats, Durations, ErrorStats, Metrics, durations};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tracing::Instrument as _;

use crate::Error;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabels {
    pub policy: String,
    /// `allow`, `deny` or `error`.
    pub result: &'static str,
    /// The HTTP status of a deny (401, 403); 200 for allows, 0 for errors.
    pub status: u16,
    /// The authorization rule that denied, if any.
    pub rule: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DurationLabels {
    policy: String,
    result: &'static str,
}

#[derive(Clone)]
pub struct Stats {
    decisions: Family<DecisionLabels, Counter>,
    durations: Durations<DurationLabels>,
    errors: ErrorStats,
}

impl Stats {
    pub fn new(metrics: &Metrics) -> Stats {
        Stats {
            decisions: metrics.register(
                &metrics.name("decisions"),
                "Check decisions by policy, result, status and failing rule",
                Family::default(),
            ),
            durations: metrics.register(
                &metrics.name("request_duration_seconds"),
                "Duration of a check (gRPC or forward-auth) by policy and result",
                durations(),
            ),
            errors: ErrorStats::register(
                metrics,
                "Checks that could not be decided, by kind: unavailable (an IdP, introspection \
                 endpoint or Redis could not be reached), internal, bad_request",
                &["unavailable", "internal", "bad_request"],
            ),
        }
    }

    fn count(&self, policy: &str, result: &'static str, status: u16, rule: &str, started: Instant) {
        self.decisions
            .get_or_create(&DecisionLabels { policy: policy.to_string(), result, status, rule: rule.to_string() })
            .inc();
        self.durations
            .get_or_create(&DurationLabels { policy: policy.to_string(), result })
            .observe(started.elapsed().as_secs_f64());
    }

    /// A check of `policy` that began at `started` allowed the request.
    pub fn allowed(&self, policy: &str, started: Instant) {
        self.count(policy, "allow", 200, "", started);
    }

    pub fn denied(&self, policy: &str, status: u16, rule: &str, started: Instant) {
        self.count(policy, "deny", status, rule, started);
    }

    pub fn errored(&self, policy: &str, error: &Error, started: Instant) {
        self.count(policy, "error", 0, "", started);
        self.errors.count(match error {
            Error::Unavailable(_) => "unavailable",
            Error::Internal(_) => "internal",
            Error::BadRequest(_) => "bad_request",
        });
    }
}

/// The label of the IdP metrics: `discovery`, `jwks`, `introspection`, `token`, `refresh`,
/// `revocation`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallLabels {
    pub call: &'static str,
}

/// What the identity methods depend on outside the process: identity providers
/// (`gatehouse_extauth_idp_*`) and the caches that spare calls to them and to Redis
/// (`gatehouse_extauth_cache_lookups_total`). Cloning shares the handles.
#[derive(Clone, Debug)]
pub struct Dependencies {
    idp: CallStats<CallLabels>,
    cache: CacheStats,
}

impl Dependencies {
    pub fn register(metrics: &Metrics) -> Self {
        Dependencies {
            idp: CallStats::register(
                metrics,
                "idp",
                "HTTP calls to identity providers",
                ["discovery", "jwks", "introspection", "token", "refresh", "revocation"]
                    .map(|call| CallLabels { call }),
            ),
            cache: CacheStats::register(metrics, &["jwks", "introspection", "api_key", "session"]),
        }
    }

    /// Handles registered nowhere, for key sets and methods built outside a service (tests,
    /// fuzz targets, `check-config`).
    pub fn detached() -> Self {
        Self::register(&Metrics::new())
    }

    /// Awaits one IdP call, timed and counted, and inside a traced check an `idp <call>`
    /// span (no URL, token or answer on it).
    pub async fn idp<T, E>(&self, call: &'static str, request: impl Future<Output = Result<T, E>>) -> Result<T, E> {
        let span = gatehouse_common::client_span!("extauth.idp", format_args!("idp {call}"), extauth.idp.call = call);
        async {
            let result = self.idp.time(CallLabels { call }, request).await;
            gatehouse_common::telemetry::record_failure(&result);
            result
        }
        .instrument(span)
        .await
    }

    /// Counts a lookup in `cache`: a hit needed no network call.
    pub fn cache(&self, cache: &'static str, hit: bool) {
        self.cache.lookup(cache, hit);
    }
}
