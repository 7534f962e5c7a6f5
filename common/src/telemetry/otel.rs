//! The OpenTelemetry trace pipeline: settings from the standard `OTEL_*` variables, the OTLP
//! exporter (gRPC, or HTTP/protobuf), the sampler and resource, and the `tracing` layer that
//! turns Gatehouse's spans into OpenTelemetry spans.
//!
//! Tracing is off unless a collector endpoint is set (or a service's own switch, such as the
//! rate limiter's `TRACING_ENABLED`, turns it on), and `OTEL_SDK_DISABLED=true` turns it off
//! whatever else is set. Off means no layer at all: nothing here runs.
//!
//! Settings are read from [`Env`] like every other setting. The OpenTelemetry SDK also honours
//! a few variables of its own that Gatehouse passes through untouched: `OTEL_EXPORTER_OTLP_HEADERS`
//! (e.g. a collector's API key), `OTEL_EXPORTER_OTLP_TIMEOUT`, `OTEL_EXPORTER_OTLP_COMPRESSION`
//! and the batch processor's `OTEL_BSP_*`.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use opentelemetry::KeyValue;
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_otlp::{Protocol as OtlpProtocol, WithExportConfig, WithHttpConfig, WithTonicConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{BatchSpanProcessor, Sampler as SdkSampler, SdkTracerProvider};
use tracing_subscriber::fmt::FmtContext;
use tracing_subscriber::fmt::format::{FormatEvent, FormatFields, Writer};
use tracing_subscriber::registry::LookupSpan;

use super::TelemetryError;
use crate::config::{ConfigError, Env};

/// How long shutdown waits for the last batch to reach the collector.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// The OTLP transport, as `OTEL_EXPORTER_OTLP_PROTOCOL` names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// `grpc`, the default: `opentelemetry.proto.collector.trace.v1.TraceService/Export`.
    Grpc,
    /// `http/protobuf`: POST to `<endpoint>/v1/traces`.
    HttpProtobuf,
}

impl Protocol {
    /// The collector a bare switch (no endpoint given) sends to, as the OTLP spec defaults it.
    fn default_endpoint(self) -> &'static str {
        match self {
            Protocol::Grpc => "http://localhost:4317",
            Protocol::HttpProtobuf => "http://localhost:4318",
        }
    }
}

/// Which traces are recorded, as `OTEL_TRACES_SAMPLER` and `OTEL_TRACES_SAMPLER_ARG` name them.
/// The parent-based samplers follow the caller's decision (Envoy's `traceparent` sampled flag)
/// and apply the inner sampler only to traces that start here.
#[derive(Clone, Debug, PartialEq)]
pub enum Sampler {
    AlwaysOn,
    AlwaysOff,
    /// A fraction in `0.0..=1.0` of trace ids.
    TraceIdRatio(f64),
    ParentBased(Box<Sampler>),
}

impl Sampler {
    fn to_sdk(&self) -> SdkSampler {
        match self {
            Sampler::AlwaysOn => SdkSampler::AlwaysOn,
            Sampler::AlwaysOff => SdkSampler::AlwaysOff,
            Sampler::TraceIdRatio(ratio) => SdkSampler::TraceIdRatioBased(*ratio),
            Sampler::ParentBased(root) => SdkSampler::ParentBased(Box::new(root.to_sdk())),
        }
    }
}

/// A validated trace pipeline: where spans go and which are kept.
#[derive(Clone, Debug, PartialEq)]
pub struct TracingSettings {
    /// The full URL spans are sent to: for gRPC the collector's origin, for HTTP the
    /// `/v1/traces` URL (appended to `OTEL_EXPORTER_OTLP_ENDPOINT`, as the spec says;
    /// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is used as given).
    pub endpoint: String,
    pub protocol: Protocol,
    /// `service.name` on every span.
    pub service_name: String,
    pub sampler: Sampler,
    /// The resource's other attributes (`OTEL_RESOURCE_ATTRIBUTES` and a service's own).
    pub resource: Vec<(String, String)>,
    /// For an `https://` collector: whom to trust and, for mTLS, who we are.
    pub tls: Option<CollectorTls>,
}

/// TLS to an `https://` collector (OTLP/gRPC), from the spec's variables, read at start-up:
/// `OTEL_EXPORTER_OTLP_CERTIFICATE` (the CA bundle to trust; the system's roots without it),
/// `OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE` and `OTEL_EXPORTER_OTLP_CLIENT_KEY` (mTLS).
#[derive(Clone, Default, PartialEq)]
pub struct CollectorTls {
    pub ca_pem: Option<Vec<u8>>,
    pub client: Option<(Vec<u8>, Vec<u8>)>,
}

impl fmt::Debug for CollectorTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CollectorTls")
            .field("ca", &self.ca_pem.is_some())
            .field("client_certificate", &self.client.is_some())
            .finish()
    }
}

impl CollectorTls {
    fn from_env(env: &Env) -> Result<CollectorTls, ConfigError> {
        let read = |name: &str| -> Result<Option<Vec<u8>>, ConfigError> {
            match env.get(name).map(str::trim).filter(|p| !p.is_empty()) {
                None => Ok(None),
                Some(path) => std::fs::read(path).map(Some).map_err(|e| env.error(name, format!("{path}: {e}"))),
            }
        };
        let client = match (read("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE")?, read("OTEL_EXPORTER_OTLP_CLIENT_KEY")?) {
            (Some(cert), Some(key)) => Some((cert, key)),
            (None, None) => None,
            (Some(_), None) => {
                return Err(
                    env.error("OTEL_EXPORTER_OTLP_CLIENT_KEY", "needed with OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE")
                );
            }
            (None, Some(_)) => {
                return Err(
                    env.error("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", "needed with OTEL_EXPORTER_OTLP_CLIENT_KEY")
                );
            }
        };
        Ok(CollectorTls { ca_pem: read("OTEL_EXPORTER_OTLP_CERTIFICATE")?, client })
    }

    fn client_config(&self) -> tonic::transport::ClientTlsConfig {
        use tonic::transport::{Certificate, ClientTlsConfig, Identity};
        let mut config = ClientTlsConfig::new();
        config = match &self.ca_pem {
            Some(pem) => config.ca_certificate(Certificate::from_pem(pem)),
            None => config.with_native_roots(),
        };
        if let Some((cert, key)) = &self.client {
            config = config.identity(Identity::from_pem(cert, key));
        }
        config
    }
}

/// What a service adds to the standard variables: its default service name, and its own
/// switches where it has them (the rate limiter's envoyproxy-compatible `TRACING_*`). The
/// standard `OTEL_*` variables win over these when both are set.
#[derive(Clone, Debug, Default)]
pub struct ServiceDefaults {
    pub service_name: String,
    /// `Some(true)` turns tracing on without an endpoint (the default collector is used);
    /// `Some(false)` keeps it off even with one.
    pub enabled: Option<bool>,
    pub protocol: Option<Protocol>,
    pub sampler: Option<Sampler>,
    pub resource: Vec<(String, String)>,
}

impl ServiceDefaults {
    pub fn named(service_name: &str) -> ServiceDefaults {
        ServiceDefaults { service_name: service_name.to_string(), ..ServiceDefaults::default() }
    }
}

impl TracingSettings {
    /// The trace pipeline the environment asks for, or `None` when tracing is off.
    pub fn from_env(env: &Env, defaults: ServiceDefaults) -> Result<Option<TracingSettings>, ConfigError> {
        if env.bool("OTEL_SDK_DISABLED", false)? {
            return Ok(None);
        }
        let traces_endpoint = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT");
        let base_endpoint = env.get("OTEL_EXPORTER_OTLP_ENDPOINT");
        let has_endpoint = traces_endpoint.is_some() || base_endpoint.is_some();
        if !defaults.enabled.unwrap_or(has_endpoint) {
            return Ok(None);
        }
        let protocol = match env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") {
            Some(_) => parse_protocol(env, "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")?,
            None if env.get("OTEL_EXPORTER_OTLP_PROTOCOL").is_some() => {
                parse_protocol(env, "OTEL_EXPORTER_OTLP_PROTOCOL")?
            }
            None => defaults.protocol.unwrap_or(Protocol::Grpc),
        };
        let endpoint = match (traces_endpoint, base_endpoint) {
            (Some(url), _) => check_url(env, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", url, protocol)?,
            (None, Some(url)) => {
                let base = check_url(env, "OTEL_EXPORTER_OTLP_ENDPOINT", url, protocol)?;
                signal_url(&base, protocol)
            }
            (None, None) => signal_url(protocol.default_endpoint(), protocol),
        };
        let tls = if endpoint.starts_with("https://") { Some(CollectorTls::from_env(env)?) } else { None };
        let mut resource = parse_resource_attributes(env)?;
        let resource_name = resource.iter().position(|(key, _)| key == "service.name").map(|i| resource.remove(i).1);
        let service_name = match env.get("OTEL_SERVICE_NAME") {
            Some(name) => name.trim().to_string(),
            None => resource_name.unwrap_or(defaults.service_name),
        };
        for (key, value) in defaults.resource {
            if !resource.iter().any(|(k, _)| *k == key) {
                resource.push((key, value));
            }
        }
        let sampler = match env.get("OTEL_TRACES_SAMPLER") {
            Some(_) => parse_sampler(env)?,
            None => defaults.sampler.unwrap_or(Sampler::ParentBased(Box::new(Sampler::AlwaysOn))),
        };
        Ok(Some(TracingSettings { endpoint, protocol, service_name, sampler, resource, tls }))
    }
}

fn parse_protocol(env: &Env, name: &str) -> Result<Protocol, ConfigError> {
    match env.get(name).map(str::trim) {
        Some("grpc") => Ok(Protocol::Grpc),
        Some("http/protobuf") => Ok(Protocol::HttpProtobuf),
        Some("http/json") => Err(env.error(name, "http/json is not supported; use grpc or http/protobuf")),
        _ => Err(env.error(name, "expected grpc or http/protobuf")),
    }
}

/// An `http://` or (for gRPC) `https://host:port[/path]` URL. A bare `host:port`, as Go's gRPC
/// exporter (and so envoyproxy/ratelimit) accepts it, means `http://host:port`.
fn check_url(env: &Env, name: &str, url: &str, protocol: Protocol) -> Result<String, ConfigError> {
    let url = url.trim();
    let url = &if url.contains("://") { url.to_string() } else { format!("http://{url}") };
    let uri: axum::http::Uri = url.parse().map_err(|e| env.error(name, format!("not a URL: {e}")))?;
    let has_host = uri.host().is_some_and(|h| !h.is_empty());
    match uri.scheme_str() {
        Some("http") if has_host => Ok(url.to_string()),
        Some("https") if has_host && protocol == Protocol::Grpc => Ok(url.to_string()),
        Some("https") if has_host => Err(env.error(
            name,
            "https is supported with OTEL_EXPORTER_OTLP_PROTOCOL=grpc; with http/protobuf, send to a local collector over http://",
        )),
        _ => Err(env.error(name, "expected an http:// or https:// URL with a host, such as http://otel-collector:4317")),
    }
}

/// The URL spans go to, from a base endpoint: gRPC calls the service path on the origin,
/// HTTP posts to `/v1/traces` under the base path.
fn signal_url(base: &str, protocol: Protocol) -> String {
    match protocol {
        Protocol::Grpc => base.to_string(),
        Protocol::HttpProtobuf => format!("{}/v1/traces", base.trim_end_matches('/')),
    }
}

fn parse_sampler(env: &Env) -> Result<Sampler, ConfigError> {
    const NAME: &str = "OTEL_TRACES_SAMPLER";
    let ratio = || -> Result<f64, ConfigError> {
        let ratio = env.parse::<f64>("OTEL_TRACES_SAMPLER_ARG", 1.0)?;
        if (0.0..=1.0).contains(&ratio) {
            Ok(ratio)
        } else {
            Err(env.error("OTEL_TRACES_SAMPLER_ARG", "expected a ratio between 0 and 1"))
        }
    };
    let parent_based = |root| Sampler::ParentBased(Box::new(root));
    Ok(match env.get(NAME).map(|s| s.trim().to_ascii_lowercase()).as_deref() {
        Some("always_on") => Sampler::AlwaysOn,
        Some("always_off") => Sampler::AlwaysOff,
        Some("traceidratio") => Sampler::TraceIdRatio(ratio()?),
        Some("parentbased_always_on") | None => parent_based(Sampler::AlwaysOn),
        Some("parentbased_always_off") => parent_based(Sampler::AlwaysOff),
        Some("parentbased_traceidratio") => parent_based(Sampler::TraceIdRatio(ratio()?)),
        Some(_) => {
            return Err(env.error(
                NAME,
                "expected always_on, always_off, traceidratio, parentbased_always_on, \
                 parentbased_always_off or parentbased_traceidratio",
            ));
        }
    })
}

/// `OTEL_RESOURCE_ATTRIBUTES`: `key=value` pairs separated by commas, values percent-encoded
/// (the W3C Baggage form the spec uses).
fn parse_resource_attributes(env: &Env) -> Result<Vec<(String, String)>, ConfigError> {
    const NAME: &str = "OTEL_RESOURCE_ATTRIBUTES";
    let Some(text) = env.get(NAME) else {
        return Ok(Vec::new());
    };
    let mut attributes = Vec::new();
    for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').ok_or_else(|| env.error(NAME, format!("{pair:?} is not key=value")))?;
        let key = key.trim();
        if key.is_empty() {
            return Err(env.error(NAME, format!("{pair:?} has an empty key")));
        }
        let value = percent_decode(value.trim()).ok_or_else(|| env.error(NAME, format!("{pair:?}: bad %-escape")))?;
        attributes.push((key.to_string(), value));
    }
    Ok(attributes)
}

fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// A running trace pipeline: the tracer provider whose batch processor exports on its own
/// thread, through a connection driven by the Tokio runtime it was started in.
pub(crate) struct Pipeline {
    provider: SdkTracerProvider,
}

impl fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pipeline").finish_non_exhaustive()
    }
}

impl Pipeline {
    /// Builds the exporter and the provider. Needs a Tokio runtime context: the gRPC channel
    /// spawns its connection task there, and the HTTP client runs its requests there.
    pub(crate) fn start(settings: &TracingSettings) -> Result<Pipeline, TelemetryError> {
        let exporter_error = |e: opentelemetry_otlp::ExporterBuildError| TelemetryError::Exporter(e.to_string());
        let exporter = match settings.protocol {
            Protocol::Grpc => {
                let mut builder = opentelemetry_otlp::SpanExporter::builder()
                    .with_tonic()
                    .with_protocol(OtlpProtocol::Grpc)
                    .with_endpoint(settings.endpoint.clone());
                if let Some(tls) = &settings.tls {
                    builder = builder.with_tls_config(tls.client_config());
                }
                builder.build().map_err(exporter_error)?
            }
            Protocol::HttpProtobuf => {
                let runtime = tokio::runtime::Handle::try_current()
                    .map_err(|e| TelemetryError::Exporter(format!("no Tokio runtime for the HTTP exporter: {e}")))?;
                opentelemetry_otlp::SpanExporter::builder()
                    .with_http()
                    .with_protocol(OtlpProtocol::HttpBinary)
                    .with_endpoint(settings.endpoint.clone())
                    .with_http_client(OnRuntime {
                        client: Arc::new(opentelemetry_http::hyper::HyperClient::with_default_connector(
                            EXPORT_TIMEOUT,
                            None,
                        )),
                        runtime,
                    })
                    .build()
                    .map_err(exporter_error)?
            }
        };
        let resource = Resource::builder_empty()
            .with_service_name(settings.service_name.clone())
            .with_attributes(settings.resource.iter().map(|(k, v)| KeyValue::new(k.clone(), v.clone())))
            .build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(BatchSpanProcessor::builder(exporter).build())
            .with_sampler(settings.sampler.to_sdk())
            .with_resource(resource)
            .build();
        Ok(Pipeline { provider })
    }

    /// The layer that records Gatehouse's spans (and warnings and errors logged inside them,
    /// as span events) into this pipeline. Dependencies' spans stay out: they would be noise
    /// in every trace, and h2's are per frame.
    pub(crate) fn layer<S>(&self) -> impl tracing_subscriber::Layer<S> + Send + Sync + use<S>
    where
        S: tracing::Subscriber + for<'span> LookupSpan<'span> + Send + Sync,
    {
        use tracing_subscriber::Layer as _;
        let tracer = self.provider.tracer("gatehouse");
        tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_location(false)
            .with_threads(false)
            // No busy/idle time per span: it reads the clock on every poll of every future a span
            // instruments.
            .with_tracked_inactivity(false)
            // Nor an OpenTelemetry context attached on every enter: nothing here reads
            // `Context::current()` (trace ids come from the span itself, through
            // `OpenTelemetrySpanExt::context`), and attaching costs a clone and a thread-local
            // push per poll.
            .with_context_activation(false)
            .with_target(false)
            .with_filter(tracing_subscriber::filter::filter_fn(|metadata| {
                if metadata.is_span() {
                    metadata.target().starts_with("gatehouse_") && *metadata.level() <= tracing::Level::INFO
                } else {
                    *metadata.level() <= tracing::Level::WARN
                }
            }))
    }

    pub(crate) fn shutdown(self) {
        if let Err(e) = self.provider.shutdown_with_timeout(SHUTDOWN_TIMEOUT) {
            tracing::warn!(error = %e, "exporting the last spans failed");
        }
    }
}

/// The HTTP exporter's request timeout (the gRPC exporter's is the SDK default, 10 s).
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// An HTTP client that runs each request on the service's Tokio runtime. The SDK's batch
/// processor exports from its own thread, outside any runtime, where hyper could neither
/// connect nor spawn its connection task; handing the request to the runtime fixes that
/// without a second runtime or a blocking client.
#[derive(Debug)]
struct OnRuntime {
    client: Arc<dyn opentelemetry_http::HttpClient>,
    runtime: tokio::runtime::Handle,
}

type HttpResult = Result<axum::http::Response<Bytes>, opentelemetry_http::HttpError>;

impl opentelemetry_http::HttpClient for OnRuntime {
    // The `async_trait` signature, written out.
    fn send_bytes<'life0, 'async_trait>(
        &'life0 self,
        request: axum::http::Request<Bytes>,
    ) -> Pin<Box<dyn Future<Output = HttpResult> + Send + 'async_trait>>
    where
        'life0: 'async_trait,
        Self: 'async_trait,
    {
        let client = Arc::clone(&self.client);
        let task = self.runtime.spawn(async move { client.send_bytes(request).await });
        Box::pin(async move { task.await.map_err(|e| -> opentelemetry_http::HttpError { Box::new(e) })? })
    }
}

/// The JSON log format with the current span's `trace_id` and `span_id` added, so that a log
/// line leads to its trace. [`super::init`] uses it only with tracing on; lines outside any
/// traced span are unchanged.
///
/// The current span is read from the global dispatcher (the log layer's own filter hides
/// spans from `ctx`): inside a subscriber callback, `tracing` hands out only the global one,
/// so under a scoped (`with_default`) subscriber lines carry no ids.
#[derive(Debug)]
pub struct WithTraceIds<F>(pub F);

impl<S, N, F> FormatEvent<S, N> for WithTraceIds<F>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> fmt::Result {
        use tracing_opentelemetry::OpenTelemetrySpanExt as _;
        let span = tracing::Span::current();
        let context = if span.is_disabled() { None } else { Some(span.context()) };
        let ids = context.as_ref().map(|cx| cx.span().span_context().clone()).filter(|sc| sc.is_valid());
        let Some(ids) = ids else {
            return self.0.format_event(ctx, writer, event);
        };
        let mut line = String::new();
        self.0.format_event(ctx, Writer::new(&mut line), event)?;
        // The JSON formatter writes one object and a newline; the ids go before its last brace.
        match line.trim_end().strip_suffix('}') {
            Some(object) => {
                let sep = if object.ends_with('{') { "" } else { "," };
                writeln!(writer, r#"{object}{sep}"trace_id":"{}","span_id":"{}"}}"#, ids.trace_id(), ids.span_id())
            }
            None => writer.write_str(&line),
        }
    }
}

#[cfg(test)]
mod tests;
