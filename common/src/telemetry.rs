//! Logging and tracing setup: text or JSON lines on stderr, with a level filter, and
//! OpenTelemetry traces exported over OTLP when configured ([`otel`]).
//!
//! `LOG_LEVEL` is the level of Gatehouse's own crates. Dependencies (h2, hyper, tonic, tower,
//! rustls, redis...) log at `info` at most, so `debug` shows Gatehouse's decisions rather than
//! HTTP/2 frames. `LOG_FILTER`, a full `tracing` filter such as `debug,h2=trace`, replaces that
//! when set. Text lines are coloured only when stderr is a terminal and `NO_COLOR` is unset, so
//! log collectors never see escape codes.
//!
//! Spans exist for traces only. The log layer never sees them (its filter rejects every span),
//! so log lines look the same with tracing on or off; and with tracing off no layer wants a
//! span, every span callsite is disabled once, and `info_span!` costs one cached check. With
//! tracing on, JSON lines carry the `trace_id` and `span_id` of the span they were logged in.

pub mod grpc;
pub mod otel;
pub mod propagation;

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::{ConfigError, Env};

/// The crates `LOG_LEVEL` applies to. A service's binary has its library's crate name, so its
/// `main` logs under the same target.
const OWN_CRATES: &[&str] = &["gatehouse_common", "gatehouse_ratelimit", "gatehouse_extauth", "gatehouse_transform"];

/// Which events are logged: a `tracing` filter directive, checked when settings are read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogFilter {
    directive: String,
}

impl LogFilter {
    /// `LOG_FILTER` as given if set, else the filter for `LOG_LEVEL` (or `default_level`).
    pub fn from_env(env: &Env, default_level: &str) -> Result<LogFilter, ConfigError> {
        if let Some(filter) = env.get("LOG_FILTER") {
            EnvFilter::try_new(filter).map_err(|e| env.error("LOG_FILTER", e))?;
            return Ok(LogFilter { directive: filter.to_string() });
        }
        let level = env.get("LOG_LEVEL").unwrap_or(default_level);
        let directive = level_directive(level).map_err(|e| env.error("LOG_LEVEL", e))?;
        Ok(LogFilter { directive })
    }

    /// The directive, in `tracing_subscriber::EnvFilter` syntax.
    pub fn directive(&self) -> &str {
        &self.directive
    }
}

/// The filter for a `LOG_LEVEL`, spelt as envoyproxy/ratelimit (logrus) spells levels, in any
/// case: `trace`, `debug`, `info`, `warn`/`warning`, `error`, and `fatal`/`panic` as `error`.
/// Levels more verbose than `info` apply to Gatehouse's crates only.
pub fn level_directive(level: &str) -> Result<String, String> {
    let level = match level.trim().to_ascii_lowercase().as_str() {
        "trace" => "trace",
        "debug" => "debug",
        "info" => "info",
        "warn" | "warning" => "warn",
        "error" | "fatal" | "panic" => "error",
        _ => {
            return Err("expected trace, debug, info, warn or error (per-target filters go in LOG_FILTER)".into());
        }
    };
    if !matches!(level, "trace" | "debug") {
        return Ok(level.to_string());
    }
    let own = OWN_CRATES.iter().map(|krate| format!("{krate}={level}"));
    Ok(std::iter::once("info".to_string()).chain(own).collect::<Vec<_>>().join(","))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines. `color` is false when `NO_COLOR` is set; colour is used only when
    /// stderr is also a terminal.
    Text { color: bool },
    /// One JSON object per line, event fields at the top level.
    Json,
}

impl LogFormat {
    /// `LOG_FORMAT` (`text`, the default, or `json`, as envoyproxy/ratelimit takes it) and
    /// `NO_COLOR` (<https://no-color.org>: set and not empty).
    pub fn from_env(env: &Env) -> Result<LogFormat, ConfigError> {
        match env.get("LOG_FORMAT").map(|f| f.trim().to_ascii_lowercase()).as_deref() {
            None | Some("text") => Ok(LogFormat::Text { color: env.get("NO_COLOR").is_none() }),
            Some("json") => Ok(LogFormat::Json),
            Some(_) => Err(env.error("LOG_FORMAT", "expected text or json")),
        }
    }
}

/// Everything [`init`] needs: the log settings every service reads, and the trace pipeline's,
/// `None` when tracing is off.
#[derive(Clone, Debug)]
pub struct TelemetrySettings {
    pub log_filter: LogFilter,
    pub log_format: LogFormat,
    pub tracing: Option<otel::TracingSettings>,
}

/// What must outlive the service for its telemetry to be complete: the trace pipeline, whose
/// batch of finished spans is exported by [`Telemetry::shutdown`].
#[derive(Debug)]
#[must_use = "spans still batched are lost unless Telemetry::shutdown is called"]
pub struct Telemetry {
    traces: Option<otel::Pipeline>,
}

impl Telemetry {
    /// Exports the spans still batched and stops the exporter, waiting at most a few seconds
    /// for the collector. Call it while the Tokio runtime is still running: the gRPC and HTTP
    /// exporters send from it.
    pub fn shutdown(self) {
        if let Some(traces) = self.traces {
            traces.shutdown();
        }
    }
}

/// Installs the global subscriber, writing logs to stderr and, when `settings.tracing` is set,
/// exporting spans. With tracing on it must be called inside a Tokio runtime (the exporter's
/// connection lives there). Calling it twice keeps the first subscriber, which suits tests;
/// the second call then exports nothing.
pub fn init(settings: &TelemetrySettings) -> Result<Telemetry, TelemetryError> {
    use tracing_subscriber::filter::{FilterExt, filter_fn};
    use tracing_subscriber::layer::{Layer, SubscriberExt};
    use tracing_subscriber::util::SubscriberInitExt;

    let directive = settings.log_filter.directive();
    let env_filter = EnvFilter::try_new(directive)
        .map_err(|e| TelemetryError::LogFilter(format!("invalid log filter {directive:?}: {e}")))?;
    // Spans are for traces, never for logs (see the module doc).
    let log_filter = env_filter.and(filter_fn(|metadata| !metadata.is_span()));
    let traced = settings.tracing.is_some();
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let logs: Box<dyn Layer<tracing_subscriber::Registry> + Send + Sync> = match settings.log_format {
        LogFormat::Text { color } => {
            fmt.with_ansi(color && std::io::stderr().is_terminal()).with_filter(log_filter).boxed()
        }
        LogFormat::Json if traced => fmt
            .with_ansi(false)
            .json()
            .event_format(otel::WithTraceIds(tracing_subscriber::fmt::format().json().flatten_event(true)))
            .with_filter(log_filter)
            .boxed(),
        LogFormat::Json => fmt.with_ansi(false).json().flatten_event(true).with_filter(log_filter).boxed(),
    };
    let traces = settings.tracing.as_ref().map(otel::Pipeline::start).transpose()?;
    // No layer at all when tracing is off. An absent `Option` layer is not the same: it counts
    // as interested in every span, so the registry would create and close every span the code
    // opens (a third of the rate limiter's CPU in `make bench-load`).
    let installed = match traces.as_ref().map(otel::Pipeline::layer) {
        Some(trace_layer) => tracing_subscriber::registry().with(logs).with(trace_layer).try_init().is_ok(),
        None => tracing_subscriber::registry().with(logs).try_init().is_ok(),
    };
    // Only "already initialised" can fail; then this pipeline has no layer feeding it.
    let traces = traces.filter(|_| installed);
    Ok(Telemetry { traces })
}

/// Why telemetry could not start.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("{0}")]
    LogFilter(String),
    /// The OTLP exporter rejected its settings (already validated, so rare).
    #[error("starting the OTLP trace exporter: {0}")]
    Exporter(String),
}

/// The client span of a call out of the process (a Redis round trip, an IdP request), named
/// `$otel_name` and with the given fields, as in `tracing::info_span!`; a disabled span outside
/// a traced request, so that a call made for many requests at once (ratelimit's coalescer) or
/// in the background never starts a trace of its own. Pair it with [`record_failure`].
#[macro_export]
macro_rules! client_span {
    ($name:literal, $otel_name:expr, $($fields:tt)*) => {
        if $crate::telemetry::grpc::__tracing::Span::current().is_none() {
            $crate::telemetry::grpc::__tracing::Span::none()
        } else {
            $crate::telemetry::grpc::__tracing::info_span!(
                $name,
                otel.name = %$otel_name,
                otel.kind = "client",
                otel.status_code = $crate::telemetry::grpc::__tracing::field::Empty,
                $($fields)*
            )
        }
    };
}

/// Marks the current span failed (OpenTelemetry status `ERROR`) when `result` is an error.
pub fn record_failure<T, E>(result: &Result<T, E>) {
    if result.is_err() {
        tracing::Span::current().record("otel.status_code", "error");
    }
}

/// A failure that can repeat on every request (a store that is down) is logged at most once
/// per interval, with how many occurrences were held back, so an outage is visible in the
/// logs without flooding them. Lock-free: one atomic read on the hot path.
#[derive(Debug)]
pub struct LogThrottle {
    interval_ms: u64,
    epoch: std::time::Instant,
    /// Milliseconds since `epoch` before which nothing is logged.
    next_ms: std::sync::atomic::AtomicU64,
    held_back: std::sync::atomic::AtomicU64,
}

impl LogThrottle {
    pub fn new(interval: std::time::Duration) -> Self {
        LogThrottle {
            interval_ms: interval.as_millis() as u64,
            epoch: std::time::Instant::now(),
            next_ms: std::sync::atomic::AtomicU64::new(0),
            held_back: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// `Some(n)` when this occurrence should be logged, `n` being how many were held back since
    /// the last one logged; `None` when it should not.
    pub fn admit(&self) -> Option<u64> {
        use std::sync::atomic::Ordering::Relaxed;
        let now = self.epoch.elapsed().as_millis() as u64;
        let next = self.next_ms.load(Relaxed);
        if now >= next && self.next_ms.compare_exchange(next, now + self.interval_ms, Relaxed, Relaxed).is_ok() {
            Some(self.held_back.swap(0, Relaxed))
        } else {
            self.held_back.fetch_add(1, Relaxed);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_throttle_admits_one_per_interval_and_counts_the_rest() {
        let throttle = LogThrottle::new(std::time::Duration::from_secs(3600));
        assert_eq!(throttle.admit(), Some(0));
        assert_eq!((throttle.admit(), throttle.admit()), (None, None));
        let throttle = LogThrottle::new(std::time::Duration::ZERO);
        assert_eq!((throttle.admit(), throttle.admit()), (Some(0), Some(0)));
    }

    const OWN_DEBUG: &str =
        "info,gatehouse_common=debug,gatehouse_ratelimit=debug,gatehouse_extauth=debug,gatehouse_transform=debug";

    #[test]
    fn log_level_directives() {
        #[track_caller]
        fn check(level: &str, expected: Result<&str, &str>) {
            let actual = level_directive(level);
            match expected {
                Ok(directive) => assert_eq!(actual.as_deref(), Ok(directive), "LOG_LEVEL={level}"),
                Err(fragment) => {
                    let err = actual.expect_err(level);
                    assert!(err.contains(fragment), "LOG_LEVEL={level}: {err}");
                }
            }
        }
        check("debug", Ok(OWN_DEBUG));
        check("DEBUG", Ok(OWN_DEBUG));
        check(
            "trace",
            Ok(
                "info,gatehouse_common=trace,gatehouse_ratelimit=trace,gatehouse_extauth=trace,gatehouse_transform=trace",
            ),
        );
        check("info", Ok("info"));
        check("Info", Ok("info"));
        check("WARN", Ok("warn"));
        check("warning", Ok("warn"));
        check("error", Ok("error"));
        check("fatal", Ok("error"));
        check("panic", Ok("error"));
        check(" debug ", Ok(OWN_DEBUG));
        check("verbose", Err("expected trace, debug, info, warn or error"));
        check("debug,h2=trace", Err("LOG_FILTER"));
        check("", Err("expected"));
    }

    #[test]
    fn every_level_directive_is_a_valid_filter() {
        for level in ["trace", "debug", "info", "warn", "error"] {
            let directive = level_directive(level).unwrap();
            assert!(EnvFilter::try_new(&directive).is_ok(), "{directive}");
        }
    }

    #[test]
    fn log_filter_replaces_log_level() {
        let filter = |pairs: &[(&str, &str)]| LogFilter::from_env(&Env::from_pairs(pairs.iter().copied()), "info");
        assert_eq!(filter(&[]).unwrap().directive(), "info");
        assert_eq!(filter(&[("LOG_LEVEL", "debug")]).unwrap().directive(), OWN_DEBUG);
        assert_eq!(
            filter(&[("LOG_LEVEL", "debug"), ("LOG_FILTER", "debug,h2=trace")]).unwrap().directive(),
            "debug,h2=trace"
        );
        let err = filter(&[("LOG_LEVEL", "loud")]).unwrap_err().to_string();
        assert!(err.starts_with("environment variable LOG_LEVEL=\"loud\""), "{err}");
        let err = filter(&[("LOG_FILTER", "h2=loud")]).unwrap_err().to_string();
        assert!(err.starts_with("environment variable LOG_FILTER="), "{err}");
    }

    #[test]
    fn log_format_and_no_color() {
        let format = |pairs: &[(&str, &str)]| LogFormat::from_env(&Env::from_pairs(pairs.iter().copied()));
        assert_eq!(format(&[]).unwrap(), LogFormat::Text { color: true });
        assert_eq!(format(&[("NO_COLOR", "1")]).unwrap(), LogFormat::Text { color: false });
        // no-color.org: an empty NO_COLOR does not count.
        assert_eq!(format(&[("NO_COLOR", "")]).unwrap(), LogFormat::Text { color: true });
        assert_eq!(format(&[("LOG_FORMAT", "JSON")]).unwrap(), LogFormat::Json);
        let err = format(&[("LOG_FORMAT", "logfmt")]).unwrap_err().to_string();
        assert!(err.contains("LOG_FORMAT") && err.contains("expected text or json"), "{err}");
    }
}
