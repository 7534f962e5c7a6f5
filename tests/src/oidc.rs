//! A real OpenID Provider on loopback: `tests/oidc/provider.mjs`, which runs panva's
//! `oidc-provider` (OpenID Certified) under Node.
//!
//! The provider picks its port and prints `LISTENING <port>` on stdout; the fixture reads it
//! back and waits until discovery answers. Its issuer is `http://127.0.0.1:PORT`.
//!
//! Built-in clients (see the script): [`TEST_CLIENT_ID`] may use `client_credentials` with
//! scopes `read write admin`; [`INTROSPECTOR_CLIENT_ID`] may introspect any client's tokens.
//! A `client_credentials` token requested with a `resource` is a JWT (RS256, `aud` = the
//! resource); one requested without is opaque and only introspection can read it.
//!
//! Signing keys live in a file in the fixture's temp dir, so [`OidcProvider::restart`] comes
//! back with the same JWKS; tokens and other provider state are in memory and do not survive
//! a restart (they do survive [`OidcProvider::rotate_keys`]).

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::{Process, binary, repo_root};

/// The confidential client allowed the `client_credentials` grant with `read write admin`.
pub const TEST_CLIENT_ID: &str = "gatehouse-test";
pub const TEST_CLIENT_SECRET: &str = "gatehouse-test-secret";
/// The client allowed to introspect every client's tokens (RFC 7662).
pub const INTROSPECTOR_CLIENT_ID: &str = "gatehouse-introspector";
pub const INTROSPECTOR_CLIENT_SECRET: &str = "introspector-secret";

/// How long a start may take, from spawning Node to discovery answering.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// Per-request timeout of the fixture's own HTTP calls.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

pub fn node_binary() -> PathBuf {
    binary("GATEHOUSE_NODE", ".venv/bin/node", "node")
}

/// `tests/oidc`, the Node package holding the provider script.
fn package_dir() -> PathBuf {
    repo_root().join("tests/oidc")
}

/// How to start the provider; `Default` is port 0 (the provider picks) and its built-in
/// clients and TTL.
#[derive(Debug, Clone, Default)]
pub struct OidcOptions {
    /// Access token lifetime, whole seconds (the script's default is 300 s).
    pub access_token_ttl: Option<Duration>,
    /// A fixed port instead of one the provider picks.
    pub port: Option<u16>,
    /// Client metadata (a JSON array, RFC 7591 names) replacing the built-in clients.
    pub clients: Option<serde_json::Value>,
}

/// Why a call to the provider failed.
#[derive(Debug)]
pub enum OidcError {
    /// No answer: the provider is down, refused the connection or timed out.
    Unreachable(reqwest::Error),
    /// An error status, e.g. 400 `invalid_scope` or 401 `invalid_client`.
    Rejected { status: u16, body: String },
    /// A success status whose body lacks what the call expects.
    Malformed(String),
}

impl std::fmt::Display for OidcError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OidcError::Unreachable(e) => write!(f, "OIDC provider unreachable: {e}"),
            OidcError::Rejected { status, body } => write!(f, "OIDC provider answered {status}: {body}"),
            OidcError::Malformed(what) => write!(f, "unexpected OIDC provider response: {what}"),
        }
    }
}

impl std::error::Error for OidcError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            OidcError::Unreachable(e) => Some(e),
            _ => None,
        }
    }
}

/// A running (or stopped) provider.
#[derive(Debug)]
pub struct OidcProvider {
    port: u16,
    options: OidcOptions,
    process: Option<Process>,
    http: reqwest::Client,
    /// `keys.json` (the private JWKS), `stdout.txt`, `provider.log` (stderr of every run).
    dir: TempDir,
}

impl OidcProvider {
    /// Starts the provider on a port it picks, with the built-in clients.
    pub async fn start() -> std::io::Result<OidcProvider> {
        OidcProvider::start_with(OidcOptions::default()).await
    }

    pub async fn start_with(options: OidcOptions) -> std::io::Result<OidcProvider> {
        if !package_dir().join("node_modules/oidc-provider").is_dir() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!(
                    "{} is missing oidc-provider: run scripts/install-test-deps.sh",
                    package_dir().join("node_modules").display()
                ),
            ));
        }
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(REQUEST_TIMEOUT)
            .build()
            .map_err(|e| std::io::Error::other(format!("HTTP client: {e}")))?;
        let dir = tempfile::tempdir()?;
        let mut provider = OidcProvider { port: options.port.unwrap_or(0), options, process: None, http, dir };
        let (process, port) = provider.spawn(provider.port).await?;
        provider.process = Some(process);
        provider.port = port;
        Ok(provider)
    }

    /// `http://127.0.0.1:PORT`, exactly as the provider puts it in `iss`.
    pub fn issuer(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn discovery_url(&self) -> String {
        format!("{}/.well-known/openid-configuration", self.issuer())
    }

    pub fn jwks_uri(&self) -> String {
        format!("{}/jwks", self.issuer())
    }

    pub fn token_endpoint(&self) -> String {
        format!("{}/token", self.issuer())
    }

    pub fn introspection_endpoint(&self) -> String {
        format!("{}/token/introspection", self.issuer())
    }

    /// The discovery document.
    pub async fn discovery(&self) -> Result<serde_json::Value, OidcError> {
        self.get_json(&self.discovery_url()).await
    }

    /// The public JWKS, signing key first.
    pub async fn jwks(&self) -> Result<serde_json::Value, OidcError> {
        self.get_json(&self.jwks_uri()).await
    }

    /// An access token for [`TEST_CLIENT_ID`]: a JWT for audience `resource` when given,
    /// otherwise an opaque token. An empty `scope` requests none.
    pub async fn client_credentials_token(&self, scope: &str, resource: Option<&str>) -> Result<String, OidcError> {
        self.client_credentials_token_for(TEST_CLIENT_ID, TEST_CLIENT_SECRET, scope, resource).await
    }

    /// [`OidcProvider::client_credentials_token`] for any client (client_secret_basic).
    pub async fn client_credentials_token_for(
        &self,
        client_id: &str,
        client_secret: &str,
        scope: &str,
        resource: Option<&str>,
    ) -> Result<String, OidcError> {
        let mut params = vec![("grant_type", "client_credentials")];
        if !scope.is_empty() {
            params.push(("scope", scope));
        }
        if let Some(resource) = resource {
            params.push(("resource", resource));
        }
        let json = self.post_form(&self.token_endpoint(), client_id, client_secret, &params).await?;
        json["access_token"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| OidcError::Malformed(format!("token response without access_token: {json}")))
    }

    /// RFC 7662 introspection of `token` as [`INTROSPECTOR_CLIENT_ID`].
    pub async fn introspect(&self, token: &str) -> Result<serde_json::Value, OidcError> {
        let params = [("token", token)];
        self.post_form(&self.introspection_endpoint(), INTROSPECTOR_CLIENT_ID, INTROSPECTOR_CLIENT_SECRET, &params)
            .await
    }

    /// Generates a new signing key and puts it first in the JWKS; the old keys stay published
    /// unless `drop_old`. Returns the new key's `kid`.
    pub async fn rotate_keys(&self, drop_old: bool) -> Result<String, OidcError> {
        let query = if drop_old { "?drop_old=1" } else { "" };
        let url = format!("{}/__admin/rotate{query}", self.issuer());
        let json = json_response(self.http.post(url).send().await).await?;
        json["kid"].as_str().map(str::to_string).ok_or_else(|| OidcError::Malformed(format!("rotate: {json}")))
    }

    /// Kills the provider (the IdP is down; connections are refused).
    pub fn stop(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.kill();
        }
    }

    /// Starts the provider again on the same port, with the same keys and clients.
    pub async fn restart(&mut self) -> std::io::Result<()> {
        self.stop();
        // The port was ours a moment ago; something else may briefly hold it.
        let mut last_error = None;
        for _ in 0..10 {
            match self.spawn(self.port).await {
                Ok((process, _)) => {
                    self.process = Some(process);
                    return Ok(());
                }
                Err(e) => last_error = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Err(last_error.unwrap_or_else(|| std::io::Error::other("provider did not restart")))
    }

    /// The provider's stderr so far (all runs), for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("provider.log")).unwrap_or_default()
    }

    /// Spawns `provider.mjs` on `port` (0: any) and waits until discovery answers.
    async fn spawn(&self, port: u16) -> std::io::Result<(Process, u16)> {
        let stdout_path = self.dir.path().join("stdout.txt");
        let stdout = std::fs::File::create(&stdout_path)?;
        let stderr =
            std::fs::OpenOptions::new().create(true).append(true).open(self.dir.path().join("provider.log"))?;
        let mut cmd = Command::new(node_binary());
        cmd.arg("provider.mjs")
            .arg(port.to_string())
            .current_dir(package_dir())
            .env("OIDC_KEYS_FILE", self.dir.path().join("keys.json"))
            .env("OIDC_EXIT_WITH_PARENT", "1")
            .env_remove("PORT")
            .stdout(stdout)
            .stderr(stderr);
        if let Some(ttl) = self.options.access_token_ttl {
            cmd.env("ACCESS_TOKEN_TTL", ttl.as_secs().max(1).to_string());
        }
        if let Some(clients) = &self.options.clients {
            cmd.env("OIDC_CLIENTS", clients.to_string());
        }
        let mut process = Process::spawn("oidc provider (node)", &mut cmd).map_err(|e| {
            std::io::Error::new(e.kind(), format!("{e} (run scripts/install-test-deps.sh, or set GATEHOUSE_NODE)"))
        })?;
        let deadline = Instant::now() + START_TIMEOUT;
        let port = loop {
            let text = tokio::fs::read_to_string(&stdout_path).await.unwrap_or_default();
            if let Some(port) = listening_port(&text) {
                break port;
            }
            if process.exited() {
                return Err(self.start_error("exited before listening"));
            }
            if Instant::now() >= deadline {
                return Err(self.start_error("printed no LISTENING line in time"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let discovery = format!("http://127.0.0.1:{port}/.well-known/openid-configuration");
        loop {
            let answered = self.http.get(&discovery).send().await.is_ok_and(|r| r.status().is_success());
            if answered {
                return Ok((process, port));
            }
            if process.exited() || Instant::now() >= deadline {
                return Err(self.start_error("did not answer discovery"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn start_error(&self, what: &str) -> std::io::Error {
        let log = self.log();
        let tail: Vec<&str> = log.lines().rev().take(30).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        std::io::Error::other(format!(
            "OIDC provider ({} {}) {what}; stderr:\n{}",
            node_binary().display(),
            package_dir().join("provider.mjs").display(),
            tail.join("\n")
        ))
    }

    async fn get_json(&self, url: &str) -> Result<serde_json::Value, OidcError> {
        json_response(self.http.get(url).send().await).await
    }

    async fn post_form(
        &self,
        url: &str,
        client_id: &str,
        client_secret: &str,
        params: &[(&str, &str)],
    ) -> Result<serde_json::Value, OidcError> {
        // RFC 6749 2.3.1: the credentials are form-encoded before they go into Basic.
        let request = self
            .http
            .post(url)
            .basic_auth(form_encode(client_id), Some(form_encode(client_secret)))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form(params));
        json_response(request.send().await).await
    }
}

async fn json_response(response: reqwest::Result<reqwest::Response>) -> Result<serde_json::Value, OidcError> {
    let response = response.map_err(OidcError::Unreachable)?;
    let status = response.status();
    let body = response.text().await.map_err(OidcError::Unreachable)?;
    if !status.is_success() {
        return Err(OidcError::Rejected { status: status.as_u16(), body });
    }
    serde_json::from_str(&body).map_err(|e| OidcError::Malformed(format!("{e}: {body}")))
}

/// The port from the provider's `LISTENING <port>` line.
fn listening_port(stdout: &str) -> Option<u16> {
    stdout.lines().find_map(|l| l.strip_prefix("LISTENING ")?.trim().parse().ok()).filter(|p| *p != 0)
}

/// `application/x-www-form-urlencoded` for `pairs`.
fn form(pairs: &[(&str, &str)]) -> String {
    pairs.iter().map(|(k, v)| format!("{}={}", form_encode(k), form_encode(v))).collect::<Vec<_>>().join("&")
}

fn form_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'*' => out.push(char::from(b)),
            b' ' => out.push('+'),
            // Writing to a String cannot fail.
            _ => {
                let _ = write!(out, "%{b:02X}");
            }
        }
    }
    out
}

/// A JWT's header, decoded but not verified (for assertions on `kid`, `alg`, `typ`).
pub fn jwt_header(token: &str) -> Option<serde_json::Value> {
    jwt_part(token, 0)
}

/// A JWT's claims, decoded but not verified.
pub fn jwt_claims(token: &str) -> Option<serde_json::Value> {
    jwt_part(token, 1)
}

fn jwt_part(token: &str, index: usize) -> Option<serde_json::Value> {
    let part = token.split('.').nth(index)?;
    serde_json::from_slice(&base64url_decode(part)?).ok()
}

/// Unpadded base64url (RFC 4648 section 5), as JWS uses it.
fn base64url_decode(input: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(input.len() * 3 / 4);
    let mut buffer = 0u32;
    let mut bits = 0;
    for c in input.bytes() {
        let value = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' => 62,
            b'_' => 63,
            _ => return None,
        };
        buffer = (buffer << 6) | u32::from(value);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((buffer >> bits) as u8);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_listening_line() {
        assert_eq!(listening_port("LISTENING 4242\n"), Some(4242));
        assert_eq!(listening_port("noise\nLISTENING 80\n"), Some(80));
        assert_eq!(listening_port("LISTENING 0\n"), None);
        assert_eq!(listening_port("LISTEN"), None);
    }

    #[test]
    fn form_encodes() {
        assert_eq!(
            form(&[("scope", "read write"), ("resource", "https://a.test/x?y=1")]),
            "scope=read+write&resource=https%3A%2F%2Fa.test%2Fx%3Fy%3D1"
        );
    }

    #[test]
    fn decodes_base64url() {
        assert_eq!(base64url_decode("eyJhIjoxfQ").as_deref(), Some(&b"{\"a\":1}"[..]));
        assert_eq!(base64url_decode("_-8"), Some(vec![0xff, 0xef]));
        assert_eq!(base64url_decode("a+b"), None);
    }
}
