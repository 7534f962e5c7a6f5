//! A token issuer under the test's control: an RSA key made with `openssl`, its JWKS and OIDC
//! discovery served on a loopback port, and tokens minted with any header and claims. Tests
//! use it for what a real IdP will not issue: expired, future, wrong-audience and forged tokens.

use std::path::Path;
use std::process::{Command, Stdio};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tokio::net::TcpListener;

#[derive(Debug)]
pub struct TestIssuer {
    pub port: u16,
    pub kid: String,
    private_pem: Vec<u8>,
    public_pem: Vec<u8>,
    task: tokio::task::JoinHandle<()>,
}

/// Generates an RSA-2048 key in `dir`: (private PEM, public PEM, JWK modulus bytes).
pub fn rsa_key(dir: &Path, name: &str) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let key = dir.join(format!("{name}.pem"));
    let run = |args: &[&str]| {
        let out = Command::new("openssl").args(args).stdin(Stdio::null()).output().expect("openssl is installed");
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        out.stdout
    };
    let key_str = key.to_str().expect("utf-8 temp path");
    run(&["genrsa", "-out", key_str, "2048"]);
    let public = run(&["rsa", "-in", key_str, "-pubout"]);
    let modulus = String::from_utf8(run(&["rsa", "-in", key_str, "-noout", "-modulus"])).expect("modulus text");
    let hex = modulus.trim().trim_start_matches("Modulus=");
    let n = (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex")).collect();
    (std::fs::read(&key).expect("read key"), public, n)
}

impl TestIssuer {
    pub async fn start(dir: &Path) -> TestIssuer {
        let (private_pem, public_pem, n) = rsa_key(dir, "issuer");
        let kid = "test-key-1".to_string();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind issuer");
        let port = listener.local_addr().expect("issuer addr").port();
        let issuer = format!("http://127.0.0.1:{port}");
        let jwks = json!({"keys": [{"kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256",
            "n": URL_SAFE_NO_PAD.encode(&n), "e": "AQAB"}]});
        let discovery = json!({"issuer": issuer, "jwks_uri": format!("{issuer}/jwks.json")});
        let app =
            axum::Router::new().route("/jwks.json", axum::routing::get(move || async move { axum::Json(jwks) })).route(
                "/.well-known/openid-configuration",
                axum::routing::get(move || async move { axum::Json(discovery) }),
            );
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        TestIssuer { port, kid, private_pem, public_pem, task }
    }

    pub fn issuer(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn public_pem(&self) -> &[u8] {
        &self.public_pem
    }

    /// Claims every valid token of this issuer has: `iss`, `aud`, `sub`, `iat`, `exp` one hour
    /// ahead. Tests change what they need.
    pub fn claims(&self, audience: &str) -> Value {
        let now = now();
        json!({"iss": self.issuer(), "aud": audience, "sub": "user-1", "iat": now, "exp": now + 3600})
    }

    /// An RS256 token signed with this issuer's key and `kid`.
    pub fn mint(&self, claims: &Value) -> String {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(self.kid.clone());
        self.mint_with(header, claims)
    }

    /// A token with a custom header, signed with this issuer's key.
    pub fn mint_with(&self, header: Header, claims: &Value) -> String {
        let key = EncodingKey::from_rsa_pem(&self.private_pem).expect("issuer key");
        jsonwebtoken::encode(&header, claims, &key).expect("sign token")
    }
}

impl Drop for TestIssuer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// `header.payload.signature` with the given parts encoded as JWTs are; for hand-made tokens
/// (`alg: none`) the signature may be empty.
pub fn raw_token(header: &Value, claims: &Value, signature: &[u8]) -> String {
    let part = |v: &Value| URL_SAFE_NO_PAD.encode(v.to_string());
    format!("{}.{}.{}", part(header), part(claims), URL_SAFE_NO_PAD.encode(signature))
}
