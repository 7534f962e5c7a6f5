//! Rules over xDS (`CONFIG_TYPE=GRPC_XDS_SOTW`), the way Envoy Gateway feeds
//! envoyproxy/ratelimit: `RateLimitConfig` resources on the aggregated discovery stream, state
//! of the world.
//!
//! ```text
//! connect (TLS/mTLS, extra headers) ── DiscoveryRequest{node, type_url, version: last good}
//!   <── DiscoveryResponse{version, nonce, resources}
//!       every resource decoded and rendered as the YAML file it stands for, then the whole
//!       set validated as files are ── good: swapped in, ACK (version, nonce)
//!                                   ── bad:  NACK (last good version, nonce, error_detail);
//!                                            the previous rules stay
//! stream ends or fails ── the rules in effect stay ── reconnect after backoff
//! ```
//!
//! A resource is validated exactly as a file named `xds:<resource name>` would be, so a bad
//! one is reported with that name, a line and a field (of the rendered YAML, which keeps the
//! resource's field order).

pub mod settings;

use std::hash::BuildHasher;
use std::sync::Arc;
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use envoy_types::pb::google::protobuf::value::Kind;
use envoy_types::pb::google::protobuf::{Any, Struct, Value as PbValue};
use envoy_types::pb::google::rpc::Status;
use envoy_types::pb::ratelimit::config::ratelimit::v3::{RateLimitConfig, RateLimitDescriptor, RateLimitUnit};
use gatehouse_common::config::{ConfigErrors, Location, Spanned};
use gatehouse_common::reload::Reloader;
use gatehouse_common::server::Shutdown;
use parking_lot::Mutex;
use prost::Message;
use serde::Serialize;
use serde_json::{Map, Value, json};
use tokio::sync::{mpsc, watch};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

pub use self::settings::{Backoff, XdsSettings, XdsTls};
use crate::rules::RuleSet;
use crate::rules::file::{DescriptorYaml, FileConfig, RateLimitYaml, Replace};
use crate::stats::Stats;

/// The only resource type this client asks for.
pub const TYPE_URL: &str = "type.googleapis.com/ratelimit.config.ratelimit.v3.RateLimitConfig";

/// What `/config-status` shows about the control plane.
#[derive(Clone, Debug, Default, Serialize)]
pub struct XdsStatus {
    pub server: String,
    pub connected: bool,
    /// The version of the rules in effect.
    pub version: Option<String>,
    /// Why the last rejected update was rejected (cleared by the next accepted one).
    pub last_nack: Option<String>,
    pub accepted: u64,
    pub rejected: u64,
    pub reconnects: u64,
}

/// The xDS config source: run it with [`XdsClient::run`].
pub struct XdsClient {
    settings: XdsSettings,
    rules: Reloader<RuleSet>,
    merge_domains: bool,
    stats: Stats,
    status: Arc<Mutex<XdsStatus>>,
    /// Becomes `true` once a config has been accepted.
    loaded: watch::Sender<bool>,
}

impl XdsClient {
    pub fn new(settings: XdsSettings, rules: Reloader<RuleSet>, merge_domains: bool, stats: Stats) -> XdsClient {
        let status = XdsStatus { server: settings.server_url.clone(), ..Default::default() };
        XdsClient {
            settings,
            rules,
            merge_domains,
            stats,
            status: Arc::new(Mutex::new(status)),
            loaded: watch::channel(false).0,
        }
    }

    pub fn status(&self) -> Arc<Mutex<XdsStatus>> {
        self.status.clone()
    }

    /// Resolves once the first config has been accepted (FORCE_START_WITHOUT_INITIAL_CONFIG
    /// decides whether the service waits for it).
    pub fn first_config(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut loaded = self.loaded.subscribe();
        async move {
            let _ = loaded.wait_for(|loaded| *loaded).await;
        }
    }

    /// Keeps a stream to the control plane open until `shutdown`, reconnecting with backoff;
    /// the rules in effect stay while it is away.
    pub async fn run(self, shutdown: Shutdown) {
        let mut attempt = 0u32;
        loop {
            let ended = tokio::select! {
                ended = self.session(&mut attempt) => ended,
                _ = shutdown.wait() => return,
            };
            {
                let mut status = self.status.lock();
                status.connected = false;
                status.reconnects += 1;
            }
            let delay = self.settings.backoff.delay(attempt, random_unit());
            attempt = attempt.saturating_add(1);
            tracing::warn!(
                server = %self.settings.server_url,
                reason = %ended,
                retry_in = ?delay,
                "xDS stream to the control plane ended; the rules in effect stay"
            );
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = shutdown.wait() => return,
            }
        }
    }

    /// One stream, from connection to its end; the reason it ended.
    async fn session(&self, attempt: &mut u32) -> String {
        let channel = match self.connect().await {
            Ok(channel) => channel,
            Err(e) => return format!("cannot connect: {e}"),
        };
        let mut client = AggregatedDiscoveryServiceClient::new(channel);
        if let Some(max) = self.settings.max_message_bytes {
            client = client.max_decoding_message_size(max);
        }
        let (requests, outbound) = mpsc::channel(4);
        let accepted = self.status.lock().version.clone();
        // The first request names the node and the version in effect, so a control plane
        // that already sent it may answer with nothing new.
        let _ = requests.try_send(self.request(accepted.unwrap_or_default(), String::new(), None));
        let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(outbound));
        for (name, value) in &self.settings.additional_headers {
            match (
                tonic::metadata::MetadataKey::from_bytes(name.to_ascii_lowercase().as_bytes()),
                value.parse::<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>(),
            ) {
                (Ok(name), Ok(value)) => {
                    request.metadata_mut().insert(name, value);
                }
                _ => {
                    tracing::warn!(header = %name, "CONFIG_GRPC_XDS_CLIENT_ADDITIONAL_HEADERS: not a valid header; skipped")
                }
            }
        }
        let mut responses = match client.stream_aggregated_resources(request).await {
            Ok(response) => response.into_inner(),
            Err(status) => return format!("the control plane refused the stream: {status}"),
        };
        self.status.lock().connected = true;
        tracing::info!(server = %self.settings.server_url, node = %self.settings.node_id, "xDS stream open");
        loop {
            let response = match responses.message().await {
                Ok(Some(response)) => response,
                Ok(None) => return "the control plane closed the stream".into(),
                Err(status) => return format!("stream failed: {status}"),
            };
            *attempt = 0;
            let Some(reply) = self.apply(response) else { continue };
            if requests.send(reply).await.is_err() {
                return "the request stream closed".into();
            }
        }
    }

    async fn connect(&self) -> Result<Channel, String> {
        let s = &self.settings;
        let mut endpoint = Endpoint::from_shared(s.endpoint_uri())
            .map_err(|e| format!("CONFIG_GRPC_XDS_SERVER_URL {:?}: {e}", s.server_url))?
            .connect_timeout(s.connect_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(10));
        if let Some(tls) = &s.tls {
            // Read at every connection, so rotated certificates are used on the next one.
            let read = |path: &std::path::Path| std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()));
            let mut config = ClientTlsConfig::new();
            if let Some(ca) = &tls.ca {
                config = config.ca_certificate(Certificate::from_pem(read(ca)?));
            }
            if let (Some(cert), Some(key)) = (&tls.cert, &tls.key) {
                config = config.identity(Identity::from_pem(read(cert)?, read(key)?));
            }
            if let Some(name) = &tls.server_name {
                config = config.domain_name(name.clone());
            }
            endpoint = endpoint.tls_config(config).map_err(|e| format!("TLS: {e}"))?;
        }
        endpoint.connect().await.map_err(|e| format!("{e}: {}", source_chain(&e)))
    }

    fn request(&self, version: String, nonce: String, error: Option<String>) -> DiscoveryRequest {
        let metadata = Struct {
            fields: self
                .settings
                .node_metadata
                .iter()
                .map(|(k, v)| (k.clone(), PbValue { kind: Some(Kind::StringValue(v.clone())) }))
                .collect(),
        };
        DiscoveryRequest {
            version_info: version,
            node: Some(Node {
                id: self.settings.node_id.clone(),
                metadata: Some(metadata),
                user_agent_name: "gatehouse-ratelimit".into(),
                ..Default::default()
            }),
            resource_names: Vec::new(),
            type_url: TYPE_URL.into(),
            response_nonce: nonce,
            // google.rpc.Code INVALID_ARGUMENT, as Envoy NACKs.
            error_detail: error.map(|message| Status { code: 3, message, details: Vec::new() }),
            ..Default::default()
        }
    }

    /// Applies one response: the ACK or NACK to send, or `None` for a type not asked for.
    fn apply(&self, response: DiscoveryResponse) -> Option<DiscoveryRequest> {
        if response.type_url != TYPE_URL {
            tracing::debug!(type_url = %response.type_url, "xDS: ignoring a resource type not asked for");
            return None;
        }
        let started = Instant::now();
        let outcome = rules_from_resources(&response.resources, self.merge_domains, &self.stats);
        match outcome {
            Ok(mut rules) => {
                rules.xds_version = Some(response.version_info.clone());
                let domains = rules.domain_count();
                self.rules.apply(Ok(rules));
                self.rules.set_version(response.version_info.clone());
                {
                    let mut status = self.status.lock();
                    status.version = Some(response.version_info.clone());
                    status.last_nack = None;
                    status.accepted += 1;
                }
                self.loaded.send_replace(true);
                tracing::info!(
                    version = %response.version_info,
                    resources = response.resources.len(),
                    domains,
                    took = ?started.elapsed(),
                    "xDS: rate limit config applied"
                );
                Some(self.request(response.version_info, response.nonce, None))
            }
            Err(errors) => {
                let message = errors.to_string();
                self.rules.apply(Err(errors));
                let last_good = {
                    let mut status = self.status.lock();
                    status.last_nack = Some(message.clone());
                    status.rejected += 1;
                    status.version.clone()
                };
                tracing::error!(version = %response.version_info, error = %message, "xDS: config rejected (NACK); the previous rules stay");
                Some(self.request(last_good.unwrap_or_default(), response.nonce, Some(message)))
            }
        }
    }
}

/// The rules a set of `RateLimitConfig` resources stand for: each rendered as the YAML file
/// envoyproxy/ratelimit would make of it (`config.ConfigXdsProtoToYaml`) and loaded as a file
/// named `xds:<resource name>`.
pub fn rules_from_resources(resources: &[Any], merge_domains: bool, stats: &Stats) -> Result<RuleSet, ConfigErrors> {
    let mut documents = Vec::with_capacity(resources.len());
    let mut errors = Vec::new();
    for (i, any) in resources.iter().enumerate() {
        let decoded = if any.type_url == TYPE_URL {
            RateLimitConfig::decode(any.value.as_slice()).map_err(|e| format!("not a RateLimitConfig: {e}"))
        } else {
            Err(format!("type {:?}, expected {TYPE_URL}", any.type_url))
        };
        match decoded {
            Ok(config) => {
                let name = if config.name.is_empty() { format!("resource {i}") } else { config.name.clone() };
                documents.push((format!("xds:{name}"), config));
            }
            Err(message) => {
                let file = std::path::PathBuf::from(format!("xds:resource {i}"));
                errors.push(gatehouse_common::config::ConfigError::Io { file, message });
            }
        }
    }
    if !errors.is_empty() {
        return Err(ConfigErrors(errors));
    }
    // Valid updates, the usual case, are built straight from the decoded resources; only an
    // invalid one pays for rendering and parsing its YAML, so that its errors name lines.
    let parsed = documents.iter().map(|(name, config)| (name.clone(), file_config(config))).collect();
    if let Ok(rules) = RuleSet::from_parsed(parsed, merge_domains, stats) {
        return Ok(rules);
    }
    let rendered: Vec<(String, String)> = documents
        .iter()
        .map(|(name, config)| (name.clone(), serde_json::to_string_pretty(&render(config)).expect("JSON serializes")))
        .collect();
    RuleSet::from_documents(&rendered, merge_domains, stats)
}

/// A resource in the shape of a rule file, field for field (`ConfigXdsProtoToYaml`).
fn file_config(config: &RateLimitConfig) -> FileConfig {
    FileConfig {
        domain: Some(unplaced(config.domain.clone())),
        descriptors: config.descriptors.iter().map(file_descriptor).collect(),
    }
}

fn file_descriptor(d: &RateLimitDescriptor) -> DescriptorYaml {
    DescriptorYaml {
        key: unplaced(d.key.clone()),
        value: (!d.value.is_empty()).then(|| d.value.clone()),
        rate_limit: d.rate_limit.as_ref().map(|policy| {
            unplaced(RateLimitYaml {
                unit: Some(unplaced(unit_name(policy.unit).to_string())),
                requests_per_unit: Some(policy.requests_per_unit),
                unlimited: policy.unlimited,
                name: (!policy.name.is_empty()).then(|| policy.name.clone()),
                replaces: policy.replaces.iter().map(|r| unplaced(Replace { name: Some(r.name.clone()) })).collect(),
                algorithm: None,
                burst: None,
            })
        }),
        rate_limits: Vec::new(),
        shadow_mode: d.shadow_mode,
        detailed_metric: d.detailed_metric,
        value_to_metric: false,
        share_threshold: None,
        quota_mode: d.quota_mode,
        metadata: d.metadata.as_ref().map(|m| match struct_to_json(m) {
            Value::Object(map) => map,
            _ => Map::new(),
        }),
        descriptors: d.descriptors.iter().map(file_descriptor).collect(),
    }
}

/// A value decoded from protobuf: it has no place in a text.
fn unplaced<T>(value: T) -> Spanned<T> {
    Spanned::new(value, Location::UNKNOWN, Location::UNKNOWN)
}

fn unit_name(unit: i32) -> &'static str {
    RateLimitUnit::try_from(unit).map_or("UNKNOWN", |u| u.as_str_name())
}

/// One resource as the document of a rule file (JSON; rendered, it is YAML with one field
/// per line).
fn render(config: &RateLimitConfig) -> Value {
    json!({ "domain": config.domain, "descriptors": descriptors(&config.descriptors) })
}

fn descriptors(list: &[RateLimitDescriptor]) -> Vec<Value> {
    list.iter()
        .map(|d| {
            let mut out = Map::new();
            out.insert("key".into(), json!(d.key));
            if !d.value.is_empty() {
                out.insert("value".into(), json!(d.value));
            }
            if let Some(policy) = &d.rate_limit {
                let mut limit = Map::new();
                limit.insert("unit".into(), json!(unit_name(policy.unit)));
                limit.insert("requests_per_unit".into(), json!(policy.requests_per_unit));
                if policy.unlimited {
                    limit.insert("unlimited".into(), json!(true));
                }
                if !policy.name.is_empty() {
                    limit.insert("name".into(), json!(policy.name));
                }
                if !policy.replaces.is_empty() {
                    let replaces: Vec<Value> = policy.replaces.iter().map(|r| json!({ "name": r.name })).collect();
                    limit.insert("replaces".into(), Value::Array(replaces));
                }
                out.insert("rate_limit".into(), Value::Object(limit));
            }
            if d.shadow_mode {
                out.insert("shadow_mode".into(), json!(true));
            }
            if d.detailed_metric {
                out.insert("detailed_metric".into(), json!(true));
            }
            if d.quota_mode {
                out.insert("quota_mode".into(), json!(true));
            }
            if let Some(metadata) = &d.metadata {
                out.insert("metadata".into(), struct_to_json(metadata));
            }
            if !d.descriptors.is_empty() {
                out.insert("descriptors".into(), Value::Array(descriptors(&d.descriptors)));
            }
            Value::Object(out)
        })
        .collect()
}

fn struct_to_json(s: &Struct) -> Value {
    Value::Object(s.fields.iter().map(|(k, v)| (k.clone(), value_to_json(v))).collect())
}

fn value_to_json(v: &PbValue) -> Value {
    match &v.kind {
        None | Some(Kind::NullValue(_)) => Value::Null,
        Some(Kind::NumberValue(n)) => json!(n),
        Some(Kind::StringValue(s)) => json!(s),
        Some(Kind::BoolValue(b)) => json!(b),
        Some(Kind::StructValue(s)) => struct_to_json(s),
        Some(Kind::ListValue(l)) => Value::Array(l.values.iter().map(value_to_json).collect()),
    }
}

/// A number in [0, 1) for backoff jitter: the standard library's randomly keyed hasher over
/// the clock, which is plenty for spreading reconnections.
fn random_unit() -> f64 {
    let hash = std::collections::hash_map::RandomState::new().hash_one(Instant::now());
    (hash >> 11) as f64 / (1u64 << 53) as f64
}

fn source_chain(e: &dyn std::error::Error) -> String {
    let mut out = Vec::new();
    let mut source = e.source();
    while let Some(s) = source {
        out.push(s.to_string());
        source = s.source();
    }
    out.join(": ")
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::ratelimit::config::ratelimit::v3::RateLimitPolicy;
    use gatehouse_common::metrics::Metrics;

    use super::*;

    fn any(config: &RateLimitConfig) -> Any {
        Any { type_url: TYPE_URL.into(), value: config.encode_to_vec() }
    }

    fn descriptor(key: &str, value: &str, unit: RateLimitUnit, requests: u32) -> RateLimitDescriptor {
        RateLimitDescriptor {
            key: key.into(),
            value: value.into(),
            rate_limit: Some(RateLimitPolicy { unit: unit as i32, requests_per_unit: requests, ..Default::default() }),
            ..Default::default()
        }
    }

    #[test]
    fn resources_load_as_the_files_they_stand_for() {
        let stats = Stats::new(&Metrics::new());
        let mut nested = descriptor("tenant", "blue", RateLimitUnit::Second, 100);
        nested.descriptors = vec![descriptor("user", "", RateLimitUnit::Minute, 10)];
        nested.shadow_mode = true;
        let configs = [
            RateLimitConfig { name: "a".into(), domain: "gateway".into(), descriptors: vec![nested] },
            RateLimitConfig {
                name: "b".into(),
                domain: "other".into(),
                descriptors: vec![descriptor("generic_key", "x", RateLimitUnit::Hour, 5)],
            },
        ];
        let rules = rules_from_resources(&configs.iter().map(any).collect::<Vec<_>>(), false, &stats).unwrap();
        assert_eq!(rules.domain_count(), 2);
        let dump = rules.dump();
        assert!(dump.contains("gateway.tenant_blue: unit=SECOND requests_per_unit=100, shadow_mode: true"), "{dump}");
        assert!(dump.contains("gateway.tenant_blue.user: unit=MINUTE requests_per_unit=10"), "{dump}");
        assert!(dump.contains("other.generic_key_x: unit=HOUR requests_per_unit=5"), "{dump}");
        assert_eq!(rules.files, [std::path::PathBuf::from("xds:a"), std::path::PathBuf::from("xds:b")]);
    }

    #[test]
    fn bad_resources_are_named_with_line_and_field() {
        let stats = Stats::new(&Metrics::new());
        let bad = RateLimitConfig {
            name: "team-a".into(),
            domain: "gateway".into(),
            descriptors: vec![
                descriptor("generic_key", "ok", RateLimitUnit::Minute, 1),
                descriptor("generic_key", "bad", RateLimitUnit::Unknown, 1),
            ],
        };
        let err = rules_from_resources(&[any(&bad)], false, &stats).unwrap_err().to_string();
        assert!(err.starts_with("xds:team-a:") && err.contains("unit"), "{err}");
        let line: u32 = err.split(':').nth(2).and_then(|l| l.parse().ok()).unwrap_or(0);
        assert!(line > 1, "the error names a line of the rendered resource: {err}");

        let duplicate = RateLimitConfig { name: "team-b".into(), ..bad.clone() };
        let ok = RateLimitConfig { name: "team-a".into(), descriptors: vec![bad.descriptors[0].clone()], ..bad };
        let err = rules_from_resources(&[any(&ok), any(&duplicate)], false, &stats).unwrap_err().to_string();
        assert!(err.contains("duplicate domain 'gateway'"), "{err}");

        let garbage = Any { type_url: TYPE_URL.into(), value: vec![0xff, 0xff, 0xff] };
        let wrong_type = Any { type_url: "type.googleapis.com/envoy.config.cluster.v3.Cluster".into(), value: vec![] };
        let err = rules_from_resources(&[garbage, wrong_type], false, &stats).unwrap_err().to_string();
        assert!(err.contains("xds:resource 0: not a RateLimitConfig"), "{err}");
        assert!(err.contains("xds:resource 1: type"), "{err}");
    }
}
