//! gatehouse-ratelimit: Envoy's rate-limit service (`envoy.service.ratelimit.v3`), a drop-in
//! replacement for envoyproxy/ratelimit with exact counting on Redis and an in-memory store.
//!
//! Layers, top to bottom: [`grpc`]/[`http`] (transport) → [`service`] (ShouldRateLimit
//! semantics) → [`rules`] (the rule tree) and [`storage`] (atomic counters). [`admin`] reads
//! the same rules and counters for operators (ADMIN_API_ENABLED).

pub mod admin;
pub mod clock;
pub mod grpc;
pub mod health;
pub mod http;
pub mod rules;
pub mod service;
pub mod settings;
pub mod stats;
pub mod statsd;
pub mod storage;
pub mod xds;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use gatehouse_common::config::ConfigErrors;
use gatehouse_common::metrics::Metrics;
use gatehouse_common::redis::{RedisConn, RedisSetupError};
use gatehouse_common::reload::{Reloader, WatchSpec};
use gatehouse_common::server::{self, GrpcListener, GrpcOptions, ServeError, Shutdown};
use tokio::net::TcpListener;

use crate::clock::Clock;
use crate::rules::RuleSet;
use crate::service::{Options, RateLimiter};
use crate::settings::{Backend, ConfigSource, Settings};
use crate::stats::Stats;
use crate::storage::local_cache::OverLimitCache;
use crate::storage::memory::MemoryStore;
use crate::storage::per_second::PerSecondSplit;
use crate::storage::redis::RedisStore;
use crate::storage::{CounterStore, Mode};
use crate::xds::XdsClient;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("invalid rate limit config:\n{0}")]
    Config(#[from] ConfigErrors),
    #[error(transparent)]
    Redis(#[from] RedisSetupError),
    #[error(transparent)]
    Serve(#[from] ServeError),
}

/// Loads every rule file in `dir`.
pub fn load_rules(
    dir: &Path,
    ignore_dotfiles: bool,
    merge_domains: bool,
    stats: &Stats,
) -> Result<RuleSet, ConfigErrors> {
    let files = rules::config_files(dir, ignore_dotfiles)?;
    RuleSet::load(&files, merge_domains, stats)
}

/// LOCAL_CACHE_SIZE_IN_BYTES: the over-limit cache in front of `store`, unless 0.
fn with_local_cache(store: impl CounterStore, size_bytes: usize, stats: &Stats) -> Arc<dyn CounterStore> {
    match size_bytes {
        0 => Arc::new(store),
        bytes => Arc::new(OverLimitCache::new(store, bytes).counted(stats.cache.clone())),
    }
}

/// The listeners a service instance serves on. Tests bind `127.0.0.1:0` and pass them in.
#[derive(Debug)]
pub struct Listeners {
    /// A TCP port, or GRPC_UDS's Unix socket.
    pub grpc: GrpcListener,
    pub http: Option<TcpListener>,
    pub debug: Option<TcpListener>,
    pub prometheus: Option<TcpListener>,
}

impl Listeners {
    /// Binds the addresses `settings` names.
    pub async fn bind(settings: &Settings) -> std::io::Result<Listeners> {
        let prometheus = match &settings.prometheus {
            Some((addr, _)) if *addr != settings.debug_addr => Some(TcpListener::bind(addr).await?),
            _ => None,
        };
        Ok(Listeners {
            grpc: match &settings.grpc_uds {
                Some(path) => GrpcListener::bind_unix(path)?,
                None => TcpListener::bind(settings.grpc_addr).await?.into(),
            },
            http: Some(TcpListener::bind(settings.http_addr).await?),
            debug: Some(TcpListener::bind(settings.debug_addr).await?),
            prometheus,
        })
    }
}

/// A built service: rules loaded, store connected (lazily), metrics registered.
pub struct App {
    pub limiter: Arc<RateLimiter>,
    pub metrics: Metrics,
    settings: Settings,
    memory: Option<Arc<MemoryStore>>,
    /// The Redis handles health follows (REDIS_HEALTH_CHECK_ACTIVE_CONNECTION); else empty.
    redis: Vec<RedisConn>,
}

impl App {
    pub async fn build(settings: Settings, clock: Clock) -> Result<App, StartError> {
        let metrics = Metrics::for_service("ratelimit");
        let stats = Stats::new(&metrics);
        let initial = match &settings.config_source {
            ConfigSource::File => {
                load_rules(&settings.config_dir, settings.ignore_dotfiles, settings.merge_domain_config, &stats)?
            }
            // Rules arrive from the control plane once serving starts.
            ConfigSource::Xds(_) => RuleSet::default(),
        };
        let rules = Reloader::with_legacy_names(initial, &metrics, "config", "ratelimit_service_config_load");
        let mut memory = None;
        // The Redis handles, for REDIS_HEALTH_CHECK_ACTIVE_CONNECTION.
        let mut redis = Vec::new();
        let store: Arc<dyn CounterStore> = match &settings.backend {
            Backend::Memory { max_keys } => {
                let store = MemoryStore::new(*max_keys, clock.clone());
                memory = Some(store.clone());
                store
            }
            Backend::Redis => {
                let jitter = settings.expiration_jitter_max_secs;
                let conn = RedisConn::connect(&settings.redis).await?.instrumented(&stats.redis);
                redis.push(conn.clone());
                let store = RedisStore::new(conn, settings.redis.timeout, jitter);
                match &settings.redis_per_second {
                    None => with_local_cache(store, settings.local_cache_size_bytes, &stats),
                    Some(per_second) => {
                        let conn = RedisConn::connect(per_second).await?.instrumented(&stats.redis);
                        redis.push(conn.clone());
                        let per_second = RedisStore::new(conn, per_second.timeout, jitter);
                        with_local_cache(
                            PerSecondSplit::new(per_second, store),
                            settings.local_cache_size_bytes,
                            &stats,
                        )
                    }
                }
            }
        };
        let options = Options {
            cache_key_prefix: settings.cache_key_prefix.clone(),
            near_limit_ratio: settings.near_limit_ratio,
            mode: if settings.stop_increment_when_over_limit { Mode::AllOrNothing } else { Mode::Independent },
            shadow_mode: settings.shadow_mode,
            quota_mode: settings.quota_mode,
            headers: settings.headers.clone(),
            dynamic_metadata: settings.dynamic_metadata,
            failure_mode: settings.failure_mode,
        };
        let limiter = Arc::new(RateLimiter::new(rules, store, clock, stats, options));
        let redis = if settings.redis_health_check { redis } else { Vec::new() };
        Ok(App { limiter, metrics, settings, memory, redis })
    }

    /// Serves until `shutdown` fires, then drains and returns.
    pub async fn serve(self, listeners: Listeners, shutdown: Shutdown) -> Result<(), StartError> {
        let App { limiter, metrics, settings, memory, redis } = self;
        if let Some(memory) = &memory {
            memory.spawn_sweeper(Duration::from_secs(1));
        }

        // The rules: the files, hot-reloaded, or the control plane's.
        let stats = limiter.stats().clone();
        let merge = settings.merge_domain_config;
        let mut xds_status = None;
        let config_task = match &settings.config_source {
            ConfigSource::File => {
                let dir = settings.config_dir.clone();
                let ignore_dotfiles = settings.ignore_dotfiles;
                let mut spec = WatchSpec::new(vec![settings.config_dir.clone()]);
                spec.watch_root = settings.watch_root.clone();
                limiter.rules().watch(spec, move || load_rules(&dir, ignore_dotfiles, merge, &stats), {
                    let shutdown = shutdown.clone();
                    async move { shutdown.wait().await }
                })
            }
            ConfigSource::Xds(xds) => {
                let client = XdsClient::new((**xds).clone(), limiter.rules().clone(), merge, stats);
                xds_status = Some(client.status());
                let first_config = client.first_config();
                let task = tokio::spawn(client.run(shutdown.clone()));
                if !xds.force_start {
                    // As envoyproxy/ratelimit: nothing is served before the first config
                    // (FORCE_START_WITHOUT_INITIAL_CONFIG=true serves at once, with no rules).
                    tracing::info!(server = %xds.server_url, "waiting for the first rate limit config over xDS");
                    tokio::select! {
                        _ = first_config => {}
                        _ = shutdown.wait() => {
                            task.abort();
                            return Ok(());
                        }
                    }
                }
                task
            }
        };

        let mut health =
            health::Health::new(shutdown.clone(), limiter.rules().clone(), settings.healthy_with_at_least_one_config);
        if !redis.is_empty() {
            health = health.follow_redis(redis);
        }
        let (reporter, health_service) = tonic_health::server::health_reporter();
        health.spawn_grpc_sync(reporter.clone());

        let mut routes = tonic::service::Routes::new(health_service);
        routes = routes.add_service(grpc::GrpcService::new(limiter.clone()));
        if settings.admin_api_enabled {
            // On the same listener, so GRPC_SERVER_USE_TLS and GRPC_CLIENT_TLS_CACERT apply.
            if settings.grpc_tls.as_ref().is_none_or(|tls| tls.client_ca.is_none()) {
                tracing::warn!(
                    "ADMIN_API_ENABLED without client certificates (GRPC_CLIENT_TLS_CACERT): whoever reaches the gRPC port can reset counters"
                );
            }
            routes = routes.add_service(admin::AdminService::new(limiter.clone()));
        }
        let options = GrpcOptions {
            tls: settings.grpc_tls.clone(),
            drain: settings.drain,
            max_connection_age: settings.grpc_max_connection_age,
            metrics: metrics.clone(),
        };
        let mut tasks = tokio::task::JoinSet::new();
        tasks.spawn(server::serve_grpc(listeners.grpc, routes, reporter, options, shutdown.clone()));
        if let Some(l) = listeners.http {
            let router = http::api_router(limiter.clone(), health.clone());
            tasks.spawn(server::serve_http(l, router, settings.drain, shutdown.clone()));
        }
        if let Some(l) = listeners.debug {
            let mut router = http::debug_router(limiter.clone(), health.clone(), &metrics, xds_status.clone());
            if settings.admin_api_enabled {
                router = router.merge(admin::http_router(limiter.clone()));
            }
            tasks.spawn(server::serve_http(l, router, settings.drain, shutdown.clone()));
        }
        if let (Some(l), Some((_, path))) = (listeners.prometheus, &settings.prometheus) {
            tasks.spawn(server::serve_http(l, metrics.router(path), settings.drain, shutdown.clone()));
        }
        if let Some(statsd) = settings.statsd.clone() {
            let exporter = statsd::Exporter::new(statsd, metrics.clone());
            let (shutdown, drain) = (shutdown.clone(), settings.drain);
            tasks.spawn(async move {
                exporter.run(shutdown, drain).await;
                Ok(())
            });
        }
        let mut result = Ok(());
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "server failed; shutting down");
                    shutdown.trigger();
                    result = Err(e.into());
                }
                Err(e) => {
                    tracing::error!(error = %e, "server task panicked; shutting down");
                    shutdown.trigger();
                }
                Ok(Ok(())) => {}
            }
        }
        config_task.abort();
        if let Some(path) = &settings.grpc_uds {
            // As Go's listeners do, so the next start finds the path free.
            let _ = std::fs::remove_file(path);
        }
        result
    }
}
