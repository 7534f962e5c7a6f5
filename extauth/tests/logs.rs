//! The `gatehouse-extauth` binary's log stream as a log collector sees it: stderr piped (not a
//! terminal), filtered by LOG_LEVEL or LOG_FILTER, in text or JSON lines.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use gatehouse_extauth::grpc::check_request;
use gatehouse_extauth::hash_key_sha256;

const BIN: &str = env!("CARGO_BIN_EXE_gatehouse-extauth");

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Runs the binary with `env` on top of a policy file, makes one allowed gRPC Check (HTTP/2
/// frames that h2 logs at debug, an allow that extauth logs at debug), stops it with SIGTERM,
/// and returns everything it wrote to stderr.
fn logs_of_one_check(env: &[(&str, &str)]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("policies.yaml");
    std::fs::write(
        &file,
        format!(
            "policies:\n  - name: keys\n    hosts: [api.example.com]\n    identity:\n      any_of:\n        - name: keys\n          api_key:\n            keys: [{{ id: team-a, hash: \"{}\" }}]\n",
            hash_key_sha256("secret-a")
        ),
    )
    .unwrap();
    let (grpc, http) = (free_port(), free_port());
    let mut child = Command::new(BIN)
        .env_clear()
        .env("EXTAUTH_CONFIG", &file)
        .env("GRPC_HOST", "127.0.0.1")
        .env("GRPC_PORT", grpc.to_string())
        .env("HOST", "127.0.0.1")
        .env("PORT", http.to_string())
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut client = loop {
            match AuthorizationClient::connect(format!("http://127.0.0.1:{grpc}")).await {
                Ok(client) => break client,
                Err(_) if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(50)).await,
                Err(e) => panic!("the binary never served: {e}"),
            }
        };
        let ok = client.check(check_request("GET", "api.example.com", "/x", &[("x-api-key", "secret-a")], &[])).await;
        assert_eq!(ok.unwrap().into_inner().status.unwrap().code, 0);
    });

    assert!(Command::new("kill").arg("-TERM").arg(child.id().to_string()).status().unwrap().success());
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "did not exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut logs = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut logs).unwrap();
    logs
}

/// Lines logged at DEBUG by one of `targets` (text format: `<time> DEBUG <target>: ...`).
fn debug_lines_of<'a>(logs: &'a str, targets: &[&str]) -> Vec<&'a str> {
    logs.lines()
        .filter(|line| {
            line.split_once(" DEBUG ").is_some_and(|(_, rest)| {
                targets.iter().any(|t| rest.starts_with(&format!("{t}:")) || rest.starts_with(&format!("{t}::")))
            })
        })
        .collect()
}

const DEPENDENCIES: &[&str] = &["h2", "hyper", "hyper_util", "tonic", "tower", "rustls", "redis"];

#[test]
fn log_level_debug_is_gatehouse_debug_in_plain_text() {
    let logs = logs_of_one_check(&[("LOG_LEVEL", "debug")]);
    assert!(!logs.contains("\x1b["), "ANSI escapes on a pipe:\n{logs}");
    assert!(!debug_lines_of(&logs, &["gatehouse_extauth"]).is_empty(), "no debug line of our own:\n{logs}");
    let noise = debug_lines_of(&logs, DEPENDENCIES);
    assert!(noise.is_empty(), "dependency debug lines with LOG_LEVEL=debug:\n{}", noise.join("\n"));
    assert!(logs.contains(" INFO gatehouse_extauth: starting gatehouse-extauth"), "{logs}");

    // The full filter shows them, so the check above can tell.
    let logs = logs_of_one_check(&[("LOG_LEVEL", "info"), ("LOG_FILTER", "debug")]);
    assert!(!debug_lines_of(&logs, &["h2"]).is_empty(), "LOG_FILTER=debug shows no h2 frames:\n{logs}");
}

#[test]
fn log_format_json_gives_one_json_object_per_line() {
    let logs = logs_of_one_check(&[("LOG_LEVEL", "debug"), ("LOG_FORMAT", "json")]);
    assert!(!logs.contains("\x1b["), "ANSI escapes in JSON logs:\n{logs}");
    let events: Vec<serde_json::Value> = logs
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}")))
        .collect();
    let allowed = events.iter().find(|e| e["message"] == "allowed").unwrap_or_else(|| panic!("no allow:\n{logs}"));
    assert_eq!(
        (&allowed["level"], &allowed["target"], &allowed["subject"]),
        (&"DEBUG".into(), &"gatehouse_extauth::service".into(), &"team-a".into())
    );
    assert!(
        events
            .iter()
            .all(|e| e["level"] != "DEBUG" || e["target"].as_str().is_some_and(|t| t.starts_with("gatehouse_")))
    );
}
