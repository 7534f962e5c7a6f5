//! A Gatehouse service binary as operators run it: a child process configured by environment
//! variables, on free loopback ports, that a test can SIGTERM or SIGKILL, and whose memory
//! and open files it can read. Chaos and soak tests use it where an in-process server cannot
//! stand in: a killed replica, a drain on SIGTERM, RSS growth.
//!
//! Binaries come from `GATEHOUSE_BIN_DIR`, else from the Cargo profile directory the test
//! itself was built into (`target/debug` or `target/release`), where `cargo test --workspace`
//! and `cargo build --bins` put them.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::{Process, eventually, free_port};

/// Which service.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Ratelimit,
    Extauth,
    Transform,
}

impl Kind {
    pub fn binary_name(self) -> &'static str {
        match self {
            Kind::Ratelimit => "gatehouse-ratelimit",
            Kind::Extauth => "gatehouse-extauth",
            Kind::Transform => "gatehouse-transform",
        }
    }
}

/// The directory the service binaries are in.
pub fn bin_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("GATEHOUSE_BIN_DIR") {
        // Relative to the repository: tests run in their package's directory.
        return crate::repo_root().join(dir);
    }
    // target/<profile>/deps/<test>-<hash> → target/<profile>
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent()?.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| crate::repo_root().join("target/debug"))
}

/// A running service process, killed on drop.
#[derive(Debug)]
pub struct Service {
    pub kind: Kind,
    pub grpc_port: u16,
    pub http_port: u16,
    /// gatehouse-ratelimit's debug port (`/metrics`, `/rlconfig`, `/config-status`).
    pub debug_port: Option<u16>,
    process: Process,
    log: PathBuf,
}

impl Service {
    /// Starts `kind` with `env` (besides the ports, which it chooses) and waits until
    /// `/healthcheck` answers 200. `dir` holds the log.
    pub async fn start(kind: Kind, env: &[(&str, String)], dir: &Path) -> Service {
        let binary = bin_dir().join(kind.binary_name());
        assert!(
            binary.exists(),
            "{} not found: build it first (`cargo build --bins`, or set GATEHOUSE_BIN_DIR)",
            binary.display()
        );
        for _ in 0..5 {
            let (grpc_port, http_port) = (free_port(), free_port());
            let debug_port = (kind == Kind::Ratelimit).then(free_port);
            let log = dir.join(format!("{}-{grpc_port}.log", kind.binary_name()));
            let log_file = std::fs::File::create(&log).expect("service log file");
            let mut cmd = Command::new(&binary);
            cmd.env_clear()
                .env("GRPC_HOST", "127.0.0.1")
                .env("GRPC_PORT", grpc_port.to_string())
                .env("HOST", "127.0.0.1")
                .env("PORT", http_port.to_string())
                .env("LOG_LEVEL", "warn")
                .stdout(Stdio::null())
                .stderr(log_file);
            if let Some(port) = debug_port {
                cmd.env("DEBUG_HOST", "127.0.0.1").env("DEBUG_PORT", port.to_string());
            }
            for (k, v) in env {
                cmd.env(k, v);
            }
            let mut process = Process::spawn(kind.binary_name(), &mut cmd).expect("start service");
            let health = format!("http://127.0.0.1:{http_port}/healthcheck");
            let client = reqwest::Client::new();
            let up = eventually(Duration::from_secs(20), || {
                let request = client.get(&health).send();
                async move { request.await.ok().filter(|r| r.status().is_success()).map(|_| ()) }
            })
            .await;
            if up.is_some() {
                return Service { kind, grpc_port, http_port, debug_port, process, log };
            }
            let exited = process.exited();
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            // A port taken between choosing and binding: try others. Anything else is fatal.
            if !(exited && text.contains("in use")) {
                panic!("{} did not become healthy (exited: {exited}):\n{text}", kind.binary_name());
            }
        }
        panic!("{}: no free ports after 5 attempts", kind.binary_name());
    }

    pub fn pid(&self) -> u32 {
        self.process.id().unwrap_or(0)
    }

    /// Sends a signal by name (`TERM`, `KILL`) with kill(1).
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill").arg(format!("-{name}")).arg(self.pid().to_string()).status();
        assert!(status.is_ok_and(|s| s.success()), "kill -{name} {}", self.pid());
    }

    /// Waits for the process to exit; `None` if it is still running after `timeout`.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.process.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Resident set size in KiB, from /proc.
    pub fn rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).ok()?;
        status.lines().find_map(|l| l.strip_prefix("VmRSS:")?.trim().strip_suffix("kB")?.trim().parse().ok())
    }

    /// Open file descriptors, from /proc.
    pub fn open_fds(&self) -> Option<usize> {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid())).ok().map(|d| d.count())
    }

    /// Everything the service logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}
