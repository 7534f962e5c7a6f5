//! Hot reload of file-based configuration.
//!
//! A [`Reloader`] owns the live value behind an [`ArcSwap`]. When a watched file changes, the
//! loader builds a complete new value off to the side; only if it validates is it swapped in.
//! A bad file leaves the old value serving, and the rejection is logged, counted and kept in
//! [`ReloadStatus`] for the admin endpoint.
//!
//! Change detection does not trust any single inotify event, because the usual ways of
//! replacing config files (editors' atomic rename, `kubectl` updating a ConfigMap by swapping
//! the `..data` symlink, envoyproxy/ratelimit's `current -> v2` runtime symlink) produce
//! different event sequences and can leave a watch pointing at a deleted directory. Instead,
//! any event in a watched directory, or a periodic poll, triggers a fingerprint of the files'
//! contents; a new fingerprint triggers a load, and the watches are re-established afterwards
//! so that they follow the symlinks' new targets.
//!
//! **Invariant:** readers never observe a partially applied config.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use notify::{RecursiveMode, Watcher};
use parking_lot::Mutex;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::mpsc;

use crate::config::ConfigErrors;
use crate::metrics::Metrics;

/// What the admin endpoint shows about reloads.
#[derive(Clone, Debug, Default)]
pub struct ReloadStatus {
    pub successes: u64,
    pub failures: u64,
    pub last_success: Option<SystemTime>,
    pub last_failure: Option<SystemTime>,
    /// The rejection message of the most recent failed attempt, cleared by the next success.
    pub last_error: Option<String>,
    /// The version in effect, if known ([`Reloader::set_version`]).
    pub version: Option<String>,
}

impl ReloadStatus {
    /// The status as the services' `/config-status` endpoints show it.
    pub fn to_json(&self) -> serde_json::Value {
        let unix =
            |t: Option<SystemTime>| t.and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).map(|d| d.as_secs());
        serde_json::json!({
            "reload_successes": self.successes,
            "reload_failures": self.failures,
            "last_success_unix": unix(self.last_success),
            "last_failure_unix": unix(self.last_failure),
            "last_error": self.last_error,
            "version": self.version,
        })
    }
}

/// Where to look for changes.
#[derive(Clone, Debug)]
pub struct WatchSpec {
    /// Directories (watched recursively) or files whose content makes up the config.
    pub paths: Vec<PathBuf>,
    /// Also watch every ancestor of `paths` up to and including this directory, so that a
    /// symlink swapped anywhere on the way is noticed. `None` watches only the parents.
    pub watch_root: Option<PathBuf>,
    /// Safety net for filesystems without inotify (some network volumes) and missed events.
    pub poll_interval: Duration,
    /// Waits this long after an event for the writer to finish before reading.
    pub debounce: Duration,
}

impl WatchSpec {
    pub fn new(paths: Vec<PathBuf>) -> Self {
        WatchSpec {
            paths,
            watch_root: None,
            poll_interval: Duration::from_secs(5),
            debounce: Duration::from_millis(100),
        }
    }
}

/// The labels of `<what>_reloads_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

/// The labels of `<what>_info`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabels {
    version: String,
}

/// `gatehouse_<service>_<what>_reloads_total{result}`, `..._last_reload_successful`,
/// `..._last_reload_success_timestamp_seconds` and `..._info{version}`.
#[derive(Clone)]
struct ReloadMetrics {
    reloads: Family<ResultLabels, Counter>,
    last_successful: Gauge,
    last_success_time: Gauge,
    info: Family<VersionLabels, Gauge>,
    /// Envoyproxy/ratelimit's `<prefix>_success` and `<prefix>_error`, when asked for.
    legacy: Option<(Counter, Counter)>,
}

impl ReloadMetrics {
    fn register(metrics: &Metrics, what: &str, legacy_prefix: Option<&str>) -> Self {
        let name = |suffix: &str| metrics.name(&format!("{what}_{suffix}"));
        let this = ReloadMetrics {
            reloads: metrics.register(
                &name("reloads"),
                "Reloads applied (result=success) or rejected (result=error, the previous one stays in effect)",
                Family::default(),
            ),
            last_successful: metrics.register(
                &name("last_reload_successful"),
                "1 if the last load was applied, 0 if it was rejected",
                Gauge::default(),
            ),
            last_success_time: metrics.register(
                &name("last_reload_success_timestamp_seconds"),
                "Unix time the version in effect was loaded",
                Gauge::default(),
            ),
            info: metrics.register(
                &name("info"),
                "The version in effect (always 1): a hash of the files, or the xDS version",
                Family::default(),
            ),
            legacy: legacy_prefix.map(|prefix| {
                (
                    metrics.register(
                        &format!("{prefix}_success"),
                        "Config loads that were validated and applied",
                        Counter::default(),
                    ),
                    metrics.register(
                        &format!("{prefix}_error"),
                        "Config loads that were rejected; the previous config stays in effect",
                        Counter::default(),
                    ),
                )
            }),
        };
        for result in ["success", "error"] {
            this.reloads.get_or_create_owned(&ResultLabels { result });
        }
        this.last_successful.set(1);
        this.last_success_time.set(unix_seconds(SystemTime::now()));
        this
    }

    fn applied(&self, now: SystemTime) {
        self.reloads.get_or_create(&ResultLabels { result: "success" }).inc();
        self.last_successful.set(1);
        self.last_success_time.set(unix_seconds(now));
        if let Some((success, _)) = &self.legacy {
            success.inc();
        }
    }

    fn rejected(&self) {
        self.reloads.get_or_create(&ResultLabels { result: "error" }).inc();
        self.last_successful.set(0);
        if let Some((_, error)) = &self.legacy {
            error.inc();
        }
    }
}

fn unix_seconds(t: SystemTime) -> i64 {
    t.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

/// The live value plus what is known about its reloads.
pub struct Reloader<T> {
    current: Arc<ArcSwap<T>>,
    status: Arc<Mutex<ReloadStatus>>,
    metrics: ReloadMetrics,
}

impl<T> Clone for Reloader<T> {
    fn clone(&self) -> Self {
        Reloader { current: self.current.clone(), status: self.status.clone(), metrics: self.metrics.clone() }
    }
}

impl<T: Send + Sync + 'static> Reloader<T> {
    /// Wraps an initial value. `what` names the metrics: `config` gives
    /// `gatehouse_<service>_config_reloads_total{result}`,
    /// `..._config_last_reload_successful`, `..._config_last_reload_success_timestamp_seconds`
    /// and `..._config_info{version}`.
    pub fn new(initial: T, metrics: &Metrics, what: &str) -> Self {
        Self::with_metrics(initial, ReloadMetrics::register(metrics, what, None))
    }

    /// [`Reloader::new`], also counting under envoyproxy/ratelimit's names:
    /// `<legacy_prefix>_success_total` and `<legacy_prefix>_error_total`.
    pub fn with_legacy_names(initial: T, metrics: &Metrics, what: &str, legacy_prefix: &str) -> Self {
        Self::with_metrics(initial, ReloadMetrics::register(metrics, what, Some(legacy_prefix)))
    }

    fn with_metrics(initial: T, metrics: ReloadMetrics) -> Self {
        Reloader { current: Arc::new(ArcSwap::from_pointee(initial)), status: Arc::default(), metrics }
    }

    /// Names the version in effect (`<what>_info{version}` and `/config-status`): the xDS
    /// version, or for files the hash [`Reloader::watch`] sets.
    pub fn set_version(&self, version: String) {
        self.metrics.info.clear();
        self.metrics.info.get_or_create(&VersionLabels { version: version.clone() }).set(1);
        self.status.lock().version = Some(version);
    }

    /// The config in effect now. Cheap: an atomic load and a reference count.
    pub fn load(&self) -> Arc<T> {
        self.current.load_full()
    }

    /// A guard for the hot path that avoids touching the reference count.
    pub fn load_guard(&self) -> arc_swap::Guard<Arc<T>> {
        self.current.load()
    }

    pub fn status(&self) -> ReloadStatus {
        self.status.lock().clone()
    }

    /// Records the outcome of a load attempt and swaps in the new value on success.
    pub fn apply(&self, outcome: Result<T, ConfigErrors>) -> bool {
        let now = SystemTime::now();
        match outcome {
            Ok(value) => {
                self.current.store(Arc::new(value));
                self.metrics.applied(now);
                let mut s = self.status.lock();
                s.successes += 1;
                s.last_success = Some(now);
                s.last_error = None;
                true
            }
            Err(errors) => {
                self.metrics.rejected();
                tracing::error!(error = %errors, "config rejected; previous config stays in effect");
                let mut s = self.status.lock();
                s.failures += 1;
                s.last_failure = Some(now);
                s.last_error = Some(errors.to_string());
                false
            }
        }
    }

    /// Watches `spec` until `shutdown` resolves, loading with `load` whenever the watched
    /// content changes. `load` runs on a blocking thread: it reads files.
    pub fn watch<F>(
        &self,
        spec: WatchSpec,
        load: F,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> tokio::task::JoinHandle<()>
    where
        F: Fn() -> Result<T, ConfigErrors> + Send + Sync + 'static,
    {
        let this = self.clone();
        let load = Arc::new(load);
        // Taken before returning, so that a change right after this call is never missed.
        let (tx, mut rx) = mpsc::unbounded_channel::<()>();
        let mut fingerprint = fingerprint_now(&spec.paths);
        if self.status.lock().version.is_none() {
            self.set_version(file_version(fingerprint));
        }
        let mut watcher = make_watcher(&spec, tx.clone());
        tokio::spawn(async move {
            tokio::pin!(shutdown);
            let mut poll = tokio::time::interval(spec.poll_interval);
            poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            poll.tick().await;
            loop {
                tokio::select! {
                    _ = &mut shutdown => return,
                    _ = poll.tick() => {}
                    Some(()) = rx.recv() => {
                        tokio::time::sleep(spec.debounce).await;
                        while rx.try_recv().is_ok() {}
                    }
                }
                let next = fingerprint_paths(&spec.paths).await;
                if next == fingerprint {
                    continue;
                }
                fingerprint = next;
                let load = load.clone();
                let outcome = match tokio::task::spawn_blocking(move || load()).await {
                    Ok(outcome) => outcome,
                    Err(e) => {
                        tracing::error!(error = %e, "config loader panicked");
                        continue;
                    }
                };
                if this.apply(outcome) {
                    this.set_version(file_version(fingerprint));
                    tracing::info!(version = %file_version(fingerprint), "config reloaded");
                }
                // Symlink targets may have changed: watch the new ones.
                drop(watcher);
                watcher = make_watcher(&spec, tx.clone());
            }
        })
    }
}

fn make_watcher(spec: &WatchSpec, tx: mpsc::UnboundedSender<()>) -> Option<notify::RecommendedWatcher> {
    let handler = move |event: notify::Result<notify::Event>| {
        if event.is_ok() {
            let _ = tx.send(());
        }
    };
    let mut watcher = match notify::recommended_watcher(handler) {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(error = %e, "file watching unavailable; relying on polling");
            return None;
        }
    };
    for dir in dirs_to_watch(spec) {
        let mode = if spec.paths.contains(&dir) { RecursiveMode::Recursive } else { RecursiveMode::NonRecursive };
        if let Err(e) = watcher.watch(&dir, mode) {
            tracing::debug!(path = %dir.display(), error = %e, "cannot watch path");
        }
    }
    Some(watcher)
}

/// The configured paths, each one's parent, and the ancestors up to `watch_root`.
fn dirs_to_watch(spec: &WatchSpec) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    let mut push = |p: PathBuf| {
        if !dirs.contains(&p) {
            dirs.push(p);
        }
    };
    for path in &spec.paths {
        if path.is_dir() {
            push(path.clone());
        }
        let mut cur = path.parent();
        while let Some(dir) = cur {
            if dir.as_os_str().is_empty() {
                break;
            }
            push(dir.to_path_buf());
            match &spec.watch_root {
                Some(root) if dir.starts_with(root) && dir != root.as_path() => cur = dir.parent(),
                _ => break,
            }
        }
    }
    dirs
}

/// The version label of files with `fingerprint`: the same on every replica reading the same
/// files with the same build.
fn file_version(fingerprint: u64) -> String {
    format!("{fingerprint:016x}")
}

/// A hash of every regular file's path and content under `paths`, following symlinks.
async fn fingerprint_paths(paths: &[PathBuf]) -> u64 {
    let paths = paths.to_vec();
    tokio::task::spawn_blocking(move || fingerprint_now(&paths)).await.unwrap_or(0)
}

fn fingerprint_now(paths: &[PathBuf]) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    for path in paths {
        hash_tree(path, &mut hasher, 0);
    }
    hasher.finish()
}

fn hash_tree(path: &Path, hasher: &mut impl Hasher, depth: usize) {
    // Bounded depth guards against symlink loops.
    if depth > 16 {
        return;
    }
    let Ok(meta) = std::fs::metadata(path) else {
        path.hash(hasher);
        "missing".hash(hasher);
        return;
    };
    if meta.is_dir() {
        let Ok(entries) = std::fs::read_dir(path) else {
            return;
        };
        let mut children: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        children.sort();
        for child in children {
            // Kubernetes' `..2024_01_01...` timestamp directories are reached via `..data`.
            let hidden_version_dir =
                child.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("..") && n != "..data");
            if !hidden_version_dir {
                hash_tree(&child, hasher, depth + 1);
            }
        }
    } else if let Ok(content) = std::fs::read(path) {
        path.hash(hasher);
        content.hash(hasher);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(dir: &Path) -> Result<String, ConfigErrors> {
        let text = std::fs::read_to_string(dir.join("config.yaml")).map_err(|e| {
            ConfigErrors::from(crate::config::ConfigError::Io { file: dir.join("config.yaml"), message: e.to_string() })
        })?;
        if text.contains("bad") {
            return Err(
                crate::config::ConfigError::at(&dir.join("config.yaml"), Default::default(), "bad content").into()
            );
        }
        Ok(text)
    }

    async fn eventually(reloader: &Reloader<String>, expected: &str) {
        for _ in 0..100 {
            if reloader.load().as_str() == expected {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("config never became {expected:?}; is {:?}", reloader.load());
    }

    fn spec(paths: Vec<PathBuf>, root: Option<PathBuf>) -> WatchSpec {
        WatchSpec {
            paths,
            watch_root: root,
            poll_interval: Duration::from_secs(60),
            debounce: Duration::from_millis(20),
        }
    }

    #[tokio::test]
    async fn atomic_rename_and_bad_file_keep_last_good_config() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("config.yaml");
        std::fs::write(&cfg, "one").unwrap();
        let reloader = Reloader::new(read_all(dir.path()).unwrap(), &Metrics::new(), "config");
        let path = dir.path().to_path_buf();
        let _task = reloader.watch(spec(vec![path.clone()], None), move || read_all(&path), std::future::pending());

        let tmp = dir.path().join(".config.yaml.tmp");
        std::fs::write(&tmp, "two").unwrap();
        std::fs::rename(&tmp, &cfg).unwrap();
        eventually(&reloader, "two").await;

        std::fs::write(&cfg, "bad").unwrap();
        for _ in 0..100 {
            if reloader.status().failures > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(reloader.load().as_str(), "two");
        assert!(reloader.status().last_error.unwrap().contains("bad content"));

        std::fs::write(&cfg, "three").unwrap();
        eventually(&reloader, "three").await;
        assert_eq!(reloader.status().last_error, None);
    }

    /// The layout kubelet writes for a ConfigMap volume, updated the way kubelet does it.
    #[tokio::test]
    async fn configmap_data_symlink_swap() {
        let mount = tempfile::tempdir().unwrap();
        let m = mount.path();
        let v1 = m.join("..2026_01_01_v1");
        std::fs::create_dir(&v1).unwrap();
        std::fs::write(v1.join("config.yaml"), "one").unwrap();
        std::os::unix::fs::symlink("..2026_01_01_v1", m.join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/config.yaml", m.join("config.yaml")).unwrap();

        let reloader = Reloader::new(read_all(m).unwrap(), &Metrics::new(), "config");
        let path = m.to_path_buf();
        let _task = reloader.watch(spec(vec![path.clone()], None), move || read_all(&path), std::future::pending());

        let v2 = m.join("..2026_01_02_v2");
        std::fs::create_dir(&v2).unwrap();
        std::fs::write(v2.join("config.yaml"), "two").unwrap();
        std::os::unix::fs::symlink("..2026_01_02_v2", m.join("..data_tmp")).unwrap();
        std::fs::rename(m.join("..data_tmp"), m.join("..data")).unwrap();
        std::fs::remove_dir_all(&v1).unwrap();
        eventually(&reloader, "two").await;
    }

    /// envoyproxy/ratelimit's layout: RUNTIME_ROOT is a symlink swapped to a new directory.
    #[tokio::test]
    async fn runtime_root_symlink_swap() {
        let base = tempfile::tempdir().unwrap();
        let b = base.path();
        for (v, text) in [("v1", "one"), ("v2", "two")] {
            std::fs::create_dir_all(b.join(v).join("config")).unwrap();
            std::fs::write(b.join(v).join("config/config.yaml"), text).unwrap();
        }
        std::os::unix::fs::symlink(b.join("v1"), b.join("current")).unwrap();
        let config_dir = b.join("current/config");
        let reloader = Reloader::new(read_all(&config_dir).unwrap(), &Metrics::new(), "config");
        let dir = config_dir.clone();
        let _task = reloader.watch(
            spec(vec![config_dir.clone()], Some(b.to_path_buf())),
            move || read_all(&dir),
            std::future::pending(),
        );
        std::os::unix::fs::symlink(b.join("v2"), b.join("current.tmp")).unwrap();
        std::fs::rename(b.join("current.tmp"), b.join("current")).unwrap();
        eventually(&reloader, "two").await;
    }
}
