//! The admin API (`gatehouse.ratelimit.v1.RateLimitAdminService`, protos/): the rules in
//! effect, the live counters under a descriptor prefix, and resetting one descriptor's
//! counters. Off unless ADMIN_API_ENABLED=true.
//!
//! One implementation, [`Admin`], serves two transports: gRPC on the service's gRPC port
//! ([`AdminService`], under GRPC_SERVER_USE_TLS and GRPC_CLIENT_TLS_CACERT like
//! ShouldRateLimit), and JSON over HTTP on the debug port ([`http_router`]). Both read the rules
//! through the same `Reloader` the ShouldRateLimit path reads, so an answer always comes from
//! one config generation, and count with the same store, key prefix and clock.
//!
//! Counters are found by key prefix: the service writes `CACHE_KEY_PREFIX + domain + "_" +
//! (key_value_)* + limit suffix + window start`, so a descriptor prefix is a key prefix, and
//! each key found is read back through the rule tree into its descriptor and limit, then
//! evaluated without counting. Stores list keys with Redis `SCAN` (never `KEYS`, which blocks
//! Redis for the whole keyspace), one page at a time.
//!
//! Every reset is logged at WARN under the target `gatehouse::audit` with who asked: the peer
//! address and, under mTLS, the client certificate's subject and SANs.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use envoy_types::pb::google::protobuf;
use serde::Deserialize;
use serde_json::{Value, json};
use tonic::{Code, Request, Status};

use crate::rules::{self, EntryRef, Rule, RuleSet};
use crate::service::{RateLimiter, push_counters};
use crate::storage::{Batch, CounterUpdate, Mode, StorageError, Window};

/// The generated messages, client and server of `protos/gatehouse/ratelimit/v1/admin.proto`.
#[allow(clippy::all, missing_docs, unreachable_pub)]
pub mod proto {
    tonic::include_proto!("gatehouse.ratelimit.v1");
}

use proto::rate_limit_admin_service_server::{RateLimitAdminService, RateLimitAdminServiceServer};
use proto::{
    Counter, Entry, GetCountersRequest, GetCountersResponse, ListLimitsRequest, ListLimitsResponse,
    ResetCountersRequest, ResetCountersResponse,
};

/// Stored keys looked at per page when the request does not say.
pub const DEFAULT_PAGE_SIZE: u32 = 100;
/// The most stored keys one page may look at: a Redis `SCAN ... COUNT` this large already
/// takes Redis a few milliseconds, and the page is read back and evaluated in one response.
pub const MAX_PAGE_SIZE: u32 = 10_000;

/// Why an admin call failed. Becomes a gRPC status or an HTTP status through [`code`] only.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// The one place admin errors get their status code (gRPC, and HTTP through
/// [`http_status`]). The caller is an operator or a tool, not Envoy:
/// - INVALID_ARGUMENT: the request cannot be answered as asked (no domain, an entry without
///   key, page_size over [`MAX_PAGE_SIZE`], a page token the store did not hand out).
/// - NOT_FOUND: no such domain, or no rule for the descriptor to reset.
/// - UNIMPLEMENTED: the store cannot do it (listing counters on Redis Cluster).
/// - UNAVAILABLE: the store failed or timed out (REDIS_TIMEOUT); retrying later may work.
pub fn code(error: &AdminError) -> Code {
    match error {
        AdminError::InvalidArgument(_) | AdminError::Storage(StorageError::BadCursor(_)) => Code::InvalidArgument,
        AdminError::NotFound(_) => Code::NotFound,
        AdminError::Storage(StorageError::Unsupported(_)) => Code::Unimplemented,
        AdminError::Storage(_) => Code::Unavailable,
    }
}

fn to_status(error: &AdminError) -> Status {
    Status::new(code(error), error.to_string())
}

/// Who asked for a reset, for the audit log.
#[derive(Clone, Debug, Default)]
pub struct Caller {
    /// `grpc` or `http`.
    pub transport: &'static str,
    /// The peer's address; None on a Unix socket, or when the transport does not tell.
    pub peer: Option<std::net::SocketAddr>,
    /// The client certificate's subject (`CN=envoy,O=...`), under mTLS.
    pub subject: Option<String>,
    /// Its DNS and URI subject alternative names.
    pub sans: Vec<String>,
}

impl EntryRef for Entry {
    fn key(&self) -> &str {
        &self.key
    }
    fn value(&self) -> &str {
        &self.value
    }
}

/// The admin API over a live rate limiter.
#[derive(Clone, Debug)]
pub struct Admin {
    limiter: Arc<RateLimiter>,
}

impl Admin {
    pub fn new(limiter: Arc<RateLimiter>) -> Admin {
        Admin { limiter }
    }

    /// The rules of the config generation in effect, sorted by full key.
    pub fn list_limits(&self, request: &ListLimitsRequest) -> Result<ListLimitsResponse, AdminError> {
        let rules = self.limiter.rules().load();
        let filter = Some(request.domain.as_str()).filter(|d| !d.is_empty());
        if let Some(domain) = filter {
            known_domain(&rules, domain)?;
        }
        Ok(ListLimitsResponse {
            rules: rules.rules(filter).into_iter().map(|(domain, rule)| rule_proto(domain, rule)).collect(),
            sources: rules.files.iter().map(|f| f.display().to_string()).collect(),
            version: rules.xds_version.clone().unwrap_or_default(),
        })
    }

    /// One page of the live counters of `request.domain` under its descriptor prefix.
    ///
    /// A page looks at about `page_size` stored keys; it may hold fewer counters (keys of
    /// windows that ended and wait for their expiry, a sliding window's two keys, keys under
    /// the prefix's text that belong to other descriptors) and still have a next page.
    pub async fn get_counters(&self, request: &GetCountersRequest) -> Result<GetCountersResponse, AdminError> {
        let page_size = match request.page_size {
            0 => DEFAULT_PAGE_SIZE,
            n if n > MAX_PAGE_SIZE => {
                return Err(AdminError::InvalidArgument(format!("page_size {n} is over the maximum, {MAX_PAGE_SIZE}")));
            }
            n => n,
        };
        validate_entries(&request.entries, true)?;
        // An Arc, not a guard: the generation stays alive across the store's awaits without
        // holding up a reload.
        let rules = self.limiter.rules().load();
        let domain = known_domain(&rules, &request.domain)?;
        let backend = self.limiter.store_name().to_string();
        let Some(prefix) = domain.key_prefix(&request.entries) else {
            // No rule's descriptor starts this way: no counter can exist.
            return Ok(GetCountersResponse { counters: Vec::new(), next_page_token: String::new(), backend });
        };
        let base = format!("{}{}_", self.limiter.cache_key_prefix(), request.domain);
        let key_prefix = format!("{base}{}", prefix.key);
        let page = self.limiter.store().scan(&key_prefix, &request.page_token, page_size as usize).await?;
        let now_ms = self.limiter.clock().now_ms();
        let found = read_keys(domain, &prefix, &base, &page.keys, now_ms);
        let counters = self.evaluate(found, now_ms).await?;
        Ok(GetCountersResponse { counters, next_page_token: page.next.unwrap_or_default(), backend })
    }

    /// The state of `found`'s counters, evaluated without counting in one store call.
    ///
    /// A sliding window seen through its previous key also gets a probe of its current key
    /// (read as a fixed window of the same key and period): if that key holds hits, the
    /// counter is listed under it, maybe on another page, and not here, so that it comes once.
    async fn evaluate(&self, found: Vec<Found<'_>>, now_ms: u64) -> Result<Vec<Counter>, AdminError> {
        if found.is_empty() {
            return Ok(Vec::new());
        }
        let probes: Vec<usize> = (0..found.len()).filter(|&i| found[i].previous).collect();
        let counters = found
            .iter()
            .map(|f| f.counter.clone())
            .chain(
                probes
                    .iter()
                    .map(|&i| CounterUpdate { algorithm: rules::Algorithm::FixedWindow, ..found[i].counter.clone() }),
            )
            .collect();
        let batch = Batch { counters, mode: Mode::Independent };
        let states = self.limiter.store().peek(&batch, now_ms).await?;
        if states.len() != batch.counters.len() {
            return Err(StorageError::Protocol("store returned fewer counters than asked".into()).into());
        }
        let listed_elsewhere: HashSet<usize> =
            probes.iter().zip(&states[found.len()..]).filter(|(_, probe)| probe.used > 0).map(|(&i, _)| i).collect();
        Ok(found
            .into_iter()
            .zip(&states)
            .enumerate()
            .filter(|(i, _)| !listed_elsewhere.contains(i))
            .map(|(_, (f, state))| Counter {
                entries: f.entries.into_iter().map(|(key, value)| Entry { key, value }).collect(),
                full_key: f.rule.full_key.clone(),
                limit: Some(limit_proto(&f.rule.limits[f.limit])),
                value: state.used,
                remaining: state.remaining,
                // As the next request sees it: a counter at its limit refuses the next hit.
                over_limit: state.over_limit || state.remaining == 0,
                reset_after: Some(duration_proto(state.reset_after)),
                reset_time: Some(timestamp_proto(now_ms, state.reset_after)),
                store_key: f.counter.key,
            })
            .collect())
    }

    /// Deletes the current windows' counters of the rule `request`'s descriptor matches, so
    /// that its next request starts from zero, and logs who did it.
    ///
    /// With the local over-limit cache (LOCAL_CACHE_SIZE_IN_BYTES), this replica forgets the
    /// descriptor at once; other replicas keep refusing it until their cached window ends.
    pub async fn reset_counters(
        &self,
        request: &ResetCountersRequest,
        caller: &Caller,
    ) -> Result<ResetCountersResponse, AdminError> {
        let outcome = self.reset(request).await;
        audit(request, caller, &outcome);
        outcome
    }

    async fn reset(&self, request: &ResetCountersRequest) -> Result<ResetCountersResponse, AdminError> {
        if request.entries.is_empty() {
            return Err(AdminError::InvalidArgument("a descriptor needs at least one entry".into()));
        }
        validate_entries(&request.entries, false)?;
        let rules = self.limiter.rules().load();
        let domain = known_domain(&rules, &request.domain)?;
        let matched = domain.find(&request.entries).ok_or_else(|| {
            AdminError::NotFound(format!(
                "no rule of domain '{}' matches the descriptor {}",
                request.domain,
                describe(&request.entries)
            ))
        })?;
        let rule = matched.rule;
        let mut key = String::new();
        matched.write_cache_key(&mut key, self.limiter.cache_key_prefix(), &request.domain, &request.entries);
        let mut batch = Batch { counters: Vec::with_capacity(rule.limits.len()), mode: Mode::Independent };
        push_counters(&mut batch, &key, &rule.limits, 0);
        let deleted = if batch.counters.is_empty() {
            // `unlimited`: nothing is counted.
            0
        } else {
            self.limiter.store().reset(&batch.counters, self.limiter.clock().now_ms()).await?
        };
        Ok(ResetCountersResponse { full_key: rule.full_key.clone(), deleted })
    }
}

/// A counter key read back, before it is evaluated.
struct Found<'r> {
    entries: Vec<(String, String)>,
    rule: &'r Arc<Rule>,
    /// Index into `rule.limits`.
    limit: usize,
    counter: CounterUpdate,
    /// Seen through a sliding window's previous window key.
    previous: bool,
}

/// What follows the descriptor in a counter key.
struct Tail {
    /// The limit whose suffix it starts with.
    limit: usize,
    /// The window's start, Unix seconds; None for a token bucket.
    window: Option<u64>,
    /// How many bytes the window takes at the end of the key.
    window_len: usize,
}

/// Reads stored keys back into their descriptors and limits, keeping the counters that count
/// at `now_ms` under `prefix`. `base` is `CACHE_KEY_PREFIX + domain + "_"`.
fn read_keys<'r>(
    domain: &'r rules::Domain,
    prefix: &rules::KeyPrefix,
    base: &str,
    keys: &[String],
    now_ms: u64,
) -> Vec<Found<'r>> {
    let mut found: Vec<Found<'r>> = Vec::new();
    // A sliding window's two keys may both be on the page: one counter, under the current key.
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for key in keys {
        let Some(rest) = key.strip_prefix(base) else { continue };
        let Some(read) = domain.read_cache_key(rest, tail_of) else { continue };
        if !prefix.matches(&read.entries) {
            continue;
        }
        let limit = &read.rule.limits[read.tail.limit];
        let counter_key = &key[..key.len() - read.tail.window_len];
        let window = Window::of(now_ms, limit.unit.seconds());
        let previous = match (limit.algorithm, read.tail.window) {
            (rules::Algorithm::TokenBucket, _) => false,
            (_, Some(start)) if start == window.start_secs => false,
            // A sliding window's previous key still weighs in, until it is two periods old.
            (rules::Algorithm::SlidingWindow, Some(start))
                if start.checked_add(limit.unit.seconds()) == Some(window.start_secs) =>
            {
                true
            }
            // A window that ended, its key waiting to expire.
            _ => continue,
        };
        if let Some(&at) = seen.get(counter_key) {
            found[at].previous &= previous;
            continue;
        }
        seen.insert(counter_key, found.len());
        found.push(Found {
            entries: read.entries,
            rule: read.rule,
            limit: read.tail.limit,
            counter: CounterUpdate {
                key: counter_key.to_string(),
                tag_len: counter_key.len() - limit.key_suffix.len(),
                algorithm: limit.algorithm,
                limit: u64::from(limit.requests_per_unit),
                period_secs: limit.unit.seconds(),
                burst: u64::from(limit.burst),
                hits: 0,
            },
            previous,
        });
    }
    found
}

/// Reads a key's tail: a limit's suffix, then a window's start (digits) for the window
/// algorithms, nothing for a token bucket.
fn tail_of(rule: &Rule, rest: &str) -> Option<Tail> {
    rule.limits.iter().enumerate().find_map(|(limit, l)| {
        let window = rest.strip_prefix(l.key_suffix.as_str())?;
        match l.algorithm {
            rules::Algorithm::TokenBucket => window.is_empty().then_some(Tail { limit, window: None, window_len: 0 }),
            _ if window.bytes().all(|b| b.is_ascii_digit()) => {
                Some(Tail { limit, window: Some(window.parse().ok()?), window_len: window.len() })
            }
            _ => None,
        }
    })
}

fn known_domain<'r>(rules: &'r RuleSet, domain: &str) -> Result<&'r rules::Domain, AdminError> {
    if domain.is_empty() {
        return Err(AdminError::InvalidArgument("domain must not be empty".into()));
    }
    rules.domain(domain).ok_or_else(|| AdminError::NotFound(format!("no rate limit domain '{domain}' is loaded")))
}

/// Every entry needs a key; only a descriptor prefix's last entry may leave its value empty
/// ("any value"), when `prefix`.
fn validate_entries(entries: &[Entry], prefix: bool) -> Result<(), AdminError> {
    for (i, entry) in entries.iter().enumerate() {
        if entry.key.is_empty() {
            return Err(AdminError::InvalidArgument(format!("entry {i} has an empty key")));
        }
        if prefix && entry.value.is_empty() && i + 1 < entries.len() {
            return Err(AdminError::InvalidArgument(format!(
                "entry {i} ('{}') has an empty value; only the last entry may match any value",
                entry.key
            )));
        }
    }
    Ok(())
}

/// `[key=value, key2=value2]`, for messages and the audit log.
fn describe(entries: &[Entry]) -> String {
    let entries: Vec<String> = entries.iter().map(|e| format!("{}={}", e.key, e.value)).collect();
    format!("[{}]", entries.join(", "))
}

/// The audit line of a reset, refused ones included: whoever may reach the admin API can
/// lift any limit, so each reset names who asked.
fn audit(request: &ResetCountersRequest, caller: &Caller, outcome: &Result<ResetCountersResponse, AdminError>) {
    let peer = caller.peer.map_or_else(|| "unknown".to_string(), |p| p.to_string());
    let reset = outcome.as_ref().ok();
    // `None` fields are left out of the line: a refused reset has an error, not a count.
    tracing::warn!(
        target: "gatehouse::audit",
        transport = caller.transport,
        peer = %peer,
        client_subject = caller.subject.as_deref().unwrap_or(""),
        client_sans = %caller.sans.join(","),
        domain = %request.domain,
        descriptor = %describe(&request.entries),
        full_key = reset.map(|r| tracing::field::display(&r.full_key)),
        deleted = reset.map(|r| r.deleted),
        error = outcome.as_ref().err().map(tracing::field::display),
        "{}",
        if reset.is_some() { "rate limit counters reset" } else { "rate limit counter reset refused" }
    );
}

fn rule_proto(domain: &str, rule: &Rule) -> proto::Rule {
    proto::Rule {
        domain: domain.to_string(),
        full_key: rule.full_key.clone(),
        name: rule.name.clone().unwrap_or_default(),
        limits: rule.limits.iter().map(limit_proto).collect(),
        unlimited: rule.unlimited,
        shadow_mode: rule.shadow_mode,
        quota_mode: rule.quota_mode,
        replaces: rule.replaces.clone(),
        source: rule.source.display().to_string(),
    }
}

fn limit_proto(limit: &rules::Limit) -> proto::Limit {
    let unit = match limit.unit {
        rules::Unit::Second => proto::Unit::Second,
        rules::Unit::Minute => proto::Unit::Minute,
        rules::Unit::Hour => proto::Unit::Hour,
        rules::Unit::Day => proto::Unit::Day,
        rules::Unit::Week => proto::Unit::Week,
        rules::Unit::Month => proto::Unit::Month,
        rules::Unit::Year => proto::Unit::Year,
    };
    let algorithm = match limit.algorithm {
        rules::Algorithm::FixedWindow => proto::Algorithm::FixedWindow,
        rules::Algorithm::SlidingWindow => proto::Algorithm::SlidingWindow,
        rules::Algorithm::TokenBucket => proto::Algorithm::TokenBucket,
    };
    proto::Limit {
        unit: unit as i32,
        requests_per_unit: limit.requests_per_unit,
        algorithm: algorithm as i32,
        burst: limit.burst,
    }
}

fn duration_proto(d: Duration) -> protobuf::Duration {
    // Reset times are at most a year (UNIT_YEAR): far within i64 seconds.
    protobuf::Duration { seconds: d.as_secs() as i64, nanos: d.subsec_nanos() as i32 }
}

fn timestamp_proto(now_ms: u64, after: Duration) -> protobuf::Timestamp {
    let at = Duration::from_millis(now_ms).saturating_add(after);
    protobuf::Timestamp { seconds: at.as_secs() as i64, nanos: at.subsec_nanos() as i32 }
}

// --- gRPC ---------------------------------------------------------------------------------

/// `gatehouse.ratelimit.v1.RateLimitAdminService` on the gRPC port.
#[derive(Clone, Debug)]
pub struct AdminService {
    admin: Admin,
}

impl AdminService {
    pub fn new(limiter: Arc<RateLimiter>) -> RateLimitAdminServiceServer<Self> {
        RateLimitAdminServiceServer::new(AdminService { admin: Admin::new(limiter) })
    }
}

#[tonic::async_trait]
impl RateLimitAdminService for AdminService {
    async fn list_limits(
        &self,
        request: Request<ListLimitsRequest>,
    ) -> Result<tonic::Response<ListLimitsResponse>, Status> {
        self.admin.list_limits(request.get_ref()).map(tonic::Response::new).map_err(|e| to_status(&e))
    }

    async fn get_counters(
        &self,
        request: Request<GetCountersRequest>,
    ) -> Result<tonic::Response<GetCountersResponse>, Status> {
        self.admin.get_counters(request.get_ref()).await.map(tonic::Response::new).map_err(|e| to_status(&e))
    }

    async fn reset_counters(
        &self,
        request: Request<ResetCountersRequest>,
    ) -> Result<tonic::Response<ResetCountersResponse>, Status> {
        let caller = grpc_caller(&request);
        self.admin.reset_counters(request.get_ref(), &caller).await.map(tonic::Response::new).map_err(|e| to_status(&e))
    }
}

/// The peer address and, under mTLS, the client certificate's names.
fn grpc_caller<T>(request: &Request<T>) -> Caller {
    let mut caller = Caller { transport: "grpc", peer: request.remote_addr(), ..Caller::default() };
    if let Some(chain) = request.peer_certs()
        && let Some(leaf) = chain.first()
    {
        match webpki::EndEntityCert::try_from(leaf) {
            Ok(cert) => {
                caller.subject = Some(distinguished_name(cert.subject()));
                caller.sans = cert.valid_dns_names().chain(cert.valid_uri_names()).map(str::to_string).collect();
            }
            // rustls verified it; this is only for the log.
            Err(e) => caller.subject = Some(format!("(unreadable certificate: {e})")),
        }
    }
    caller
}

/// A certificate's subject (the DER contents of its `Name`) as `CN=envoy,O=example`, in
/// certificate order; attributes other than the common ones show their OID.
fn distinguished_name(der: &[u8]) -> String {
    let mut parts = Vec::new();
    let mut rdns = der;
    // Name ::= SEQUENCE OF RelativeDistinguishedName (SET OF AttributeTypeAndValue)
    while let Some((_set, mut attributes, rest)) = der_item(rdns) {
        rdns = rest;
        while let Some((_seq, attribute, rest)) = der_item(attributes) {
            attributes = rest;
            let Some((0x06, oid, value)) = der_item(attribute) else { continue };
            let Some((_string, value, _)) = der_item(value) else { continue };
            let name = match oid {
                [0x55, 0x04, 0x03] => "CN".to_string(),
                [0x55, 0x04, 0x06] => "C".into(),
                [0x55, 0x04, 0x07] => "L".into(),
                [0x55, 0x04, 0x08] => "ST".into(),
                [0x55, 0x04, 0x0a] => "O".into(),
                [0x55, 0x04, 0x0b] => "OU".into(),
                other => oid_text(other),
            };
            parts.push(format!("{name}={}", String::from_utf8_lossy(value)));
        }
    }
    parts.join(",")
}

/// One DER item: (tag, contents, what follows). None if `input` is not DER.
fn der_item(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n].iter().fold(0usize, |len, b| (len << 8) | usize::from(*b));
        (len, &rest[n..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

/// An OID's dotted form, e.g. `1.2.840.113549.1.9.1`.
fn oid_text(der: &[u8]) -> String {
    let Some((&first, rest)) = der.split_first() else { return String::new() };
    let mut arcs = vec![u64::from(first / 40), u64::from(first % 40)];
    let mut arc = 0u64;
    for b in rest {
        arc = (arc << 7) | u64::from(b & 0x7f);
        if b & 0x80 == 0 {
            arcs.push(arc);
            arc = 0;
        }
    }
    arcs.iter().map(u64::to_string).collect::<Vec<_>>().join(".")
}

// --- HTTP (debug port) --------------------------------------------------------------------

/// The admin API as JSON on the debug port, for curl:
/// - `GET /admin/limits[?domain=d]`
/// - `GET /admin/counters?domain=d[&entry=key=value]...[&page_size=n][&page_token=t]`
/// - `POST /admin/counters/reset` with `{"domain": "d", "entries": [{"key": "k", "value": "v"}]}`
///
/// Answers are the proto messages in proto3's JSON mapping; errors are
/// `{"code": "NOT_FOUND", "message": "..."}` with the matching HTTP status. The debug port has
/// no authentication: keep it off untrusted networks (DEBUG_HOST).
pub fn http_router(limiter: Arc<RateLimiter>) -> Router {
    Router::new()
        .route("/admin/limits", get(http_limits))
        .route("/admin/counters", get(http_counters))
        .route("/admin/counters/reset", post(http_reset))
        .with_state(Admin::new(limiter))
}

async fn http_limits(State(admin): State<Admin>, Query(query): Query<Vec<(String, String)>>) -> Response {
    let mut request = ListLimitsRequest::default();
    for (name, value) in query {
        match name.as_str() {
            "domain" => request.domain = value,
            other => return http_error(&unknown_parameter(other)),
        }
    }
    match admin.list_limits(&request) {
        Ok(response) => (StatusCode::OK, axum::Json(json::list_limits(&response))).into_response(),
        Err(e) => http_error(&e),
    }
}

async fn http_counters(State(admin): State<Admin>, Query(query): Query<Vec<(String, String)>>) -> Response {
    let request = match counters_request(query) {
        Ok(request) => request,
        Err(e) => return http_error(&e),
    };
    match admin.get_counters(&request).await {
        Ok(response) => (StatusCode::OK, axum::Json(json::get_counters(&response))).into_response(),
        Err(e) => http_error(&e),
    }
}

/// `entry=key=value` (repeated, in order; `entry=key` or `entry=key=` for any value),
/// `domain`, `page_size`, `page_token`.
fn counters_request(query: Vec<(String, String)>) -> Result<GetCountersRequest, AdminError> {
    let mut request = GetCountersRequest::default();
    for (name, value) in query {
        match name.as_str() {
            "domain" => request.domain = value,
            "entry" => {
                let (key, value) = value.split_once('=').unwrap_or((&value, ""));
                request.entries.push(Entry { key: key.to_string(), value: value.to_string() });
            }
            "page_size" => {
                request.page_size = value.parse().map_err(|_| {
                    AdminError::InvalidArgument(format!(
                        "page_size '{value}' is not a number from 0 to {MAX_PAGE_SIZE}"
                    ))
                })?;
            }
            "page_token" => request.page_token = value,
            other => return Err(unknown_parameter(other)),
        }
    }
    Ok(request)
}

fn unknown_parameter(name: &str) -> AdminError {
    AdminError::InvalidArgument(format!("unknown query parameter '{name}'"))
}

/// `ResetCountersRequest` in JSON; proto field names, which are also their JSON names.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ResetBody {
    domain: String,
    #[serde(default)]
    entries: Vec<EntryBody>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EntryBody {
    key: String,
    #[serde(default)]
    value: String,
}

async fn http_reset(State(admin): State<Admin>, body: axum::body::Bytes) -> Response {
    let body: ResetBody = match serde_json::from_slice(&body) {
        Ok(body) => body,
        Err(e) => return http_error(&AdminError::InvalidArgument(format!("request body: {e}"))),
    };
    let request = ResetCountersRequest {
        domain: body.domain,
        entries: body.entries.into_iter().map(|e| Entry { key: e.key, value: e.value }).collect(),
    };
    // The debug server does not hand handlers the peer's address; the audit line says `http`.
    let caller = Caller { transport: "http", ..Caller::default() };
    match admin.reset_counters(&request, &caller).await {
        Ok(response) => (StatusCode::OK, axum::Json(json::reset_counters(&response))).into_response(),
        Err(e) => http_error(&e),
    }
}

/// The HTTP status of each gRPC code [`code`] gives, as grpc-gateway maps them.
fn http_status(code: Code) -> StatusCode {
    match code {
        Code::InvalidArgument => StatusCode::BAD_REQUEST,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

fn http_error(error: &AdminError) -> Response {
    let code = code(error);
    let body = json!({ "code": grpc_code_name(code), "message": error.to_string() });
    (http_status(code), axum::Json(body)).into_response()
}

fn grpc_code_name(code: Code) -> &'static str {
    match code {
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::NotFound => "NOT_FOUND",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Unavailable => "UNAVAILABLE",
        _ => "INTERNAL",
    }
}

/// The admin messages in proto3's JSON mapping: lowerCamelCase names, enums by name, 64-bit
/// integers as strings, `Duration` as `"1.5s"`, `Timestamp` in RFC 3339. Every field is
/// written, defaults included, so that scripts need not know the defaults.
pub mod json {
    use super::*;

    pub fn list_limits(response: &ListLimitsResponse) -> Value {
        json!({
            "rules": response.rules.iter().map(rule).collect::<Vec<_>>(),
            "sources": response.sources,
            "version": response.version,
        })
    }

    pub fn get_counters(response: &GetCountersResponse) -> Value {
        json!({
            "counters": response.counters.iter().map(counter).collect::<Vec<_>>(),
            "nextPageToken": response.next_page_token,
            "backend": response.backend,
        })
    }

    pub fn reset_counters(response: &ResetCountersResponse) -> Value {
        json!({ "fullKey": response.full_key, "deleted": response.deleted.to_string() })
    }

    fn rule(rule: &proto::Rule) -> Value {
        json!({
            "domain": rule.domain,
            "fullKey": rule.full_key,
            "name": rule.name,
            "limits": rule.limits.iter().map(limit).collect::<Vec<_>>(),
            "unlimited": rule.unlimited,
            "shadowMode": rule.shadow_mode,
            "quotaMode": rule.quota_mode,
            "replaces": rule.replaces,
            "source": rule.source,
        })
    }

    fn limit(limit: &proto::Limit) -> Value {
        json!({
            "unit": proto::Unit::try_from(limit.unit).unwrap_or_default().as_str_name(),
            "requestsPerUnit": limit.requests_per_unit,
            "algorithm": proto::Algorithm::try_from(limit.algorithm).unwrap_or_default().as_str_name(),
            "burst": limit.burst,
        })
    }

    fn counter(counter: &Counter) -> Value {
        json!({
            "entries": counter.entries.iter().map(|e| json!({"key": e.key, "value": e.value})).collect::<Vec<_>>(),
            "fullKey": counter.full_key,
            "limit": counter.limit.as_ref().map(limit),
            "value": counter.value.to_string(),
            "remaining": counter.remaining.to_string(),
            "overLimit": counter.over_limit,
            "resetAfter": counter.reset_after.as_ref().map(duration),
            "resetTime": counter.reset_time.as_ref().map(timestamp),
            "storeKey": counter.store_key,
        })
    }

    /// `"12s"`, `"0.250s"`: seconds with 0, 3, 6 or 9 decimals, as protojson writes them.
    pub fn duration(d: &protobuf::Duration) -> String {
        let (seconds, nanos) = (d.seconds, d.nanos.unsigned_abs());
        let sign = if d.seconds < 0 || d.nanos < 0 { "-" } else { "" };
        let seconds = seconds.unsigned_abs();
        match nanos {
            0 => format!("{sign}{seconds}s"),
            n if n % 1_000_000 == 0 => format!("{sign}{seconds}.{:03}s", n / 1_000_000),
            n if n % 1_000 == 0 => format!("{sign}{seconds}.{:06}s", n / 1_000),
            n => format!("{sign}{seconds}.{n:09}s"),
        }
    }

    /// RFC 3339 in UTC, e.g. `2026-01-01T00:01:00Z`.
    pub fn timestamp(t: &protobuf::Timestamp) -> String {
        let nanos = i128::from(t.seconds) * 1_000_000_000 + i128::from(t.nanos);
        time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
            .ok()
            .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protojson_durations_and_timestamps() {
        for (seconds, nanos, expected) in
            [(0, 0, "0s"), (12, 0, "12s"), (0, 250_000_000, "0.250s"), (1, 1_000, "1.000001s"), (2, 7, "2.000000007s")]
        {
            assert_eq!(json::duration(&protobuf::Duration { seconds, nanos }), expected);
        }
        let t = protobuf::Timestamp { seconds: 1_767_225_660, nanos: 500_000_000 };
        assert_eq!(json::timestamp(&t), "2026-01-01T00:01:00.5Z");
    }

    #[test]
    fn query_strings_become_requests() {
        let query = |pairs: &[(&str, &str)]| pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let request = counters_request(query(&[
            ("domain", "shop"),
            ("entry", "user=a=b"),
            ("entry", "path"),
            ("page_size", "5"),
        ]))
        .unwrap();
        assert_eq!(request.domain, "shop");
        assert_eq!(
            request.entries,
            [Entry { key: "user".into(), value: "a=b".into() }, Entry { key: "path".into(), value: String::new() }]
        );
        assert_eq!(request.page_size, 5);
        for (bad, expected) in [
            (&[("page_size", "-1")][..], "page_size '-1' is not a number"),
            (&[("page_size", "99999999999")][..], "is not a number"),
            (&[("pagesize", "5")][..], "unknown query parameter 'pagesize'"),
        ] {
            let err = counters_request(query(bad)).unwrap_err();
            assert!(err.to_string().contains(expected), "{err}");
            assert_eq!(code(&err), Code::InvalidArgument);
        }
    }

    #[test]
    fn subjects_read_from_der() {
        // SEQUENCE OF SET { SEQUENCE { OID 2.5.4.3, UTF8String "envoy" } },
        //             SET { SEQUENCE { OID 1.2.840.113549.1.9.1, IA5String "a@b" } }
        let cn = [0x31, 0x0e, 0x30, 0x0c, 0x06, 0x03, 0x55, 0x04, 0x03, 0x0c, 0x05, b'e', b'n', b'v', b'o', b'y'];
        let email = [
            0x31, 0x12, 0x30, 0x10, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x01, 0x16, 0x03, b'a',
            b'@', b'b',
        ];
        let der: Vec<u8> = cn.iter().chain(&email).copied().collect();
        assert_eq!(distinguished_name(&der), "CN=envoy,1.2.840.113549.1.9.1=a@b");
        // Truncated or garbage input reads as far as it is DER, and never panics.
        assert_eq!(distinguished_name(&der[..der.len() - 1]), "CN=envoy");
        assert_eq!(distinguished_name(&[0x31, 0x84, 0xff, 0xff, 0xff, 0xff]), "");
        assert_eq!(distinguished_name(&[]), "");
    }
}
