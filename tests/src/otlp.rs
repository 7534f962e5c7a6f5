//! An OpenTelemetry collector for tests: an OTLP/gRPC trace receiver on `127.0.0.1:0` that
//! keeps every span it is sent, from Envoy and from the services alike, so a test can wait
//! for spans by name and check how they link.
//!
//! It listens for OTLP/gRPC and, on a second port, OTLP/HTTP with protobuf bodies
//! (`POST /v1/traces`), into one list. It answers every export with success and nothing else; spans are flattened with
//! their resource's `service.name` and their attributes as strings, which is what assertions
//! read.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue};
use tokio::sync::oneshot;
use tonic::{Request, Response, Status};

/// One received span.
#[derive(Clone, Debug, PartialEq)]
pub struct Span {
    /// The resource's `service.name`.
    pub service: String,
    pub name: String,
    /// Lowercase hex, as in `traceparent`.
    pub trace_id: String,
    pub span_id: String,
    /// Empty for a root span.
    pub parent_span_id: String,
    /// `opentelemetry.proto.trace.v1.Span.SpanKind`: 2 server, 3 client.
    pub kind: i32,
    /// Every attribute, its value as text (arrays and maps in their debug form).
    pub attributes: BTreeMap<String, String>,
    /// The keys of the attributes whose value is an integer (OTLP `IntValue`), so that a test
    /// can tell `1` from `"1"`.
    pub integers: BTreeSet<String>,
    /// The resource's attributes, as `attributes`.
    pub resource: BTreeMap<String, String>,
}

impl Span {
    pub const KIND_SERVER: i32 = 2;
    pub const KIND_CLIENT: i32 = 3;

    pub fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }

    /// The attribute `key` if it is an integer (counts and status codes must not arrive as text).
    pub fn integer(&self, key: &str) -> Option<i64> {
        self.integers.contains(key).then(|| self.attribute(key)?.parse().ok()).flatten()
    }
}

/// A running receiver; stops when dropped.
#[derive(Debug)]
pub struct Receiver {
    addr: SocketAddr,
    http_addr: SocketAddr,
    spans: Arc<Mutex<Vec<Span>>>,
    /// How many Export calls arrived, batches with no spans included.
    exports: Arc<Mutex<usize>>,
    stop: Option<oneshot::Sender<()>>,
}

#[derive(Clone)]
struct Collector {
    spans: Arc<Mutex<Vec<Span>>>,
    exports: Arc<Mutex<usize>>,
}

impl Receiver {
    pub async fn start() -> Receiver {
        Self::start_with(None).await
    }

    /// A receiver whose gRPC port serves TLS with `cert`/`key` (PEM) and, with `client_ca`,
    /// requires a client certificate it signed: an `https://` collector, at [`Receiver::tls_endpoint`].
    pub async fn start_tls(cert: &[u8], key: &[u8], client_ca: Option<&[u8]>) -> Receiver {
        let mut tls =
            tonic::transport::ServerTlsConfig::new().identity(tonic::transport::Identity::from_pem(cert, key));
        if let Some(ca) = client_ca {
            tls = tls.client_ca_root(tonic::transport::Certificate::from_pem(ca));
        }
        Self::start_with(Some(tls)).await
    }

    async fn start_with(tls: Option<tonic::transport::ServerTlsConfig>) -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind the OTLP receiver");
        let addr = listener.local_addr().expect("receiver address");
        let spans = Arc::new(Mutex::new(Vec::new()));
        let exports = Arc::new(Mutex::new(0));
        let collector = Collector { spans: spans.clone(), exports: exports.clone() };
        let (stop, stopped) = oneshot::channel::<()>();
        let http_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind the OTLP/HTTP receiver");
        let http_addr = http_listener.local_addr().expect("receiver address");
        let http =
            axum::Router::new().route("/v1/traces", axum::routing::post(export_http)).with_state(collector.clone());
        tokio::spawn(async move {
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
            let mut server = tonic::transport::Server::builder();
            if let Some(tls) = tls {
                server = server.tls_config(tls).expect("the receiver's TLS config");
            }
            let grpc =
                server.add_service(TraceServiceServer::new(collector)).serve_with_incoming_shutdown(incoming, async {
                    let _ = stopped.await;
                });
            // Both stop when the gRPC server does.
            tokio::select! {
                _ = grpc => {}
                _ = axum::serve(http_listener, http) => {}
            }
        });
        Receiver { addr, http_addr, spans, exports, stop: Some(stop) }
    }

    /// The URL for `OTEL_EXPORTER_OTLP_ENDPOINT` with `OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf`.
    pub fn http_endpoint(&self) -> String {
        format!("http://{}", self.http_addr)
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The URL for `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The URL for `OTEL_EXPORTER_OTLP_ENDPOINT` of a [`Receiver::start_tls`] receiver.
    pub fn tls_endpoint(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<Span> {
        self.spans.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// How many Export calls have arrived.
    pub fn exports(&self) -> usize {
        self.exports.lock().map(|n| *n).unwrap_or_default()
    }

    /// Waits until a span named `name` has arrived and returns it; `None` after `timeout`.
    pub async fn wait_for_span(&self, name: &str, timeout: Duration) -> Option<Span> {
        crate::eventually(timeout, || async { self.spans().into_iter().find(|s| s.name == name) }).await
    }

    /// Waits until every name in `names` has a span, and returns all spans received by then.
    pub async fn wait_for_spans(&self, names: &[&str], timeout: Duration) -> Result<Vec<Span>, Vec<Span>> {
        let all = |spans: &[Span]| names.iter().all(|n| spans.iter().any(|s| s.name == *n));
        match crate::eventually(timeout, || async {
            let spans = self.spans();
            all(&spans).then_some(spans)
        })
        .await
        {
            Some(spans) => Ok(spans),
            None => Err(self.spans()),
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        self.record(request.into_inner());
        Ok(Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

/// OTLP/HTTP: a protobuf `ExportTraceServiceRequest` in, a protobuf response out.
async fn export_http(
    axum::extract::State(collector): axum::extract::State<Collector>,
    body: axum::body::Bytes,
) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    use prost::Message as _;
    match ExportTraceServiceRequest::decode(body) {
        Ok(request) => {
            collector.record(request);
            let response = ExportTraceServiceResponse { partial_success: None }.encode_to_vec();
            ([(axum::http::header::CONTENT_TYPE, "application/x-protobuf")], response).into_response()
        }
        Err(e) => (axum::http::StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    }
}

impl Collector {
    fn record(&self, request: ExportTraceServiceRequest) {
        let mut received = Vec::new();
        for resource_spans in request.resource_spans {
            let resource = resource_spans.resource.map(|r| attributes(&r.attributes)).unwrap_or_default();
            let service = resource.get("service.name").cloned().unwrap_or_default();
            for scope_spans in resource_spans.scope_spans {
                for span in scope_spans.spans {
                    received.push(Span {
                        service: service.clone(),
                        name: span.name,
                        trace_id: hex(&span.trace_id),
                        span_id: hex(&span.span_id),
                        parent_span_id: hex(&span.parent_span_id),
                        kind: span.kind,
                        attributes: attributes(&span.attributes),
                        integers: span
                            .attributes
                            .iter()
                            .filter(|kv| {
                                matches!(kv.value.as_ref().and_then(|v| v.value.as_ref()), Some(Value::IntValue(_)))
                            })
                            .map(|kv| kv.key.clone())
                            .collect(),
                        resource: resource.clone(),
                    });
                }
            }
        }
        if let Ok(mut spans) = self.spans.lock() {
            spans.extend(received);
        }
        if let Ok(mut exports) = self.exports.lock() {
            *exports += 1;
        }
    }
}

fn attributes(kvs: &[KeyValue]) -> BTreeMap<String, String> {
    kvs.iter().map(|kv| (kv.key.clone(), kv.value.as_ref().map(text).unwrap_or_default())).collect()
}

fn text(value: &AnyValue) -> String {
    match &value.value {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// An edit for [`crate::envoy::Envoy::start_edited`]: turns on the reference config's
/// optional tracing (the blocks between `--- begin optional tracing ---` and `--- end
/// optional tracing ---`, uncommented) and points its `otel_collector` cluster at `port`.
/// Panics if the config has no such blocks, so a renamed marker cannot silently turn the
/// tracing tests into tests of nothing.
/// One line per span (service, name, ids, attributes), for assertion messages.
pub fn describe(spans: &[Span]) -> String {
    spans
        .iter()
        .map(|s| format!("{}: {} {}<-{} {:?}\n", s.service, s.name, s.span_id, s.parent_span_id, s.attributes))
        .collect()
}

/// Fails if `secret` appears in any attribute or resource attribute of `spans`, whoever
/// recorded them.
pub fn assert_no_secret(spans: &[Span], secret: &str) {
    for span in spans {
        for (key, value) in span.attributes.iter().chain(&span.resource) {
            assert!(!value.contains(secret), "{key}={value} in {} ({})", span.name, span.service);
        }
    }
}

/// [`envoy_tracing`] with Envoy's Zipkin tracer in place of its OpenTelemetry one: Envoy then
/// passes the trace on in B3 headers (`x-b3-*`), as a Zipkin user's gateway does. Its own
/// spans go nowhere useful (the collector cluster speaks OTLP): a test reads the services'.
pub fn envoy_zipkin_tracing(port: u16) -> impl FnOnce(String) -> String {
    move |config| {
        let config = envoy_tracing(port)(config);
        let lines: Vec<&str> = config.lines().collect();
        let start = lines.iter().position(|l| l.trim() == "name: envoy.tracers.opentelemetry");
        let end = lines.iter().position(|l| l.trim() == "service_name: gatehouse-envoy");
        let (Some(start), Some(end)) = (start, end) else {
            panic!("envoy/gateway.yaml: the optional tracer is not the OpenTelemetry provider this edit replaces")
        };
        let indent = &lines[start][..lines[start].len() - lines[start].trim_start().len()];
        let zipkin = [
            "name: envoy.tracers.zipkin",
            "typed_config:",
            "  \"@type\": type.googleapis.com/envoy.config.trace.v3.ZipkinConfig",
            "  collector_cluster: otel_collector",
            "  collector_endpoint: /api/v2/spans",
            "  collector_endpoint_version: HTTP_JSON",
            "  trace_id_128bit: true",
        ];
        let replaced = zipkin.iter().map(|line| format!("{indent}{line}"));
        let kept = |range: &[&str]| range.iter().map(|l| l.to_string()).collect::<Vec<_>>();
        let mut out = kept(&lines[..start]);
        out.extend(replaced);
        out.extend(kept(&lines[end + 1..]));
        out.join("\n") + "\n"
    }
}

pub fn envoy_tracing(port: u16) -> impl FnOnce(String) -> String {
    move |config| {
        let mut out = String::with_capacity(config.len());
        let mut inside = false;
        let mut blocks = 0;
        for line in config.lines() {
            let trimmed = line.trim_start();
            if trimmed.starts_with("# --- begin optional tracing ---") {
                inside = true;
                blocks += 1;
                continue;
            }
            if trimmed.starts_with("# --- end optional tracing ---") {
                inside = false;
                continue;
            }
            if inside {
                let indent = &line[..line.len() - trimmed.len()];
                let body = trimmed.strip_prefix("# ").unwrap_or(trimmed);
                let body = body.replace("port_value: 4317", &format!("port_value: {port}"));
                out.push_str(indent);
                out.push_str(&body);
            } else {
                out.push_str(line);
            }
            out.push('\n');
        }
        assert_eq!(blocks, 2, "envoy/gateway.yaml: expected the tracer and the otel_collector cluster blocks");
        out
    }
}
