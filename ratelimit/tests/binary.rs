//! The `gatehouse-ratelimit` binary as operators run it: `check-config`, and serving from
//! environment variables until SIGTERM.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_gatehouse-ratelimit");

fn check_config(path: &std::path::Path) -> (bool, String, String) {
    let out = Command::new(BIN).arg("check-config").arg(path).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_config_prints_rules_or_the_exact_error() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.yaml");
    std::fs::write(
        &good,
        "domain: d\ndescriptors:\n  - key: k\n    rate_limits:\n      - { unit: second, requests_per_unit: 5 }\n      - { unit: day, requests_per_unit: 100 }\n",
    )
    .unwrap();
    let (ok, stdout, stderr) = check_config(&good);
    assert!(ok, "{stderr}");
    assert_eq!(
        stdout,
        "d.k: unit=SECOND requests_per_unit=5 + unit=DAY requests_per_unit=100, shadow_mode: false, quota_mode: false\n"
    );
    assert!(stderr.contains("OK: 1 file(s)"), "{stderr}");

    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "domain: d\ndescriptors:\n  - key: k\n    rate_limit: { unit: second, requests_per_unit: 5, algoritm: token_bucket }\n").unwrap();
    let (ok, stdout, stderr) = check_config(&bad);
    assert!(!ok);
    assert!(stdout.is_empty());
    assert!(stderr.contains("bad.yaml:4:") && stderr.contains("unknown field `algoritm`"), "{stderr}");

    // A directory is checked as a whole: the good file alone is not enough.
    let (ok, _, stderr) = check_config(dir.path());
    assert!(!ok && stderr.contains("bad.yaml"), "{stderr}");
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[test]
fn serves_from_environment_and_stops_on_sigterm() {
    let rules = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(rules.path().join("config")).unwrap();
    std::fs::write(
        rules.path().join("config/d.yaml"),
        "domain: d\ndescriptors:\n  - key: k\n    rate_limit: { unit: minute, requests_per_unit: 1 }\n",
    )
    .unwrap();
    let (grpc, http, debug) = (free_port(), free_port(), free_port());
    let mut child = Command::new(BIN)
        .env_clear()
        .env("RUNTIME_ROOT", rules.path())
        .env("GRPC_HOST", "127.0.0.1")
        .env("GRPC_PORT", grpc.to_string())
        .env("HOST", "127.0.0.1")
        .env("PORT", http.to_string())
        .env("DEBUG_HOST", "127.0.0.1")
        .env("DEBUG_PORT", debug.to_string())
        .env("LOG_FORMAT", "json")
        .env("LOG_LEVEL", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let client = reqwest::Client::new();
    let body = r#"{"domain":"d","descriptors":[{"entries":[{"key":"k","value":"v"}]}]}"#;
    let deadline = Instant::now() + Duration::from_secs(10);
    let first = loop {
        let resp = runtime.block_on(client.post(format!("http://127.0.0.1:{http}/json")).body(body).send());
        match resp {
            Ok(r) => break r.status().as_u16(),
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => panic!("the binary never served: {e}"),
        }
    };
    let second = runtime
        .block_on(client.post(format!("http://127.0.0.1:{http}/json")).body(body).send())
        .unwrap()
        .status()
        .as_u16();
    assert_eq!((first, second), (200, 429));
    let rlconfig = runtime
        .block_on(async { client.get(format!("http://127.0.0.1:{debug}/rlconfig")).send().await?.text().await })
        .unwrap();
    assert_eq!(rlconfig, "d.k: unit=MINUTE requests_per_unit=1, shadow_mode: false, quota_mode: false\n");

    let status = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status().unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let exit = loop {
        if let Some(exit) = child.try_wait().unwrap() {
            break exit;
        }
        assert!(Instant::now() < deadline, "did not exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(exit.success(), "exit status {exit:?}");
    let mut logs = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut logs).unwrap();
    assert!(logs.lines().any(|l| l.starts_with('{') && l.contains("shutdown signal received")), "{logs}");
}
