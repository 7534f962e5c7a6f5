//! The rule tree: every domain's descriptors, validated, and the lookup from a request
//! descriptor to the rule that governs it.
//!
//! Matching follows envoyproxy/ratelimit: at each level an exact `key`/`value` pair wins, then
//! the first wildcard (`value: "prefix*"`, in file order), then the key-only default. A rule
//! applies only when the request descriptor has exactly as many entries as the rule is deep.

mod file;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use gatehouse_common::config::{ConfigError, ConfigErrors, Position, Spanned, load_yaml};

use crate::stats::{RuleStats, Stats};
use file::{DescriptorYaml, FileConfig, RateLimitYaml};

/// A time unit as envoyproxy/ratelimit defines it: fixed lengths, aligned to the Unix epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Unit {
    Second,
    Minute,
    Hour,
    Day,
    Week,
    /// 30 days.
    Month,
    /// 365 days.
    Year,
}

impl Unit {
    pub fn parse(s: &str) -> Option<Unit> {
        Some(match s.to_ascii_uppercase().as_str() {
            "SECOND" => Unit::Second,
            "MINUTE" => Unit::Minute,
            "HOUR" => Unit::Hour,
            "DAY" => Unit::Day,
            "WEEK" => Unit::Week,
            "MONTH" => Unit::Month,
            "YEAR" => Unit::Year,
            _ => return None,
        })
    }

    pub fn seconds(self) -> u64 {
        match self {
            Unit::Second => 1,
            Unit::Minute => 60,
            Unit::Hour => 3_600,
            Unit::Day => 86_400,
            Unit::Week => 604_800,
            Unit::Month => 2_592_000,
            Unit::Year => 31_536_000,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Unit::Second => "SECOND",
            Unit::Minute => "MINUTE",
            Unit::Hour => "HOUR",
            Unit::Day => "DAY",
            Unit::Week => "WEEK",
            Unit::Month => "MONTH",
            Unit::Year => "YEAR",
        }
    }
}

/// How a limit counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// One counter per epoch-aligned window; envoyproxy/ratelimit's only algorithm.
    FixedWindow,
    /// The current window's counter plus the previous one's, weighted by how much of it
    /// still overlaps the sliding window.
    SlidingWindow,
    /// GCRA: tokens refill continuously at `requests_per_unit` per unit, up to `burst`.
    TokenBucket,
}

impl Algorithm {
    fn parse(s: &str) -> Option<Algorithm> {
        Some(match s {
            "fixed_window" => Algorithm::FixedWindow,
            "sliding_window" => Algorithm::SlidingWindow,
            "token_bucket" => Algorithm::TokenBucket,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Algorithm::FixedWindow => "fixed_window",
            Algorithm::SlidingWindow => "sliding_window",
            Algorithm::TokenBucket => "token_bucket",
        }
    }

    /// Short tag used in counter keys of non-default limits.
    pub(crate) fn tag(self) -> &'static str {
        match self {
            Algorithm::FixedWindow => "fw",
            Algorithm::SlidingWindow => "sw",
            Algorithm::TokenBucket => "tb",
        }
    }
}

/// One limit: at most `requests_per_unit` per `unit`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limit {
    pub requests_per_unit: u32,
    pub unit: Unit,
    pub algorithm: Algorithm,
    /// Token bucket size; equal to `requests_per_unit` unless configured.
    pub burst: u32,
    /// Appended to the descriptor's counter key. Empty for a descriptor's only fixed-window
    /// limit, so that its keys are exactly envoyproxy/ratelimit's.
    pub key_suffix: String,
}

/// What a matched descriptor is subject to.
#[derive(Debug)]
pub struct Rule {
    /// `domain.key_value.key2` as envoyproxy/ratelimit names it in stats and /rlconfig.
    pub full_key: String,
    pub name: Option<String>,
    /// Empty when `unlimited`.
    pub limits: Vec<Limit>,
    pub unlimited: bool,
    pub shadow_mode: bool,
    pub replaces: Vec<String>,
    pub detailed_metric: bool,
    pub stats: RuleStats,
}

/// How one level of a descriptor was matched.
#[derive(Debug)]
enum NodeKind {
    Exact,
    /// The value prefix before `*`, and whether matching values share one counter.
    Wildcard {
        prefix: String,
        share_threshold: bool,
    },
    /// Key-only: any value, one counter per value.
    Default,
}

#[derive(Debug)]
pub struct Node {
    /// The value as written in the config (`foo*` for wildcards, empty for key-only).
    value: String,
    kind: NodeKind,
    value_to_metric: bool,
    rule: Option<Arc<Rule>>,
    children: HashMap<String, KeyGroup>,
}

/// The nodes at one level that share a key.
#[derive(Debug, Default)]
struct KeyGroup {
    exact: HashMap<String, Node>,
    wildcards: Vec<Node>,
    default: Option<Node>,
}

impl KeyGroup {
    fn find(&self, value: &str) -> Option<&Node> {
        if let Some(node) = self.exact.get(value) {
            return Some(node);
        }
        for node in &self.wildcards {
            if let NodeKind::Wildcard { prefix, .. } = &node.kind
                && value.starts_with(prefix.as_str())
            {
                return Some(node);
            }
        }
        self.default.as_ref()
    }
}

#[derive(Debug)]
pub struct Domain {
    pub name: String,
    children: HashMap<String, KeyGroup>,
}

/// A request descriptor entry, whatever type carries it.
pub trait EntryRef {
    fn key(&self) -> &str;
    fn value(&self) -> &str;
}

impl EntryRef for (String, String) {
    fn key(&self) -> &str {
        &self.0
    }
    fn value(&self) -> &str {
        &self.1
    }
}

impl EntryRef for (&str, &str) {
    fn key(&self) -> &str {
        self.0
    }
    fn value(&self) -> &str {
        self.1
    }
}

/// The outcome of matching a descriptor: the rule and the node matched at each level.
#[derive(Debug)]
pub struct Matched<'a> {
    pub rule: &'a Arc<Rule>,
    path: Vec<&'a Node>,
}

impl Domain {
    pub fn find<'a, E: EntryRef>(&'a self, entries: &[E]) -> Option<Matched<'a>> {
        let mut level = &self.children;
        let mut path = Vec::with_capacity(entries.len());
        for (i, entry) in entries.iter().enumerate() {
            let node = level.get(entry.key())?.find(entry.value())?;
            path.push(node);
            if i + 1 == entries.len() {
                return node.rule.as_ref().map(|rule| Matched { rule, path });
            }
            level = &node.children;
        }
        None
    }
}

impl Matched<'_> {
    /// Writes the counter key envoyproxy/ratelimit uses, without its window suffix:
    /// `prefix + domain + "_" + (key + "_" + value + "_")*`. Values matched by a
    /// `share_threshold` wildcard are replaced by the wildcard so that they share a counter.
    pub fn write_cache_key<E: EntryRef>(&self, out: &mut String, prefix: &str, domain: &str, entries: &[E]) {
        out.push_str(prefix);
        out.push_str(domain);
        out.push('_');
        for (entry, node) in entries.iter().zip(&self.path) {
            out.push_str(entry.key());
            out.push('_');
            match &node.kind {
                NodeKind::Wildcard { share_threshold: true, .. } => out.push_str(&node.value),
                _ => out.push_str(entry.value()),
            }
            out.push('_');
        }
    }

    /// The stats key: the rule's `full_key`, unless `detailed_metric` or `value_to_metric`
    /// ask for request values in it.
    pub fn stats_key<E: EntryRef>(&self, domain: &str, entries: &[E]) -> Option<String> {
        let dynamic = self.rule.detailed_metric || self.path.iter().any(|n| n.value_to_metric);
        if !dynamic {
            return None;
        }
        let mut key = String::from(domain);
        for (entry, node) in entries.iter().zip(&self.path) {
            key.push('.');
            key.push_str(entry.key());
            let shared = matches!(node.kind, NodeKind::Wildcard { share_threshold: true, .. });
            let value = if shared {
                node.value.as_str()
            } else if self.rule.detailed_metric || node.value_to_metric {
                entry.value()
            } else {
                node.value.as_str()
            };
            if !value.is_empty() || self.rule.detailed_metric {
                key.push('_');
                key.push_str(value);
            }
        }
        Some(key)
    }
}

/// Every loaded domain. Immutable once built; reloads build a new one.
#[derive(Debug, Default)]
pub struct RuleSet {
    domains: HashMap<String, Domain>,
    /// Files in the order they were loaded, for /rlconfig and check-config; with xDS, one
    /// `xds:<resource name>` per resource.
    pub files: Vec<PathBuf>,
    /// With CONFIG_TYPE=GRPC_XDS_SOTW: the `version_info` these rules came with.
    pub xds_version: Option<String>,
}

impl RuleSet {
    pub fn domain(&self, name: &str) -> Option<&Domain> {
        self.domains.get(name)
    }

    pub fn domain_count(&self) -> usize {
        self.domains.len()
    }

    pub fn is_empty(&self) -> bool {
        self.domains.is_empty()
    }

    /// Loads and validates `files`. With `merge_domains`, several files may add descriptors to
    /// one domain (MERGE_DOMAIN_CONFIG); otherwise a domain may appear only once.
    pub fn load(files: &[PathBuf], merge_domains: bool, stats: &Stats) -> Result<RuleSet, ConfigErrors> {
        let mut builder =
            Builder { set: RuleSet::default(), errors: Vec::new(), merge_domains, stats, file: PathBuf::new() };
        for file in files {
            builder.file = file.clone();
            match load_yaml::<FileConfig>(file) {
                Ok(config) => builder.add_file(config),
                Err(e) => builder.errors.push(e),
            }
            builder.set.files.push(file.clone());
        }
        if builder.errors.is_empty() { Ok(builder.set) } else { Err(ConfigErrors(builder.errors)) }
    }

    /// Parses one YAML document; for tests and check-config of inline text.
    pub fn from_yaml(name: &str, text: &str, stats: &Stats) -> Result<RuleSet, ConfigErrors> {
        RuleSet::from_documents(&[(name.to_string(), text.to_string())], false, stats)
    }

    /// Loads named documents (xDS resources rendered as YAML) as if each were a file of that
    /// name: errors name the document, line and field.
    pub fn from_documents(
        documents: &[(String, String)],
        merge_domains: bool,
        stats: &Stats,
    ) -> Result<RuleSet, ConfigErrors> {
        let mut builder =
            Builder { set: RuleSet::default(), errors: Vec::new(), merge_domains, stats, file: PathBuf::new() };
        for (name, text) in documents {
            builder.file = PathBuf::from(name);
            match gatehouse_common::config::parse_yaml::<FileConfig>(&builder.file, text) {
                Ok(config) => builder.add_file(config),
                Err(e) => builder.errors.push(e),
            }
            builder.set.files.push(builder.file.clone());
        }
        if builder.errors.is_empty() { Ok(builder.set) } else { Err(ConfigErrors(builder.errors)) }
    }

    /// One line per rule, sorted: `domain.key_value: unit=MINUTE requests_per_unit=10, shadow_mode: false`,
    /// the format of envoyproxy/ratelimit's /rlconfig, with Gatehouse's extra limits appended.
    pub fn dump(&self) -> String {
        let mut lines = Vec::new();
        for domain in self.domains.values() {
            collect_rules(&domain.children, &mut |rule| {
                let mut line = format!("{}: ", rule.full_key);
                if rule.unlimited {
                    line.push_str("unlimited");
                }
                for (i, limit) in rule.limits.iter().enumerate() {
                    if i > 0 {
                        line.push_str(" + ");
                    }
                    let _ = write!(line, "unit={} requests_per_unit={}", limit.unit.name(), limit.requests_per_unit);
                    if limit.algorithm != Algorithm::FixedWindow {
                        let _ = write!(line, " algorithm={}", limit.algorithm.name());
                    }
                    if limit.algorithm == Algorithm::TokenBucket {
                        let _ = write!(line, " burst={}", limit.burst);
                    }
                }
                let _ = write!(line, ", shadow_mode: {}", rule.shadow_mode);
                if let Some(name) = &rule.name {
                    let _ = write!(line, ", name: {name}");
                }
                if !rule.replaces.is_empty() {
                    let _ = write!(line, ", replaces: {}", rule.replaces.join(","));
                }
                lines.push(line);
            });
        }
        lines.sort();
        let mut out = lines.join("\n");
        if !out.is_empty() {
            out.push('\n');
        }
        out
    }
}

fn collect_rules(children: &HashMap<String, KeyGroup>, f: &mut impl FnMut(&Rule)) {
    for group in children.values() {
        let nodes = group.exact.values().chain(&group.wildcards).chain(&group.default);
        for node in nodes {
            if let Some(rule) = &node.rule {
                f(rule);
            }
            collect_rules(&node.children, f);
        }
    }
}

struct Builder<'s> {
    set: RuleSet,
    errors: Vec<ConfigError>,
    merge_domains: bool,
    stats: &'s Stats,
    file: PathBuf,
}

impl Builder<'_> {
    fn error(&mut self, position: Position, message: impl Into<String>) {
        self.errors.push(ConfigError::at(&self.file, position, message));
    }

    fn add_file(&mut self, config: FileConfig) {
        let Some(domain) = config.domain.filter(|d| !d.value.is_empty()) else {
            self.error(Position { line: 1, column: 1 }, "config file cannot have empty domain");
            return;
        };
        let name = domain.value.clone();
        let mut children = match self.set.domains.remove(&name) {
            Some(existing) if self.merge_domains => {
                tracing::info!(domain = %name, file = %self.file.display(), "patching domain");
                existing.children
            }
            Some(existing) => {
                self.set.domains.insert(name.clone(), existing);
                self.error(
                    Position::of(&domain),
                    format!("duplicate domain '{name}' in config file (set MERGE_DOMAIN_CONFIG=true to merge files of one domain)"),
                );
                return;
            }
            None => HashMap::new(),
        };
        self.add_descriptors(&mut children, &name, &config.descriptors);
        self.set.domains.insert(name.clone(), Domain { name, children });
    }

    fn add_descriptors(
        &mut self,
        level: &mut HashMap<String, KeyGroup>,
        parent_key: &str,
        descriptors: &[DescriptorYaml],
    ) {
        for d in descriptors {
            let key = d.key.value.clone();
            let pos = Position::of(&d.key);
            if key.is_empty() {
                self.error(pos, "descriptor has empty key");
                continue;
            }
            let value = d.value.clone().unwrap_or_default();
            let composite = if value.is_empty() { key.clone() } else { format!("{key}_{value}") };
            let full_key = format!("{parent_key}.{composite}");
            let kind = if value.is_empty() {
                NodeKind::Default
            } else if let Some(prefix) = value.strip_suffix('*') {
                NodeKind::Wildcard {
                    prefix: prefix.to_string(),
                    share_threshold: d.share_threshold.as_ref().is_some_and(|s| s.value),
                }
            } else {
                NodeKind::Exact
            };
            if let Some(share) = &d.share_threshold
                && share.value
                && !matches!(kind, NodeKind::Wildcard { .. })
            {
                self.error(
                    Position::of(share),
                    format!("share_threshold can only be used with wildcard values (ending with '*'), but found key '{composite}'"),
                );
            }
            let rule = self.build_rule(d, &full_key);
            let mut node =
                Node { value: value.clone(), kind, value_to_metric: d.value_to_metric, rule, children: HashMap::new() };
            self.add_descriptors(&mut node.children, &full_key, &d.descriptors);

            let group = level.entry(key).or_default();
            let duplicate = match &node.kind {
                NodeKind::Exact => group.exact.contains_key(&value),
                NodeKind::Wildcard { .. } => group.wildcards.iter().any(|w| w.value == value),
                NodeKind::Default => group.default.is_some(),
            };
            if duplicate {
                self.error(pos, format!("duplicate descriptor composite key '{full_key}'"));
                continue;
            }
            match node.kind {
                NodeKind::Exact => {
                    group.exact.insert(value, node);
                }
                NodeKind::Wildcard { .. } => group.wildcards.push(node),
                NodeKind::Default => group.default = Some(node),
            }
        }
    }

    fn build_rule(&mut self, d: &DescriptorYaml, full_key: &str) -> Option<Arc<Rule>> {
        if d.rate_limit.is_some() && !d.rate_limits.is_empty() {
            self.error(Position::of(&d.key), "use either rate_limit or rate_limits on one descriptor, not both");
            return None;
        }
        let specs: Vec<&Spanned<RateLimitYaml>> = d.rate_limit.iter().chain(&d.rate_limits).collect();
        if specs.is_empty() {
            return None;
        }
        let mut limits = Vec::new();
        let mut unlimited = false;
        let mut name = None;
        let mut replaces = Vec::new();
        let several = specs.len() > 1;
        for spec in &specs {
            let pos = Position::of(spec);
            let rl = &spec.value;
            if rl.name.is_some() {
                name = rl.name.clone().filter(|n| !n.is_empty());
            }
            for r in &rl.replaces {
                if r.value.name.is_empty() {
                    self.error(Position::of(r), "should not have an empty replaces entry");
                } else if rl.name.as_deref() == Some(r.value.name.as_str()) {
                    self.error(Position::of(r), "replaces should not contain name of same descriptor");
                } else {
                    replaces.push(r.value.name.clone());
                }
            }
            let unit = rl.unit.as_ref().map(|u| (u, Unit::parse(&u.value)));
            if rl.unlimited {
                if several {
                    self.error(pos, "unlimited cannot be combined with other limits in rate_limits");
                }
                if let Some((u, Some(_))) = &unit {
                    self.error(Position::of(*u), "should not specify rate limit unit when unlimited");
                }
                unlimited = true;
                continue;
            }
            let unit = match unit {
                Some((_, Some(unit))) => unit,
                Some((u, None)) => {
                    self.error(
                        Position::of(u),
                        format!(
                            "invalid rate limit unit '{}' (expected second, minute, hour, day, week, month or year)",
                            u.value
                        ),
                    );
                    continue;
                }
                None => {
                    self.error(pos, "invalid rate limit unit '' (rate_limit needs a unit, or unlimited: true)");
                    continue;
                }
            };
            let Some(requests_per_unit) = rl.requests_per_unit else {
                self.error(pos, "rate_limit needs requests_per_unit (or unlimited: true)");
                continue;
            };
            let algorithm = match &rl.algorithm {
                None => Algorithm::FixedWindow,
                Some(a) => match Algorithm::parse(&a.value) {
                    Some(a) => a,
                    None => {
                        self.error(
                            Position::of(a),
                            format!(
                                "unknown algorithm '{}' (expected fixed_window, sliding_window or token_bucket)",
                                a.value
                            ),
                        );
                        continue;
                    }
                },
            };
            let burst = match &rl.burst {
                Some(b) if algorithm != Algorithm::TokenBucket => {
                    self.error(Position::of(b), "burst only applies to algorithm: token_bucket");
                    continue;
                }
                Some(b) if b.value == 0 => {
                    self.error(Position::of(b), "burst must be at least 1");
                    continue;
                }
                Some(b) => b.value,
                None => requests_per_unit.max(1),
            };
            if algorithm == Algorithm::TokenBucket && requests_per_unit == 0 {
                self.error(pos, "token_bucket needs requests_per_unit of at least 1");
                continue;
            }
            if limits.iter().any(|l: &Limit| l.unit == unit && l.algorithm == algorithm) {
                self.error(
                    pos,
                    format!(
                        "two limits with unit {} and algorithm {} on one descriptor",
                        unit.name(),
                        algorithm.name()
                    ),
                );
                continue;
            }
            limits.push(Limit { requests_per_unit, unit, algorithm, burst, key_suffix: String::new() });
        }
        let keep_compatible_key = limits.len() == 1 && limits[0].algorithm == Algorithm::FixedWindow;
        if !keep_compatible_key {
            for limit in &mut limits {
                limit.key_suffix = format!("{}{}_", limit.algorithm.tag(), limit.unit.seconds());
            }
        }
        let (domain, key) = full_key.split_once('.').unwrap_or((full_key, ""));
        Some(Arc::new(Rule {
            full_key: full_key.to_string(),
            name,
            limits,
            unlimited,
            shadow_mode: d.shadow_mode,
            replaces,
            detailed_metric: d.detailed_metric,
            stats: self.stats.rule(domain, key),
        }))
    }
}

/// The `*.yaml`/`*.yml` files directly in `dir`, sorted, skipping dotfiles when asked.
pub fn config_files(dir: &Path, ignore_dotfiles: bool) -> Result<Vec<PathBuf>, ConfigError> {
    let mut files = Vec::new();
    collect_yaml(dir, ignore_dotfiles, &mut files, 0)
        .map_err(|e| ConfigError::Io { file: dir.to_path_buf(), message: e.to_string() })?;
    files.sort();
    Ok(files)
}

fn collect_yaml(dir: &Path, ignore_dotfiles: bool, out: &mut Vec<PathBuf>, depth: usize) -> std::io::Result<()> {
    if depth > 8 {
        return Ok(());
    }
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        // Kubernetes' `..data` and timestamped directories: the files are reached through
        // the symlinks next to them.
        if name.starts_with("..") || (ignore_dotfiles && name.starts_with('.')) {
            continue;
        }
        if path.is_dir() {
            collect_yaml(&path, ignore_dotfiles, out, depth + 1)?;
        } else if name.ends_with(".yaml") || name.ends_with(".yml") {
            out.push(path);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
