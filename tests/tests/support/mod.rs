//! Helpers shared by the end-to-end tests: requests through Envoy, a gatehouse-ratelimit
//! replica for tests that key limits on another service's metadata, and ([`gateway`]) the
//! whole gateway from the services' binaries for chaos and soak tests.

#![allow(dead_code, unreachable_pub)]

pub mod gateway;

use std::collections::BTreeMap;
use std::path::Path;

use gatehouse_common::config::Env;
use gatehouse_common::server::Shutdown;
use serde_json::Value;
use tokio::net::TcpListener;

/// A response as the client got it.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: BTreeMap<String, Vec<String>>,
    pub body: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).and_then(|v| v.first()).map(String::as_str).unwrap_or("")
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    /// A header of the request the upstream saw (the echo server's answer).
    pub fn upstream_header(&self, name: &str) -> Option<String> {
        self.json()["headers"][name].as_str().map(str::to_string)
    }
}

/// Sends a request and reads the whole response.
pub async fn send(
    client: &reqwest::Client,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<Vec<u8>>,
) -> Reply {
    let mut req = client.request(method.parse().unwrap(), url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    if let Some(body) = body {
        req = req.body(body);
    }
    let resp = req.send().await.expect("request through envoy");
    let status = resp.status().as_u16();
    let headers = resp.headers().iter().map(|(k, v)| (k.to_string(), v.to_str().unwrap_or_default().to_string())).fold(
        BTreeMap::new(),
        |mut m: BTreeMap<String, Vec<String>>, (k, v)| {
            m.entry(k).or_default().push(v);
            m
        },
    );
    let body = resp.text().await.unwrap_or_default();
    Reply { status, headers, body }
}

/// A gatehouse-ratelimit replica in memory, with `rules` as its one config file (domain
/// `gateway`, as envoy/gateway.yaml sends).
pub async fn start_ratelimit(dir: &Path, rules: &str) -> (u16, Shutdown) {
    use gatehouse_ratelimit::clock::Clock;
    let config = dir.join("rl/config");
    std::fs::create_dir_all(&config).unwrap();
    std::fs::write(config.join("gateway.yaml"), rules).unwrap();
    let env = Env::from_pairs([
        ("RUNTIME_ROOT", dir.join("rl").display().to_string()),
        ("RUNTIME_SUBDIRECTORY", String::new()),
    ]);
    let settings = gatehouse_ratelimit::settings::Settings::from_env(&env).expect("ratelimit settings");
    let grpc = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = grpc.local_addr().unwrap().port();
    let app = gatehouse_ratelimit::App::build(settings, Clock::System).await.expect("ratelimit starts");
    let shutdown = Shutdown::new();
    let listeners = gatehouse_ratelimit::Listeners { grpc: grpc.into(), http: None, debug: None, prometheus: None };
    tokio::spawn(app.serve(listeners, shutdown.clone()));
    (port, shutdown)
}
