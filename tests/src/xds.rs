//! A fake xDS control plane for gatehouse-ratelimit's `CONFIG_TYPE=GRPC_XDS_SOTW`: the
//! aggregated discovery service (envoy-types' server stubs) serving `RateLimitConfig`
//! resources, state of the world, as Envoy Gateway does.
//!
//! Tests [`ControlPlane::push`] a snapshot (a version and its resources); every open stream
//! gets it at once, with a new nonce. Every request a client sends (the first one, ACKs and
//! NACKs) is recorded, so tests can assert on what the client answered. Dropping the plane
//! stops its server and ends the streams; [`ControlPlane::start_on`] starts another on the
//! same port (a control-plane restart).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::google::protobuf::Any;
use envoy_types::pb::ratelimit::config::ratelimit::v3::{
    RateLimitConfig, RateLimitDescriptor, RateLimitPolicy, RateLimitUnit,
};
use prost::Message;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

pub const TYPE_URL: &str = "type.googleapis.com/ratelimit.config.ratelimit.v3.RateLimitConfig";

/// One version of the config.
#[derive(Clone, Debug)]
pub struct Snapshot {
    pub version: String,
    pub resources: Vec<RateLimitConfig>,
}

/// What a client sent on a stream.
#[derive(Clone, Debug)]
pub struct Received {
    pub node_id: Option<String>,
    pub version_info: String,
    pub response_nonce: String,
    /// The NACK's message, if this was one.
    pub error: Option<String>,
    /// gRPC metadata of the stream that carried it, e.g. CONFIG_GRPC_XDS_CLIENT_ADDITIONAL_HEADERS.
    pub headers: Vec<(String, String)>,
}

impl Received {
    pub fn is_ack_of(&self, version: &str) -> bool {
        self.error.is_none() && !self.response_nonce.is_empty() && self.version_info == version
    }
}

#[derive(Default)]
struct Shared {
    received: Mutex<Vec<Received>>,
    streams: Mutex<u64>,
}

pub struct ControlPlane {
    pub addr: SocketAddr,
    snapshot: watch::Sender<Option<Snapshot>>,
    shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
}

struct Service {
    snapshot: watch::Receiver<Option<Snapshot>>,
    shared: Arc<Shared>,
    nonce: Arc<Mutex<u64>>,
}

impl ControlPlane {
    /// A control plane on a free loopback port, with no config yet.
    pub async fn start() -> ControlPlane {
        ControlPlane::start_on(crate::free_port(), None).await
    }

    /// A control plane on `port` serving `snapshot` from the start (a restarted one).
    pub async fn start_on(port: u16, snapshot: Option<Snapshot>) -> ControlPlane {
        ControlPlane::start_with(port, snapshot, None).await
    }

    /// Over TLS with `pki`'s server certificate, requiring a client certificate signed by its
    /// CA, as Envoy Gateway's control plane does.
    pub async fn start_mtls(pki: &crate::tls::Pki) -> ControlPlane {
        ControlPlane::start_with(crate::free_port(), None, Some(pki)).await
    }

    async fn start_with(port: u16, snapshot: Option<Snapshot>, tls: Option<&crate::tls::Pki>) -> ControlPlane {
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let (sender, receiver) = watch::channel(snapshot);
        let shared = Arc::new(Shared::default());
        let service = Service { snapshot: receiver, shared: shared.clone(), nonce: Arc::new(Mutex::new(0)) };
        let listener = bind(addr).await;
        let (stop, stopped) = oneshot::channel::<()>();
        let mut server = tonic::transport::Server::builder();
        if let Some(pki) = tls {
            let read = |p: &std::path::Path| std::fs::read(p).expect("PKI file");
            let config = tonic::transport::ServerTlsConfig::new()
                .identity(tonic::transport::Identity::from_pem(read(&pki.server_cert), read(&pki.server_key)))
                .client_ca_root(tonic::transport::Certificate::from_pem(read(&pki.ca_cert)));
            server = server.tls_config(config).expect("TLS config");
        }
        tokio::spawn(async move {
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
            let _ = server
                .add_service(AggregatedDiscoveryServiceServer::new(service))
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = stopped.await;
                })
                .await;
        });
        ControlPlane { addr, snapshot: sender, shared, stop: Some(stop) }
    }

    /// `host:port`, as CONFIG_GRPC_XDS_SERVER_URL takes it.
    pub fn url(&self) -> String {
        self.addr.to_string()
    }

    /// Makes `snapshot` the state of the world; every stream gets it now.
    pub fn push(&self, snapshot: Snapshot) {
        self.snapshot.send_replace(Some(snapshot));
    }

    pub fn received(&self) -> Vec<Received> {
        self.shared.received.lock().unwrap().clone()
    }

    /// Streams opened so far.
    pub fn streams(&self) -> u64 {
        *self.shared.streams.lock().unwrap()
    }

    /// Waits (up to 10 s) for a request matching `want`, and returns it.
    pub async fn wait_for(&self, what: &str, want: impl Fn(&Received) -> bool) -> Received {
        for _ in 0..200 {
            if let Some(found) = self.received().into_iter().find(|r| want(r)) {
                return found;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the control plane never received {what}; it got {:#?}", self.received());
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Binds `addr`, retrying briefly: a restarted plane may find its old socket still closing.
async fn bind(addr: SocketAddr) -> tokio::net::TcpListener {
    for _ in 0..50 {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(listener) => return listener,
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    panic!("cannot bind the fake control plane to {addr}");
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for Service {
    type StreamAggregatedResourcesStream = ReceiverStream<Result<DiscoveryResponse, Status>>;
    type DeltaAggregatedResourcesStream = ReceiverStream<Result<DeltaDiscoveryResponse, Status>>;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        *self.shared.streams.lock().unwrap() += 1;
        let headers: Vec<(String, String)> = request
            .metadata()
            .iter()
            .filter_map(|kv| match kv {
                tonic::metadata::KeyAndValueRef::Ascii(k, v) => {
                    Some((k.as_str().to_string(), v.to_str().unwrap_or_default().to_string()))
                }
                tonic::metadata::KeyAndValueRef::Binary(..) => None,
            })
            .collect();
        let mut inbound = request.into_inner();
        let (responses, outbound) = mpsc::channel(8);
        let (shared, nonce, mut snapshot) = (self.shared.clone(), self.nonce.clone(), self.snapshot.clone());
        tokio::spawn(async move {
            // Wait for the client's first request, then send the state of the world whenever
            // it changes; record everything the client says.
            let mut first = true;
            loop {
                tokio::select! {
                    request = inbound.message() => {
                        let Ok(Some(request)) = request else { return };
                        shared.received.lock().unwrap().push(Received {
                            node_id: request.node.as_ref().map(|n| n.id.clone()),
                            version_info: request.version_info.clone(),
                            response_nonce: request.response_nonce.clone(),
                            error: request.error_detail.as_ref().map(|s| s.message.clone()),
                            headers: headers.clone(),
                        });
                        if first {
                            first = false;
                            snapshot.mark_changed();
                        }
                    }
                    changed = snapshot.changed(), if !first => {
                        if changed.is_err() {
                            return;
                        }
                        let Some(current) = snapshot.borrow_and_update().clone() else { continue };
                        let nonce = {
                            let mut n = nonce.lock().unwrap();
                            *n += 1;
                            n.to_string()
                        };
                        if responses.send(Ok(response(&current, nonce))).await.is_err() {
                            return;
                        }
                    }
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(outbound)))
    }

    async fn delta_aggregated_resources(
        &self,
        _: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        Err(Status::unimplemented("state of the world only"))
    }
}

fn response(snapshot: &Snapshot, nonce: String) -> DiscoveryResponse {
    DiscoveryResponse {
        version_info: snapshot.version.clone(),
        resources: snapshot
            .resources
            .iter()
            .map(|r| Any { type_url: TYPE_URL.into(), value: r.encode_to_vec() })
            .collect(),
        type_url: TYPE_URL.into(),
        nonce,
        ..Default::default()
    }
}

/// A descriptor `key[=value]` with a limit of `requests` per `unit`.
pub fn limit(key: &str, value: &str, unit: RateLimitUnit, requests: u32) -> RateLimitDescriptor {
    RateLimitDescriptor {
        key: key.into(),
        value: value.into(),
        rate_limit: Some(RateLimitPolicy { unit: unit as i32, requests_per_unit: requests, ..Default::default() }),
        ..Default::default()
    }
}

/// A `RateLimitConfig` resource for `domain`.
pub fn config(name: &str, domain: &str, descriptors: Vec<RateLimitDescriptor>) -> RateLimitConfig {
    RateLimitConfig { name: name.into(), domain: domain.into(), descriptors }
}
