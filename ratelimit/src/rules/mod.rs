//! The rule tree: every domain's descriptors, validated, and the lookup from a request
//! descriptor to the rule that governs it.
//!
//! Matching follows envoyproxy/ratelimit: at each level an exact `key`/`value` pair wins, then
//! the first wildcard of that key in file order (`*` anywhere in `value`, any number of times),
//! then the key-only default. A level that matches is not retried with a lesser match when a
//! deeper level fails. A rule applies only when the request descriptor has exactly as many
//! entries as the rule is deep.

pub(crate) mod file;
mod inspect;

pub use inspect::{KeyPrefix, ReadKey};

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use envoy_types::pb::google::protobuf::Struct;
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
    /// Over its limit, the descriptor refuses the request only if every quota descriptor of
    /// the request is over too.
    pub quota_mode: bool,
    pub replaces: Vec<String>,
    pub detailed_metric: bool,
    /// Merged into the response's dynamic metadata while the descriptor is within its limit.
    pub metadata: Option<Struct>,
    pub stats: RuleStats,
    /// The file it was loaded from, or `xds:<resource name>`.
    pub source: PathBuf,
}

/// How a node matches a request value.
#[derive(Debug)]
enum NodeKind {
    Exact,
    /// A value with `*` in it, and whether the values it matches share one counter.
    Wildcard {
        pattern: Wildcard,
        share_threshold: bool,
    },
    /// Key-only: any value, one counter per value.
    Default,
}

/// A `value` with one or more `*`, each matching any run of characters, the empty one
/// included (envoyproxy/ratelimit's `wildcardMatch`): `/api/*/action`, `a*b*c`, `foo*`. Split
/// at load so that matching allocates nothing: the value must start with `prefix`, end with
/// `suffix`, and hold the `middles` in order between them, without overlaps.
#[derive(Debug)]
struct Wildcard {
    prefix: Box<str>,
    /// The non-empty literals between two `*`.
    middles: Box<[Box<str>]>,
    suffix: Box<str>,
    /// The length of all literals together: no shorter value can match.
    min_len: usize,
}

impl Wildcard {
    /// The pattern of `value`, or None when it has no `*`.
    fn parse(value: &str) -> Option<Wildcard> {
        let (prefix, rest) = value.split_once('*')?;
        let (middle, suffix) = rest.rsplit_once('*').unwrap_or(("", rest));
        let middles: Box<[Box<str>]> = middle.split('*').filter(|m| !m.is_empty()).map(Box::from).collect();
        let min_len = prefix.len() + suffix.len() + middles.iter().map(|m| m.len()).sum::<usize>();
        Some(Wildcard { prefix: prefix.into(), middles, suffix: suffix.into(), min_len })
    }

    fn matches(&self, value: &str) -> bool {
        // Empty ends are skipped, not compared: comparing the empty suffix of `foo*` still
        // calls `memcmp`, and that call measured 5× the rest of the match (benches/descriptors.rs).
        if value.len() < self.min_len
            || (!self.prefix.is_empty() && !value.starts_with(&*self.prefix))
            || (!self.suffix.is_empty() && !value.ends_with(&*self.suffix))
        {
            return false;
        }
        // Both ends are char boundaries (`value` starts with `prefix` and ends with `suffix`),
        // and `min_len` keeps them from crossing.
        let mut rest = &value[self.prefix.len()..value.len() - self.suffix.len()];
        for middle in &self.middles {
            // The leftmost occurrence leaves the most room for the ones after it.
            match rest.find(&**middle) {
                Some(at) => rest = &rest[at + middle.len()..],
                None => return false,
            }
        }
        true
    }
}

#[derive(Debug)]
pub struct Node {
    /// The value as written in the config (`foo*` for wildcards, empty for key-only).
    value: String,
    kind: NodeKind,
    value_to_metric: bool,
    rule: Option<Arc<Rule>>,
    children: Children,
}

/// The hash maps of the request path: fast hashing, randomly seeded. Their keys come from the
/// config; requests only look up.
type FastMap<V> = HashMap<String, V, foldhash::fast::RandomState>;

/// The descriptors one level down, by key.
type Children = FastMap<KeyGroup>;

/// The nodes at one level that share a key.
#[derive(Debug, Default)]
struct KeyGroup {
    nodes: Vec<Node>,
    /// Every node with a value, wildcards included, by that value: a request value equal to
    /// a wildcard as written finds that wildcard first, as envoyproxy/ratelimit's map does.
    by_value: FastMap<usize>,
    /// The wildcard nodes in file order (merged files: in load order).
    wildcards: Vec<usize>,
    default: Option<usize>,
}

impl KeyGroup {
    /// Exact value, then the first matching wildcard, then the key-only default.
    fn find(&self, value: &str) -> Option<&Node> {
        if let Some(&i) = self.by_value.get(value) {
            return Some(&self.nodes[i]);
        }
        for &i in &self.wildcards {
            let node = &self.nodes[i];
            if let NodeKind::Wildcard { pattern, .. } = &node.kind
                && pattern.matches(value)
            {
                return Some(node);
            }
        }
        self.default.map(|i| &self.nodes[i])
    }

    /// Whether a node for `value` (empty: the default) already exists.
    fn contains(&self, value: &str) -> bool {
        if value.is_empty() { self.default.is_some() } else { self.by_value.contains_key(value) }
    }

    fn insert(&mut self, node: Node) {
        let i = self.nodes.len();
        match node.kind {
            NodeKind::Default => self.default = Some(i),
            NodeKind::Wildcard { .. } => {
                self.wildcards.push(i);
                self.by_value.insert(node.value.clone(), i);
            }
            NodeKind::Exact => {
                self.by_value.insert(node.value.clone(), i);
            }
        }
        self.nodes.push(node);
    }
}

#[derive(Debug)]
pub struct Domain {
    pub name: String,
    children: Children,
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
    /// ask for request values in it. As envoyproxy/ratelimit's `GetLimit` builds it: a level
    /// matched by a `share_threshold` wildcard always shows the wildcard; otherwise
    /// `detailed_metric` shows every request value and `value_to_metric` that level's; a
    /// wildcard without either shows itself. With `detailed_metric`, an empty value still
    /// gets its `_` unless some level shares a threshold.
    pub fn stats_key<E: EntryRef>(&self, domain: &str, entries: &[E]) -> Option<String> {
        let detailed = self.rule.detailed_metric;
        if !detailed && !self.path.iter().any(|n| n.value_to_metric) {
            return None;
        }
        let shares = |n: &Node| matches!(n.kind, NodeKind::Wildcard { share_threshold: true, .. });
        let keep_empty = detailed && !self.path.iter().any(|n| shares(n));
        let mut key = String::from(domain);
        for (entry, node) in entries.iter().zip(&self.path) {
            key.push('.');
            key.push_str(entry.key());
            let value = if shares(node) {
                node.value.as_str()
            } else if detailed || node.value_to_metric {
                entry.value()
            } else {
                node.value.as_str()
            };
            if !value.is_empty() || keep_empty {
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

    /// Loads documents already in the file format's shape (decoded xDS resources): the fast
    /// path, without positions in its errors; on an error, load their rendered YAML with
    /// [`RuleSet::from_documents`] to report where it is.
    pub(crate) fn from_parsed(
        documents: Vec<(String, FileConfig)>,
        merge_domains: bool,
        stats: &Stats,
    ) -> Result<RuleSet, ConfigErrors> {
        let mut builder =
            Builder { set: RuleSet::default(), errors: Vec::new(), merge_domains, stats, file: PathBuf::new() };
        for (name, config) in documents {
            builder.file = PathBuf::from(name);
            builder.add_file(config);
            builder.set.files.push(builder.file.clone());
        }
        if builder.errors.is_empty() { Ok(builder.set) } else { Err(ConfigErrors(builder.errors)) }
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

    /// One line per rule, sorted: `domain.key_value: unit=MINUTE requests_per_unit=10, shadow_mode: false, quota_mode: false`,
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
                let _ = write!(line, ", shadow_mode: {}, quota_mode: {}", rule.shadow_mode, rule.quota_mode);
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

fn collect_rules(children: &Children, f: &mut impl FnMut(&Rule)) {
    for group in children.values() {
        for node in &group.nodes {
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
            None => Children::default(),
        };
        self.add_descriptors(&mut children, &name, &config.descriptors);
        self.set.domains.insert(name.clone(), Domain { name, children });
    }

    fn add_descriptors(&mut self, level: &mut Children, parent_key: &str, descriptors: &[DescriptorYaml]) {
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
            let share_threshold = d.share_threshold.as_ref().is_some_and(|s| s.value);
            let kind = if value.is_empty() {
                NodeKind::Default
            } else if let Some(pattern) = Wildcard::parse(&value) {
                NodeKind::Wildcard { pattern, share_threshold }
            } else {
                NodeKind::Exact
            };
            if let Some(share) = &d.share_threshold
                && share.value
                && !matches!(kind, NodeKind::Wildcard { .. })
            {
                self.error(
                    Position::of(share),
                    format!("share_threshold can only be used with wildcard values (containing '*'), but found key '{composite}'"),
                );
            }
            let rule = self.build_rule(d, &full_key);
            let mut node =
                Node { value, kind, value_to_metric: d.value_to_metric, rule, children: Children::default() };
            self.add_descriptors(&mut node.children, &full_key, &d.descriptors);

            let group = level.entry(key).or_default();
            if group.contains(&node.value) {
                self.error(pos, format!("duplicate descriptor composite key '{full_key}'"));
                continue;
            }
            group.insert(node);
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
                match r.value.name.as_deref().unwrap_or_default() {
                    "" => self.error(Position::of(r), "should not have an empty replaces entry"),
                    same if rl.name.as_deref() == Some(same) => {
                        self.error(Position::of(r), "replaces should not contain name of same descriptor")
                    }
                    other => replaces.push(other.to_string()),
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
            quota_mode: d.quota_mode,
            replaces,
            detailed_metric: d.detailed_metric,
            metadata: d.metadata.as_ref().filter(|m| !m.is_empty()).map(gatehouse_common::pbjson::to_struct),
            stats: self.stats.rule(domain, key),
            source: self.file.clone(),
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
