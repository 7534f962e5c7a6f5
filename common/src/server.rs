//! The server runtime every service shares: gRPC with `grpc.health.v1`, optional TLS/mTLS,
//! plain HTTP endpoints, and graceful shutdown with a drain period.
//!
//! Shutdown order, so that Envoy stops sending before we stop answering:
//! 1. the [`Shutdown`] signal fires (SIGTERM, SIGINT, or a test);
//! 2. health flips to NOT_SERVING at once;
//! 3. after `drain` the listeners stop accepting, and in-flight calls finish.

mod tls;

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::body::Bytes;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, UnixListener};

use crate::config::{ConfigError, Env};
use crate::metrics::Metrics;
use tokio::sync::watch;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::service::Routes;
use tonic::transport::server::TcpIncoming;
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

/// TLS for a listener; with `client_ca` set, clients must present a certificate it signed,
/// and with `client_san` too, one valid for that name.
///
/// The files are watched: a changed certificate, key or CA applies to the next connections
/// without closing the listener (see `server/tls.rs`).
#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
    /// A DNS name or IP address the client certificate must be valid for.
    pub client_san: Option<String>,
}

impl TlsFiles {
    /// envoyproxy/ratelimit's gRPC listener TLS variables, used by every Gatehouse service:
    /// GRPC_SERVER_USE_TLS, GRPC_SERVER_TLS_CERT, GRPC_SERVER_TLS_KEY and, for mTLS,
    /// GRPC_CLIENT_TLS_CACERT and GRPC_CLIENT_TLS_SAN (which, as there, applies only with
    /// GRPC_CLIENT_TLS_CACERT).
    pub fn from_env(env: &Env) -> Result<Option<TlsFiles>, ConfigError> {
        if !env.bool("GRPC_SERVER_USE_TLS", false)? {
            return Ok(None);
        }
        let required = |name: &str| {
            env.get(name).map(PathBuf::from).ok_or_else(|| env.error(name, "required when GRPC_SERVER_USE_TLS=true"))
        };
        let client_san = env.get("GRPC_CLIENT_TLS_SAN").map(str::to_string);
        if let Some(san) = &client_san {
            tls::client_san(san).map_err(|e| env.error("GRPC_CLIENT_TLS_SAN", e))?;
        }
        Ok(Some(TlsFiles {
            cert: required("GRPC_SERVER_TLS_CERT")?,
            key: required("GRPC_SERVER_TLS_KEY")?,
            client_ca: env.get("GRPC_CLIENT_TLS_CACERT").map(PathBuf::from),
            client_san,
        }))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("gRPC TLS: {0}")]
    Tls(#[from] ConfigError),
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("HTTP server: {0}")]
    Io(#[from] std::io::Error),
}

/// Where a gRPC server listens: a TCP port, or a Unix socket (GRPC_UDS).
#[derive(Debug)]
pub enum GrpcListener {
    Tcp(TcpListener),
    Unix(UnixListener),
}

impl From<TcpListener> for GrpcListener {
    fn from(listener: TcpListener) -> Self {
        GrpcListener::Tcp(listener)
    }
}

impl From<UnixListener> for GrpcListener {
    fn from(listener: UnixListener) -> Self {
        GrpcListener::Unix(listener)
    }
}

impl GrpcListener {
    /// Listens on the Unix socket `path`. A socket left there by an earlier run is replaced;
    /// any other file is an error.
    pub fn bind_unix(path: &Path) -> std::io::Result<GrpcListener> {
        use std::os::unix::fs::FileTypeExt;
        if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket()) {
            std::fs::remove_file(path)?;
        }
        UnixListener::bind(path)
            .map(GrpcListener::Unix)
            .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display())))
    }

    /// `127.0.0.1:8081` or `unix:/path/to/socket`, for logs.
    pub fn describe(&self) -> String {
        match self {
            GrpcListener::Tcp(l) => l.local_addr().map_or_else(|e| e.to_string(), |a| a.to_string()),
            GrpcListener::Unix(l) => match l.local_addr().ok().and_then(|a| a.as_pathname().map(Path::to_path_buf)) {
                Some(path) => format!("unix:{}", path.display()),
                None => "unix socket".into(),
            },
        }
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
    /// Where TLS reloads are counted (`gatehouse_<service>_tls_reloads_total{result}`).
    pub metrics: Metrics,
}

/// Serves `routes` plus `grpc.health.v1` on `listener` until `shutdown`, then drains.
pub async fn serve_grpc(
    listener: impl Into<GrpcListener>,
    routes: Routes,
    health: HealthReporter,
    options: GrpcOptions,
    shutdown: Shutdown,
) -> Result<(), ServeError> {
    let mut builder = tonic::transport::Server::builder().http2_keepalive_interval(Some(Duration::from_secs(30)));
    if let Some(age) = options.max_connection_age {
        builder = builder.max_connection_age(age);
    }
    let tls = match &options.tls {
        Some(files) => Some(tls::TlsConfigs::watch(files, &options.metrics, {
            let shutdown = shutdown.clone();
            async move { shutdown.wait().await }
        })?),
        None => None,
    };
    let not_serving = {
        let shutdown = shutdown.clone();
        let health = health.clone();
        async move {
            shutdown.wait().await;
            health.set_service_status("", tonic_health::ServingStatus::NotServing).await;
            tokio::time::sleep(options.drain).await;
        }
    };
    let stop_accepting = {
        let shutdown = shutdown.clone();
        async move { shutdown.drained(options.drain).await }
    };
    let router = builder.add_routes(routes);
    match (listener.into(), tls) {
        // The builder's `tcp_nodelay` only applies to listeners it binds itself; on ours,
        // Nagle's algorithm against the client's delayed ACK would stall small responses.
        (GrpcListener::Tcp(l), None) => {
            let incoming = TcpIncoming::from(l).with_nodelay(Some(true));
            router.serve_with_incoming_shutdown(incoming, not_serving).await?
        }
        (GrpcListener::Unix(l), None) => {
            router.serve_with_incoming_shutdown(UnixListenerStream::new(l), not_serving).await?
        }
        (GrpcListener::Tcp(l), Some(tls)) => {
            router.serve_with_incoming_shutdown(tls.incoming(l, stop_accepting), not_serving).await?
        }
        (GrpcListener::Unix(l), Some(tls)) => {
            router.serve_with_incoming_shutdown(tls.incoming(l, stop_accepting), not_serving).await?
        }
    }
    Ok(())
}

/// The settings every Gatehouse service reads the same way: `GRPC_HOST`/`GRPC_PORT`,
/// `HOST`/`PORT`, the gRPC TLS variables ([`TlsFiles::from_env`]), `LOG_LEVEL`, `LOG_FILTER`,
/// `LOG_FORMAT`, `NO_COLOR`, `SHUTDOWN_DRAIN`, and the standard `OTEL_*` tracing variables
/// ([`TracingSettings::from_env`](crate::telemetry::otel::TracingSettings::from_env)).
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
    /// The trace pipeline from the `OTEL_*` variables; `None` (off) unless an
    /// `OTEL_EXPORTER_OTLP_*ENDPOINT` is set.
    pub tracing: Option<crate::telemetry::otel::TracingSettings>,
}

impl ServiceSettings {
    /// `service_name` is `service.name` on spans unless `OTEL_SERVICE_NAME` (or
    /// `OTEL_RESOURCE_ATTRIBUTES`) names it.
    pub fn from_env(
        env: &Env,
        service_name: &str,
        grpc_port: u16,
        http_port: u16,
    ) -> Result<ServiceSettings, ConfigError> {
        use crate::telemetry::otel::{ServiceDefaults, TracingSettings};
        Ok(ServiceSettings {
            grpc_addr: env.socket_addr("GRPC_HOST", "GRPC_PORT", grpc_port)?,
            http_addr: env.socket_addr("HOST", "PORT", http_port)?,
            grpc_tls: TlsFiles::from_env(env)?,
            log_level: crate::telemetry::LogFilter::from_env(env, "info")?,
            log_format: crate::telemetry::LogFormat::from_env(env)?,
            drain: env.duration("SHUTDOWN_DRAIN", Duration::from_secs(0))?,
            tracing: TracingSettings::from_env(env, ServiceDefaults::named(service_name))?,
        })
    }

    /// Logging and tracing as configured.
    pub fn telemetry(&self) -> crate::telemetry::TelemetrySettings {
        crate::telemetry::TelemetrySettings {
            log_filter: self.log_level.clone(),
            log_format: self.log_format,
            tracing: self.tracing.clone(),
        }
    }

    /// The gRPC server's options; its TLS reloads are counted in `metrics`.
    pub fn grpc_options(&self, metrics: &Metrics) -> GrpcOptions {
        GrpcOptions {
            tls: self.grpc_tls.clone(),
            drain: self.drain,
            metrics: metrics.clone(),
            ..GrpcOptions::default()
        }
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
    http: Option<(TcpListener, impl Into<HttpApp>)>,
    options: GrpcOptions,
    shutdown: Shutdown,
) -> Result<(), ServeError> {
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_service_status("", tonic_health::ServingStatus::Serving).await;
    let drain = options.drain;
    let grpc = serve_grpc(grpc, routes.add_service(health_service), health, options, shutdown.clone());
    let http = async {
        match http {
            Some((listener, app)) => {
                let mut app = app.into();
                app.router = app.router.merge(healthcheck_router(shutdown.clone()));
                serve_http(listener, app, drain, shutdown.clone()).await
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

/// A service's `main` after its settings: starts telemetry (logs, and traces when configured),
/// runs `serve` on a multi-thread runtime with a [`Shutdown`] that SIGTERM and SIGINT trigger,
/// then exports the spans still batched.
pub fn run_until_signalled<F, Fut, E>(telemetry: &crate::telemetry::TelemetrySettings, serve: F) -> Result<(), E>
where
    F: FnOnce(Shutdown) -> Fut,
    Fut: std::future::Future<Output = Result<(), E>>,
    E: From<std::io::Error>,
{
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    // The trace exporter's connection lives on this runtime, so telemetry starts inside it.
    let telemetry = {
        let _entered = runtime.enter();
        crate::telemetry::init(telemetry).map_err(std::io::Error::other)?
    };
    let result = runtime.block_on(async move {
        let shutdown = Shutdown::new();
        shutdown.trigger_on_signals();
        serve(shutdown).await?;
        tracing::info!("stopped");
        Ok(())
    });
    // Outside `block_on`, with the runtime still running the exporter: the last spans of a
    // failed start are the ones an operator most wants to see.
    telemetry.shutdown();
    result
}

/// An HTTP port's router and the limits it is served with.
#[derive(Clone, Debug)]
pub struct HttpApp {
    pub router: axum::Router,
    /// The most bytes a request's line and headers may take; `None` leaves hyper's read
    /// buffer (about 400 KiB) as the limit.
    pub max_header_bytes: Option<usize>,
    /// Sent instead of hyper's bare `431` to a request over `max_header_bytes` or with more
    /// than 100 headers, encoded once. See [`HttpApp::head_too_large`].
    head_too_large: Option<Bytes>,
}

impl From<axum::Router> for HttpApp {
    fn from(router: axum::Router) -> HttpApp {
        HttpApp { router, max_header_bytes: None, head_too_large: None }
    }
}

impl HttpApp {
    pub fn max_header_bytes(mut self, max: usize) -> HttpApp {
        self.max_header_bytes = Some(max);
        self
    }

    /// What a client whose request head is too large gets instead of `431` (which NGINX
    /// `auth_request`, for one, turns into a 500). hyper rejects such a request before any
    /// handler runs, so this is a fixed response; it is sent with `connection: close`. The
    /// router itself must never answer 431, since every 431 on the wire is replaced.
    pub fn head_too_large(mut self, response: axum::http::Response<String>) -> HttpApp {
        self.head_too_large = Some(encode_response(response));
        self
    }
}

/// An HTTP/1.1 response as bytes on the wire, closing the connection.
fn encode_response(response: axum::http::Response<String>) -> Bytes {
    let (parts, body) = response.into_parts();
    let status = parts.status;
    let mut out = format!("HTTP/1.1 {} {}\r\n", status.as_str(), status.canonical_reason().unwrap_or("")).into_bytes();
    for (name, value) in &parts.headers {
        if name != axum::http::header::CONTENT_LENGTH && name != axum::http::header::CONNECTION {
            out.extend_from_slice(name.as_str().as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
    }
    out.extend_from_slice(format!("content-length: {}\r\nconnection: close\r\n\r\n", body.len()).as_bytes());
    out.extend_from_slice(body.as_bytes());
    Bytes::from(out)
}

/// Serves an HTTP/1 router until `shutdown` plus `drain`, then lets requests in flight finish.
pub async fn serve_http(
    mut listener: TcpListener,
    app: impl Into<HttpApp>,
    drain: Duration,
    shutdown: Shutdown,
) -> Result<(), ServeError> {
    let HttpApp { router, max_header_bytes, head_too_large } = app.into();
    let mut http1 = hyper::server::conn::http1::Builder::new();
    if let Some(max) = max_header_bytes {
        http1.max_header_size(max);
    }
    let stop_connections = Shutdown::new();
    let mut connections = tokio::task::JoinSet::new();
    let mut stop_accepting = std::pin::pin!(shutdown.drained(drain));
    loop {
        tokio::select! {
            (tcp, _) = axum::serve::Listener::accept(&mut listener) => {
                // Nagle's algorithm against the client's delayed ACK would stall small
                // responses for 40 ms.
                let _ = tcp.set_nodelay(true);
                let io = TokioIo::new(HeadTooLargeAnswer { tcp, answer: head_too_large.clone(), sending: None });
                let connection = http1.serve_connection(io, TowerToHyperService::new(router.clone()));
                let stop = stop_connections.clone();
                connections.spawn(async move {
                    let mut connection = std::pin::pin!(connection);
                    tokio::select! {
                        // A connection error concerns one client only; it has been answered
                        // (400, 431) or is gone.
                        _ = connection.as_mut() => return,
                        _ = stop.wait() => connection.as_mut().graceful_shutdown(),
                    }
                    let _ = connection.await;
                });
            }
            Some(_) = connections.join_next() => {}
            _ = &mut stop_accepting => break,
        }
    }
    drop(listener);
    stop_connections.trigger();
    while connections.join_next().await.is_some() {}
    Ok(())
}

/// A connection whose `431` answers are replaced by [`HttpApp::head_too_large`].
///
/// hyper answers a request head over its limit itself, writing a bare `431` to the connection
/// before any service runs, and offers no hook to change it. So the answer is swapped here, on
/// its way out: a write that starts a `431` response is reported written in full and the
/// replacement goes out instead. hyper closes the connection right after such an answer, so
/// nothing else follows it on the wire.
struct HeadTooLargeAnswer {
    tcp: tokio::net::TcpStream,
    answer: Option<Bytes>,
    /// The rest of the replacement, once a 431 has been seen.
    sending: Option<Bytes>,
}

impl HeadTooLargeAnswer {
    const HYPER_431: &[u8] = b"HTTP/1.1 431 ";
}

impl tokio::io::AsyncRead for HeadTooLargeAnswer {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for HeadTooLargeAnswer {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        if this.sending.is_none() && buf.starts_with(Self::HYPER_431) {
            this.sending = this.answer.clone();
        }
        let Some(rest) = &mut this.sending else {
            return Pin::new(&mut this.tcp).poll_write(cx, buf);
        };
        while !rest.is_empty() {
            let written = ready!(Pin::new(&mut this.tcp).poll_write(cx, rest))?;
            if written == 0 {
                return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
            }
            *rest = rest.slice(written..);
        }
        Poll::Ready(Ok(buf.len()))
    }

    /// Without a replacement, writes go straight through. With one, hyper is told vectored
    /// writes are not supported, so it writes each response head as one buffer that
    /// [`Self::poll_write`] can recognise.
    fn is_write_vectored(&self) -> bool {
        self.answer.is_none() && self.tcp.is_write_vectored()
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        if self.answer.is_some() {
            let first = bufs.iter().find(|b| !b.is_empty()).map_or(&[][..], |b| &**b);
            return self.poll_write(cx, first);
        }
        Pin::new(&mut self.get_mut().tcp).poll_write_vectored(cx, bufs)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_shutdown(cx)
    }
}

/// The `healthcheck` subcommand every binary has: `GET /healthcheck` on the service's own HTTP
/// port, for container health checks in images that carry no curl or shell. An unspecified
/// listen address (`0.0.0.0`, `::`) is probed on loopback. `Ok` only for a 200 answer.
pub fn probe_healthcheck(http_addr: std::net::SocketAddr, timeout: Duration) -> Result<(), String> {
    use std::io::{Read, Write};
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};

    let ip = match http_addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    let addr = SocketAddr::new(ip, http_addr.port());
    let fail = |what: &str, e: std::io::Error| format!("{what} http://{addr}/healthcheck: {e}");
    let mut stream = TcpStream::connect_timeout(&addr, timeout).map_err(|e| fail("connecting to", e))?;
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|()| stream.set_write_timeout(Some(timeout)))
        .map_err(|e| fail("probing", e))?;
    stream
        .write_all(b"GET /healthcheck HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .map_err(|e| fail("writing to", e))?;
    // The status line is all we need; the answer is a few bytes.
    let mut head = [0u8; 64];
    let mut len = 0;
    while len < head.len() && !head[..len].contains(&b'\n') {
        match stream.read(&mut head[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) => return Err(fail("reading from", e)),
        }
    }
    let status_line = String::from_utf8_lossy(&head[..len]);
    let status_line = status_line.lines().next().unwrap_or_default();
    match status_line.split_whitespace().nth(1) {
        Some("200") => Ok(()),
        _ => Err(format!("http://{addr}/healthcheck answered {status_line:?}")),
    }
}

/// A binary's `healthcheck` subcommand around [`probe_healthcheck`]: exit 0 when healthy, or
/// 1 with the reason on stderr. `http_addr` is what the service's settings say it listens on.
pub fn healthcheck_command(
    binary: &str,
    http_addr: Result<std::net::SocketAddr, ConfigError>,
) -> std::process::ExitCode {
    match http_addr.map_err(|e| e.to_string()).and_then(|addr| probe_healthcheck(addr, Duration::from_secs(2))) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{binary}: unhealthy: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod settings_tests {
    use super::*;
    use crate::telemetry::otel::{Protocol, Sampler};

    #[test]
    fn service_settings_read_the_otel_variables() {
        let settings =
            |pairs: &[(&str, &str)]| ServiceSettings::from_env(&Env::from_pairs(pairs.iter().copied()), "svc", 1, 2);
        // Off by default, and off with OTEL_SDK_DISABLED whatever else is set.
        assert_eq!(settings(&[]).unwrap().telemetry().tracing, None);
        let disabled = [("OTEL_EXPORTER_OTLP_ENDPOINT", "http://otel:4317"), ("OTEL_SDK_DISABLED", "true")];
        assert_eq!(settings(&disabled).unwrap().tracing, None);
        // An endpoint turns it on, with the service's own name by default.
        let t = settings(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "otel:4317")]).unwrap().telemetry().tracing.unwrap();
        assert_eq!(
            (t.protocol, t.endpoint.as_str(), t.service_name.as_str()),
            (Protocol::Grpc, "http://otel:4317", "svc")
        );
        assert_eq!(t.sampler, Sampler::ParentBased(Box::new(Sampler::AlwaysOn)));
        let t = settings(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://otel:4318"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ("OTEL_SERVICE_NAME", "edge-auth"),
            ("OTEL_TRACES_SAMPLER", "always_off"),
        ])
        .unwrap()
        .tracing
        .unwrap();
        assert_eq!((t.protocol, t.endpoint.as_str()), (Protocol::HttpProtobuf, "http://otel:4318/v1/traces"));
        assert_eq!((t.service_name.as_str(), t.sampler), ("edge-auth", Sampler::AlwaysOff));
        let err =
            settings(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://otel:4317"), ("OTEL_TRACES_SAMPLER", "sometimes")])
                .unwrap_err()
                .to_string();
        assert!(err.starts_with("environment variable OTEL_TRACES_SAMPLER="), "{err}");
    }
}

#[cfg(test)]
mod probe_tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn probe_follows_the_healthcheck_endpoint() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = Shutdown::new();
        let server = tokio::spawn(serve_http(
            listener,
            HttpApp::from(healthcheck_router(shutdown.clone())),
            Duration::ZERO,
            Shutdown::new(),
        ));
        let unspecified = std::net::SocketAddr::new("0.0.0.0".parse().unwrap(), addr.port());
        let probe = move || tokio::task::spawn_blocking(move || probe_healthcheck(unspecified, Duration::from_secs(2)));

        assert_eq!(probe().await.unwrap(), Ok(()));
        shutdown.trigger();
        let err = probe().await.unwrap().unwrap_err();
        assert!(err.contains("503"), "{err}");
        server.abort();

        let closed = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
        let err = tokio::task::spawn_blocking(move || probe_healthcheck(closed, Duration::from_secs(2)))
            .await
            .unwrap()
            .unwrap_err();
        assert!(err.starts_with("connecting to http://127.0.0.1:"), "{err}");
    }
}
