//! Real Envoy, started from the reference config `envoy/gateway.yaml`.
//!
//! The template's `${NAME}` placeholders are filled from the values a test passes; ports are
//! 0 and Envoy picks them, and the fixture reads the bound ports back from the admin API.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use tempfile::TempDir;

use crate::tls::Pki;
use crate::{Process, binary, eventually, repo_root};

pub fn envoy_binary() -> PathBuf {
    binary("GATEHOUSE_ENVOY", ".venv/bin/envoy", "envoy")
}

/// Replaces every `${NAME}` in `template`; errors name any placeholder without a value.
pub fn render(template: &str, vars: &BTreeMap<String, String>) -> Result<String, String> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    let mut missing = Vec::new();
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            out.push_str(&rest[start..]);
            rest = "";
            break;
        };
        let name = &after[..end];
        match vars.get(name) {
            Some(v) => out.push_str(v),
            None => missing.push(name.to_string()),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    if missing.is_empty() {
        Ok(out)
    } else {
        missing.sort();
        missing.dedup();
        Err(format!("no value for placeholder(s): {}", missing.join(", ")))
    }
}

/// A running Envoy.
#[derive(Debug)]
pub struct Envoy {
    pub admin: String,
    /// The `gateway` listener's port.
    pub port: u16,
    /// The `gateway_mtls` listener's port (TLS, client certificate required).
    pub mtls_port: u16,
    /// The PKI of the mTLS listener, when the fixture made it (no TLS_* vars given).
    pub pki: Option<Pki>,
    /// Held so that Envoy stops when the fixture is dropped.
    _process: Process,
    _dir: TempDir,
}

/// Values for the reference config; tests override what they need.
pub fn default_vars() -> BTreeMap<String, String> {
    [
        ("ENVOY_ADMIN_PORT", "0"),
        ("GATEWAY_PORT", "0"),
        ("DEMO_UPSTREAM_PORT", "0"),
        ("UPSTREAM_HOST", "127.0.0.1"),
        ("UPSTREAM_PORT", "1"),
        ("RATELIMIT_HOST", "127.0.0.1"),
        ("RATELIMIT_PORT", "1"),
        ("RATELIMIT_FAILURE_MODE_DENY", "false"),
        ("EXTAUTH_HOST", "127.0.0.1"),
        ("EXTAUTH_PORT", "1"),
        ("EXTAUTH_HTTP_PORT", "1"),
        ("EXTAUTH_FAILURE_MODE_ALLOW", "false"),
        ("TRANSFORM_HOST", "127.0.0.1"),
        ("TRANSFORM_PORT", "1"),
        ("TRANSFORM_FAILURE_MODE_ALLOW", "false"),
        ("GATEWAY_MTLS_PORT", "0"),
        ("LISTEN_ADDRESS", "127.0.0.1"),
        ("CLUSTER_TYPE", "STATIC"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

impl Envoy {
    /// Starts Envoy from `envoy/gateway.yaml` with `vars` and waits until it listens.
    pub async fn start(vars: &BTreeMap<String, String>) -> Envoy {
        Envoy::start_edited(vars, |config| config).await
    }

    /// As [`Envoy::start`], with `edit` applied to the rendered config: for the rare test
    /// that needs what the reference config does not template, such as a second replica in a
    /// service's cluster.
    pub async fn start_edited(vars: &BTreeMap<String, String>, edit: impl FnOnce(String) -> String) -> Envoy {
        let template_path = repo_root().join("envoy/gateway.yaml");
        let template = std::fs::read_to_string(&template_path).expect("read envoy/gateway.yaml");
        let dir = tempfile::tempdir().expect("temp dir for envoy");
        // The mTLS listener needs certificates: a throwaway PKI unless the test brings its own.
        let mut vars = vars.clone();
        let pki = (!vars.contains_key("TLS_CERT_FILE")).then(|| {
            let pki = Pki::generate(dir.path());
            for (name, path) in
                [("TLS_CERT_FILE", &pki.server_cert), ("TLS_KEY_FILE", &pki.server_key), ("TLS_CA_FILE", &pki.ca_cert)]
            {
                vars.insert(name.to_string(), path.display().to_string());
            }
            pki
        });
        let config = edit(render(&template, &vars).unwrap_or_else(|e| panic!("{}: {e}", template_path.display())));
        let config_path = dir.path().join("envoy.yaml");
        let admin_path = dir.path().join("admin.txt");
        std::fs::write(&config_path, config).expect("write envoy config");
        let log = std::fs::File::create(dir.path().join("envoy.log")).expect("envoy log");
        let mut cmd = Command::new(envoy_binary());
        cmd.arg("-c")
            .arg(&config_path)
            .arg("--admin-address-path")
            .arg(&admin_path)
            .args(["--disable-hot-restart", "-l", "warning", "--concurrency", "2"])
            .stdout(Stdio::null())
            .stderr(log);
        let mut process = Process::spawn("envoy", &mut cmd).expect("start envoy (run scripts/install-test-deps.sh)");

        let admin = eventually(Duration::from_secs(30), || {
            let text = std::fs::read_to_string(&admin_path).ok();
            async move { text.map(|t| t.trim().to_string()).filter(|t| !t.is_empty()) }
        })
        .await;
        let Some(admin) = admin else {
            let exited = process.exited();
            let log = std::fs::read_to_string(dir.path().join("envoy.log")).unwrap_or_default();
            panic!("envoy did not start (exited: {exited}):\n{log}");
        };
        let client = reqwest::Client::new();
        let url = format!("http://{admin}/listeners?format=json");
        let port_of = |name: &'static str| {
            let req = client.get(&url).send();
            async move {
                let json: serde_json::Value = req.await.ok()?.json().await.ok()?;
                json["listener_statuses"]
                    .as_array()?
                    .iter()
                    .find(|l| l["name"] == name)?["local_address"]["socket_address"]["port_value"]
                    .as_u64()
                    .map(|p| p as u16)
                    .filter(|p| *p != 0)
            }
        };
        // LIVE only once every cluster has initialised (including its first health checks):
        // before that, listeners may not accept yet.
        let ready_url = format!("http://{admin}/ready");
        let live = eventually(Duration::from_secs(30), || {
            let request = client.get(&ready_url).send();
            async move { request.await.ok().filter(|r| r.status().is_success()).map(|_| ()) }
        })
        .await;
        assert!(live.is_some(), "envoy never became LIVE");
        let port =
            eventually(Duration::from_secs(30), || port_of("gateway")).await.expect("envoy gateway listener port");
        let mtls_port =
            eventually(Duration::from_secs(30), || port_of("gateway_mtls")).await.expect("envoy mTLS listener port");
        Envoy { admin, port, mtls_port, pki, _process: process, _dir: dir }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Every admin stat whose name matches `regex`, one `name: value` per line.
    pub async fn stats(&self, regex: &str) -> String {
        let url = format!("http://{}/stats?filter={regex}", self.admin);
        match reqwest::get(url).await {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(e) => format!("admin /stats: {e}"),
        }
    }

    /// One admin stat's value, e.g. `cluster.upstream.ratelimit.over_limit`.
    pub async fn stat(&self, name: &str) -> Option<u64> {
        let url = format!("http://{}/stats?filter=^{}$", self.admin, name.replace('.', "\\."));
        let text = reqwest::get(url).await.ok()?.text().await.ok()?;
        text.lines().find_map(|l| l.strip_prefix(&format!("{name}: "))).and_then(|v| v.trim().parse().ok())
    }
}

/// An edit for [`Envoy::start_edited`]: mTLS from Envoy to gatehouse-ratelimit. Envoy presents
/// `client` (certificate, key) and accepts a server certificate signed by `ca`, and, with
/// `server_san`, only one valid for that DNS name.
pub fn ratelimit_mtls(client: (&Path, &Path), ca: &Path, server_san: Option<&str>) -> impl FnOnce(String) -> String {
    let san = server_san.map_or(String::new(), |san| {
        format!("\n            match_typed_subject_alt_names:\n            - san_type: DNS\n              matcher: {{ exact: {san} }}")
    });
    let socket = format!(
        r#"    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
        sni: localhost
        common_tls_context:
          alpn_protocols: [h2]
          tls_certificates:
          - certificate_chain: {{ filename: {} }}
            private_key: {{ filename: {} }}
          validation_context:
            trusted_ca: {{ filename: {} }}{san}
    load_assignment:
      cluster_name: gatehouse_ratelimit
"#,
        client.0.display(),
        client.1.display(),
        ca.display(),
    );
    move |config: String| config.replacen("    load_assignment:\n      cluster_name: gatehouse_ratelimit\n", &socket, 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_fills_and_reports_missing() {
        let mut vars = BTreeMap::new();
        vars.insert("A".to_string(), "1".to_string());
        assert_eq!(render("x${A}y${A}", &vars).unwrap(), "x1y1");
        assert_eq!(render("${A}${B}${C}${B}", &vars).unwrap_err(), "no value for placeholder(s): B, C");
    }
}
