//! The whole gateway as operators run it, for chaos and soak tests: Envoy from the reference
//! config, and each Gatehouse service as its own binary ([`Service`]), one or more replicas
//! per cluster, with their config files in one directory the test can rewrite.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use gatehouse_extauth::hash_key_sha256;
use gatehouse_testkit::echo::Echo;
use gatehouse_testkit::envoy::{Envoy, default_vars};
use gatehouse_testkit::service::{Kind, Service};
use tempfile::TempDir;

/// An API key the default policies accept on `/auth/keys`.
pub const API_KEY: &str = "chaos-key-0123456789abcdef";

/// Limits for the catch-all route (`/`, descriptor `generic_key: default`): high enough never
/// to limit, so every request is counted and answered 200.
pub fn rules(requests_per_hour: u64) -> String {
    format!(
        "domain: gateway\ndescriptors:\n  - key: generic_key\n    value: default\n    rate_limit: {{ unit: hour, requests_per_unit: {requests_per_hour} }}\n"
    )
}

/// The `keys` policy of `/auth/keys`, adding `x-chaos-version: {version}` upstream.
pub fn policies(version: &str) -> String {
    let hash = hash_key_sha256(API_KEY);
    format!(
        "policies:\n  - name: keys\n    identity:\n      any_of:\n        - name: k\n          api_key:\n            keys: [{{ id: chaos, hash: \"{hash}\" }}]\n    response:\n      headers:\n        x-chaos-version: {{ value: \"{version}\" }}\n"
    )
}

/// The `headers` transformation of `/tx/headers`, setting `x-chaos-version: {version}` on
/// the request.
pub fn transformations(version: &str) -> String {
    format!(
        "transformations:\n  - name: headers\n    request:\n      - headers:\n          set:\n            x-chaos-version: \"{version}\"\n"
    )
}

/// What to start.
pub struct Spec {
    pub ratelimit_replicas: usize,
    pub extauth_replicas: usize,
    pub transform_replicas: usize,
    /// Environment for every ratelimit replica (Redis, failure mode...).
    pub ratelimit_env: Vec<(&'static str, String)>,
    /// Environment for every replica of every service.
    pub common_env: Vec<(&'static str, String)>,
    pub ratelimit_failure_mode_deny: bool,
}

impl Default for Spec {
    fn default() -> Self {
        Spec {
            ratelimit_replicas: 1,
            extauth_replicas: 1,
            transform_replicas: 1,
            ratelimit_env: Vec::new(),
            common_env: Vec::new(),
            ratelimit_failure_mode_deny: false,
        }
    }
}

pub struct Gateway {
    pub envoy: Envoy,
    pub ratelimit: Vec<Service>,
    pub extauth: Vec<Service>,
    pub transform: Vec<Service>,
    pub rules_file: PathBuf,
    pub policies_file: PathBuf,
    pub transformations_file: PathBuf,
    pub echo: Echo,
    pub dir: TempDir,
}

impl Gateway {
    pub async fn start(spec: Spec) -> Gateway {
        let dir = tempfile::tempdir().unwrap();
        let rules_dir = dir.path().join("rl/config");
        std::fs::create_dir_all(&rules_dir).unwrap();
        let rules_file = rules_dir.join("gateway.yaml");
        std::fs::write(&rules_file, rules(1_000_000_000)).unwrap();
        let policies_file = dir.path().join("policies.yaml");
        std::fs::write(&policies_file, policies("v1")).unwrap();
        let transformations_file = dir.path().join("transformations.yaml");
        std::fs::write(&transformations_file, transformations("v1")).unwrap();

        let start = |kind: Kind, n: usize, env: Vec<(&'static str, String)>| {
            let dir = dir.path().to_path_buf();
            async move {
                let mut replicas = Vec::new();
                for _ in 0..n {
                    replicas.push(Service::start(kind, &env, &dir).await);
                }
                replicas
            }
        };
        let mut rl_env = spec.common_env.clone();
        rl_env.push(("RUNTIME_ROOT", dir.path().join("rl").display().to_string()));
        rl_env.push(("RUNTIME_SUBDIRECTORY", String::new()));
        rl_env.extend(spec.ratelimit_env.iter().cloned());
        let ratelimit = start(Kind::Ratelimit, spec.ratelimit_replicas, rl_env).await;
        let mut ea_env = spec.common_env.clone();
        ea_env.push(("EXTAUTH_CONFIG", policies_file.display().to_string()));
        let extauth = start(Kind::Extauth, spec.extauth_replicas, ea_env).await;
        let mut tx_env = spec.common_env.clone();
        tx_env.push(("TRANSFORM_CONFIG", transformations_file.display().to_string()));
        let transform = start(Kind::Transform, spec.transform_replicas, tx_env).await;

        let echo = Echo::start().await;
        let mut vars: BTreeMap<String, String> = default_vars();
        vars.insert("UPSTREAM_PORT".into(), echo.port.to_string());
        vars.insert("RATELIMIT_FAILURE_MODE_DENY".into(), spec.ratelimit_failure_mode_deny.to_string());
        let ports = |replicas: &[Service]| replicas.iter().map(|s| s.grpc_port).collect::<Vec<_>>();
        let (rl, ea, tx) = (ports(&ratelimit), ports(&extauth), ports(&transform));
        let first = |p: &[u16]| p.first().copied().unwrap_or(1).to_string();
        vars.insert("RATELIMIT_PORT".into(), first(&rl));
        vars.insert("EXTAUTH_PORT".into(), first(&ea));
        vars.insert("EXTAUTH_HTTP_PORT".into(), extauth.first().map_or(1, |s| s.http_port).to_string());
        vars.insert("TRANSFORM_PORT".into(), first(&tx));
        let envoy = Envoy::start_edited(&vars, |config| {
            let config = with_replicas(config, "gatehouse_ratelimit", &rl);
            let config = with_replicas(config, "gatehouse_extauth", &ea);
            with_replicas(config, "gatehouse_transform", &tx)
        })
        .await;
        Gateway { envoy, ratelimit, extauth, transform, rules_file, policies_file, transformations_file, echo, dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// Adds every port after the first as another endpoint of `cluster` (the reference config
/// templates one endpoint per service; Kubernetes gives Envoy several through DNS or EDS).
pub fn with_replicas(config: String, cluster: &str, ports: &[u16]) -> String {
    if ports.len() < 2 {
        return config;
    }
    let anchor = format!("load_assignment:\n      cluster_name: {cluster}\n");
    let start = config.find(&anchor).unwrap_or_else(|| panic!("no load_assignment for {cluster}"));
    let port_line = config[start..].find("port_value: ").map(|i| start + i).expect("port_value");
    let line_end = config[port_line..].find('\n').map_or(config.len(), |i| port_line + i + 1);
    let extra: String = ports[1..]
        .iter()
        .map(|p| {
            format!(
                "        - endpoint:\n            address:\n              socket_address:\n                address: 127.0.0.1\n                port_value: {p}\n"
            )
        })
        .collect();
    format!("{}{extra}{}", &config[..line_end], &config[line_end..])
}

/// Writes `text` to `path` by rename, as Kubernetes and editors replace a file.
pub fn replace_file(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp~");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}
