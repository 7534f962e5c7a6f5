//! Settings from environment variables, with envoyproxy/ratelimit's names and defaults where
//! they apply, so existing Deployments switch without edits. See docs/ratelimit-compat.md.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use gatehouse_common::config::{ConfigError, Env};
use gatehouse_common::redis::RedisSettings;
use gatehouse_common::server::TlsFiles;
use gatehouse_common::telemetry::otel::{Protocol, Sampler, ServiceDefaults, TracingSettings};
use gatehouse_common::telemetry::{LogFilter, LogFormat, TelemetrySettings};

use crate::statsd::StatsdSettings;

/// Where the rules come from (CONFIG_TYPE).
#[derive(Clone, Debug)]
pub enum ConfigSource {
    /// `FILE` (the default): the YAML files in the config directory, hot-reloaded.
    File,
    /// `GRPC_XDS_SOTW`: `RateLimitConfig` resources from an xDS control plane.
    Xds(Box<crate::xds::XdsSettings>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Backend {
    Memory { max_keys: usize },
    Redis,
}

/// What to answer when the counter store cannot be reached in time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureMode {
    /// Answer OK and count `ratelimit_service_backend_failure_allowed`.
    Open,
    /// Answer UNAVAILABLE; Envoy then applies its own `failure_mode_deny`.
    Closed,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeaderFormat {
    /// envoyproxy/ratelimit's `RateLimit-Limit`, `RateLimit-Remaining`, `RateLimit-Reset`.
    Split,
    /// draft-ietf-httpapi-ratelimit-headers: `RateLimit-Policy` and `RateLimit`.
    Ietf,
}

#[derive(Clone, Debug)]
pub struct ResponseHeaders {
    pub enabled: bool,
    pub format: HeaderFormat,
    pub limit: String,
    pub remaining: String,
    pub reset: String,
}

/// Everything the service is configured with.
#[derive(Clone, Debug)]
pub struct Settings {
    pub grpc_addr: SocketAddr,
    /// GRPC_UDS: serve gRPC on this Unix socket instead of `grpc_addr`.
    pub grpc_uds: Option<PathBuf>,
    pub http_addr: SocketAddr,
    pub debug_addr: SocketAddr,
    /// Serve /metrics on its own address (USE_PROMETHEUS); it is on the debug port too.
    pub prometheus: Option<(SocketAddr, String)>,
    /// Push counters to statsd or DogStatsD (USE_STATSD, USE_DOG_STATSD).
    pub statsd: Option<StatsdSettings>,
    pub grpc_tls: Option<TlsFiles>,
    pub grpc_max_connection_age: Option<Duration>,
    pub drain: Duration,

    pub config_source: ConfigSource,
    /// The directory holding `*.yaml` rule files.
    pub config_dir: PathBuf,
    /// Where symlink swaps are watched from (RUNTIME_WATCH_ROOT).
    pub watch_root: Option<PathBuf>,
    pub ignore_dotfiles: bool,
    pub merge_domain_config: bool,
    pub healthy_with_at_least_one_config: bool,

    pub backend: Backend,
    pub redis: RedisSettings,
    /// REDIS_PERSECOND: a second Redis for the counters of limits whose unit is SECOND.
    pub redis_per_second: Option<RedisSettings>,
    /// REDIS_HEALTH_CHECK_ACTIVE_CONNECTION: unhealthy while Redis does not answer a PING.
    pub redis_health_check: bool,
    pub failure_mode: FailureMode,
    pub local_cache_size_bytes: usize,
    pub near_limit_ratio: f64,
    pub cache_key_prefix: String,
    pub stop_increment_when_over_limit: bool,
    pub expiration_jitter_max_secs: u64,
    pub shadow_mode: bool,
    /// QUOTA_MODE: every descriptor in quota mode (a request is refused only when all are over).
    pub quota_mode: bool,
    pub headers: ResponseHeaders,
    pub dynamic_metadata: bool,
    /// ADMIN_API_ENABLED: serve `gatehouse.ratelimit.v1.RateLimitAdminService` on the gRPC
    /// port and `/admin/*` on the debug port. Off by default: it lists descriptor values and
    /// can lift any limit.
    pub admin_api_enabled: bool,

    /// LOG_LEVEL (default `WARN`, as envoyproxy/ratelimit) for Gatehouse's crates, or
    /// LOG_FILTER in full.
    pub log_level: LogFilter,
    /// LOG_FORMAT (`text` or `json`) and NO_COLOR.
    pub log_format: LogFormat,
    /// The trace pipeline, `None` when off: the standard `OTEL_*` variables, and
    /// envoyproxy/ratelimit's `TRACING_*` ([`tracing_from_env`]).
    pub tracing: Option<TracingSettings>,

    /// envoyproxy/ratelimit variables that are set but not supported, with what happens
    /// instead; logged at start-up so a migration loses nothing silently.
    pub ignored: Vec<String>,
}

/// envoyproxy/ratelimit variables Gatehouse does not support: (name, applies when set to a
/// value other than this default, what happens instead).
const UNSUPPORTED: &[(&str, &str, &str)] = &[
    (
        "GRPC_MAX_CONNECTION_AGE_GRACE",
        "",
        "a connection past GRPC_MAX_CONNECTION_AGE gets a GOAWAY and its calls finish, as with the 24h default",
    ),
    ("PROMETHEUS_MAPPER_YAML", "", "metric names are fixed (docs/ratelimit.md)"),
    ("LOCAL_CACHE_SIZE_IN_BYTES", "0", "the local over-limit cache only applies to the Redis backend"),
];

impl Settings {
    pub fn from_env(env: &Env) -> Result<Settings, ConfigError> {
        let runtime_root = PathBuf::from(env.string("RUNTIME_ROOT", "/srv/runtime_data/current"));
        let config_dir = runtime_root
            .join(env.string("RUNTIME_SUBDIRECTORY", ""))
            .join(env.string("RUNTIME_APPDIRECTORY", "config"));
        let watch_root =
            if env.bool("RUNTIME_WATCH_ROOT", true)? { runtime_root.parent().map(|p| p.to_path_buf()) } else { None };

        let redis_url = env.get("REDIS_URL").map(str::to_string);
        let backend = match env.get("BACKEND_TYPE").map(|b| b.to_ascii_lowercase()) {
            Some(b) if b == "redis" => Backend::Redis,
            Some(b) if b == "memory" => Backend::Memory { max_keys: env.parse("MEMORY_MAX_KEYS", 1_000_000)? },
            Some(b) if b == "memcache" => {
                return Err(env.error("BACKEND_TYPE", "memcache is not supported; use redis or memory"));
            }
            Some(_) => return Err(env.error("BACKEND_TYPE", "expected redis or memory")),
            // No backend named: Redis if it is configured, otherwise run on our own.
            None if redis_url.is_some() => Backend::Redis,
            None => Backend::Memory { max_keys: env.parse("MEMORY_MAX_KEYS", 1_000_000)? },
        };
        if backend == Backend::Redis && redis_url.is_none() {
            return Err(env.error("REDIS_URL", "BACKEND_TYPE=redis needs REDIS_URL (host:port)"));
        }

        let redis = RedisSettings::from_env(env, redis_url.as_deref().unwrap_or_default())?;
        let redis_per_second = match (env.bool("REDIS_PERSECOND", false)?, env.get("REDIS_PERSECOND_URL")) {
            (false, _) => None,
            (true, None) => {
                return Err(env.error("REDIS_PERSECOND_URL", "REDIS_PERSECOND=true needs REDIS_PERSECOND_URL"));
            }
            (true, Some(url)) => Some(RedisSettings::from_env_with_prefix(env, "REDIS_PERSECOND", url)?),
        };

        let failure_mode = match env.string("BACKEND_FAILURE_MODE", "closed").to_ascii_lowercase().as_str() {
            "open" | "allow" => FailureMode::Open,
            "closed" | "deny" => FailureMode::Closed,
            _ => return Err(env.error("BACKEND_FAILURE_MODE", "expected open or closed")),
        };

        let near_limit_ratio = env.parse("NEAR_LIMIT_RATIO", 0.8f64)?;
        if !(0.0..=1.0).contains(&near_limit_ratio) {
            return Err(env.error("NEAR_LIMIT_RATIO", "expected a number between 0 and 1"));
        }

        let grpc_tls = TlsFiles::from_env(env)?;

        // DISABLE_STATS turns off every sink, as envoyproxy/ratelimit; /metrics on the debug port
        // stays, since nothing is spent on it unless it is scraped.
        let statsd = StatsdSettings::from_env(env)?;
        let prometheus = if env.bool("USE_PROMETHEUS", false)? && !env.bool("DISABLE_STATS", false)? {
            let addr_text = env.string("PROMETHEUS_ADDR", ":9090");
            let addr_text = if addr_text.starts_with(':') { format!("0.0.0.0{addr_text}") } else { addr_text };
            let addr =
                addr_text.parse().map_err(|e| env.error("PROMETHEUS_ADDR", format!("expected host:port: {e}")))?;
            Some((addr, env.string("PROMETHEUS_PATH", "/metrics")))
        } else {
            None
        };

        let format = match env.string("LIMIT_RESPONSE_HEADERS_FORMAT", "split").to_ascii_lowercase().as_str() {
            "split" | "legacy" => HeaderFormat::Split,
            "ietf" | "draft" => HeaderFormat::Ietf,
            _ => return Err(env.error("LIMIT_RESPONSE_HEADERS_FORMAT", "expected split or ietf")),
        };

        // Settings that would leave the service without its config or listener are refused.
        let config_source = match env.string("CONFIG_TYPE", "FILE").to_ascii_uppercase().as_str() {
            "FILE" => ConfigSource::File,
            "GRPC_XDS_SOTW" => ConfigSource::Xds(Box::new(crate::xds::XdsSettings::from_env(env)?)),
            other => return Err(env.error("CONFIG_TYPE", format!("{other}: expected FILE or GRPC_XDS_SOTW"))),
        };
        let mut ignored: Vec<String> = UNSUPPORTED
            .iter()
            .filter(|(name, default, _)| env.get(name).is_some_and(|v| !v.eq_ignore_ascii_case(default)))
            .filter(|(name, ..)| *name != "LOCAL_CACHE_SIZE_IN_BYTES" || backend != Backend::Redis)
            .map(|(name, _, instead)| format!("{name} is not supported: {instead}"))
            .collect();
        if grpc_tls.as_ref().is_some_and(|t| t.client_san.is_some() && t.client_ca.is_none()) {
            ignored.push("GRPC_CLIENT_TLS_SAN applies to mTLS: set GRPC_CLIENT_TLS_CACERT too".into());
        }
        if redis_per_second.is_some() && backend != Backend::Redis {
            ignored
                .push("REDIS_PERSECOND applies to BACKEND_TYPE=redis: per-second limits are counted in memory".into());
        }

        Ok(Settings {
            grpc_addr: env.socket_addr("GRPC_HOST", "GRPC_PORT", 8081)?,
            grpc_uds: env.get("GRPC_UDS").map(PathBuf::from),
            http_addr: env.socket_addr("HOST", "PORT", 8080)?,
            debug_addr: env.socket_addr("DEBUG_HOST", "DEBUG_PORT", 6070)?,
            prometheus,
            statsd,
            grpc_tls,
            grpc_max_connection_age: Some(env.duration("GRPC_MAX_CONNECTION_AGE", Duration::from_secs(24 * 3600))?)
                .filter(|d| !d.is_zero()),
            drain: env.duration("SHUTDOWN_DRAIN", Duration::from_secs(0))?,
            config_source,
            config_dir,
            watch_root,
            ignore_dotfiles: env.bool("RUNTIME_IGNOREDOTFILES", false)?,
            merge_domain_config: env.bool("MERGE_DOMAIN_CONFIG", false)?,
            healthy_with_at_least_one_config: env.bool("HEALTHY_WITH_AT_LEAST_ONE_CONFIG_LOADED", false)?,
            backend,
            redis,
            redis_per_second,
            redis_health_check: env.bool("REDIS_HEALTH_CHECK_ACTIVE_CONNECTION", false)?,
            failure_mode,
            local_cache_size_bytes: env.parse("LOCAL_CACHE_SIZE_IN_BYTES", 0usize)?,
            near_limit_ratio,
            cache_key_prefix: env.string("CACHE_KEY_PREFIX", ""),
            stop_increment_when_over_limit: env.bool("STOP_CACHE_KEY_INCREMENT_WHEN_OVERLIMIT", false)?,
            expiration_jitter_max_secs: env.parse("EXPIRATION_JITTER_MAX_SECONDS", 300u64)?,
            shadow_mode: env.bool("SHADOW_MODE", false)?,
            quota_mode: env.bool("QUOTA_MODE", false)?,
            headers: ResponseHeaders {
                enabled: env.bool("LIMIT_RESPONSE_HEADERS_ENABLED", false)?,
                format,
                limit: env.string("LIMIT_LIMIT_HEADER", "RateLimit-Limit"),
                remaining: env.string("LIMIT_REMAINING_HEADER", "RateLimit-Remaining"),
                reset: env.string("LIMIT_RESET_HEADER", "RateLimit-Reset"),
            },
            dynamic_metadata: env.bool("RESPONSE_DYNAMIC_METADATA", false)?,
            admin_api_enabled: env.bool("ADMIN_API_ENABLED", false)?,
            log_level: LogFilter::from_env(env, "WARN")?,
            log_format: LogFormat::from_env(env)?,
            tracing: tracing_from_env(env)?,
            ignored,
        })
    }

    /// Logs and traces, for `server::run_until_signalled`.
    pub fn telemetry(&self) -> TelemetrySettings {
        TelemetrySettings {
            log_filter: self.log_level.clone(),
            log_format: self.log_format,
            tracing: self.tracing.clone(),
        }
    }
}

/// Tracing as envoyproxy/ratelimit configures it, on top of the standard variables (which win
/// where both are set): `TRACING_ENABLED` turns it on (the collector is then
/// `OTEL_EXPORTER_OTLP_ENDPOINT`, or the OTLP default), `TRACING_EXPORTER_PROTOCOL` is `http`
/// (the default with `TRACING_ENABLED`, as upstream) or `grpc`, `TRACING_SERVICE_NAME` (default `RateLimit`),
/// `TRACING_SERVICE_NAMESPACE` and `TRACING_SERVICE_INSTANCE_ID` name the resource, and
/// `TRACING_SAMPLING_RATE` samples that fraction of the traces that start here while following
/// Envoy's decision for the others.
fn tracing_from_env(env: &Env) -> Result<Option<TracingSettings>, ConfigError> {
    let enabled = env.get("TRACING_ENABLED").map(|_| env.bool("TRACING_ENABLED", false)).transpose()?;
    // Upstream's default is http; tracing turned on by the standard variables alone keeps
    // the standard default, grpc.
    let protocol = match env.get("TRACING_EXPORTER_PROTOCOL").map(|p| p.trim().to_ascii_lowercase()).as_deref() {
        None if enabled == Some(true) => Some(Protocol::HttpProtobuf),
        None => None,
        Some("http") => Some(Protocol::HttpProtobuf),
        Some("grpc") => Some(Protocol::Grpc),
        Some(_) => return Err(env.error("TRACING_EXPORTER_PROTOCOL", "expected http or grpc")),
    };
    let sampler = match env.get("TRACING_SAMPLING_RATE") {
        None => None,
        Some(_) => {
            let rate = env.parse::<f64>("TRACING_SAMPLING_RATE", 1.0)?;
            if !(0.0..=1.0).contains(&rate) {
                return Err(env.error("TRACING_SAMPLING_RATE", "expected a rate between 0 and 1"));
            }
            Some(Sampler::ParentBased(Box::new(Sampler::TraceIdRatio(rate))))
        }
    };
    let mut resource = Vec::new();
    for (var, key) in
        [("TRACING_SERVICE_NAMESPACE", "service.namespace"), ("TRACING_SERVICE_INSTANCE_ID", "service.instance.id")]
    {
        if let Some(value) = env.get(var) {
            resource.push((key.to_string(), value.trim().to_string()));
        }
    }
    let defaults = ServiceDefaults {
        service_name: env.string("TRACING_SERVICE_NAME", "RateLimit").trim().to_string(),
        enabled,
        protocol,
        sampler,
        resource,
    };
    TracingSettings::from_env(env, defaults)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_run_on_their_own() {
        let s = Settings::from_env(&Env::default()).unwrap();
        assert_eq!(s.grpc_addr, "0.0.0.0:8081".parse().unwrap());
        assert_eq!(s.http_addr.port(), 8080);
        assert_eq!(s.debug_addr.port(), 6070);
        assert!(matches!(s.backend, Backend::Memory { .. }));
        assert_eq!(s.config_dir, PathBuf::from("/srv/runtime_data/current/config"));
        assert_eq!(s.headers.limit, "RateLimit-Limit");
    }

    #[test]
    fn envoyproxy_ratelimit_redis_settings() {
        let env = Env::from_pairs([
            ("BACKEND_TYPE", "redis"),
            ("REDIS_SOCKET_TYPE", "tcp"),
            ("REDIS_URL", "redis.default:6379"),
            ("REDIS_AUTH", "user:pass"),
            ("REDIS_POOL_SIZE", "4"),
            ("REDIS_TIMEOUT", "250ms"),
            ("RUNTIME_ROOT", "/data"),
            ("RUNTIME_SUBDIRECTORY", "ratelimit"),
        ]);
        let s = Settings::from_env(&env).unwrap();
        assert_eq!(s.backend, Backend::Redis);
        assert_eq!(s.redis.urls, vec!["redis.default:6379"]);
        assert!(s.redis_per_second.is_none());
        assert_eq!(s.redis.timeout, Duration::from_millis(250));
        assert_eq!(s.config_dir, PathBuf::from("/data/ratelimit/config"));
        assert_eq!(s.watch_root, Some(PathBuf::from("/")));
    }

    #[test]
    fn a_second_redis_for_per_second_limits() {
        let redis = [("REDIS_URL", "redis:6379"), ("REDIS_PERSECOND", "true")];
        let env = Env::from_pairs(redis.into_iter().chain([
            ("REDIS_PERSECOND_URL", "redis-fast:6379"),
            ("REDIS_PERSECOND_AUTH", "s3cret"),
            ("REDIS_PERSECOND_POOL_SIZE", "2"),
        ]));
        let s = Settings::from_env(&env).unwrap();
        let per_second = s.redis_per_second.unwrap();
        assert_eq!(
            (per_second.urls, per_second.auth, per_second.pool_size),
            (vec!["redis-fast:6379".into()], Some("s3cret".into()), 2)
        );
        assert_eq!(s.redis.pool_size, 10);

        let err = Settings::from_env(&Env::from_pairs(redis)).unwrap_err();
        assert!(err.to_string().contains("REDIS_PERSECOND=true needs REDIS_PERSECOND_URL"), "{err}");
        let s = Settings::from_env(&Env::from_pairs([("REDIS_PERSECOND", "true"), ("REDIS_PERSECOND_URL", "r:1")]))
            .unwrap();
        assert!(s.ignored[0].starts_with("REDIS_PERSECOND applies to BACKEND_TYPE=redis"), "{:?}", s.ignored);
    }

    #[test]
    fn envoyproxy_ratelimit_log_settings() {
        let s = Settings::from_env(&Env::default()).unwrap();
        assert_eq!((s.log_level.directive(), s.log_format), ("warn", LogFormat::Text { color: true }));
        let s = Settings::from_env(&Env::from_pairs([("LOG_LEVEL", "debug"), ("LOG_FORMAT", "json")])).unwrap();
        assert!(s.log_level.directive().contains("gatehouse_ratelimit=debug"), "{:?}", s.log_level);
        assert!(s.log_level.directive().starts_with("info,"), "{:?}", s.log_level);
        assert_eq!(s.log_format, LogFormat::Json);
        let s = Settings::from_env(&Env::from_pairs([("LOG_LEVEL", "warning"), ("NO_COLOR", "1")])).unwrap();
        assert_eq!((s.log_level.directive(), s.log_format), ("warn", LogFormat::Text { color: false }));
        let s =
            Settings::from_env(&Env::from_pairs([("LOG_LEVEL", "debug"), ("LOG_FILTER", "debug,h2=trace")])).unwrap();
        assert_eq!(s.log_level.directive(), "debug,h2=trace");
    }

    #[test]
    fn unsupported_variables_are_reported_or_refused() {
        let env = Env::from_pairs([
            ("GRPC_MAX_CONNECTION_AGE_GRACE", "1h"),
            ("PROMETHEUS_MAPPER_YAML", "/etc/mapper.yaml"),
            ("REDIS_HEALTH_CHECK_ACTIVE_CONNECTION", "true"),
        ]);
        let s = Settings::from_env(&env).unwrap();
        assert_eq!(s.ignored.len(), 2, "{:?}", s.ignored);
        assert!(s.ignored[0].starts_with("GRPC_MAX_CONNECTION_AGE_GRACE is not supported: a connection past"));
        assert!(s.redis_health_check);
        let err = Settings::from_env(&Env::from_pairs([("CONFIG_TYPE", "GRPC_XDS_DELTA")])).unwrap_err();
        assert!(err.to_string().contains("CONFIG_TYPE"), "{err}");
    }

    #[test]
    fn admin_api_is_off_unless_enabled() {
        assert!(!Settings::from_env(&Env::default()).unwrap().admin_api_enabled);
        let s = Settings::from_env(&Env::from_pairs([("ADMIN_API_ENABLED", "true")])).unwrap();
        assert!(s.admin_api_enabled);
        let err = Settings::from_env(&Env::from_pairs([("ADMIN_API_ENABLED", "sometimes")])).unwrap_err();
        assert!(err.to_string().contains("ADMIN_API_ENABLED"), "{err}");
    }

    #[test]
    fn grpc_listener_settings() {
        let s = Settings::from_env(&Env::from_pairs([("GRPC_UDS", "/run/rl/grpc.sock")])).unwrap();
        assert_eq!(s.grpc_uds, Some(PathBuf::from("/run/rl/grpc.sock")));
        let tls = [
            ("GRPC_SERVER_USE_TLS", "true"),
            ("GRPC_SERVER_TLS_CERT", "/certs/tls.crt"),
            ("GRPC_SERVER_TLS_KEY", "/certs/tls.key"),
        ];
        let with = |extra: &[(&'static str, &'static str)]| Env::from_pairs(tls.iter().chain(extra).copied());
        let s = Settings::from_env(&with(&[
            ("GRPC_CLIENT_TLS_CACERT", "/certs/ca.crt"),
            ("GRPC_CLIENT_TLS_SAN", "envoy.gateway"),
        ]))
        .unwrap();
        assert_eq!(s.grpc_tls.unwrap().client_san.as_deref(), Some("envoy.gateway"));
        assert!(s.ignored.is_empty(), "{:?}", s.ignored);
        // As in envoyproxy/ratelimit, the SAN is checked only with mTLS.
        let s = Settings::from_env(&with(&[("GRPC_CLIENT_TLS_SAN", "10.0.0.7")])).unwrap();
        assert_eq!(s.ignored, ["GRPC_CLIENT_TLS_SAN applies to mTLS: set GRPC_CLIENT_TLS_CACERT too"]);
        let err = Settings::from_env(&with(&[("GRPC_CLIENT_TLS_SAN", "spiffe://cluster.local/ns/x")])).unwrap_err();
        assert!(
            err.to_string().contains("GRPC_CLIENT_TLS_SAN")
                && err.to_string().contains("not a DNS name or an IP address"),
            "{err}"
        );
    }

    #[test]
    fn bad_values_name_the_variable() {
        for (name, value, expected) in [
            ("BACKEND_TYPE", "memcache", "memcache is not supported"),
            ("REDIS_TYPE", "ring", "unknown Redis type"),
            ("NEAR_LIMIT_RATIO", "2", "between 0 and 1"),
            ("REDIS_TIMEOUT", "10", "missing unit"),
            ("GRPC_PORT", "http", "invalid digit"),
            ("LOG_LEVEL", "verbose", "expected trace, debug, info, warn or error"),
            ("LOG_FORMAT", "logfmt", "expected text or json"),
        ] {
            let err = Settings::from_env(&Env::from_pairs([(name, value), ("REDIS_URL", "x:1")])).unwrap_err();
            let text = err.to_string();
            assert!(text.contains(name) && text.contains(expected), "{name}: {text}");
        }
        let err = Settings::from_env(&Env::from_pairs([("BACKEND_TYPE", "redis")])).unwrap_err();
        assert!(err.to_string().contains("REDIS_URL"));
    }

    #[test]
    fn tracing_as_envoyproxy_ratelimit_configures_it() {
        let tracing = |pairs: &[(&str, &str)]| {
            Settings::from_env(&Env::from_pairs(pairs.iter().copied())).map(|s| s.tracing).map_err(|e| e.to_string())
        };
        assert_eq!(tracing(&[]), Ok(None));
        assert_eq!(
            tracing(&[("TRACING_ENABLED", "false"), ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318")]),
            Ok(None)
        );
        // Upstream's defaults: OTLP over HTTP to the default collector, service RateLimit.
        let t = tracing(&[("TRACING_ENABLED", "true")]).unwrap().unwrap();
        assert_eq!((t.protocol, t.endpoint.as_str()), (Protocol::HttpProtobuf, "http://localhost:4318/v1/traces"));
        assert_eq!(t.service_name, "RateLimit");
        assert_eq!(t.sampler, Sampler::ParentBased(Box::new(Sampler::AlwaysOn)));
        let t = tracing(&[
            ("TRACING_ENABLED", "true"),
            ("TRACING_EXPORTER_PROTOCOL", "grpc"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "otel:4317"),
            ("TRACING_SERVICE_NAME", "rl"),
            ("TRACING_SERVICE_NAMESPACE", "edge"),
            ("TRACING_SERVICE_INSTANCE_ID", "pod-1"),
            ("TRACING_SAMPLING_RATE", "0.5"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(
            (t.protocol, t.endpoint.as_str(), t.service_name.as_str()),
            (Protocol::Grpc, "http://otel:4317", "rl")
        );
        assert_eq!(t.sampler, Sampler::ParentBased(Box::new(Sampler::TraceIdRatio(0.5))));
        let resource =
            [("service.namespace".to_string(), "edge".to_string()), ("service.instance.id".into(), "pod-1".into())];
        assert_eq!(t.resource, resource);
        // The standard variables win, and an endpoint alone turns tracing on (gRPC by default).
        let t = tracing(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://otel:4317"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_SERVICE_NAME", "std"),
            ("OTEL_TRACES_SAMPLER", "always_off"),
            ("TRACING_SERVICE_NAME", "rl"),
            ("TRACING_SAMPLING_RATE", "0.5"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!((t.protocol, t.service_name.as_str(), t.sampler), (Protocol::Grpc, "std", Sampler::AlwaysOff));
        let t = tracing(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://otel:4317")]).unwrap().unwrap();
        assert_eq!((t.protocol, t.endpoint.as_str()), (Protocol::Grpc, "http://otel:4317"));
        #[track_caller]
        fn refused(pairs: &[(&str, &str)], variable: &str) {
            let err = Settings::from_env(&Env::from_pairs(pairs.iter().copied())).unwrap_err().to_string();
            assert!(err.starts_with(&format!("environment variable {variable}=")), "{err}");
        }
        refused(&[("TRACING_ENABLED", "yes")], "TRACING_ENABLED");
        refused(&[("TRACING_ENABLED", "true"), ("TRACING_EXPORTER_PROTOCOL", "thrift")], "TRACING_EXPORTER_PROTOCOL");
        refused(&[("TRACING_ENABLED", "true"), ("TRACING_SAMPLING_RATE", "2")], "TRACING_SAMPLING_RATE");
        refused(&[("TRACING_ENABLED", "true"), ("OTEL_TRACES_SAMPLER", "sometimes")], "OTEL_TRACES_SAMPLER");
    }
}
