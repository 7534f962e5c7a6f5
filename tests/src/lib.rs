//! Fixtures for Gatehouse's tests: real Redis (single and Cluster), real Envoy from the
//! reference config, a real OpenID Provider (panva's `oidc-provider` under Node, from
//! `tests/oidc/`), a real browser (headless Chromium driven by puppeteer-core, from
//! `tests/browser/`), and an echo upstream; [`login_stack`] puts them together for browser
//! login. Every fixture binds loopback ports chosen at run time and stops its processes when
//! dropped.
//!
//! Binaries are found through environment variables first, then the project's own install
//! (`.venv/bin/envoy` from `scripts/install-test-deps.sh`), then `PATH`:
//! `GATEHOUSE_ENVOY`, `GATEHOUSE_REDIS_SERVER`, `GATEHOUSE_REDIS_CLI`, `GATEHOUSE_NODE`,
//! `GATEHOUSE_CHROMIUM`. The npm packages of the provider and the browser driver are installed
//! into `tests/oidc/node_modules` and `tests/browser/node_modules` by the same script.

pub mod browser;
pub mod echo;
pub mod envoy;
pub mod issuer;
pub mod load;
pub mod login_stack;
pub mod oidc;
pub mod otlp;
pub mod redis;
pub mod service;
pub mod tls;
pub mod xds;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("."))
}

/// A loopback port that was free a moment ago, for programs that cannot report the port
/// they bound (redis-server). Callers retry on a bind clash.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).unwrap_or(0)
}

/// Finds a binary: the environment variable, then `local` under the repo, then PATH.
pub fn binary(env_var: &str, local: &str, name: &str) -> PathBuf {
    if let Ok(path) = std::env::var(env_var) {
        return PathBuf::from(path);
    }
    let local = repo_root().join(local);
    if local.exists() {
        return local;
    }
    for dir in std::env::var("PATH").unwrap_or_default().split(':') {
        let candidate = Path::new(dir).join(name);
        if candidate.exists() {
            return candidate;
        }
    }
    PathBuf::from(name)
}

/// Polls `check` until it returns `Some` or `timeout` passes.
pub async fn eventually<T, F, Fut>(timeout: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A child process killed on drop.
#[derive(Debug)]
pub struct Process {
    child: Option<std::process::Child>,
    /// For Debug output when a fixture fails.
    #[allow(dead_code)]
    name: String,
}

impl Process {
    pub fn spawn(name: &str, command: &mut std::process::Command) -> std::io::Result<Process> {
        let child = command
            .stdin(std::process::Stdio::null())
            .spawn()
            .map_err(|e| std::io::Error::new(e.kind(), format!("starting {name} ({command:?}): {e}")))?;
        Ok(Process { child: Some(child), name: name.to_string() })
    }

    /// Whether the process has exited.
    pub fn exited(&mut self) -> bool {
        match &mut self.child {
            Some(c) => !matches!(c.try_wait(), Ok(None)),
            None => true,
        }
    }

    /// The process id, while it runs.
    pub fn id(&self) -> Option<u32> {
        self.child.as_ref().map(std::process::Child::id)
    }

    /// The exit status, once the process has exited.
    pub fn try_wait(&mut self) -> Option<std::process::ExitStatus> {
        self.child.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}
