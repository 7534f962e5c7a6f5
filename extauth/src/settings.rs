//! Environment variables. Names follow the Gatehouse services' shared conventions (the
//! gRPC, HTTP, Redis, TLS and log variables of gatehouse-ratelimit).

use std::path::PathBuf;

use gatehouse_common::config::{ConfigError, Env};
use gatehouse_common::redis::RedisSettings;
use gatehouse_common::server::ServiceSettings;

#[derive(Clone, Debug)]
pub struct Settings {
    /// The policy file (EXTAUTH_CONFIG).
    pub config_file: PathBuf,
    /// The shared variables: GRPC_PORT (9191), PORT (9192), TLS, logs, drain.
    pub service: ServiceSettings,
    /// REDIS_URL and the other REDIS_* variables; only needed for API keys in Redis.
    pub redis: Option<RedisSettings>,
    /// SIGNING_KEY_FILE: PKCS#8 P-256 key for the JWTs sent upstream; generated if unset.
    pub signing_key_file: Option<PathBuf>,
    /// SIGNING_ISSUER: `iss` of those JWTs.
    pub signing_issuer: String,
}

impl Settings {
    pub fn from_env(env: &Env) -> Result<Settings, ConfigError> {
        let redis = match env.get("REDIS_URL") {
            Some(url) if !url.is_empty() => Some(RedisSettings::from_env(env, url)?),
            _ => None,
        };
        Ok(Settings {
            config_file: PathBuf::from(env.string("EXTAUTH_CONFIG", "/etc/gatehouse/extauth.yaml")),
            service: ServiceSettings::from_env(env, "gatehouse-extauth", 9191, 9192)?,
            redis,
            signing_key_file: env.get("SIGNING_KEY_FILE").map(PathBuf::from),
            signing_issuer: env.string("SIGNING_ISSUER", "gatehouse-extauth"),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn defaults_and_errors() {
        let s = Settings::from_env(&Env::default()).unwrap();
        assert_eq!(s.service.grpc_addr.port(), 9191);
        assert_eq!(s.service.http_addr.port(), 9192);
        assert!(s.redis.is_none());
        let s = Settings::from_env(&Env::from_pairs([("REDIS_URL", "127.0.0.1:6379"), ("REDIS_TIMEOUT", "250ms")]))
            .unwrap();
        assert_eq!(s.redis.unwrap().timeout, Duration::from_millis(250));
        let err = Settings::from_env(&Env::from_pairs([("GRPC_PORT", "x")])).unwrap_err();
        assert!(err.to_string().contains("GRPC_PORT"), "{err}");
    }

    #[test]
    fn log_settings() {
        use gatehouse_common::telemetry::LogFormat;
        let s = Settings::from_env(&Env::default()).unwrap();
        assert_eq!((s.service.log_level.directive(), s.service.log_format), ("info", LogFormat::Text { color: true }));
        let s = Settings::from_env(&Env::from_pairs([("LOG_LEVEL", "debug"), ("LOG_FORMAT", "json")])).unwrap();
        assert!(s.service.log_level.directive().contains("gatehouse_extauth=debug"), "{:?}", s.service.log_level);
        assert_eq!(s.service.log_format, LogFormat::Json);
        let err = Settings::from_env(&Env::from_pairs([("LOG_FORMAT", "xml")])).unwrap_err();
        assert!(err.to_string().contains("LOG_FORMAT"), "{err}");
    }
}
