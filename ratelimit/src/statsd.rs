//! statsd and DogStatsD output (USE_STATSD, USE_DOG_STATSD), as envoyproxy/ratelimit emits them.
//!
//! Every STATS_FLUSH_INTERVAL the [`Exporter`] reads the counters, turns each one that moved
//! into a line under envoyproxy/ratelimit's statsd name (`ratelimit.service.rate_limit.
//! <domain>.<key>.total_hits`, …) with the increment since the last flush, and sends the lines
//! in UDP datagrams to STATSD_HOST:STATSD_PORT. EXTRA_TAGS go on every line: folded into the
//! name as gostats writes them (`.__key=value`) for statsd, after `|#` for DogStatsD.
//!
//! The request path never touches any of this: it only increments the counters. The exporter
//! runs on its own task, and a datagram that cannot be sent at once (a dead or slow statsd, a
//! full socket buffer) is dropped, never waited for.
//!
//! The counters' one source of truth is the Prometheus registry, which offers no way to list
//! a family's series; the exporter reads the text exposition, the same bytes `/metrics` serves.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use gatehouse_common::config::{ConfigError, Env};
use gatehouse_common::metrics::Metrics;
use gatehouse_common::server::Shutdown;
use regex::Regex;
use std::net::UdpSocket;

use crate::stats::sanitize_stat_name;

/// How the lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Plain statsd (`name.__tag=value:3|c`), as gostats writes it.
    Statsd,
    /// DogStatsD (`name:3|c|#tag:value`), as datadog-go writes it.
    DogStatsd,
}

/// A DogStatsD rewrite (USE_DOG_STATSD_MOGRIFIERS): the first mogrifier whose pattern matches
/// a name replaces it with `name` and adds `tags`; `$1`, `$2`… stand for the pattern's groups.
#[derive(Clone, Debug)]
pub struct Mogrifier {
    pattern: Regex,
    name: String,
    tags: Vec<(String, String)>,
}

/// Where and how counters are pushed.
#[derive(Clone, Debug)]
pub struct StatsdSettings {
    pub format: Format,
    /// STATSD_HOST, resolved again at every flush so a moved statsd is followed.
    pub host: String,
    pub port: u16,
    /// EXTRA_TAGS, sorted by key, values with `.`, `:` and `|` replaced by `_` (as gostats).
    pub extra_tags: Vec<(String, String)>,
    /// DogStatsD only: DD_ENTITY_ID, DD_ENV, DD_SERVICE and DD_VERSION as datadog-go adds them,
    /// first on every line.
    pub global_tags: Vec<String>,
    pub mogrifiers: Vec<Mogrifier>,
    pub flush_interval: Duration,
}

impl StatsdSettings {
    /// envoyproxy/ratelimit's stats variables; `None` when nothing is pushed.
    ///
    /// As there, USE_STATSD defaults to `true`, DISABLE_STATS turns every sink off, and
    /// USE_STATSD and USE_DOG_STATSD cannot both be on. Unlike there, an unset USE_STATSD gives
    /// way to USE_DOG_STATSD or USE_PROMETHEUS instead of failing start-up, and USE_STATSD=true
    /// works next to USE_PROMETHEUS (Prometheus is always served anyway).
    pub fn from_env(env: &Env) -> Result<Option<StatsdSettings>, ConfigError> {
        if env.bool("DISABLE_STATS", false)? {
            return Ok(None);
        }
        let dog = env.bool("USE_DOG_STATSD", false)?;
        let statsd = env.bool("USE_STATSD", !dog && !env.bool("USE_PROMETHEUS", false)?)?;
        let format = match (statsd, dog) {
            (true, true) => {
                return Err(env.error("USE_STATSD", "set only one of USE_STATSD and USE_DOG_STATSD"));
            }
            (true, false) => Format::Statsd,
            (false, true) => Format::DogStatsd,
            (false, false) => return Ok(None),
        };
        let mut extra_tags: Vec<(String, String)> =
            parse_map(env, "EXTRA_TAGS")?.into_iter().map(|(k, v)| (k, tag_value(&v))).collect();
        extra_tags.sort();
        extra_tags.dedup_by(|a, b| a.0 == b.0);
        let flush_interval = env.duration("STATS_FLUSH_INTERVAL", Duration::from_secs(10))?;
        if flush_interval.is_zero() {
            return Err(env.error("STATS_FLUSH_INTERVAL", "must be greater than zero"));
        }
        let (global_tags, mogrifiers) = match format {
            Format::Statsd => (Vec::new(), Vec::new()),
            Format::DogStatsd => (
                [
                    ("DD_ENTITY_ID", "dd.internal.entity_id"),
                    ("DD_ENV", "env"),
                    ("DD_SERVICE", "service"),
                    ("DD_VERSION", "version"),
                ]
                .iter()
                .filter_map(|(var, tag)| env.get(var).map(|v| format!("{tag}:{v}")))
                .collect(),
                mogrifiers(env)?,
            ),
        };
        Ok(Some(StatsdSettings {
            format,
            host: env.string("STATSD_HOST", "localhost"),
            port: env.parse("STATSD_PORT", 8125u16)?,
            extra_tags,
            global_tags,
            mogrifiers,
            flush_interval,
        }))
    }
}

/// A map variable as envconfig reads one: `k1:v1,k2:v2`.
fn parse_map(env: &Env, name: &str) -> Result<Vec<(String, String)>, ConfigError> {
    let Some(text) = env.get(name) else { return Ok(Vec::new()) };
    text.split(',')
        .map(|pair| match pair.split(':').collect::<Vec<_>>()[..] {
            [k, v] => Ok((k.trim().to_string(), v.trim().to_string())),
            _ => Err(env.error(name, format!("{pair:?} is not key:value (expected k1:v1,k2:v2)"))),
        })
        .filter(|pair| pair.as_ref().map_or(true, |(k, v)| !k.is_empty() && !v.is_empty()))
        .collect()
}

/// gostats replaces the characters statsd reserves in tag values.
fn tag_value(value: &str) -> String {
    value.replace(['.', ':', '|'], "_")
}

/// USE_DOG_STATSD_MOGRIFIERS=A,B with DOG_STATSD_MOGRIFIER_A_PATTERN, `_NAME` and `_TAGS`.
fn mogrifiers(env: &Env) -> Result<Vec<Mogrifier>, ConfigError> {
    let Some(list) = env.get("USE_DOG_STATSD_MOGRIFIERS") else { return Ok(Vec::new()) };
    let mut out = Vec::new();
    for id in list.split(',').map(str::trim).filter(|id| !id.is_empty()) {
        let var = |field: &str| format!("DOG_STATSD_MOGRIFIER_{id}_{field}");
        let required = |field: &str| {
            env.get(&var(field))
                .map(str::to_string)
                .ok_or_else(|| env.error("USE_DOG_STATSD_MOGRIFIERS", format!("mogrifier {id} needs {}", var(field))))
        };
        let pattern = required("PATTERN")?;
        let pattern =
            Regex::new(&pattern).map_err(|e| env.error(&var("PATTERN"), format!("invalid regular expression: {e}")))?;
        let name = required("NAME")?;
        let tags = parse_map(env, &var("TAGS"))?;
        out.push(Mogrifier { pattern, name, tags });
    }
    Ok(out)
}

impl Mogrifier {
    /// `$N` in `template` replaced by group N of `captures` (kept as written if there is none).
    fn expand(template: &str, captures: &regex::Captures<'_>) -> String {
        let mut out = String::with_capacity(template.len());
        let mut rest = template;
        while let Some(at) = rest.find('$') {
            out.push_str(&rest[..at]);
            let digits = rest[at + 1..].bytes().take_while(u8::is_ascii_digit).count();
            let reference = &rest[at..at + 1 + digits];
            match reference[1..].parse::<usize>().ok().and_then(|i| captures.get(i)) {
                Some(group) => out.push_str(group.as_str()),
                None => out.push_str(reference),
            }
            rest = &rest[at + 1 + digits..];
        }
        out.push_str(rest);
        out
    }
}

/// Reads the counters and pushes their increments.
pub struct Exporter {
    settings: StatsdSettings,
    metrics: Metrics,
    /// The total each series had at the last flush.
    sent: HashMap<Series, u64>,
}

/// One line's identity: its name and, for DogStatsD, its tags.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct Series {
    name: String,
    tags: Option<String>,
}

/// gostats' datagram size for UDP: a 1500-byte MTU without fragmentation.
const MAX_DATAGRAM: usize = 1432;

impl Exporter {
    pub fn new(settings: StatsdSettings, metrics: Metrics) -> Exporter {
        Exporter { settings, metrics, sent: HashMap::new() }
    }

    /// The lines for every counter that moved since the last call, in a stable order.
    pub fn collect(&mut self) -> Vec<String> {
        let exposition = self.metrics.encode();
        let mut totals: HashMap<Series, u64> = HashMap::new();
        for Sample { metric, labels, value } in exposition.lines().filter_map(parse_sample) {
            if let Some(name) = statsd_name(metric, &labels) {
                let total = totals.entry(self.series(name)).or_default();
                *total = total.saturating_add(value);
            }
        }
        let mut lines: Vec<String> = totals
            .into_iter()
            .filter_map(|(series, total)| {
                let before = self.sent.insert(series.clone(), total).unwrap_or(0);
                // A total below the last one can only be a counter that was replaced: send it whole.
                let delta = if total >= before { total - before } else { total };
                (delta > 0).then(|| match &series.tags {
                    Some(tags) => format!("{}:{delta}|c|#{tags}", series.name),
                    None => format!("{}:{delta}|c", series.name),
                })
            })
            .collect();
        lines.sort();
        lines
    }

    /// A statsd name with this exporter's tags: folded into the name as `.__k=v` (statsd), or
    /// `k:v,…` beside it after the mogrifiers ran (DogStatsD).
    fn series(&self, mut name: String) -> Series {
        let s = &self.settings;
        match s.format {
            Format::Statsd => {
                for (k, v) in &s.extra_tags {
                    name.push_str(&format!(".__{k}={v}"));
                }
                Series { name, tags: None }
            }
            Format::DogStatsd => {
                let mut tags = s.global_tags.clone();
                tags.extend(s.extra_tags.iter().map(|(k, v)| format!("{k}:{v}")));
                if let Some((m, captures)) = s.mogrifiers.iter().find_map(|m| Some((m, m.pattern.captures(&name)?))) {
                    tags.extend(m.tags.iter().map(|(k, v)| format!("{k}:{}", Mogrifier::expand(v, &captures))));
                    name = Mogrifier::expand(&m.name, &captures);
                }
                Series { name, tags: (!tags.is_empty()).then(|| tags.join(",")) }
            }
        }
    }

    /// Flushes every STATS_FLUSH_INTERVAL, and once more when `shutdown` has fired and `drain`
    /// has passed, then returns.
    pub async fn run(mut self, shutdown: Shutdown, drain: Duration) {
        let mut tick = tokio::time::interval(self.settings.flush_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        let mut sender = Sender::default();
        let stopped = shutdown.drained(drain);
        let mut stopped = std::pin::pin!(stopped);
        loop {
            let last = tokio::select! {
                _ = tick.tick() => false,
                _ = &mut stopped => true,
            };
            let lines = self.collect();
            if !lines.is_empty() {
                sender.send(&self.settings.host, self.settings.port, &datagrams(&lines)).await;
            }
            if last {
                return;
            }
        }
    }
}

/// Lines packed into datagrams of at most [`MAX_DATAGRAM`] bytes (a longer line goes alone).
pub fn datagrams(lines: &[String]) -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = Vec::new();
    for line in lines {
        match out.last_mut() {
            Some(packet) if packet.len() + line.len() < MAX_DATAGRAM => {
                packet.push(b'\n');
                packet.extend_from_slice(line.as_bytes());
            }
            _ => out.push(line.as_bytes().to_vec()),
        }
    }
    out
}

/// The UDP side: one non-blocking socket per address family, made when first needed. (A
/// std socket: tokio's would report a new socket not yet writable until the reactor polled it.)
#[derive(Default)]
struct Sender {
    v4: Option<UdpSocket>,
    v6: Option<UdpSocket>,
    /// Whether the last flush failed, so a dead statsd is logged once, not every flush.
    failing: bool,
}

impl Sender {
    async fn send(&mut self, host: &str, port: u16, packets: &[Vec<u8>]) {
        let result = self.try_send(host, port, packets).await;
        match (&result, self.failing) {
            (Err(e), false) => tracing::warn!(error = %e, host, port, "cannot send stats to statsd; dropping them"),
            (Ok(()), true) => tracing::info!(host, port, "sending stats to statsd again"),
            _ => {}
        }
        self.failing = result.is_err();
    }

    async fn try_send(&mut self, host: &str, port: u16, packets: &[Vec<u8>]) -> std::io::Result<()> {
        let lookup = tokio::time::timeout(Duration::from_secs(2), tokio::net::lookup_host((host, port)));
        let addrs: Vec<SocketAddr> = lookup
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "resolving STATSD_HOST timed out"))??
            .collect();
        // IPv4 first: `localhost` is 127.0.0.1 for most statsd daemons.
        let addr = addrs
            .iter()
            .find(|a| a.is_ipv4())
            .or(addrs.first())
            .copied()
            .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "STATSD_HOST has no address"))?;
        let slot = if addr.is_ipv4() { &mut self.v4 } else { &mut self.v6 };
        if slot.is_none() {
            let local: SocketAddr = if addr.is_ipv4() { ([0, 0, 0, 0], 0).into() } else { ([0u16; 8], 0).into() };
            let socket = UdpSocket::bind(local)?;
            socket.set_nonblocking(true)?;
            *slot = Some(socket);
        }
        let socket = slot.as_ref().ok_or_else(|| std::io::Error::other("no UDP socket"))?;
        let mut dropped = 0;
        let mut error = None;
        for packet in packets {
            // A non-blocking send never waits: with the socket's buffer full the datagram is
            // dropped, as a lost one would be.
            if let Err(e) = socket.send_to(packet, addr) {
                dropped += 1;
                error = Some(e);
            }
        }
        match error {
            Some(e) => {
                Err(std::io::Error::new(e.kind(), format!("{dropped} of {} datagrams dropped: {e}", packets.len())))
            }
            None => Ok(()),
        }
    }
}

/// One sample of the text exposition: `name{label="value",…} value`.
#[derive(Debug, PartialEq, Eq)]
struct Sample<'a> {
    metric: &'a str,
    labels: Vec<(&'a str, String)>,
    value: u64,
}

fn parse_sample(line: &str) -> Option<Sample<'_>> {
    if line.starts_with('#') || line.is_empty() {
        return None;
    }
    let name_end = line.find(['{', ' '])?;
    let (name, mut rest) = line.split_at(name_end);
    let mut labels = Vec::new();
    if let Some(inner) = rest.strip_prefix('{') {
        rest = inner;
        loop {
            rest = rest.trim_start_matches(',');
            if let Some(after) = rest.strip_prefix('}') {
                rest = after;
                break;
            }
            let (key, after) = rest.split_once("=\"")?;
            let mut value = String::new();
            let mut chars = after.char_indices();
            let end = loop {
                match chars.next()? {
                    (i, '"') => break i,
                    (_, '\\') => match chars.next()?.1 {
                        'n' => value.push('\n'),
                        c => value.push(c),
                    },
                    (_, c) => value.push(c),
                }
            };
            labels.push((key, value));
            rest = &after[end + 1..];
        }
    }
    let value = rest.split_whitespace().next()?;
    let value =
        value.parse::<u64>().ok().or_else(|| value.parse::<f64>().ok().filter(|v| *v >= 0.0).map(|v| v as u64))?;
    Some(Sample { metric: name, labels, value })
}

/// envoyproxy/ratelimit's statsd name for a Prometheus series, or `None` for series it has no
/// counter for.
fn statsd_name(metric: &str, labels: &[(&str, String)]) -> Option<String> {
    let label = |name: &str| labels.iter().find(|(k, _)| *k == name).map(|(_, v)| sanitize_stat_name(v));
    let counter = metric.strip_suffix("_total")?;
    if let Some(stat) = counter.strip_prefix("ratelimit_service_rate_limit_") {
        let domain = label("domain")?;
        return match stat {
            "domain_not_found" => Some(format!("ratelimit.service.rate_limit.{domain}.domain_not_found")),
            "total_hits"
            | "over_limit"
            | "near_limit"
            | "within_limit"
            | "shadow_mode"
            | "over_limit_with_local_cache" => match label("key").filter(|k| !k.is_empty()) {
                Some(key) => Some(format!("ratelimit.service.rate_limit.{domain}.{key}.{stat}")),
                None => Some(format!("ratelimit.service.rate_limit.{domain}.{stat}")),
            },
            _ => None,
        };
    }
    match counter {
        "ratelimit_service_should_rate_limit_error" => {
            Some(format!("ratelimit.service.call.should_rate_limit.{}", label("err_type")?))
        }
        "ratelimit_service_global_shadow_mode" => Some("ratelimit.service.global_shadow_mode".into()),
        "ratelimit_service_config_load_success" => Some("ratelimit.service.config_load_success".into()),
        "ratelimit_service_config_load_error" => Some("ratelimit.service.config_load_error".into()),
        // Counted per gRPC method by envoyproxy/ratelimit's server interceptor.
        "ratelimit_service_total_requests" => Some("ratelimit_server.ShouldRateLimit.total_requests".into()),
        // Gatehouse's own: BACKEND_FAILURE_MODE=open.
        "ratelimit_service_backend_failure_allowed" => Some("ratelimit.service.backend_failure_allowed".into()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Stats;

    fn settings(pairs: &[(&str, &str)]) -> Option<StatsdSettings> {
        StatsdSettings::from_env(&Env::from_pairs(pairs.iter().copied())).unwrap()
    }

    #[test]
    fn variables_as_envoyproxy_ratelimit_reads_them() {
        let s = settings(&[]).unwrap();
        assert_eq!(
            (s.format, s.host.as_str(), s.port, s.flush_interval),
            (Format::Statsd, "localhost", 8125, Duration::from_secs(10))
        );
        assert!(settings(&[("USE_STATSD", "false")]).is_none());
        assert!(settings(&[("DISABLE_STATS", "true"), ("USE_STATSD", "true")]).is_none());
        // An unset USE_STATSD gives way to the other sinks.
        assert!(settings(&[("USE_PROMETHEUS", "true")]).is_none());
        assert_eq!(settings(&[("USE_DOG_STATSD", "true")]).unwrap().format, Format::DogStatsd);
        assert_eq!(settings(&[("USE_PROMETHEUS", "true"), ("USE_STATSD", "true")]).unwrap().format, Format::Statsd);

        let s = settings(&[("EXTRA_TAGS", "zone:eu.west,app:rl"), ("STATS_FLUSH_INTERVAL", "250ms")]).unwrap();
        assert_eq!(s.extra_tags, [("app".to_string(), "rl".to_string()), ("zone".into(), "eu_west".into())]);
        assert_eq!(s.flush_interval, Duration::from_millis(250));

        for (pairs, name, expected) in [
            (&[("USE_STATSD", "true"), ("USE_DOG_STATSD", "true")][..], "USE_STATSD", "only one of"),
            (&[("EXTRA_TAGS", "a:b,c")], "EXTRA_TAGS", "\"c\" is not key:value"),
            (&[("STATS_FLUSH_INTERVAL", "0")], "STATS_FLUSH_INTERVAL", "greater than zero"),
            (&[("STATSD_PORT", "x")], "STATSD_PORT", "invalid digit"),
            (
                &[("USE_DOG_STATSD", "true"), ("USE_DOG_STATSD_MOGRIFIERS", "A")],
                "USE_DOG_STATSD_MOGRIFIERS",
                "mogrifier A needs DOG_STATSD_MOGRIFIER_A_PATTERN",
            ),
            (
                &[
                    ("USE_DOG_STATSD", "true"),
                    ("USE_DOG_STATSD_MOGRIFIERS", "A"),
                    ("DOG_STATSD_MOGRIFIER_A_PATTERN", "("),
                ],
                "DOG_STATSD_MOGRIFIER_A_PATTERN",
                "invalid regular expression",
            ),
        ] {
            let err = StatsdSettings::from_env(&Env::from_pairs(pairs.iter().copied())).unwrap_err().to_string();
            assert!(err.contains(name) && err.contains(expected), "{err}");
        }
    }

    #[test]
    fn exposition_samples() {
        let sample = parse_sample(r#"a_total{domain="d",key="x\"y\\z\nw"} 12"#).unwrap();
        assert_eq!((sample.metric, sample.value), ("a_total", 12));
        assert_eq!(sample.labels, [("domain", "d".to_string()), ("key", "x\"y\\z\nw".to_string())]);
        assert_eq!(parse_sample("b_total 3"), Some(Sample { metric: "b_total", labels: vec![], value: 3 }));
        assert_eq!(parse_sample("# TYPE b counter"), None);
        assert_eq!(parse_sample("# EOF"), None);
    }

    /// Counters as the service counts them, out under envoyproxy/ratelimit's statsd names.
    #[test]
    fn statsd_lines_carry_increments_under_upstream_names() {
        let metrics = Metrics::new();
        let stats = Stats::new(&metrics);
        let rule = stats.rule("mongo_cps", "database_users");
        rule.total_hits.inc_by(3);
        rule.over_limit.inc();
        stats.rule_for_full_key("edge.remote_address_10.1.2.3").total_hits.inc();
        stats.total_requests.inc_by(4);
        stats.should_rate_limit_error.get_or_create(&crate::stats::ErrorLabels { err_type: "redis_error" }).inc();
        stats.domain_not_found.get_or_create(&crate::stats::DomainLabels { domain: "nope".into() }).inc();

        let mut exporter = Exporter::new(settings(&[("EXTRA_TAGS", "app:rl")]).unwrap(), metrics);
        assert_eq!(
            exporter.collect(),
            [
                "ratelimit.service.call.should_rate_limit.redis_error.__app=rl:1|c",
                "ratelimit.service.rate_limit.edge.remote_address_10_1_2_3.total_hits.__app=rl:1|c",
                "ratelimit.service.rate_limit.mongo_cps.database_users.over_limit.__app=rl:1|c",
                "ratelimit.service.rate_limit.mongo_cps.database_users.total_hits.__app=rl:3|c",
                "ratelimit.service.rate_limit.nope.domain_not_found.__app=rl:1|c",
                "ratelimit_server.ShouldRateLimit.total_requests.__app=rl:4|c",
            ]
        );
        // Only what moved since, by how much it moved.
        assert!(exporter.collect().is_empty());
        rule.total_hits.inc_by(2);
        assert_eq!(
            exporter.collect(),
            ["ratelimit.service.rate_limit.mongo_cps.database_users.total_hits.__app=rl:2|c"]
        );
    }

    #[test]
    fn dogstatsd_tags_and_mogrifiers() {
        let metrics = Metrics::new();
        let stats = Stats::new(&metrics);
        stats.rule("mongo_cps", "database_users").total_hits.inc_by(3);
        stats.total_requests.inc();
        let s = settings(&[
            ("USE_DOG_STATSD", "true"),
            ("EXTRA_TAGS", "app:rl"),
            ("DD_ENV", "prod"),
            ("USE_DOG_STATSD_MOGRIFIERS", "HITS"),
            ("DOG_STATSD_MOGRIFIER_HITS_PATTERN", r"^ratelimit\.service\.rate_limit\.([^.]+)\.(.*)\.([^.]+)$"),
            ("DOG_STATSD_MOGRIFIER_HITS_NAME", "ratelimit.service.rate_limit.$3"),
            ("DOG_STATSD_MOGRIFIER_HITS_TAGS", "domain:$1"),
        ])
        .unwrap();
        let mut exporter = Exporter::new(s, metrics);
        assert_eq!(
            exporter.collect(),
            [
                "ratelimit.service.rate_limit.total_hits:3|c|#env:prod,app:rl,domain:mongo_cps",
                "ratelimit_server.ShouldRateLimit.total_requests:1|c|#env:prod,app:rl",
            ]
        );
    }

    #[test]
    fn mogrifier_templates() {
        let re = Regex::new(r"^a\.(\w+)\.(\w+)$").unwrap();
        let captures = re.captures("a.x.y").unwrap();
        assert_eq!(Mogrifier::expand("b.$2.$1.$9$", &captures), "b.y.x.$9$");
    }

    #[test]
    fn lines_fill_datagrams_up_to_the_udp_size() {
        let lines: Vec<String> =
            (0..100).map(|i| format!("ratelimit.service.rate_limit.d.k{i:03}.total_hits:1|c")).collect();
        let packets = datagrams(&lines);
        assert!(packets.len() > 1);
        assert!(packets.iter().all(|p| p.len() <= MAX_DATAGRAM));
        let rejoined: Vec<String> = packets
            .iter()
            .flat_map(|p| String::from_utf8_lossy(p).lines().map(String::from).collect::<Vec<_>>())
            .collect();
        assert_eq!(rejoined, lines);
    }
}
