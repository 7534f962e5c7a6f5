//! Logging setup: text or JSON lines on stderr, with a level filter.

use std::str::FromStr;

use tracing_subscriber::EnvFilter;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

impl FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "text" | "" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!("unknown log format {other:?}, expected text or json")),
        }
    }
}

/// Installs the global subscriber. `level` is a tracing filter directive: a plain level
/// (`info`, `WARN`, as envoyproxy/ratelimit's LOG_LEVEL takes it) or `target=level` pairs.
/// Calling it twice keeps the first subscriber, which suits tests.
pub fn init(level: &str, format: LogFormat) -> Result<(), String> {
    let directive = match level.to_ascii_lowercase().as_str() {
        "warning" => "warn".to_string(),
        "fatal" | "panic" => "error".to_string(),
        other => other.to_string(),
    };
    let filter = EnvFilter::try_new(&directive).map_err(|e| format!("invalid log level {level:?}: {e}"))?;
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let result = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    // Only "already initialised" can fail here.
    let _ = result;
    Ok(())
}
