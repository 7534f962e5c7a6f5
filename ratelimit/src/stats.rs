//! Prometheus metrics under envoyproxy/ratelimit's names (as its statsd-exporter mapping
//! produces them), with the `_total` suffix Prometheus requires of counters.
//!
//! Per-rule counters carry `domain` and `key` labels (`key` is the rule's stats key without
//! the domain, e.g. `database_users` or `remote_address.path`).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use gatehouse_common::metrics::{CacheStats, CallStats, Durations, ErrorStats, Metrics, durations};
use gatehouse_common::redis::{OpLabels, redis_stats};
use prometheus_client::metrics::histogram::Histogram;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RuleLabels {
    pub domain: String,
    pub key: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub err_type: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DomainLabels {
    pub domain: String,
}

/// Every metric of the service. Cloning shares the handles.
#[derive(Clone, Debug)]
pub struct Stats {
    total_hits: Family<RuleLabels, Counter>,
    over_limit: Family<RuleLabels, Counter>,
    near_limit: Family<RuleLabels, Counter>,
    within_limit: Family<RuleLabels, Counter>,
    shadow_mode: Family<RuleLabels, Counter>,
    over_limit_with_local_cache: Family<RuleLabels, Counter>,
    pub domain_not_found: Family<DomainLabels, Counter>,
    pub global_shadow_mode: Counter,
    /// `redis_error` (backend failures answered with an error) and `service_error`.
    pub should_rate_limit_error: Family<ErrorLabels, Counter>,
    /// Backend failures answered OK because the failure mode is open.
    pub backend_failure_allowed: Counter,
    pub total_requests: Counter,
    /// `gatehouse_ratelimit_request_duration_seconds{code}`, one handle per answer.
    pub durations: AnswerDurations,
    /// `gatehouse_ratelimit_errors_total{kind}`.
    pub errors: ErrorStats,
    /// The Redis round trips (`gatehouse_ratelimit_redis_*`).
    pub redis: CallStats<OpLabels>,
    /// The local over-limit cache's lookups.
    pub cache: CacheStats,
}

/// ShouldRateLimit durations by overall answer, resolved once so that recording one is a
/// histogram observation without a label lookup.
#[derive(Clone, Debug)]
pub struct AnswerDurations {
    pub ok: Histogram,
    pub over_limit: Histogram,
    pub error: Histogram,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CodeLabels {
    code: &'static str,
}

/// The counters of one rule (or one dynamic stats key).
#[derive(Clone, Debug)]
pub struct RuleStats {
    pub total_hits: Counter,
    pub over_limit: Counter,
    pub near_limit: Counter,
    pub within_limit: Counter,
    pub shadow_mode: Counter,
    pub over_limit_with_local_cache: Counter,
}

impl Stats {
    pub fn new(metrics: &Metrics) -> Self {
        let family = |name: &str, help: &str| metrics.register(name, help, Family::<RuleLabels, Counter>::default());
        let should_rate_limit_error: Family<ErrorLabels, Counter> = metrics.register(
            "ratelimit_service_should_rate_limit_error",
            "ShouldRateLimit calls that failed, by error type",
            Family::default(),
        );
        // A zero series from the start, for alerts on its rate (statsd skips zero deltas).
        should_rate_limit_error.get_or_create_owned(&ErrorLabels { err_type: "redis_error" });
        Stats {
            should_rate_limit_error,
            total_hits: family("ratelimit_service_rate_limit_total_hits", "Hits counted against a rule"),
            over_limit: family("ratelimit_service_rate_limit_over_limit", "Hits over a rule's limit"),
            near_limit: family(
                "ratelimit_service_rate_limit_near_limit",
                "Hits within the limit but above NEAR_LIMIT_RATIO of it",
            ),
            within_limit: family("ratelimit_service_rate_limit_within_limit", "Hits within a rule's limit"),
            shadow_mode: family(
                "ratelimit_service_rate_limit_shadow_mode",
                "Hits over the limit that were let through by shadow mode",
            ),
            over_limit_with_local_cache: family(
                "ratelimit_service_rate_limit_over_limit_with_local_cache",
                "Over-limit hits answered from the local over-limit cache without Redis",
            ),
            domain_not_found: metrics.register(
                "ratelimit_service_rate_limit_domain_not_found",
                "Requests for a domain that no config defines",
                Family::default(),
            ),
            global_shadow_mode: metrics.register(
                "ratelimit_service_global_shadow_mode",
                "Over-limit responses turned into OK by the global SHADOW_MODE",
                Counter::default(),
            ),
            backend_failure_allowed: metrics.register(
                "ratelimit_service_backend_failure_allowed",
                "Calls answered OK because the counter store failed and the failure mode is open",
                Counter::default(),
            ),
            total_requests: metrics.register(
                "ratelimit_service_total_requests",
                "ShouldRateLimit calls received",
                Counter::default(),
            ),
            durations: {
                let family: Durations<CodeLabels> = metrics.register(
                    &metrics.name("request_duration_seconds"),
                    "ShouldRateLimit duration by overall answer (OK, OVER_LIMIT, error)",
                    durations(),
                );
                let code = |code| family.get_or_create_owned(&CodeLabels { code });
                AnswerDurations { ok: code("OK"), over_limit: code("OVER_LIMIT"), error: code("error") }
            },
            errors: ErrorStats::register(
                metrics,
                "Calls answered with an error, or let through because the counter store failed (failure mode open), \
                 by kind: invalid_request, store_unavailable, store_timeout",
                &["invalid_request", "store_unavailable", "store_timeout"],
            ),
            redis: redis_stats(metrics, &["update", "scan", "delete", "ping"]),
            cache: CacheStats::register(metrics, &["over_limit"]),
        }
    }

    /// The counters for a rule's stats key, e.g. `("mongo_cps", "database_users")`.
    pub fn rule(&self, domain: &str, key: &str) -> RuleStats {
        let labels = RuleLabels { domain: domain.to_string(), key: sanitize_stat_name(key) };
        RuleStats {
            total_hits: self.total_hits.get_or_create(&labels).clone(),
            over_limit: self.over_limit.get_or_create(&labels).clone(),
            near_limit: self.near_limit.get_or_create(&labels).clone(),
            within_limit: self.within_limit.get_or_create(&labels).clone(),
            shadow_mode: self.shadow_mode.get_or_create(&labels).clone(),
            over_limit_with_local_cache: self.over_limit_with_local_cache.get_or_create(&labels).clone(),
        }
    }

    /// Like [`Stats::rule`], for a full stats key `domain.rest`.
    pub fn rule_for_full_key(&self, full_key: &str) -> RuleStats {
        let (domain, key) = full_key.split_once('.').unwrap_or((full_key, ""));
        self.rule(domain, key)
    }
}

/// envoyproxy/ratelimit's stat keys: `:` and `|`, which statsd reserves, become `_`, and so do
/// the dots of IPv4 addresses (`remote_address_10_0_0_1`), which would split a statsd name.
pub(crate) fn sanitize_stat_name(key: &str) -> String {
    static IPV4: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
        // A literal pattern, checked by the tests below.
        regex::Regex::new(r"\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}").expect("valid pattern")
    });
    let key = key.replace([':', '|'], "_");
    if IPV4.is_match(&key) {
        IPV4.replace_all(&key, |ip: &regex::Captures<'_>| ip[0].replace('.', "_")).into_owned()
    } else {
        key
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_names_as_envoyproxy_ratelimit_sanitizes_them() {
        for (key, expected) in [
            ("database_users", "database_users"),
            ("remote_address_10.0.0.1.path", "remote_address_10_0_0_1.path"),
            ("a:b|c", "a_b_c"),
            ("v1.2.3", "v1.2.3"),
        ] {
            assert_eq!(sanitize_stat_name(key), expected, "{key}");
        }
    }
}
