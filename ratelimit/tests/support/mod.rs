//! What the in-process test files share: an App served on loopback with rules from a temp
//! dir and settings from literal environment variables, and ShouldRateLimit calls.

#![allow(dead_code, unreachable_pub)]

use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use gatehouse_common::config::Env;
use gatehouse_common::server::Shutdown;
use gatehouse_ratelimit::clock::Clock;
use gatehouse_ratelimit::settings::Settings;
use gatehouse_ratelimit::{App, Listeners};
use tokio::net::TcpListener;
use tonic::transport::Channel;

/// A served App; shut down when dropped.
pub struct Served {
    pub grpc: std::net::SocketAddr,
    pub shutdown: Shutdown,
    pub task: tokio::task::JoinHandle<Result<(), gatehouse_ratelimit::StartError>>,
    _rules: tempfile::TempDir,
}

impl Drop for Served {
    fn drop(&mut self) {
        self.shutdown.trigger();
    }
}

/// The settings `env` gives, with `rules` as the only rule file.
pub fn settings(rules: &str, env: &[(&str, &str)]) -> (Settings, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("config")).unwrap();
    std::fs::write(dir.path().join("config/rules.yaml"), rules).unwrap();
    let mut vars = vec![
        ("RUNTIME_ROOT".to_string(), dir.path().display().to_string()),
        ("RUNTIME_WATCH_ROOT".into(), "false".into()),
        ("USE_STATSD".into(), "false".into()),
    ];
    vars.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    (Settings::from_env(&Env::from_pairs(vars)).unwrap(), dir)
}

/// Serves `rules` with the settings `env` gives, gRPC on a loopback port.
pub async fn serve(rules: &str, env: &[(&str, &str)]) -> Served {
    let (settings, dir) = settings(rules, env);
    let grpc = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = grpc.local_addr().unwrap();
    let app = App::build(settings, Clock::System).await.unwrap();
    let shutdown = Shutdown::new();
    let listeners = Listeners { grpc: grpc.into(), http: None, debug: None, prometheus: None };
    let task = tokio::spawn(app.serve(listeners, shutdown.clone()));
    Served { grpc: addr, shutdown, task, _rules: dir }
}

impl Served {
    pub async fn client(&self) -> RateLimitServiceClient<Channel> {
        RateLimitServiceClient::connect(format!("http://{}", self.grpc)).await.unwrap()
    }
}

/// A request in `domain` with one descriptor of `entries`.
pub fn request(domain: &str, entries: &[(&str, &str)]) -> RateLimitRequest {
    request_of(domain, &[entries])
}

/// A request in `domain` with a descriptor for each list of entries.
pub fn request_of(domain: &str, descriptors: &[&[(&str, &str)]]) -> RateLimitRequest {
    let descriptor = |entries: &&[(&str, &str)]| RateLimitDescriptor {
        entries: entries.iter().map(|(k, v)| Entry { key: k.to_string(), value: v.to_string() }).collect(),
        ..Default::default()
    };
    RateLimitRequest {
        domain: domain.into(),
        descriptors: descriptors.iter().map(descriptor).collect(),
        hits_addend: 0,
    }
}

pub async fn call(
    client: &mut RateLimitServiceClient<Channel>,
    request: RateLimitRequest,
) -> Result<RateLimitResponse, tonic::Status> {
    client.should_rate_limit(request).await.map(tonic::Response::into_inner)
}
