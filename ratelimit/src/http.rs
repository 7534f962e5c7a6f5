//! Plain HTTP endpoints, as envoyproxy/ratelimit serves them:
//! - PORT: `/healthcheck` (200 `OK` or 500) and `POST /json` (a `RateLimitRequest` in
//!   proto-JSON; 200, 429 or 400);
//! - DEBUG_PORT: `/rlconfig` (the loaded rules), `/config-status` (reload outcome, JSON) and
//!   `/metrics`.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::{Entry, RateLimitOverride};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code;
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use envoy_types::pb::google::protobuf::UInt64Value;
use gatehouse_common::metrics::Metrics;
use serde::Deserialize;
use serde_json::{Value, json};

use parking_lot::Mutex;

use crate::health::Health;
use crate::service::RateLimiter;
use crate::xds::XdsStatus;

#[derive(Clone)]
struct AppState {
    limiter: Arc<RateLimiter>,
    health: Health,
    /// With CONFIG_TYPE=GRPC_XDS_SOTW: the control plane's state, for /config-status.
    xds: Option<Arc<Mutex<XdsStatus>>>,
}

/// The PORT listener's routes.
pub fn api_router(limiter: Arc<RateLimiter>, health: Health) -> Router {
    Router::new().route("/healthcheck", any(healthcheck)).route("/json", any(json_endpoint)).with_state(AppState {
        limiter,
        health,
        xds: None,
    })
}

/// The DEBUG_PORT listener's routes.
pub fn debug_router(
    limiter: Arc<RateLimiter>,
    health: Health,
    metrics: &Metrics,
    xds: Option<Arc<Mutex<XdsStatus>>>,
) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/rlconfig", get(rlconfig))
        .route("/config-status", get(config_status))
        .with_state(AppState { limiter, health, xds })
        .merge(metrics.router("/metrics"))
}

async fn index() -> &'static str {
    "/config-status: outcome of the last config loads, as JSON\n\
     /metrics: Prometheus metrics\n\
     /rlconfig: print out the currently loaded configuration for debugging\n\
     /admin/limits, /admin/counters, POST /admin/counters/reset: the admin API, with ADMIN_API_ENABLED=true\n"
}

async fn healthcheck(State(state): State<AppState>) -> Response {
    if state.health.is_healthy() {
        (StatusCode::OK, "OK").into_response()
    } else {
        StatusCode::INTERNAL_SERVER_ERROR.into_response()
    }
}

/// envoyproxy/ratelimit's format, one line per rule; rules from xDS start with a `#` line
/// naming their version.
async fn rlconfig(State(state): State<AppState>) -> String {
    let rules = state.limiter.rules().load();
    match &rules.xds_version {
        Some(version) => format!("# xds version: {version}\n{}", rules.dump()),
        None => rules.dump(),
    }
}

async fn config_status(State(state): State<AppState>) -> Response {
    let rules = state.limiter.rules().load();
    let status = state.limiter.rules().status();
    let mut body = status.to_json();
    body["files"] = json!(rules.files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>());
    body["backend"] = json!(state.limiter.store_name());
    if let Some(xds) = &state.xds {
        body["xds"] = json!(*xds.lock());
    }
    ([(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

async fn json_endpoint(State(state): State<AppState>, body: Bytes) -> Response {
    let bad_request = || (StatusCode::BAD_REQUEST, "Bad Request\n").into_response();
    let Ok(request) = serde_json::from_slice::<JsonRequest>(&body) else {
        return bad_request();
    };
    let request = request.into_proto();
    match state.limiter.should_rate_limit(&request).await {
        Ok(response) => {
            let status = match Code::try_from(response.overall_code) {
                Ok(Code::Ok) => StatusCode::OK,
                Ok(Code::OverLimit) => StatusCode::TOO_MANY_REQUESTS,
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            };
            (status, [(header::CONTENT_TYPE, "application/json")], response_json(&response).to_string()).into_response()
        }
        Err(e) => {
            tracing::debug!(error = %e, "/json request failed");
            bad_request()
        }
    }
}

/// `RateLimitRequest` in proto-JSON: lowerCamelCase, with the proto field names accepted too.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct JsonRequest {
    #[serde(default)]
    domain: String,
    #[serde(default)]
    descriptors: Vec<JsonDescriptor>,
    #[serde(default, alias = "hits_addend")]
    hits_addend: u32,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct JsonDescriptor {
    #[serde(default)]
    entries: Vec<JsonEntry>,
    #[serde(default, alias = "hits_addend")]
    hits_addend: Option<u64>,
    #[serde(default)]
    limit: Option<JsonOverride>,
}

#[derive(Deserialize)]
struct JsonEntry {
    key: String,
    #[serde(default)]
    value: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct JsonOverride {
    #[serde(alias = "requests_per_unit")]
    requests_per_unit: u32,
    unit: String,
}

impl JsonRequest {
    fn into_proto(self) -> RateLimitRequest {
        RateLimitRequest {
            domain: self.domain,
            hits_addend: self.hits_addend,
            descriptors: self
                .descriptors
                .into_iter()
                .map(|d| RateLimitDescriptor {
                    entries: d.entries.into_iter().map(|e| Entry { key: e.key, value: e.value }).collect(),
                    hits_addend: d.hits_addend.map(|value| UInt64Value { value }),
                    limit: d.limit.map(|l| RateLimitOverride {
                        requests_per_unit: l.requests_per_unit,
                        unit: unit_number(&l.unit),
                    }),
                    ..Default::default()
                })
                .collect(),
        }
    }
}

fn unit_number(name: &str) -> i32 {
    match name.to_ascii_uppercase().as_str() {
        "SECOND" => 1,
        "MINUTE" => 2,
        "HOUR" => 3,
        "DAY" => 4,
        "MONTH" => 5,
        "YEAR" => 6,
        "WEEK" => 7,
        _ => 0,
    }
}

fn code_name(code: i32) -> &'static str {
    Code::try_from(code).map_or("UNKNOWN", |c| c.as_str_name())
}

fn unit_name(unit: i32) -> &'static str {
    use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::rate_limit::Unit;
    Unit::try_from(unit).map_or("UNKNOWN", |u| u.as_str_name())
}

/// `RateLimitResponse` in proto-JSON, omitting default values as protojson does.
fn response_json(response: &RateLimitResponse) -> Value {
    let statuses: Vec<Value> = response
        .statuses
        .iter()
        .map(|s| {
            let mut o = serde_json::Map::new();
            o.insert("code".into(), json!(code_name(s.code)));
            if let Some(l) = &s.current_limit {
                let mut limit = serde_json::Map::new();
                if !l.name.is_empty() {
                    limit.insert("name".into(), json!(l.name));
                }
                if l.requests_per_unit != 0 {
                    limit.insert("requestsPerUnit".into(), json!(l.requests_per_unit));
                }
                limit.insert("unit".into(), json!(unit_name(l.unit)));
                o.insert("currentLimit".into(), Value::Object(limit));
            }
            if s.limit_remaining != 0 {
                o.insert("limitRemaining".into(), json!(s.limit_remaining));
            }
            if let Some(d) = &s.duration_until_reset {
                let secs = d.seconds as f64 + f64::from(d.nanos) / 1e9;
                o.insert("durationUntilReset".into(), json!(format!("{secs}s")));
            }
            Value::Object(o)
        })
        .collect();
    let mut out = serde_json::Map::new();
    out.insert("overallCode".into(), json!(code_name(response.overall_code)));
    out.insert("statuses".into(), Value::Array(statuses));
    if !response.response_headers_to_add.is_empty() {
        let headers: Vec<Value> =
            response.response_headers_to_add.iter().map(|h| json!({"key": h.key, "value": h.value})).collect();
        out.insert("responseHeadersToAdd".into(), Value::Array(headers));
    }
    Value::Object(out)
}
