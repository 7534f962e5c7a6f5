//! Environment variables. Names follow the Gatehouse services' shared conventions (the
//! gRPC, HTTP, Redis, TLS and log variables of gatehouse-ratelimit).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use gatehouse_common::config::{ConfigError, Env};
use gatehouse_common::redis::RedisSettings;
use gatehouse_common::server::TlsFiles;
use gatehouse_common::telemetry::LogFormat;

#[derive(Clone, Debug)]
pub struct Settings {
    /// The policy file (EXTAUTH_CONFIG).
    pub config_file: PathBuf,
    /// GRPC_HOST / GRPC_PORT (9191).
    pub grpc_addr: SocketAddr,
    /// HOST / PORT (9192): health, forward-auth, JWKS, metrics, config status.
    pub http_addr: SocketAddr,
    pub grpc_tls: Option<TlsFiles>,
    /// REDIS_URL and the other REDIS_* variables; only needed for API keys in Redis.
    pub redis: Option<RedisSettings>,
    /// SIGNING_KEY_FILE: PKCS#8 P-256 key for the JWTs sent upstream; generated if unset.
    pub signing_key_file: Option<PathBuf>,
    /// SIGNING_ISSUER: `iss` of those JWTs.
    pub signing_issuer: String,
    pub log_level: String,
    pub log_format: LogFormat,
    /// SHUTDOWN_DRAIN: time between NOT_SERVING and closing listeners.
    pub drain: Duration,
}

impl Settings {
    pub fn from_env(env: &Env) -> Result<Settings, ConfigError> {
        let redis = match env.get("REDIS_URL") {
            Some(url) if !url.is_empty() => Some(RedisSettings::from_env(env, url)?),
            _ => None,
        };
        Ok(Settings {
            config_file: PathBuf::from(env.string("EXTAUTH_CONFIG", "/etc/gatehouse/extauth.yaml")),
            grpc_addr: env.socket_addr("GRPC_HOST", "GRPC_PORT", 9191)?,
            http_addr: env.socket_addr("HOST", "PORT", 9192)?,
            grpc_tls: TlsFiles::from_env(env)?,
            redis,
            signing_key_file: env.get("SIGNING_KEY_FILE").map(PathBuf::from),
            signing_issuer: env.string("SIGNING_ISSUER", "gatehouse-extauth"),
            log_level: env.string("LOG_LEVEL", "info"),
            log_format: env.parse("LOG_FORMAT", LogFormat::Text)?,
            drain: env.duration("SHUTDOWN_DRAIN", Duration::from_secs(0))?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_errors() {
        let s = Settings::from_env(&Env::default()).unwrap();
        assert_eq!(s.grpc_addr.port(), 9191);
        assert_eq!(s.http_addr.port(), 9192);
        assert!(s.redis.is_none());
        let s = Settings::from_env(&Env::from_pairs([("REDIS_URL", "127.0.0.1:6379"), ("REDIS_TIMEOUT", "250ms")]))
            .unwrap();
        assert_eq!(s.redis.unwrap().timeout, Duration::from_millis(250));
        let err = Settings::from_env(&Env::from_pairs([("GRPC_PORT", "x")])).unwrap_err();
        assert!(err.to_string().contains("GRPC_PORT"), "{err}");
    }
}
