//! The `envoy.service.ratelimit.v3.RateLimitService` gRPC endpoint.

use std::sync::Arc;

use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_server::{
    RateLimitService, RateLimitServiceServer,
};
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use tonic::{Request, Response, Status};

use crate::service::{Error, RateLimiter};

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
        match self.limiter.should_rate_limit(request.get_ref()).await {
            Ok(response) => Ok(Response::new(response)),
            Err(e) => Err(to_status(&e)),
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
