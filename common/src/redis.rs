//! Redis connectivity shared by the services: single node, Sentinel and Cluster, with TLS,
//! auth, timeouts and automatic reconnection.
//!
//! [`RedisConn`] is a cheap clone that implements [`redis::aio::ConnectionLike`], so callers
//! use the ordinary `redis` command, pipeline and script APIs without caring about topology.
//! Each connection is multiplexed: concurrent callers' commands share one socket and are
//! written in batches, which is what makes a per-request round trip affordable.
//!
//! Connections are made lazily: a service starts while Redis is down and serves according to
//! its failure mode until Redis comes back.

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::config::{ConfigError, Env};
use crate::metrics::{CallStats, Metrics};
use arc_swap::ArcSwap;
use prometheus_client::encoding::EncodeLabelSet;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use redis::{Cmd, ConnectionAddr, ConnectionInfo, IntoConnectionInfo, Pipeline, RedisFuture, Value};
use tracing::Instrument as _;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Topology {
    Single,
    Sentinel,
    Cluster,
}

impl FromStr for Topology {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "single" | "" => Ok(Topology::Single),
            "sentinel" => Ok(Topology::Sentinel),
            "cluster" => Ok(Topology::Cluster),
            other => Err(format!("unknown Redis type {other:?}, expected SINGLE, SENTINEL or CLUSTER")),
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct RedisTls {
    /// PEM bundle to trust instead of the built-in web PKI roots.
    pub ca_cert: Option<PathBuf>,
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    pub skip_hostname_verification: bool,
}

/// How to reach Redis, in the shape operators write it.
#[derive(Clone, Debug)]
pub struct RedisSettings {
    pub topology: Topology,
    /// `host:port` or `redis://` / `rediss://` URLs. Sentinel: the master name first, then the
    /// sentinels (`mymaster,host1:26379,host2:26379`).
    pub urls: Vec<String>,
    /// `password` or `user:password`.
    pub auth: Option<String>,
    /// The sentinels' own password (`password` or `user:password`); `auth` is the master's.
    pub sentinel_auth: Option<String>,
    pub tls: Option<RedisTls>,
    /// Multiplexed connections per node; each one has its own writer task.
    pub pool_size: usize,
    /// Bounds connecting and every response.
    pub timeout: Duration,
}

impl RedisSettings {
    /// The REDIS_* variables of envoyproxy/ratelimit, shared by every Gatehouse service:
    /// REDIS_TYPE, REDIS_SOCKET_TYPE, REDIS_AUTH, REDIS_SENTINEL_AUTH, REDIS_TLS*,
    /// REDIS_POOL_SIZE and REDIS_TIMEOUT.
    /// `url` is REDIS_URL's value: comma-separated `host:port`s or `redis://` URLs.
    pub fn from_env(env: &Env, url: &str) -> Result<RedisSettings, ConfigError> {
        RedisSettings::from_env_with_prefix(env, "REDIS", url)
    }

    /// The same variables under another prefix, as envoyproxy/ratelimit reads its second Redis
    /// (`REDIS_PERSECOND`: REDIS_PERSECOND_TYPE, REDIS_PERSECOND_AUTH, REDIS_PERSECOND_TLS, …).
    /// The TLS files are REDIS_TLS_CACERT, REDIS_TLS_CLIENT_CERT and REDIS_TLS_CLIENT_KEY
    /// whatever the prefix, as there.
    pub fn from_env_with_prefix(env: &Env, prefix: &str, url: &str) -> Result<RedisSettings, ConfigError> {
        let var = |name: &str| format!("{prefix}_{name}");
        let topology: Topology = env.parse(&var("TYPE"), Topology::Single)?;
        let unix_socket = env.string(&var("SOCKET_TYPE"), "tcp").eq_ignore_ascii_case("unix")
            && topology == Topology::Single
            && url.starts_with('/');
        let urls = if unix_socket {
            vec![format!("unix:{url}")]
        } else {
            url.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect()
        };
        let tls = if env.bool(&var("TLS"), false)? {
            Some(RedisTls {
                ca_cert: env.get("REDIS_TLS_CACERT").map(PathBuf::from),
                client_cert: env.get("REDIS_TLS_CLIENT_CERT").map(PathBuf::from),
                client_key: env.get("REDIS_TLS_CLIENT_KEY").map(PathBuf::from),
                skip_hostname_verification: env.bool("REDIS_TLS_SKIP_HOSTNAME_VERIFICATION", false)?,
            })
        } else {
            None
        };
        Ok(RedisSettings {
            topology,
            urls,
            auth: env.get(&var("AUTH")).map(str::to_string),
            sentinel_auth: env.get(&var("SENTINEL_AUTH")).map(str::to_string),
            tls,
            pool_size: env.parse(&var("POOL_SIZE"), 10usize)?.clamp(1, 256),
            timeout: env.duration(&var("TIMEOUT"), Duration::from_secs(10))?,
        })
    }

    pub fn single(url: impl Into<String>) -> Self {
        RedisSettings {
            topology: Topology::Single,
            urls: vec![url.into()],
            auth: None,
            sentinel_auth: None,
            tls: None,
            pool_size: 1,
            timeout: Duration::from_secs(1),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RedisSetupError {
    #[error("invalid Redis address {url:?}: {reason}")]
    Address { url: String, reason: String },
    #[error("reading Redis TLS file {path}: {source}")]
    TlsFile { path: PathBuf, source: std::io::Error },
    #[error("Redis client: {0}")]
    Client(#[from] redis::RedisError),
}

/// The label of the Redis metrics: what the round trip was for, e.g. `update`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabels {
    pub op: &'static str,
}

/// One round trip in flight; records itself when finished or abandoned.
struct Pending {
    stats: CallStats<OpLabels>,
    op: &'static str,
    started: Instant,
    ok: Option<bool>,
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.stats.record(&OpLabels { op: self.op }, self.started, self.ok.unwrap_or(false));
    }
}

/// Registers the Redis metrics of a service, for [`RedisConn::instrumented`], with zero
/// series for each of `ops`.
pub fn redis_stats(metrics: &Metrics, ops: &[&'static str]) -> CallStats<OpLabels> {
    CallStats::register(metrics, "redis", "Redis round trips", ops.iter().map(|&op| OpLabels { op }))
}

/// A handle to Redis in any topology. Clones share the same connections.
///
/// Once [`RedisConn::instrumented`], every round trip (a command, or a whole pipeline or
/// script call) is timed into `gatehouse_<service>_redis_request_duration_seconds{op}` and
/// counted in `..._redis_errors_total{op}` when it fails, where `op` is what the caller named
/// with [`RedisConn::op`]; inside a traced request it is also a `redis <op>` span.
#[derive(Clone)]
pub struct RedisConn {
    inner: Arc<Inner>,
    /// Which pooled connection this clone uses; clones spread across the pool.
    slot: usize,
    stats: Option<CallStats<OpLabels>>,
    op: &'static str,
}

impl std::fmt::Debug for RedisConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisConn").field("slot", &self.slot).finish_non_exhaustive()
    }
}

enum Inner {
    Single { pool: Vec<ConnectionManager>, next: AtomicUsize },
    Cluster(ClusterConnection),
    Sentinel(SentinelPool),
}

impl RedisConn {
    /// Builds clients for `settings`. Does not wait for Redis to be reachable.
    pub async fn connect(settings: &RedisSettings) -> Result<Self, RedisSetupError> {
        let pool_size = settings.pool_size.max(1);
        let inner = match settings.topology {
            Topology::Single => {
                let url = settings.urls.first().ok_or_else(|| RedisSetupError::Address {
                    url: String::new(),
                    reason: "no address given".into(),
                })?;
                let info = connection_info(url, settings)?;
                let client = client_for(info, settings)?;
                let pool = (0..pool_size)
                    .map(|_| ConnectionManager::new_lazy_with_config(client.clone(), manager_config(settings)))
                    .collect::<Result<Vec<_>, _>>()?;
                Inner::Single { pool, next: AtomicUsize::new(0) }
            }
            Topology::Cluster => {
                let nodes =
                    settings.urls.iter().map(|u| connection_info(u, settings)).collect::<Result<Vec<_>, _>>()?;
                let mut builder = ClusterClientBuilder::new(nodes)
                    .connection_timeout(settings.timeout)
                    .response_timeout(settings.timeout)
                    .retries(1);
                if let Some(tls) = &settings.tls {
                    builder = builder.certs(tls_certificates(tls)?);
                    if tls.skip_hostname_verification {
                        builder = builder.danger_accept_invalid_hostnames(true);
                    }
                }
                let client = builder.build()?;
                let config = redis::cluster::ClusterConfig::new()
                    .set_connection_timeout(settings.timeout)
                    .set_response_timeout(settings.timeout);
                Inner::Cluster(client.get_pending_async_connection_with_config(config))
            }
            Topology::Sentinel => Inner::Sentinel(SentinelPool::new(settings)?),
        };
        Ok(RedisConn { inner: Arc::new(inner), slot: 0, stats: None, op: "other" })
    }

    /// Times and counts every round trip in `stats` (see [`RedisConn`]); handles to several
    /// Redis deployments share one [`redis_stats`].
    pub fn instrumented(mut self, stats: &CallStats<OpLabels>) -> Self {
        self.stats = Some(stats.clone());
        self
    }

    /// A clone whose round trips are labelled `op` in the metrics and spans.
    pub fn op(&self, op: &'static str) -> Self {
        RedisConn { op, ..self.clone() }
    }

    pub fn topology(&self) -> Topology {
        match &*self.inner {
            Inner::Single { .. } => Topology::Single,
            Inner::Cluster(_) => Topology::Cluster,
            Inner::Sentinel(_) => Topology::Sentinel,
        }
    }

    /// A clone bound to the next pooled connection, for callers that want to spread load.
    pub fn next(&self) -> Self {
        let slot = match &*self.inner {
            Inner::Single { next, .. } => next.fetch_add(1, Ordering::Relaxed),
            _ => 0,
        };
        RedisConn { slot, ..self.clone() }
    }

    /// `PING`, for readiness checks.
    pub async fn ping(&self) -> redis::RedisResult<()> {
        let mut conn = self.op("ping");
        redis::cmd("PING").query_async::<String>(&mut conn).await.map(drop)
    }
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        let call = self.send_command(cmd);
        self.observed(call)
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        let call = self.send_pipeline(pipeline, offset, count);
        self.observed(call)
    }

    fn get_db(&self) -> i64 {
        0
    }
}

impl RedisConn {
    /// `call`, timed and counted if instrumented, and inside a traced request a span. No span
    /// without a parent: a round trip made for many requests at once (ratelimit's coalescer)
    /// would otherwise start a trace of its own.
    fn observed<'a, T: Send + 'a>(&self, call: RedisFuture<'a, T>) -> RedisFuture<'a, T> {
        let Some(stats) = self.stats.clone() else { return call };
        let op = self.op;
        let span =
            crate::client_span!("redis", format_args!("redis {op}"), db.system.name = "redis", db.operation.name = op);
        Box::pin(
            async move {
                // Dropped unfinished (a caller's timeout): counted as a failed round trip.
                let mut pending = Pending { stats, op, started: Instant::now(), ok: None };
                let result = call.await;
                pending.ok = Some(result.is_ok());
                crate::telemetry::record_failure(&result);
                result
            }
            .instrument(span),
        )
    }

    fn send_command<'a>(&mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match &*self.inner {
            Inner::Single { pool, .. } => {
                let mut conn = pool[self.slot % pool.len()].clone();
                Box::pin(async move { conn.req_packed_command(cmd).await })
            }
            Inner::Cluster(conn) => {
                let mut conn = conn.clone();
                Box::pin(async move { conn.req_packed_command(cmd).await })
            }
            Inner::Sentinel(pool) => {
                let pool = pool.clone();
                let slot = self.slot;
                Box::pin(async move {
                    let mut conn = pool.connection(slot).await?;
                    let result = conn.req_packed_command(cmd).await;
                    pool.observe(&result);
                    result
                })
            }
        }
    }

    fn send_pipeline<'a>(
        &mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match &*self.inner {
            Inner::Single { pool, .. } => {
                let mut conn = pool[self.slot % pool.len()].clone();
                Box::pin(async move { conn.req_packed_commands(pipeline, offset, count).await })
            }
            Inner::Cluster(conn) => {
                let mut conn = conn.clone();
                Box::pin(async move { conn.req_packed_commands(pipeline, offset, count).await })
            }
            Inner::Sentinel(pool) => {
                let pool = pool.clone();
                let slot = self.slot;
                Box::pin(async move {
                    let mut conn = pool.connection(slot).await?;
                    let result = conn.req_packed_commands(pipeline, offset, count).await;
                    pool.observe(&result);
                    result
                })
            }
        }
    }
}

fn manager_config(settings: &RedisSettings) -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(settings.timeout))
        .set_response_timeout(Some(settings.timeout))
        .set_number_of_retries(1)
        .set_min_delay(Duration::from_millis(50))
        .set_max_delay(Duration::from_secs(2))
}

/// Accepts `host:port` (as envoyproxy/ratelimit writes REDIS_URL), `unix:` paths and full URLs.
fn connection_info(url: &str, settings: &RedisSettings) -> Result<ConnectionInfo, RedisSetupError> {
    let url = url.trim();
    let tls = settings.tls.is_some();
    let full = if url.contains("://") {
        url.to_string()
    } else if let Some(path) = url.strip_prefix("unix:") {
        format!("unix://{path}")
    } else {
        let scheme = if tls { "rediss" } else { "redis" };
        let fragment = match &settings.tls {
            Some(t) if t.skip_hostname_verification => "/#insecure",
            _ => "",
        };
        format!("{scheme}://{url}{fragment}")
    };
    let mut info = full
        .as_str()
        .into_connection_info()
        .map_err(|e| RedisSetupError::Address { url: url.to_string(), reason: e.to_string() })?;
    if let Some(auth) = &settings.auth {
        let redis_info = info.redis_settings().clone();
        let redis_info = match auth.split_once(':') {
            Some((user, pass)) => redis_info.set_username(user).set_password(pass),
            None => redis_info.set_password(auth.as_str()),
        };
        info = info.set_redis_settings(redis_info);
    }
    Ok(info)
}

fn client_for(info: ConnectionInfo, settings: &RedisSettings) -> Result<redis::Client, RedisSetupError> {
    match &settings.tls {
        Some(tls) if matches!(info.addr(), ConnectionAddr::TcpTls { .. }) => {
            Ok(redis::Client::build_with_tls(info, tls_certificates(tls)?)?)
        }
        _ => Ok(redis::Client::open(info)?),
    }
}

fn tls_certificates(tls: &RedisTls) -> Result<redis::TlsCertificates, RedisSetupError> {
    let read =
        |path: &PathBuf| std::fs::read(path).map_err(|source| RedisSetupError::TlsFile { path: path.clone(), source });
    let client_tls = match (&tls.client_cert, &tls.client_key) {
        (Some(cert), Some(key)) => Some(redis::ClientTlsConfig { client_cert: read(cert)?, client_key: read(key)? }),
        _ => None,
    };
    Ok(redis::TlsCertificates { client_tls, root_cert: tls.ca_cert.as_ref().map(read).transpose()? })
}

/// Connections to the master that the sentinels name. When the master stops accepting writes
/// (it was demoted, or is gone), the master is looked up again in the background.
#[derive(Clone)]
struct SentinelPool {
    sentinel: Arc<tokio::sync::Mutex<SentinelClient>>,
    pool: Arc<ArcSwap<Vec<ConnectionManager>>>,
    resolving: Arc<AtomicBool>,
    settings: Arc<RedisSettings>,
}

impl SentinelPool {
    fn new(settings: &RedisSettings) -> Result<Self, RedisSetupError> {
        let (master, sentinels) = settings.urls.split_first().ok_or_else(|| RedisSetupError::Address {
            url: String::new(),
            reason: "Sentinel needs the master name followed by sentinel addresses".into(),
        })?;
        if sentinels.is_empty() {
            return Err(RedisSetupError::Address {
                url: settings.urls.join(","),
                reason: "Sentinel needs the master name followed by at least one sentinel address".into(),
            });
        }
        let sentinel_infos = sentinels
            .iter()
            .map(|u| {
                // Sentinels take the same TLS, and their own password.
                let sentinel = RedisSettings { auth: settings.sentinel_auth.clone(), ..settings.clone() };
                connection_info(u, &sentinel)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut redis_info = redis::RedisConnectionInfo::default();
        if let Some(auth) = &settings.auth {
            redis_info = match auth.split_once(':') {
                Some((user, pass)) => redis_info.set_username(user).set_password(pass),
                None => redis_info.set_password(auth.as_str()),
            };
        }
        let mut node_info = SentinelNodeConnectionInfo::default().set_redis_connection_info(redis_info);
        if settings.tls.is_some() {
            node_info = node_info.set_tls_mode(redis::TlsMode::Secure);
        }
        let client = SentinelClient::build(sentinel_infos, master.trim(), Some(node_info), SentinelServerType::Master)?;
        Ok(SentinelPool {
            sentinel: Arc::new(tokio::sync::Mutex::new(client)),
            pool: Arc::new(ArcSwap::from_pointee(Vec::new())),
            resolving: Arc::new(AtomicBool::new(false)),
            settings: Arc::new(settings.clone()),
        })
    }

    /// The connection for `slot`. The first call asks the sentinels for the master; later
    /// calls use the known master while a re-resolution runs in the background.
    async fn connection(&self, slot: usize) -> redis::RedisResult<ConnectionManager> {
        let pool = self.pool.load();
        if let Some(conn) = pool.get(slot % pool.len().max(1)) {
            return Ok(conn.clone());
        }
        self.resolve_now().await?;
        let pool = self.pool.load();
        pool.get(slot % pool.len().max(1)).cloned().ok_or_else(|| {
            redis::RedisError::from(std::io::Error::new(
                std::io::ErrorKind::NotConnected,
                "no Redis master known to the sentinels",
            ))
        })
    }

    fn observe<T>(&self, result: &redis::RedisResult<T>) {
        if let Err(e) = result
            && (e.is_io_error()
                || e.is_connection_dropped()
                || e.is_connection_refusal()
                || e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly))
            && !self.resolving.swap(true, Ordering::AcqRel)
        {
            // The master failed or was demoted: ask the sentinels again, in the background.
            let this = self.clone();
            tokio::spawn(async move {
                if let Err(e) = this.resolve_now().await {
                    tracing::warn!(error = %e, "cannot resolve Redis master through Sentinel");
                }
                this.resolving.store(false, Ordering::Release);
            });
        }
    }

    /// Asks the sentinels for the master and replaces the pool. Concurrent callers wait for
    /// one lookup (the sentinel client's lock).
    async fn resolve_now(&self) -> redis::RedisResult<()> {
        let mut sentinel = self.sentinel.lock().await;
        let client = sentinel.async_get_client().await?;
        let pool = (0..self.settings.pool_size.max(1))
            .map(|_| ConnectionManager::new_lazy_with_config(client.clone(), manager_config(&self.settings)))
            .collect::<Result<Vec<_>, _>>()?;
        self.pool.store(Arc::new(pool));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_in_the_forms_operators_write() {
        let mut s = RedisSettings::single("localhost:6379");
        let info = connection_info("localhost:6379", &s).unwrap();
        assert!(matches!(info.addr(), ConnectionAddr::Tcp(h, 6379) if h == "localhost"));

        s.auth = Some("alice:secret".into());
        let info = connection_info("redis://10.0.0.1:7000/2", &s).unwrap();
        assert_eq!(info.redis_settings().username(), Some("alice"));
        assert_eq!(info.redis_settings().db(), 2);

        s.tls = Some(RedisTls::default());
        let info = connection_info("cache:6380", &s).unwrap();
        assert!(matches!(info.addr(), ConnectionAddr::TcpTls { .. }));

        assert!(connection_info("redis://:notaport", &s).is_err());
        assert_eq!("CLUSTER".parse::<Topology>().unwrap(), Topology::Cluster);
        assert!("ring".parse::<Topology>().is_err());
    }

    #[test]
    fn a_second_redis_under_its_own_prefix() {
        let env = Env::from_pairs([
            ("REDIS_AUTH", "main"),
            ("REDIS_PERSECOND_TYPE", "sentinel"),
            ("REDIS_PERSECOND_AUTH", "fast"),
            ("REDIS_PERSECOND_SENTINEL_AUTH", "watch"),
            ("REDIS_PERSECOND_TLS", "true"),
            ("REDIS_TLS_CACERT", "/ca.pem"),
            ("REDIS_PERSECOND_POOL_SIZE", "3"),
            ("REDIS_PERSECOND_TIMEOUT", "50ms"),
        ]);
        let s = RedisSettings::from_env_with_prefix(&env, "REDIS_PERSECOND", "m, 10.0.0.1:26379").unwrap();
        assert_eq!(
            (s.topology, s.urls.as_slice()),
            (Topology::Sentinel, &["m".to_string(), "10.0.0.1:26379".into()][..])
        );
        assert_eq!((s.auth.as_deref(), s.sentinel_auth.as_deref()), (Some("fast"), Some("watch")));
        assert_eq!(s.tls.and_then(|t| t.ca_cert), Some(PathBuf::from("/ca.pem")));
        assert_eq!((s.pool_size, s.timeout), (3, Duration::from_millis(50)));
        let main = RedisSettings::from_env(&env, "r:6379").unwrap();
        assert_eq!((main.topology, main.auth.as_deref(), main.tls.is_none()), (Topology::Single, Some("main"), true));
    }
}
