//! Real `redis-server` processes on loopback: a single node that can be stopped and
//! restarted on the same port, a three-master Cluster joined with `redis-cli --cluster`
//! (optionally with a replica per master, for failover), and a master watched by a sentinel.

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
    /// By port index; `None` once killed.
    nodes: Vec<Option<Process>>,
    _dir: TempDir,
}

impl RedisCluster {
    /// Three masters, no replicas.
    pub fn start() -> RedisCluster {
        RedisCluster::start_with(3, 0)
    }

    /// Three masters with one replica each: a killed master fails over to its replica after
    /// the node timeout (1 s here).
    pub fn start_with_replicas() -> RedisCluster {
        RedisCluster::start_with(3, 1)
    }

    fn start_with(masters: usize, replicas_per_master: usize) -> RedisCluster {
        let dir = tempfile::tempdir().expect("temp dir for redis cluster");
        let mut nodes = Vec::new();
        let mut ports = Vec::new();
        let node_timeout = if replicas_per_master > 0 { "1000" } else { "2000" };
        while nodes.len() < masters * (1 + replicas_per_master) {
            let port = free_port();
            let node_dir = dir.path().join(port.to_string());
            std::fs::create_dir_all(&node_dir).expect("cluster node dir");
            let conf = format!("nodes-{port}.conf");
            if let Some(p) = start_node(
                port,
                &node_dir,
                &["--cluster-enabled", "yes", "--cluster-config-file", &conf, "--cluster-node-timeout", node_timeout],
            ) {
                nodes.push(Some(p));
                ports.push(port);
            }
        }
        let addrs: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let status = Command::new(redis_cli())
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", &replicas_per_master.to_string(), "--cluster-yes"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("redis-cli --cluster create");
        assert!(status.success(), "redis-cli --cluster create failed");
        let cluster = RedisCluster { ports, nodes, _dir: dir };
        assert!(cluster.wait_ok(Duration::from_secs(20)), "cluster never reached cluster_state:ok");
        // Replicas must have synced before a failover can promote them.
        if replicas_per_master > 0 {
            let deadline = Instant::now() + Duration::from_secs(20);
            while cluster.replicas_in_sync() < masters * replicas_per_master {
                assert!(Instant::now() < deadline, "cluster replicas never synced");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        cluster
    }

    /// Waits until every live node reports `cluster_state:ok` and agrees on the masters.
    pub fn wait_ok(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let live: Vec<u16> =
                self.ports.iter().zip(&self.nodes).filter(|(_, n)| n.is_some()).map(|(p, _)| *p).collect();
            if live.iter().all(|&p| cli(p, &["CLUSTER", "INFO"]).is_some_and(|info| info.contains("cluster_state:ok")))
            {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn replicas_in_sync(&self) -> usize {
        self.ports
            .iter()
            .filter_map(|&p| cli(p, &["INFO", "replication"]))
            .filter(|info| info.contains("role:slave") && info.contains("master_link_status:up"))
            .count()
    }

    /// The port of the master that serves `key`'s slot.
    pub fn master_for(&self, key: &str) -> Option<u16> {
        let seed = self.ports.iter().zip(&self.nodes).find(|(_, n)| n.is_some()).map(|(p, _)| *p)?;
        let slot: u16 = cli(seed, &["CLUSTER", "KEYSLOT", key])?.parse().ok()?;
        let nodes = cli(seed, &["CLUSTER", "NODES"])?;
        nodes.lines().find_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let is_live_master = fields.get(2)?.contains("master") && !fields[2].contains("fail");
            let serves = fields.iter().skip(8).any(|range| match range.split_once('-') {
                Some((a, b)) => a.parse::<u16>().is_ok_and(|a| a <= slot) && b.parse::<u16>().is_ok_and(|b| slot <= b),
                None => range.parse::<u16>().ok() == Some(slot),
            });
            // `127.0.0.1:PORT@BUS`
            (is_live_master && serves).then(|| fields[1].split(['@', ':']).nth(1)?.parse().ok()).flatten()
        })
    }

    /// Waits until a live master other than `old` serves `key`'s slot and the cluster is ok.
    pub fn wait_failover(&self, key: &str, old: u16, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.master_for(key).is_some_and(|m| m != old) {
                return self.wait_ok(deadline.saturating_duration_since(Instant::now()));
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the node on `port`, as a crash would.
    pub fn kill(&mut self, port: u16) {
        if let Some(i) = self.ports.iter().position(|p| *p == port)
            && let Some(mut node) = self.nodes[i].take()
        {
            node.kill();
        }
    }

    /// Runs a redis-cli command against one node in cluster mode (`-c`, following redirects).
    pub fn cli(&self, args: &[&str]) -> Option<String> {
        let seed = self.ports.iter().zip(&self.nodes).find(|(_, n)| n.is_some()).map(|(p, _)| *p)?;
        let mut all = vec!["-c"];
        all.extend_from_slice(args);
        cli(seed, &all)
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
        RedisSentinel::start_with(None)
    }

    /// A sentinel that needs `password` (its `requirepass`), as REDIS_SENTINEL_AUTH gives it.
    pub fn start_with_password(password: &str) -> RedisSentinel {
        RedisSentinel::start_with(Some(password))
    }

    fn start_with(password: Option<&str>) -> RedisSentinel {
        let master = RedisServer::start();
        let dir = tempfile::tempdir().expect("temp dir for sentinel");
        let auth: Vec<&str> = password.map(|p| vec!["--no-auth-warning", "-a", p]).unwrap_or_default();
        for _ in 0..5 {
            let port = free_port();
            let conf = dir.path().join(format!("sentinel-{port}.conf"));
            let mut text = format!(
                "port {port}\nbind 127.0.0.1\ndir {}\nsentinel monitor mymaster 127.0.0.1 {} 1\nsentinel down-after-milliseconds mymaster 1000\n",
                dir.path().display(),
                master.port
            );
            if let Some(password) = password {
                text.push_str(&format!("requirepass {password}\n"));
            }
            std::fs::write(&conf, text).expect("write sentinel.conf");
            let mut cmd = Command::new(redis_server());
            cmd.arg(&conf).arg("--sentinel").stdout(Stdio::null()).stderr(Stdio::null());
            let Ok(mut process) = Process::spawn("redis-sentinel", &mut cmd) else {
                continue;
            };
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline && !process.exited() {
                let args = [&auth[..], &["SENTINEL", "get-master-addr-by-name", "mymaster"]].concat();
                let addr = cli(port, &args);
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
