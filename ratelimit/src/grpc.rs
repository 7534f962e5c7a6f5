//! The `envoy.service.ratelimit.v3.RateLimitService` gRPC endpoint.

use std::sync::Arc;
use std::time::Instant;

use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_server::{
    RateLimitService, RateLimitServiceServer,
};
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use gatehouse_common::telemetry::grpc::{GrpcMethod, record_status};
use tonic::{Request, Response, Status};
use tracing::Instrument as _;

use crate::service::{Error, RateLimiter};

const SHOULD_RATE_LIMIT: GrpcMethod =
    gatehouse_common::grpc_method!("envoy.service.ratelimit.v3.RateLimitService", "ShouldRateLimit");

#[derive(Clone, Debug)]
pub struct GrpcService {
    limiter: Arc<RateLimiter>,
}

impl GrpcService {
    pub fn new(limiter: Arc<RateLimiter>) -> RateLimitServiceServer<Self> {
        RateLimitServiceServer::new(GrpcService { limiter })
    }
}

#[tonic::async_trait]
impl RateLimitService for GrpcService {
    async fn should_rate_limit(
        &self,
        request: Request<RateLimitRequest>,
    ) -> Result<Response<RateLimitResponse>, Status> {
        // The server span of the trace Envoy's ratelimit filter started. The domain and the
        // descriptor count say what was asked without copying descriptor values, which can
        // carry client identifiers.
        let span = gatehouse_common::grpc_server_span!(
            SHOULD_RATE_LIMIT,
            request.metadata(),
            ratelimit.domain = request.get_ref().domain.as_str(),
            ratelimit.descriptors = request.get_ref().descriptors.len() as i64,
            ratelimit.overall_code = tracing::field::Empty,
        );
        let started = Instant::now();
        let result = self.limiter.should_rate_limit(request.get_ref()).instrument(span.clone()).await;
        let stats = self.limiter.stats();
        let duration = match &result {
            Ok(response) if response.overall_code() == Code::OverLimit => &stats.durations.over_limit,
            Ok(_) => &stats.durations.ok,
            Err(e) => {
                stats.errors.count(e.kind());
                &stats.durations.error
            }
        };
        duration.observe(started.elapsed().as_secs_f64());
        match result {
            Ok(response) => {
                if !span.is_disabled() {
                    span.record("ratelimit.overall_code", response.overall_code().as_str_name());
                    record_status(&span, tonic::Code::Ok);
                }
                Ok(Response::new(response))
            }
            Err(e) => {
                let status = to_status(&e);
                record_status(&span, status.code());
                Err(status)
            }
        }
    }
}

/// The one place service errors become gRPC statuses. Envoy's ratelimit filter treats every
/// non-OK status the same way: it counts `ratelimit.error` and then lets the request through,
/// or answers it with `status_on_error` (default 500) if `failure_mode_deny: true`. The codes
/// therefore matter for operators reading logs and metrics, not for Envoy's decision:
/// - INVALID_ARGUMENT: the request itself is malformed (no domain, no descriptors); retrying
///   cannot help. envoyproxy/ratelimit answers UNKNOWN here.
/// - UNAVAILABLE: the counter store could not be reached within REDIS_TIMEOUT (failure mode
///   closed); transient.
pub(crate) fn to_status(error: &Error) -> Status {
    match error {
        Error::InvalidRequest(message) => Status::invalid_argument(*message),
        Error::Storage(e) => Status::unavailable(e.to_string()),
    }
}
