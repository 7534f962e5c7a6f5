//! `ShouldRateLimit` semantics, independent of transport: the gRPC server and the `/json`
//! endpoint both call [`RateLimiter::should_rate_limit`].
//!
//! Per request: resolve each descriptor to a rule (or the request's own `limit` override),
//! drop rules another matched rule `replaces`, update every counter in one storage call,
//! then build per-descriptor statuses, the overall code, headers and metadata.
//!
//! The overall code is OVER_LIMIT when a descriptor not in quota mode is over its limit, or
//! when every quota-mode descriptor is (envoyproxy/ratelimit's `quota_mode`: a request passes
//! while any one of its quotas has room).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::HeaderValue;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::{Code, DescriptorStatus, RateLimit};
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use envoy_types::pb::google::protobuf;
use gatehouse_common::reload::Reloader;
use tracing::Instrument as _;

use crate::clock::Clock;
use crate::rules::{Algorithm, EntryRef, Limit, Rule, RuleSet, Unit};
use crate::settings::{FailureMode, HeaderFormat, ResponseHeaders};
use crate::stats::{RuleStats, Stats};
use crate::storage::{Batch, CounterState, CounterStore, CounterUpdate, Mode, StorageError};

impl EntryRef for Entry {
    fn key(&self) -> &str {
        &self.key
    }
    fn value(&self) -> &str {
        &self.value
    }
}

/// Why a call failed. Converted to a gRPC status in exactly one place, `grpc::to_status`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    InvalidRequest(&'static str),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

impl Error {
    /// The `kind` of `gatehouse_ratelimit_errors_total`.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::InvalidRequest(_) => "invalid_request",
            Error::Storage(e) => e.kind(),
        }
    }
}

/// The most hits one descriptor adds. Limits are `u32`, so any `hits_addend` above this is
/// over every limit either way; capping it keeps counter sums far from `u64` overflow and
/// exact in the Lua script's doubles, so memory and Redis answer alike.
const MAX_HITS: u64 = u32::MAX as u64;

/// Behaviour switches that apply to every request.
#[derive(Clone, Debug)]
pub struct Options {
    pub cache_key_prefix: String,
    pub near_limit_ratio: f64,
    pub mode: Mode,
    pub shadow_mode: bool,
    /// QUOTA_MODE: every descriptor is in quota mode, matched or not.
    pub quota_mode: bool,
    pub headers: ResponseHeaders,
    pub dynamic_metadata: bool,
    pub failure_mode: FailureMode,
}

pub struct RateLimiter {
    rules: Reloader<RuleSet>,
    store: Arc<dyn CounterStore>,
    clock: Clock,
    stats: Stats,
    options: Options,
    /// Store failures are logged at most once a second (they can come with every call).
    store_failures: gatehouse_common::telemetry::LogThrottle,
}

impl std::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiter").field("store", &self.store.name()).finish_non_exhaustive()
    }
}

/// What one request descriptor is checked against.
struct Check<'r> {
    limits: LimitsRef<'r>,
    name: Option<&'r str>,
    shadow_mode: bool,
    /// QUOTA_MODE or the rule's `quota_mode`.
    quota_mode: bool,
    /// The rule's `metadata`, for the response while the descriptor is within its limit.
    metadata: Option<&'r protobuf::Struct>,
    stats: StatsRef<'r>,
    /// Index of this descriptor's first counter in the batch.
    first_counter: usize,
}

enum LimitsRef<'r> {
    Rule(&'r [Limit]),
    Override(Limit),
}

impl LimitsRef<'_> {
    fn as_slice(&self) -> &[Limit] {
        match self {
            LimitsRef::Rule(limits) => limits,
            LimitsRef::Override(limit) => std::slice::from_ref(limit),
        }
    }
}

enum StatsRef<'r> {
    Rule(&'r RuleStats),
    Owned(RuleStats),
}

impl StatsRef<'_> {
    fn get(&self) -> &RuleStats {
        match self {
            StatsRef::Rule(s) => s,
            StatsRef::Owned(s) => s,
        }
    }
}

/// A descriptor's resolution before replaces are applied.
enum Resolved<'r> {
    /// No rule: OK, no counter.
    None,
    /// An `unlimited` rule; its `replaces` still apply to the other descriptors.
    Unlimited(&'r Arc<Rule>),
    Rule(&'r Arc<Rule>, Option<String>, String),
    Override(Limit, String),
}

impl RateLimiter {
    pub fn new(
        rules: Reloader<RuleSet>,
        store: Arc<dyn CounterStore>,
        clock: Clock,
        stats: Stats,
        options: Options,
    ) -> Self {
        let store_failures = gatehouse_common::telemetry::LogThrottle::new(std::time::Duration::from_secs(1));
        RateLimiter { rules, store, clock, stats, options, store_failures }
    }

    pub fn rules(&self) -> &Reloader<RuleSet> {
        &self.rules
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    pub fn store_name(&self) -> &'static str {
        self.store.name()
    }

    /// For the admin API: the store, the clock and the keys' prefix it counts with.
    pub(crate) fn store(&self) -> &dyn CounterStore {
        &*self.store
    }

    pub(crate) fn clock(&self) -> &Clock {
        &self.clock
    }

    pub(crate) fn cache_key_prefix(&self) -> &str {
        &self.options.cache_key_prefix
    }

    pub async fn should_rate_limit(&self, request: &RateLimitRequest) -> Result<RateLimitResponse, Error> {
        self.stats.total_requests.inc();
        if request.domain.is_empty() {
            return Err(Error::InvalidRequest("rate limit domain must not be empty"));
        }
        if request.descriptors.is_empty() {
            return Err(Error::InvalidRequest("rate limit descriptor list must not be empty"));
        }
        let rules = self.rules.load_guard();
        let domain = rules.domain(&request.domain);
        if domain.is_none() {
            self.stats
                .domain_not_found
                .get_or_create(&crate::stats::DomainLabels { domain: request.domain.clone() })
                .inc();
        }
        let default_hits = u64::from(request.hits_addend.max(1));
        let hits: Vec<u64> = request
            .descriptors
            .iter()
            .map(|d| d.hits_addend.as_ref().map_or(default_hits, |h| h.value.min(MAX_HITS)))
            .collect();

        // Resolve every descriptor, then drop rules that another matched rule replaces. The
        // lookup's span is a leaf, so it times the lookup without being entered.
        let lookup = tracing::info_span!("rule lookup", ratelimit.rules_matched = tracing::field::Empty);
        let resolved: Vec<Resolved<'_>> =
            request.descriptors.iter().map(|d| self.resolve(domain, &request.domain, d)).collect();
        if !lookup.is_disabled() {
            let matched = resolved.iter().filter(|r| !matches!(r, Resolved::None)).count();
            lookup.record("ratelimit.rules_matched", matched as i64);
        }
        drop(lookup);
        let replaced: HashSet<&str> = resolved
            .iter()
            .filter_map(|r| match r {
                Resolved::Rule(rule, ..) | Resolved::Unlimited(rule) => Some(rule.replaces.iter().map(String::as_str)),
                _ => None,
            })
            .flatten()
            .collect();

        let mut batch = Batch { counters: Vec::new(), mode: self.options.mode };
        let mut checks: Vec<Option<Check<'_>>> = Vec::with_capacity(resolved.len());
        let mut unlimited = vec![false; resolved.len()];
        for (i, r) in resolved.iter().enumerate() {
            let check = match r {
                Resolved::None => None,
                Resolved::Unlimited(_) => {
                    unlimited[i] = true;
                    None
                }
                Resolved::Rule(rule, ..) if rule.name.as_deref().is_some_and(|n| replaced.contains(n)) => None,
                Resolved::Rule(rule, stats_key, cache_key) => Some(Check {
                    limits: LimitsRef::Rule(&rule.limits),
                    name: rule.name.as_deref(),
                    shadow_mode: rule.shadow_mode,
                    quota_mode: rule.quota_mode || self.options.quota_mode,
                    metadata: rule.metadata.as_ref(),
                    stats: match stats_key {
                        Some(key) => StatsRef::Owned(self.stats.rule_for_full_key(key)),
                        None => StatsRef::Rule(&rule.stats),
                    },
                    first_counter: push_counters(&mut batch, cache_key, &rule.limits, hits[i]),
                }),
                Resolved::Override(limit, cache_key) => {
                    let stats_key = override_stats_key(&request.domain, &request.descriptors[i].entries);
                    let first_counter = push_counters(&mut batch, cache_key, std::slice::from_ref(limit), hits[i]);
                    Some(Check {
                        limits: LimitsRef::Override(limit.clone()),
                        name: None,
                        shadow_mode: false,
                        quota_mode: self.options.quota_mode,
                        metadata: None,
                        stats: StatsRef::Owned(self.stats.rule_for_full_key(&stats_key)),
                        first_counter,
                    })
                }
            };
            checks.push(check);
        }

        let states = if batch.counters.is_empty() {
            Vec::new()
        } else {
            // One span per store round trip: its size and backend are what explain its latency.
            let store_span = tracing::info_span!(
                "counter store update",
                batch.size = batch.counters.len() as i64,
                ratelimit.backend = self.store.name(),
                otel.status_code = tracing::field::Empty,
            );
            let result = self.store.update(&batch, self.clock.now_ms()).instrument(store_span.clone()).await;
            if result.is_err() {
                store_span.record("otel.status_code", "error");
            }
            drop(store_span);
            match result {
                Ok(states) => states,
                Err(e) if self.options.failure_mode == FailureMode::Open => {
                    self.stats.backend_failure_allowed.inc();
                    self.stats.errors.count(e.kind());
                    if let Some(held_back) = self.store_failures.admit() {
                        tracing::warn!(error = %e, held_back, "counter store failed; allowing (failure mode open)");
                    }
                    return Ok(self.allow_all(request));
                }
                Err(e) => {
                    if let Some(held_back) = self.store_failures.admit() {
                        tracing::warn!(error = %e, held_back, "counter store failed; answering UNAVAILABLE");
                    }
                    self.stats
                        .should_rate_limit_error
                        .get_or_create(&crate::stats::ErrorLabels { err_type: "redis_error" })
                        .inc();
                    return Err(e.into());
                }
            }
        };

        let mut response = RateLimitResponse { overall_code: Code::Ok as i32, ..Default::default() };
        // The descriptor that drives the response headers: the last one over a limit outside
        // quota mode, or else the one with the least remaining (envoyproxy/ratelimit's choice).
        let mut header_source: Option<(usize, Duration)> = None;
        // A descriptor outside quota mode is over its limit.
        let mut rate_limited = false;
        let (mut quotas, mut quotas_over) = (0usize, 0usize);
        // The `metadata` of the descriptors within their limits, merged in request order.
        let mut passed_metadata = protobuf::Struct::default();
        for (i, check) in checks.iter().enumerate() {
            let status = match check {
                None if unlimited[i] => {
                    DescriptorStatus { code: Code::Ok as i32, limit_remaining: u32::MAX, ..Default::default() }
                }
                // No rule, or a replaced one: within, and a quota under QUOTA_MODE.
                None => {
                    quotas += usize::from(self.options.quota_mode);
                    DescriptorStatus { code: Code::Ok as i32, ..Default::default() }
                }
                Some(check) => {
                    let (status, over, reset) = self.descriptor_status(check, &states, hits[i]);
                    if check.quota_mode {
                        quotas += 1;
                        quotas_over += usize::from(over);
                    }
                    if over && !check.quota_mode {
                        rate_limited = true;
                        header_source = Some((i, reset));
                    } else if !rate_limited {
                        let remaining = status.limit_remaining;
                        let better = header_source.is_none_or(|(j, _)| {
                            let current: &DescriptorStatus = &response.statuses[j];
                            remaining < current.limit_remaining
                        });
                        if better {
                            header_source = Some((i, reset));
                        }
                    }
                    if !over
                        && self.options.dynamic_metadata
                        && let Some(metadata) = check.metadata
                    {
                        merge_metadata(&mut passed_metadata, metadata);
                    }
                    status
                }
            };
            response.statuses.push(status);
        }
        if rate_limited || (quotas > 0 && quotas == quotas_over) {
            if self.options.shadow_mode {
                self.stats.global_shadow_mode.inc();
            } else {
                response.overall_code = Code::OverLimit as i32;
            }
        }
        if self.options.headers.enabled
            && let Some((i, reset)) = header_source
        {
            let name = checks[i].as_ref().and_then(|c| c.name);
            response.response_headers_to_add = headers(&self.options.headers, &response.statuses[i], reset, name);
        }
        if self.options.dynamic_metadata {
            let mut metadata = request_metadata(request);
            if !passed_metadata.fields.is_empty() {
                metadata.fields.insert("metadata".to_string(), struct_value(passed_metadata));
            }
            response.dynamic_metadata = Some(metadata);
        }
        Ok(response)
    }

    fn resolve<'r>(
        &self,
        domain: Option<&'r crate::rules::Domain>,
        domain_name: &str,
        d: &RateLimitDescriptor,
    ) -> Resolved<'r> {
        let Some(domain) = domain else {
            return Resolved::None;
        };
        if let Some(o) = &d.limit {
            let Some(unit) = unit_from_proto(o.unit) else {
                return Resolved::None;
            };
            let mut key = String::new();
            write_plain_cache_key(&mut key, &self.options.cache_key_prefix, domain_name, &d.entries);
            let limit = Limit {
                requests_per_unit: o.requests_per_unit,
                unit,
                algorithm: Algorithm::FixedWindow,
                burst: o.requests_per_unit,
                key_suffix: String::new(),
            };
            return Resolved::Override(limit, key);
        }
        let Some(matched) = domain.find(&d.entries) else {
            return Resolved::None;
        };
        if matched.rule.unlimited {
            return Resolved::Unlimited(matched.rule);
        }
        let mut key = String::with_capacity(64);
        matched.write_cache_key(&mut key, &self.options.cache_key_prefix, domain_name, &d.entries);
        Resolved::Rule(matched.rule, matched.stats_key(domain_name, &d.entries), key)
    }

    /// The status of one checked descriptor, whether it is over limit, and its reset time.
    fn descriptor_status(
        &self,
        check: &Check<'_>,
        states: &[CounterState],
        hits: u64,
    ) -> (DescriptorStatus, bool, Duration) {
        let limits = check.limits.as_slice();
        let states = &states[check.first_counter..check.first_counter + limits.len()];
        // The limit that decides: the first one over, else the one with least remaining.
        let Some((limit, state)) = limits.iter().zip(states).min_by_key(|(_, s)| (!s.over_limit, s.remaining)) else {
            let ok = DescriptorStatus { code: Code::Ok as i32, ..Default::default() };
            return (ok, false, Duration::ZERO);
        };
        let over = state.over_limit;
        let stats = check.stats.get();
        stats.total_hits.inc_by(hits);
        let mut code = Code::Ok;
        if over {
            stats.over_limit.inc_by(hits);
            if state.from_local_cache {
                stats.over_limit_with_local_cache.inc_by(hits);
            }
            if check.shadow_mode {
                stats.shadow_mode.inc_by(hits);
            } else {
                code = Code::OverLimit;
            }
        } else {
            stats.within_limit.inc_by(hits);
            let capacity = match limit.algorithm {
                Algorithm::TokenBucket => u64::from(limit.burst),
                _ => u64::from(limit.requests_per_unit),
            };
            let near = (capacity as f64 * self.options.near_limit_ratio).floor() as u64;
            if state.used > near {
                stats.near_limit.inc_by(hits);
            }
        }
        let status = DescriptorStatus {
            code: code as i32,
            current_limit: Some(RateLimit {
                name: check.name.unwrap_or_default().to_string(),
                requests_per_unit: limit.requests_per_unit,
                unit: unit_to_proto(limit.unit),
            }),
            limit_remaining: u32::try_from(state.remaining).unwrap_or(u32::MAX),
            duration_until_reset: Some(duration_proto(state.reset_after)),
            ..Default::default()
        };
        (status, over && !check.shadow_mode, state.reset_after)
    }

    /// The answer when the store failed and the failure mode is open: OK everywhere.
    fn allow_all(&self, request: &RateLimitRequest) -> RateLimitResponse {
        RateLimitResponse {
            overall_code: Code::Ok as i32,
            statuses: request
                .descriptors
                .iter()
                .map(|_| DescriptorStatus { code: Code::Ok as i32, ..Default::default() })
                .collect(),
            ..Default::default()
        }
    }
}

pub(crate) fn push_counters(batch: &mut Batch, cache_key: &str, limits: &[Limit], hits: u64) -> usize {
    let first = batch.counters.len();
    for limit in limits {
        let mut key = String::with_capacity(cache_key.len() + limit.key_suffix.len());
        key.push_str(cache_key);
        key.push_str(&limit.key_suffix);
        batch.counters.push(CounterUpdate {
            key,
            tag_len: cache_key.len(),
            algorithm: limit.algorithm,
            limit: u64::from(limit.requests_per_unit),
            period_secs: limit.unit.seconds(),
            burst: u64::from(limit.burst),
            hits,
        });
    }
    first
}

/// The cache key of a descriptor with a `limit` override: request values as they are.
fn write_plain_cache_key(out: &mut String, prefix: &str, domain: &str, entries: &[Entry]) {
    out.push_str(prefix);
    out.push_str(domain);
    out.push('_');
    for e in entries {
        out.push_str(&e.key);
        out.push('_');
        out.push_str(&e.value);
        out.push('_');
    }
}

/// `domain.key_value.key` as envoyproxy/ratelimit names override stats.
fn override_stats_key(domain: &str, entries: &[Entry]) -> String {
    let mut key = domain.to_string();
    for e in entries {
        key.push('.');
        key.push_str(&e.key);
        if !e.value.is_empty() {
            key.push('_');
            key.push_str(&e.value);
        }
    }
    key
}

fn unit_from_proto(unit: i32) -> Option<Unit> {
    // envoy.type.v3.RateLimitUnit: SECOND=1 MINUTE=2 HOUR=3 DAY=4 MONTH=5 YEAR=6 (WEEK=7 in
    // the response enum).
    Some(match unit {
        1 => Unit::Second,
        2 => Unit::Minute,
        3 => Unit::Hour,
        4 => Unit::Day,
        5 => Unit::Month,
        6 => Unit::Year,
        7 => Unit::Week,
        _ => return None,
    })
}

fn unit_to_proto(unit: Unit) -> i32 {
    match unit {
        Unit::Second => 1,
        Unit::Minute => 2,
        Unit::Hour => 3,
        Unit::Day => 4,
        Unit::Month => 5,
        Unit::Year => 6,
        Unit::Week => 7,
    }
}

fn duration_proto(d: Duration) -> protobuf::Duration {
    protobuf::Duration { seconds: d.as_secs() as i64, nanos: d.subsec_nanos() as i32 }
}

fn header(key: &str, value: String) -> HeaderValue {
    HeaderValue { key: key.to_string(), value, ..Default::default() }
}

/// Rate-limit headers for the deciding descriptor. Reset is rounded up to whole seconds.
fn headers(
    config: &ResponseHeaders,
    status: &DescriptorStatus,
    reset: Duration,
    name: Option<&str>,
) -> Vec<HeaderValue> {
    let Some(limit) = &status.current_limit else {
        return Vec::new();
    };
    let reset_secs = reset.as_secs() + u64::from(reset.subsec_nanos() > 0);
    match config.format {
        HeaderFormat::Split => vec![
            header(&config.limit, limit.requests_per_unit.to_string()),
            header(&config.remaining, status.limit_remaining.to_string()),
            header(&config.reset, reset_secs.to_string()),
        ],
        HeaderFormat::Ietf => {
            let policy = name.filter(|n| !n.is_empty()).unwrap_or("default");
            let window = unit_from_proto(limit.unit).map_or(1, Unit::seconds);
            vec![
                header("RateLimit-Policy", format!("\"{policy}\";q={};w={window}", limit.requests_per_unit)),
                header("RateLimit", format!("\"{policy}\";r={};t={reset_secs}", status.limit_remaining)),
            ]
        }
    }
}

fn struct_value(s: protobuf::Struct) -> protobuf::Value {
    protobuf::Value { kind: Some(protobuf::value::Kind::StructValue(s)) }
}

/// Adds the fields of `src` that `into` lacks, and merges those that are structs on both
/// sides the same way: the first descriptor's value wins (envoyproxy/ratelimit's
/// `mergeMetadata`).
fn merge_metadata(into: &mut protobuf::Struct, src: &protobuf::Struct) {
    use protobuf::value::Kind;
    for (key, value) in &src.fields {
        match into.fields.get_mut(key) {
            None => {
                into.fields.insert(key.clone(), value.clone());
            }
            Some(protobuf::Value { kind: Some(Kind::StructValue(existing)) }) => {
                if let Some(Kind::StructValue(more)) = &value.kind {
                    merge_metadata(existing, more);
                }
            }
            Some(_) => {}
        }
    }
}

/// RESPONSE_DYNAMIC_METADATA: the request as envoyproxy/ratelimit reports it.
fn request_metadata(request: &RateLimitRequest) -> protobuf::Struct {
    use protobuf::value::Kind;
    let string = |s: String| protobuf::Value { kind: Some(Kind::StringValue(s)) };
    let number = |n: f64| protobuf::Value { kind: Some(Kind::NumberValue(n)) };
    let list =
        |values: Vec<protobuf::Value>| protobuf::Value { kind: Some(Kind::ListValue(protobuf::ListValue { values })) };
    let descriptors = request
        .descriptors
        .iter()
        .map(|d| {
            let mut fields = std::collections::HashMap::new();
            fields.insert(
                "entries".to_string(),
                list(d.entries.iter().map(|e| string(format!("{}={}", e.key, e.value))).collect()),
            );
            if let Some(h) = &d.hits_addend {
                fields.insert("hitsAddend".to_string(), number(h.value as f64));
            }
            protobuf::Value { kind: Some(Kind::StructValue(protobuf::Struct { fields })) }
        })
        .collect();
    let mut fields = std::collections::HashMap::new();
    fields.insert("domain".to_string(), string(request.domain.clone()));
    fields.insert("descriptors".to_string(), list(descriptors));
    if request.hits_addend != 0 {
        fields.insert("hitsAddend".to_string(), number(f64::from(request.hits_addend)));
    }
    protobuf::Struct { fields }
}
