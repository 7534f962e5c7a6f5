//! `CONFIG_TYPE=GRPC_XDS_SOTW`: where the rules come from over xDS, with envoyproxy/ratelimit's
//! variable names and defaults (its `src/settings/settings.go`).

use std::path::PathBuf;
use std::time::Duration;

use gatehouse_common::config::{ConfigError, Env};

#[derive(Clone, Debug)]
pub struct XdsSettings {
    /// `host:port` or `http(s)://host:port` (CONFIG_GRPC_XDS_SERVER_URL).
    pub server_url: String,
    pub node_id: String,
    /// CONFIG_GRPC_XDS_NODE_METADATA, `key1=val1,key2=val2`: string fields of the node's metadata.
    pub node_metadata: Vec<(String, String)>,
    /// CONFIG_GRPC_XDS_CLIENT_ADDITIONAL_HEADERS, `key1:val1,key2:val2`: gRPC metadata on the stream.
    pub additional_headers: Vec<(String, String)>,
    /// How long one connection attempt may take (CONFIG_GRPC_XDS_SERVER_CONNECT_RETRY_INTERVAL).
    pub connect_timeout: Duration,
    pub backoff: Backoff,
    pub tls: Option<XdsTls>,
    /// XDS_CLIENT_MAX_MSG_SIZE_IN_BYTES; tonic's 4 MiB default otherwise.
    pub max_message_bytes: Option<usize>,
    /// Serve before the first config arrives (FORCE_START_WITHOUT_INITIAL_CONFIG).
    pub force_start: bool,
}

/// Reconnection after the stream ends or cannot be opened: exponential from `initial` to
/// `max`, each wait multiplied by a random factor in `1 ± random_factor` with `jitter`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
    pub random_factor: f64,
    pub jitter: bool,
}

impl Backoff {
    /// The wait before reconnection attempt `attempt` (0 for the first).
    pub fn delay(&self, attempt: u32, random: f64) -> Duration {
        let base = self.initial.as_secs_f64() * 2f64.powi(attempt.min(30) as i32);
        let base = base.min(self.max.as_secs_f64());
        let factor = if self.jitter { 1.0 + self.random_factor * (2.0 * random - 1.0) } else { 1.0 };
        Duration::from_secs_f64((base * factor).clamp(0.0, self.max.as_secs_f64()))
    }
}

/// TLS to the control plane, mutual when a client certificate is given (as Envoy Gateway
/// mounts it).
#[derive(Clone, Debug)]
pub struct XdsTls {
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// The name to verify the server's certificate against (CONFIG_GRPC_XDS_SERVER_TLS_SAN);
    /// default: the host of the server URL.
    pub server_name: Option<String>,
}

impl XdsSettings {
    pub fn from_env(env: &Env) -> Result<XdsSettings, ConfigError> {
        let pairs = |name: &str, separator: char| -> Result<Vec<(String, String)>, ConfigError> {
            let mut out = Vec::new();
            for entry in env.string(name, "").split(',').map(str::trim).filter(|e| !e.is_empty()) {
                let Some((k, v)) = entry.split_once(separator) else {
                    return Err(env.error(name, format!("{entry:?}: expected key{separator}value")));
                };
                out.push((k.trim().to_string(), v.trim().to_string()));
            }
            Ok(out)
        };
        let path = |name: &str| env.get(name).filter(|v| !v.is_empty()).map(PathBuf::from);
        let tls = if env.bool("CONFIG_GRPC_XDS_SERVER_USE_TLS", false)? {
            let tls = XdsTls {
                ca: path("CONFIG_GRPC_XDS_SERVER_TLS_CACERT"),
                cert: path("CONFIG_GRPC_XDS_CLIENT_TLS_CERT"),
                key: path("CONFIG_GRPC_XDS_CLIENT_TLS_KEY"),
                server_name: env.get("CONFIG_GRPC_XDS_SERVER_TLS_SAN").filter(|v| !v.is_empty()).map(str::to_string),
            };
            if tls.cert.is_some() != tls.key.is_some() {
                return Err(env.error(
                    "CONFIG_GRPC_XDS_CLIENT_TLS_CERT",
                    "a client certificate needs CONFIG_GRPC_XDS_CLIENT_TLS_KEY too (and the other way round)",
                ));
            }
            Some(tls)
        } else {
            None
        };
        let max_message_bytes = match env.get("XDS_CLIENT_MAX_MSG_SIZE_IN_BYTES").filter(|v| !v.is_empty()) {
            Some(_) => Some(env.parse("XDS_CLIENT_MAX_MSG_SIZE_IN_BYTES", 0usize)?).filter(|n| *n > 0),
            None => None,
        };
        let random_factor = env.parse("XDS_CLIENT_BACKOFF_RANDOM_FACTOR", 0.5f64)?;
        if !(0.0..=1.0).contains(&random_factor) {
            return Err(env.error("XDS_CLIENT_BACKOFF_RANDOM_FACTOR", "expected a number from 0 to 1"));
        }
        let backoff = Backoff {
            initial: env.duration("XDS_CLIENT_BACKOFF_INITIAL_INTERVAL", Duration::from_secs(10))?,
            max: env.duration("XDS_CLIENT_BACKOFF_MAX_INTERVAL", Duration::from_secs(60))?,
            random_factor,
            jitter: env.bool("XDS_CLIENT_BACKOFF_JITTER", true)?,
        };
        if backoff.initial.is_zero() || backoff.max < backoff.initial {
            return Err(env.error(
                "XDS_CLIENT_BACKOFF_MAX_INTERVAL",
                "needs XDS_CLIENT_BACKOFF_INITIAL_INTERVAL > 0 and a max interval at least as long",
            ));
        }
        Ok(XdsSettings {
            server_url: env.string("CONFIG_GRPC_XDS_SERVER_URL", "localhost:18000"),
            node_id: env.string("CONFIG_GRPC_XDS_NODE_ID", "default"),
            node_metadata: pairs("CONFIG_GRPC_XDS_NODE_METADATA", '=')?,
            additional_headers: pairs("CONFIG_GRPC_XDS_CLIENT_ADDITIONAL_HEADERS", ':')?,
            connect_timeout: env.duration("CONFIG_GRPC_XDS_SERVER_CONNECT_RETRY_INTERVAL", Duration::from_secs(3))?,
            backoff,
            tls,
            max_message_bytes,
            force_start: env.bool("FORCE_START_WITHOUT_INITIAL_CONFIG", false)?,
        })
    }

    /// The server URL as tonic dials it: a scheme is added when the variable has none.
    pub fn endpoint_uri(&self) -> String {
        if self.server_url.contains("://") {
            self.server_url.clone()
        } else if self.tls.is_some() {
            format!("https://{}", self.server_url)
        } else {
            format!("http://{}", self.server_url)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envoy_gateways_variables_are_read() {
        let env = Env::from_pairs([
            ("CONFIG_GRPC_XDS_SERVER_URL", "envoy-gateway.envoy-gateway-system.svc.cluster.local:18001"),
            ("CONFIG_GRPC_XDS_NODE_ID", "envoy-ratelimit"),
            ("CONFIG_GRPC_XDS_NODE_METADATA", "zone=a, team=edge"),
            ("CONFIG_GRPC_XDS_CLIENT_ADDITIONAL_HEADERS", "authorization:Bearer x"),
            ("CONFIG_GRPC_XDS_SERVER_USE_TLS", "true"),
            ("CONFIG_GRPC_XDS_CLIENT_TLS_CERT", "/certs/tls.crt"),
            ("CONFIG_GRPC_XDS_CLIENT_TLS_KEY", "/certs/tls.key"),
            ("CONFIG_GRPC_XDS_SERVER_TLS_CACERT", "/certs/ca.crt"),
            ("FORCE_START_WITHOUT_INITIAL_CONFIG", "true"),
        ]);
        let s = XdsSettings::from_env(&env).unwrap();
        assert_eq!(s.endpoint_uri(), "https://envoy-gateway.envoy-gateway-system.svc.cluster.local:18001");
        assert_eq!(s.node_id, "envoy-ratelimit");
        assert_eq!(s.node_metadata, [("zone".into(), "a".into()), ("team".into(), "edge".into())]);
        assert_eq!(s.additional_headers, [("authorization".into(), "Bearer x".into())]);
        assert!(s.tls.as_ref().is_some_and(|t| t.cert.is_some() && t.ca.is_some()));
        assert!(s.force_start);
        assert_eq!(s.backoff.initial, Duration::from_secs(10));
    }

    #[test]
    fn mistakes_name_the_variable() {
        for (name, value) in [
            ("CONFIG_GRPC_XDS_NODE_METADATA", "novalue"),
            ("XDS_CLIENT_BACKOFF_RANDOM_FACTOR", "2"),
            ("XDS_CLIENT_BACKOFF_INITIAL_INTERVAL", "0s"),
        ] {
            let err = XdsSettings::from_env(&Env::from_pairs([(name, value)])).unwrap_err().to_string();
            assert!(err.contains(name) || err.contains("XDS_CLIENT_BACKOFF"), "{name}: {err}");
        }
        let half_mtls =
            Env::from_pairs([("CONFIG_GRPC_XDS_SERVER_USE_TLS", "true"), ("CONFIG_GRPC_XDS_CLIENT_TLS_CERT", "/c")]);
        assert!(XdsSettings::from_env(&half_mtls).is_err());
    }

    #[test]
    fn backoff_grows_to_its_cap_with_jitter_around_it() {
        let b =
            Backoff { initial: Duration::from_secs(1), max: Duration::from_secs(8), random_factor: 0.5, jitter: true };
        assert_eq!(b.delay(0, 0.5), Duration::from_secs(1));
        assert_eq!(b.delay(2, 0.5), Duration::from_secs(4));
        assert_eq!(b.delay(10, 0.5), Duration::from_secs(8));
        assert_eq!(b.delay(0, 0.0), Duration::from_millis(500));
        assert_eq!(b.delay(10, 1.0), Duration::from_secs(8), "never past the cap");
    }
}
