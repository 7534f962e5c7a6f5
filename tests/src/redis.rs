//! Real `redis-server` processes on loopback: a single node that can be stopped and
//! restarted on the same port, and a three-node Cluster joined with `redis-cli --cluster`.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::{Process, binary, free_port};

fn redis_server() -> PathBuf {
    binary("GATEHOUSE_REDIS_SERVER", ".venv/bin/redis-server", "redis-server")
}

fn redis_cli() -> PathBuf {
    binary("GATEHOUSE_REDIS_CLI", ".venv/bin/redis-cli", "redis-cli")
}

fn cli(port: u16, args: &[&str]) -> Option<String> {
    let out = Command::new(redis_cli())
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn wait_for_ping(port: u16, process: &mut Process) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if process.exited() {
            return false;
        }
        if cli(port, &["PING"]).as_deref() == Some("PONG") {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

fn start_node(port: u16, dir: &std::path::Path, extra: &[&str]) -> Option<Process> {
    let mut cmd = Command::new(redis_server());
    cmd.args(["--bind", "127.0.0.1", "--port", &port.to_string(), "--save", "", "--appendonly", "no"])
        .args(["--dir", &dir.display().to_string()])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut process = Process::spawn("redis-server", &mut cmd).ok()?;
    wait_for_ping(port, &mut process).then_some(process)
}

/// One Redis node.
#[derive(Debug)]
pub struct RedisServer {
    pub port: u16,
    process: Option<Process>,
    dir: TempDir,
}

impl RedisServer {
    /// Starts a node on a free loopback port.
    pub fn start() -> RedisServer {
        let dir = tempfile::tempdir().expect("temp dir for redis");
        for _ in 0..5 {
            let port = free_port();
            if let Some(process) = start_node(port, dir.path(), &[]) {
                return RedisServer { port, process: Some(process), dir };
            }
        }
        panic!("redis-server did not start; run scripts/install-test-deps.sh");
    }

    /// A node that only speaks TLS (client certificates required) and needs `password`.
    pub fn start_tls(pki: &crate::tls::Pki, password: &str) -> RedisServer {
        let dir = tempfile::tempdir().expect("temp dir for redis");
        for _ in 0..5 {
            let port = free_port();
            let mut cmd = Command::new(redis_server());
            cmd.args(["--bind", "127.0.0.1", "--port", "0", "--tls-port", &port.to_string(), "--save", ""])
                .args(["--dir", &dir.path().display().to_string(), "--requirepass", password])
                .arg("--tls-cert-file")
                .arg(&pki.server_cert)
                .arg("--tls-key-file")
                .arg(&pki.server_key)
                .arg("--tls-ca-cert-file")
                .arg(&pki.ca_cert)
                .args(["--tls-auth-clients", "yes"])
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            let Ok(mut process) = Process::spawn("redis-server (tls)", &mut cmd) else {
                continue;
            };
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline && !process.exited() {
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return RedisServer { port, process: Some(process), dir };
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        panic!("redis-server with TLS did not start");
    }

    /// `host:port`, as REDIS_URL takes it.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the node (as a crash would).
    pub fn stop(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.kill();
        }
    }

    /// Starts the node again on the same port.
    pub fn restart(&mut self) {
        self.stop();
        for _ in 0..50 {
            if let Some(p) = start_node(self.port, self.dir.path(), &[]) {
                self.process = Some(p);
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("redis-server did not restart on port {}", self.port);
    }

    /// Runs a redis-cli command against this node.
    pub fn cli(&self, args: &[&str]) -> Option<String> {
        cli(self.port, args)
    }
}

/// A three-master Redis Cluster.
#[derive(Debug)]
pub struct RedisCluster {
    pub ports: Vec<u16>,
    _nodes: Vec<Process>,
    _dir: TempDir,
}

impl RedisCluster {
    pub fn start() -> RedisCluster {
        let dir = tempfile::tempdir().expect("temp dir for redis cluster");
        let mut nodes = Vec::new();
        let mut ports = Vec::new();
        while nodes.len() < 3 {
            let port = free_port();
            let node_dir = dir.path().join(port.to_string());
            std::fs::create_dir_all(&node_dir).expect("cluster node dir");
            let conf = format!("nodes-{port}.conf");
            if let Some(p) = start_node(
                port,
                &node_dir,
                &["--cluster-enabled", "yes", "--cluster-config-file", &conf, "--cluster-node-timeout", "2000"],
            ) {
                nodes.push(p);
                ports.push(port);
            }
        }
        let addrs: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let status = Command::new(redis_cli())
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("redis-cli --cluster create");
        assert!(status.success(), "redis-cli --cluster create failed");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ok = ports
                .iter()
                .all(|&p| cli(p, &["CLUSTER", "INFO"]).is_some_and(|info| info.contains("cluster_state:ok")));
            if ok {
                break;
            }
            assert!(Instant::now() < deadline, "cluster never reached cluster_state:ok");
            std::thread::sleep(Duration::from_millis(100));
        }
        RedisCluster { ports, _nodes: nodes, _dir: dir }
    }

    /// Comma-separated `host:port` seeds, as REDIS_URL takes them with REDIS_TYPE=cluster.
    pub fn addrs(&self) -> String {
        self.ports.iter().map(|p| format!("127.0.0.1:{p}")).collect::<Vec<_>>().join(",")
    }
}

/// A Redis master watched by one sentinel (`redis-server --sentinel`), master name `mymaster`.
#[derive(Debug)]
pub struct RedisSentinel {
    pub master: RedisServer,
    pub sentinel_port: u16,
    _sentinel: Process,
    _dir: TempDir,
}

impl RedisSentinel {
    pub fn start() -> RedisSentinel {
        let master = RedisServer::start();
        let dir = tempfile::tempdir().expect("temp dir for sentinel");
        for _ in 0..5 {
            let port = free_port();
            let conf = dir.path().join(format!("sentinel-{port}.conf"));
            let text = format!(
                "port {port}\nbind 127.0.0.1\ndir {}\nsentinel monitor mymaster 127.0.0.1 {} 1\nsentinel down-after-milliseconds mymaster 1000\n",
                dir.path().display(),
                master.port
            );
            std::fs::write(&conf, text).expect("write sentinel.conf");
            let mut cmd = Command::new(redis_server());
            cmd.arg(&conf).arg("--sentinel").stdout(Stdio::null()).stderr(Stdio::null());
            let Ok(mut process) = Process::spawn("redis-sentinel", &mut cmd) else {
                continue;
            };
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline && !process.exited() {
                let addr = cli(port, &["SENTINEL", "get-master-addr-by-name", "mymaster"]);
                if addr.is_some_and(|a| a.contains(&master.port.to_string())) {
                    return RedisSentinel { master, sentinel_port: port, _sentinel: process, _dir: dir };
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        panic!("redis sentinel did not start");
    }

    /// REDIS_URL for REDIS_TYPE=sentinel: `mymaster,127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("mymaster,127.0.0.1:{}", self.sentinel_port)
    }
}
