//! Typed configuration: YAML files parsed into structs, and environment variables.
//!
//! Every error names where the bad input came from: a file with its line and column, or an
//! environment variable. Services parse once into typed structs, then run their own
//! `validate()` pass that reports problems through [`ConfigError::at`].
//!
//! **Invariant:** this is the only module that reads the process environment; everything else
//! receives an [`Env`] snapshot, which tests build from a map.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::de::DeserializeOwned;
pub use serde_saphyr::{Location, Spanned};

/// A position inside a config file (1-based).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Position {
    pub line: u64,
    pub column: u64,
}

impl Position {
    /// The position a [`Spanned`] value was read from.
    pub fn of<T>(spanned: &Spanned<T>) -> Self {
        let loc = spanned.referenced;
        Position { line: loc.line(), column: loc.column() }
    }
}

/// A configuration problem, with enough context for the user to fix it without guessing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A file could not be read at all.
    #[error("{}: {message}", file.display())]
    Io { file: PathBuf, message: String },
    /// A file was read but its content is wrong.
    #[error("{}:{}:{}: {message}", file.display(), position.line, position.column)]
    Invalid { file: PathBuf, position: Position, message: String },
    /// An environment variable has a value we cannot use.
    #[error("environment variable {name}={value:?}: {message}")]
    Env { name: String, value: String, message: String },
}

impl ConfigError {
    /// A validation error at a known place in a file.
    pub fn at(file: &Path, position: Position, message: impl Into<String>) -> Self {
        ConfigError::Invalid { file: file.to_path_buf(), position, message: message.into() }
    }

    /// The file this error is about, if any.
    pub fn file(&self) -> Option<&Path> {
        match self {
            ConfigError::Io { file, .. } | ConfigError::Invalid { file, .. } => Some(file),
            ConfigError::Env { .. } => None,
        }
    }
}

/// Several problems found in one pass; users fix them all in one edit instead of one per try.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl From<ConfigError> for ConfigErrors {
    fn from(e: ConfigError) -> Self {
        ConfigErrors(vec![e])
    }
}

/// Parses YAML text into `T`. `file` is only used to name the source in errors.
pub fn parse_yaml<T: DeserializeOwned>(file: &Path, text: &str) -> Result<T, ConfigError> {
    serde_saphyr::from_str::<T>(text).map_err(|e| {
        let position = e.location().map(|l| Position { line: l.line(), column: l.column() }).unwrap_or_default();
        ConfigError::Invalid { file: file.to_path_buf(), position, message: yaml_message(&e) }
    })
}

/// Reads and parses one YAML file.
pub fn load_yaml<T: DeserializeOwned>(file: &Path) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| ConfigError::Io { file: file.to_path_buf(), message: e.to_string() })?;
    parse_yaml(file, &text)
}

/// serde-saphyr renders a code snippet into `Display`; the first line is the useful message,
/// the position is reported separately.
fn yaml_message(e: &serde_saphyr::Error) -> String {
    let full = e.to_string();
    let mut message = full.lines().next().unwrap_or("invalid YAML").trim();
    message = message.strip_prefix("error: ").unwrap_or(message);
    // Drop a leading "line X column Y: " that would repeat the position we print.
    if message.starts_with("line ")
        && let Some((_, rest)) = message.split_once(": ")
    {
        message = rest;
    }
    match message.find(" at line ") {
        Some(i) => message[..i].to_string(),
        None => message.to_string(),
    }
}

/// A duration in a config file, written as Go durations are (`500ms`, `30s`, `5m`, `1h30m`),
/// the way Envoy users write them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConfigDuration(pub Duration);

impl<'de> serde::Deserialize<'de> for ConfigDuration {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        parse_go_duration(&text).map(ConfigDuration).map_err(serde::de::Error::custom)
    }
}

/// A snapshot of environment variables. Services read their settings from this, never from
/// `std::env`, so tests can build settings from a literal map.
#[derive(Clone, Debug, Default)]
pub struct Env {
    vars: BTreeMap<String, String>,
}

impl Env {
    /// The current process environment.
    pub fn from_process() -> Self {
        Env { vars: std::env::vars().collect() }
    }

    pub fn from_pairs<I, K, V>(pairs: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        Env { vars: pairs.into_iter().map(|(k, v)| (k.into(), v.into())).collect() }
    }

    /// The raw value, with empty strings treated as unset (as envconfig-style Go services do).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.vars.get(name).map(String::as_str).filter(|v| !v.is_empty())
    }

    pub fn string(&self, name: &str, default: &str) -> String {
        self.get(name).unwrap_or(default).to_string()
    }

    /// Parses a value with `FromStr`, naming the variable on failure.
    pub fn parse<T>(&self, name: &str, default: T) -> Result<T, ConfigError>
    where
        T: FromStr,
        T::Err: fmt::Display,
    {
        match self.get(name) {
            None => Ok(default),
            Some(v) => v.trim().parse().map_err(|e: T::Err| self.error(name, e)),
        }
    }

    /// Booleans as Go's `strconv.ParseBool` accepts them, so existing deployments keep working.
    /// A listen address from a host variable and a port variable, as envoyproxy/ratelimit's
    /// `GRPC_HOST`/`GRPC_PORT` pairs. The host defaults to all interfaces.
    pub fn socket_addr(&self, host_var: &str, port_var: &str, default_port: u16) -> Result<SocketAddr, ConfigError> {
        let host = self.string(host_var, "0.0.0.0");
        let port = self.parse::<u16>(port_var, default_port)?;
        let text = if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") };
        text.parse().map_err(|e| self.error(host_var, format!("not an IP address: {e}")))
    }

    pub fn bool(&self, name: &str, default: bool) -> Result<bool, ConfigError> {
        match self.get(name) {
            None => Ok(default),
            Some(v) => match v.trim() {
                "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(true),
                "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(false),
                _ => Err(self.error(name, "expected a boolean (true/false)")),
            },
        }
    }

    /// Durations in Go's `time.ParseDuration` form (`10s`, `1.5m`, `300ms`, `1h30m`).
    pub fn duration(&self, name: &str, default: Duration) -> Result<Duration, ConfigError> {
        match self.get(name) {
            None => Ok(default),
            Some(v) => parse_go_duration(v.trim()).map_err(|e| self.error(name, e)),
        }
    }

    pub fn error(&self, name: &str, message: impl fmt::Display) -> ConfigError {
        ConfigError::Env {
            name: name.to_string(),
            value: self.get(name).unwrap_or_default().to_string(),
            message: message.to_string(),
        }
    }
}

/// Parses a Go-style duration string. A bare number is rejected, as Go does, except `0`.
pub fn parse_go_duration(s: &str) -> Result<Duration, String> {
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let mut rest = s;
    let mut total = 0f64;
    if rest.is_empty() {
        return Err("empty duration".into());
    }
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| format!("missing unit in duration {s:?} (use e.g. 10s, 500ms, 1m)"))?;
        let (num, tail) = rest.split_at(num_end);
        let value: f64 = num.parse().map_err(|_| format!("invalid number in duration {s:?}"))?;
        let unit_end = tail.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(tail.len());
        let (unit, next) = tail.split_at(unit_end);
        let scale = match unit {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(format!("unknown unit {unit:?} in duration {s:?}")),
        };
        total += value * scale;
        rest = next;
    }
    Duration::try_from_secs_f64(total).map_err(|_| format!("duration {s:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Sample {
        name: String,
        count: u32,
    }

    #[test]
    fn yaml_errors_name_file_line_and_field() {
        let err = parse_yaml::<Sample>(Path::new("x.yaml"), "name: a\ncuont: 3\n").unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("x.yaml:2:"), "{text}");
        assert!(text.contains("cuont"), "{text}");
    }

    #[test]
    fn yaml_type_errors_point_at_the_value() {
        let err = parse_yaml::<Sample>(Path::new("x.yaml"), "name: a\ncount: lots\n").unwrap_err();
        let ConfigError::Invalid { position, .. } = &err else { panic!("{err:?}") };
        assert_eq!(position.line, 2, "{err}");
    }

    #[test]
    fn go_durations() {
        for (input, ms) in [("10s", 10_000), ("1.5m", 90_000), ("300ms", 300), ("1h30m", 5_400_000), ("0", 0)] {
            assert_eq!(parse_go_duration(input).unwrap(), Duration::from_millis(ms), "{input}");
        }
        for bad in ["10", "1x", "", "s"] {
            assert!(parse_go_duration(bad).is_err(), "{bad}");
        }
    }

    /// Found by the `common_config_yaml` fuzz target: a duration too large for `Duration`
    /// panicked (in a config file, an environment variable, anywhere durations are read).
    #[test]
    fn huge_durations_are_errors() {
        let huge = format!("15s1h{}.5s", "8".repeat(110));
        for input in [huge.as_str(), "18446744073709551616s", "99999999999999999999h"] {
            let err = parse_go_duration(input).unwrap_err();
            assert!(err.contains("is too large"), "{input}: {err}");
        }
        assert_eq!(parse_go_duration("2562047h"), Ok(Duration::from_secs(2_562_047 * 3600)));
    }

    #[test]
    fn env_errors_name_the_variable() {
        let env = Env::from_pairs([("GRPC_PORT", "eighty"), ("EMPTY", "")]);
        let err = env.parse::<u16>("GRPC_PORT", 8081).unwrap_err();
        assert!(err.to_string().starts_with("environment variable GRPC_PORT=\"eighty\""));
        assert_eq!(env.parse::<u16>("EMPTY", 7).unwrap(), 7);
        assert!(env.bool("GRPC_PORT", false).is_err());
    }
}
