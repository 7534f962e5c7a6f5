//! The server runtime every service shares: gRPC with `grpc.health.v1`, optional TLS/mTLS,
//! plain HTTP endpoints, and graceful shutdown with a drain period.
//!
//! Shutdown order, so that Envoy stops sending before we stop answering:
//! 1. the [`Shutdown`] signal fires (SIGTERM, SIGINT, or a test);
//! 2. health flips to NOT_SERVING at once;
//! 3. after `drain` the listeners stop accepting, and in-flight calls finish.

use std::path::PathBuf;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::config::{ConfigError, Env};
use tokio::sync::watch;
use tonic::service::Routes;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Certificate, Identity, ServerTlsConfig};
use tonic_health::server::HealthReporter;

/// A cloneable, level-triggered shutdown signal.
#[derive(Clone, Debug)]
pub struct Shutdown {
    tx: std::sync::Arc<watch::Sender<bool>>,
    rx: watch::Receiver<bool>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Self::new()
    }
}

impl Shutdown {
    pub fn new() -> Self {
        let (tx, rx) = watch::channel(false);
        Shutdown { tx: std::sync::Arc::new(tx), rx }
    }

    pub fn trigger(&self) {
        self.tx.send_replace(true);
    }

    pub fn is_triggered(&self) -> bool {
        *self.rx.borrow()
    }

    /// Resolves once [`Shutdown::trigger`] has been called (immediately if it already was).
    pub async fn wait(&self) {
        let mut rx = self.rx.clone();
        // An error means every sender is gone, which we also treat as shutdown.
        let _ = rx.wait_for(|stop| *stop).await;
    }

    /// Resolves `drain` after the signal: when listeners should stop accepting.
    pub async fn drained(&self, drain: Duration) {
        self.wait().await;
        tokio::time::sleep(drain).await;
    }

    /// Triggers this signal on SIGTERM or SIGINT. Runs in the background.
    pub fn trigger_on_signals(&self) {
        let this = self.clone();
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("shutdown signal received; draining");
            this.trigger();
        });
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            // Without signal handlers the process is stopped by SIGKILL; never resolve.
            tracing::warn!("cannot install signal handlers");
            std::future::pending::<()>().await;
        }
    }
}

/// TLS for a listener; with `client_ca` set, clients must present a certificate it signed.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
}

impl TlsFiles {
    /// envoyproxy/ratelimit's gRPC listener TLS variables, used by every Gatehouse service:
    /// GRPC_SERVER_USE_TLS, GRPC_SERVER_TLS_CERT, GRPC_SERVER_TLS_KEY and, for mTLS,
    /// GRPC_CLIENT_TLS_CACERT.
    pub fn from_env(env: &Env) -> Result<Option<TlsFiles>, ConfigError> {
        if !env.bool("GRPC_SERVER_USE_TLS", false)? {
            return Ok(None);
        }
        let required = |name: &str| {
            env.get(name).map(PathBuf::from).ok_or_else(|| env.error(name, "required when GRPC_SERVER_USE_TLS=true"))
        };
        Ok(Some(TlsFiles {
            cert: required("GRPC_SERVER_TLS_CERT")?,
            key: required("GRPC_SERVER_TLS_KEY")?,
            client_ca: env.get("GRPC_CLIENT_TLS_CACERT").map(PathBuf::from),
        }))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("reading TLS file {path}: {source}")]
    TlsFile { path: PathBuf, source: std::io::Error },
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("HTTP server: {0}")]
    Io(#[from] std::io::Error),
}

impl TlsFiles {
    fn server_config(&self) -> Result<ServerTlsConfig, ServeError> {
        let read =
            |path: &PathBuf| std::fs::read(path).map_err(|source| ServeError::TlsFile { path: path.clone(), source });
        let mut config = ServerTlsConfig::new().identity(Identity::from_pem(read(&self.cert)?, read(&self.key)?));
        if let Some(ca) = &self.client_ca {
            config = config.client_ca_root(Certificate::from_pem(read(ca)?));
        }
        Ok(config)
    }
}

/// Options for [`serve_grpc`].
#[derive(Clone, Debug, Default)]
pub struct GrpcOptions {
    pub tls: Option<TlsFiles>,
    /// Time between NOT_SERVING and closing the listener.
    pub drain: Duration,
    /// Close connections after this age so clients rebalance across replicas.
    pub max_connection_age: Option<Duration>,
}

/// Serves `routes` plus `grpc.health.v1` on `listener` until `shutdown`, then drains.
pub async fn serve_grpc(
    listener: TcpListener,
    routes: Routes,
    health: HealthReporter,
    options: GrpcOptions,
    shutdown: Shutdown,
) -> Result<(), ServeError> {
    let mut builder = tonic::transport::Server::builder().http2_keepalive_interval(Some(Duration::from_secs(30)));
    if let Some(age) = options.max_connection_age {
        builder = builder.max_connection_age(age);
    }
    if let Some(tls) = &options.tls {
        builder = builder.tls_config(tls.server_config()?)?;
    }
    let not_serving = {
        let shutdown = shutdown.clone();
        let health = health.clone();
        async move {
            shutdown.wait().await;
            health.set_service_status("", tonic_health::ServingStatus::NotServing).await;
            tokio::time::sleep(options.drain).await;
        }
    };
    // The builder's `tcp_nodelay` only applies to listeners it binds itself; on ours, Nagle's
    // algorithm against the client's delayed ACK would stall small responses for 40 ms.
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    builder.add_routes(routes).serve_with_incoming_shutdown(incoming, not_serving).await?;
    Ok(())
}

/// The settings every Gatehouse service reads the same way: `GRPC_HOST`/`GRPC_PORT`,
/// `HOST`/`PORT`, the gRPC TLS variables ([`TlsFiles::from_env`]), `LOG_LEVEL`, `LOG_FILTER`,
/// `LOG_FORMAT`, `NO_COLOR` and `SHUTDOWN_DRAIN`.
#[derive(Clone, Debug)]
pub struct ServiceSettings {
    pub grpc_addr: std::net::SocketAddr,
    /// Health, metrics, config status and the service's own HTTP endpoints.
    pub http_addr: std::net::SocketAddr,
    pub grpc_tls: Option<TlsFiles>,
    /// LOG_LEVEL for Gatehouse's crates, or LOG_FILTER in full.
    pub log_level: crate::telemetry::LogFilter,
    /// LOG_FORMAT and NO_COLOR.
    pub log_format: crate::telemetry::LogFormat,
    /// Time between NOT_SERVING and closing listeners.
    pub drain: Duration,
}

impl ServiceSettings {
    pub fn from_env(env: &Env, grpc_port: u16, http_port: u16) -> Result<ServiceSettings, ConfigError> {
        Ok(ServiceSettings {
            grpc_addr: env.socket_addr("GRPC_HOST", "GRPC_PORT", grpc_port)?,
            http_addr: env.socket_addr("HOST", "PORT", http_port)?,
            grpc_tls: TlsFiles::from_env(env)?,
            log_level: crate::telemetry::LogFilter::from_env(env, "info")?,
            log_format: crate::telemetry::LogFormat::from_env(env)?,
            drain: env.duration("SHUTDOWN_DRAIN", Duration::from_secs(0))?,
        })
    }

    pub fn grpc_options(&self) -> GrpcOptions {
        GrpcOptions { tls: self.grpc_tls.clone(), drain: self.drain, max_connection_age: None }
    }
}

/// The listeners of a service with a gRPC and an HTTP port. Tests bind `127.0.0.1:0` and
/// pass them in.
#[derive(Debug)]
pub struct Listeners {
    pub grpc: TcpListener,
    pub http: Option<TcpListener>,
}

impl Listeners {
    pub async fn bind(settings: &ServiceSettings) -> std::io::Result<Listeners> {
        Ok(Listeners {
            grpc: TcpListener::bind(settings.grpc_addr).await?,
            http: Some(TcpListener::bind(settings.http_addr).await?),
        })
    }
}

/// A service's two ports: gRPC (`routes`, plus `grpc.health.v1` reporting SERVING until
/// shutdown) and, optionally, HTTP (the router gets [`healthcheck_router`] merged in). Returns
/// when both have stopped.
pub async fn serve_grpc_and_http(
    grpc: TcpListener,
    routes: Routes,
    http: Option<(TcpListener, axum::Router)>,
    options: GrpcOptions,
    shutdown: Shutdown,
) -> Result<(), ServeError> {
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_service_status("", tonic_health::ServingStatus::Serving).await;
    let drain = options.drain;
    let grpc = serve_grpc(grpc, routes.add_service(health_service), health, options, shutdown.clone());
    let http = async {
        match http {
            Some((listener, router)) => {
                let router = router.merge(healthcheck_router(shutdown.clone()));
                serve_http(listener, router, drain, shutdown.clone()).await
            }
            None => Ok(()),
        }
    };
    let (g, h) = tokio::join!(grpc, http);
    g.and(h)
}

/// `GET /healthcheck`: 200 `OK` until `shutdown` triggers, then 503, so load balancers stop
/// sending while connections drain.
pub fn healthcheck_router(shutdown: Shutdown) -> axum::Router {
    use axum::http::StatusCode;
    axum::Router::new().route(
        "/healthcheck",
        axum::routing::get(move || {
            let triggered = shutdown.is_triggered();
            async move { if triggered { (StatusCode::SERVICE_UNAVAILABLE, "") } else { (StatusCode::OK, "OK") } }
        }),
    )
}

/// A service's `main` after its settings and logging: runs `serve` on a multi-thread runtime
/// with a [`Shutdown`] that SIGTERM and SIGINT trigger.
pub fn run_until_signalled<F, Fut, E>(serve: F) -> Result<(), E>
where
    F: FnOnce(Shutdown) -> Fut,
    Fut: std::future::Future<Output = Result<(), E>>,
    E: From<std::io::Error>,
{
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        let shutdown = Shutdown::new();
        shutdown.trigger_on_signals();
        serve(shutdown).await?;
        tracing::info!("stopped");
        Ok(())
    })
}

/// Serves a plain HTTP router until `shutdown` plus `drain`.
pub async fn serve_http(
    listener: TcpListener,
    router: axum::Router,
    drain: Duration,
    shutdown: Shutdown,
) -> Result<(), ServeError> {
    use axum::serve::ListenerExt;
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, router).with_graceful_shutdown(async move { shutdown.drained(drain).await }).await?;
    Ok(())
}
