//! The server span of a gRPC call, continuing the caller's trace: the one piece every
//! service's handlers share, so that Envoy's client span is the parent of ours in every
//! service.
//!
//! A handler opens the span with [`grpc_server_span!`](crate::grpc_server_span), adding its
//! own fields, runs the call inside it (`.instrument(span)`), and records the outcome with
//! [`record_status`]. With tracing off the span is disabled at its callsite and none of this
//! does any work; in particular the metadata is not parsed.
//!
//! Attributes follow OpenTelemetry's RPC conventions (`rpc.system`, `rpc.service`,
//! `rpc.method`, `rpc.grpc.status_code`). Handlers must never add a credential, a header value
//! or a token as a field: spans leave the process.

use tracing::Span;

#[doc(hidden)]
pub use tracing as __tracing;

/// A gRPC method, named as it appears on the wire. Build it with [`grpc_method!`](crate::grpc_method).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GrpcMethod {
    /// The fully qualified service, e.g. `envoy.service.ratelimit.v3.RateLimitService`.
    pub service: &'static str,
    /// The method, e.g. `ShouldRateLimit`.
    pub method: &'static str,
    /// `service/method`, the span's name.
    pub name: &'static str,
}

/// A [`GrpcMethod`] from its service and method names.
#[macro_export]
macro_rules! grpc_method {
    ($service:literal, $method:literal) => {
        $crate::telemetry::grpc::GrpcMethod {
            service: $service,
            method: $method,
            name: concat!($service, "/", $method),
        }
    };
}

/// Opens the server span of a gRPC call: `grpc_server_span!(METHOD, request.metadata())`, plus
/// any fields of the handler's own, as in `tracing::info_span!` (declare with
/// `tracing::field::Empty` what is recorded later). The span's parent is the trace context in
/// the metadata ([`super::propagation`]), or none.
#[macro_export]
macro_rules! grpc_server_span {
    ($method:expr, $metadata:expr $(, $($fields:tt)*)?) => {{
        let method: &$crate::telemetry::grpc::GrpcMethod = &$method;
        let span = $crate::telemetry::grpc::__tracing::info_span!(
            "grpc.server",
            otel.name = method.name,
            otel.kind = "server",
            otel.status_code = $crate::telemetry::grpc::__tracing::field::Empty,
            rpc.system = "grpc",
            rpc.service = method.service,
            rpc.method = method.method,
            rpc.grpc.status_code = $crate::telemetry::grpc::__tracing::field::Empty,
            $($($fields)*)?
        );
        $crate::telemetry::grpc::continue_trace(&span, $metadata);
        span
    }};
}

/// Makes the caller's span, found in `metadata`, the parent of `span`. Must run before the
/// span is first entered. Does nothing when the span is disabled (tracing off).
pub fn continue_trace(span: &Span, metadata: &tonic::metadata::MetadataMap) {
    if !span.is_disabled() {
        set_parent(span, super::propagation::extract_from_metadata(metadata));
    }
}

/// [`continue_trace`] for an HTTP request: the caller's span from W3C or B3 headers (a proxy's
/// forward-auth call, Envoy's HTTP ext_authz).
pub fn continue_http_trace(span: &Span, headers: &axum::http::HeaderMap) {
    if !span.is_disabled() {
        set_parent(span, super::propagation::extract_from_headers(headers));
    }
}

fn set_parent(span: &Span, parent: opentelemetry::Context) {
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    // Errors mean no trace layer or a span already started: either way there is nothing to join.
    let _ = span.set_parent(parent);
}

/// Records the call's gRPC status on its server span. Per the RPC conventions, a server span
/// is an error only for codes that mean the server failed, not for a caller's bad request.
pub fn record_status(span: &Span, code: tonic::Code) {
    if span.is_disabled() {
        return;
    }
    span.record("rpc.grpc.status_code", code as i32);
    if is_server_error(code) {
        span.record("otel.status_code", "error");
    }
}

fn is_server_error(code: tonic::Code) -> bool {
    use tonic::Code::*;
    matches!(code, Unknown | DeadlineExceeded | Unimplemented | Internal | Unavailable | DataLoss)
}
