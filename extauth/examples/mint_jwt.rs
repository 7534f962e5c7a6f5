//! An RS256 token and the JWKS that verifies it, for benchmarks: the private key comes from
//! `openssl genrsa`, the token goes to stdout, the public key to a JWKS file.
//!
//! ```sh
//! openssl genrsa -out key.pem 2048
//! cargo run --release -p gatehouse-extauth --example mint_jwt -- key.pem jwks.json \
//!     http://127.0.0.1:8080 gatehouse-bench > token
//! ```
//! Claims: `iss`, `aud`, `sub` = bench-user, `scope` = bench, `iat`, `exp` one hour ahead.

use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::jwk::{Jwk, JwkSet, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;

const KID: &str = "bench-rs256";
const LIFETIME_SECS: u64 = 3600;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [key, jwks, issuer, audience] = args.as_slice() else {
        eprintln!("usage: mint_jwt KEY.pem JWKS_OUT ISSUER AUDIENCE");
        return ExitCode::FAILURE;
    };
    match mint(key, jwks, issuer, audience) {
        Ok(token) => {
            println!("{token}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("mint_jwt: {e}");
            ExitCode::FAILURE
        }
    }
}

fn mint(key: &str, jwks: &str, issuer: &str, audience: &str) -> Result<String, String> {
    let pem = std::fs::read(key).map_err(|e| format!("{key}: {e}"))?;
    let key = EncodingKey::from_rsa_pem(&pem).map_err(|e| format!("{key}: {e}"))?;

    let mut jwk = Jwk::from_encoding_key(&key, Algorithm::RS256).map_err(|e| format!("public key: {e}"))?;
    jwk.common.key_id = Some(KID.into());
    jwk.common.public_key_use = Some(PublicKeyUse::Signature);
    jwk.common.key_algorithm = Some(KeyAlgorithm::RS256);
    let set = JwkSet { keys: vec![jwk] };
    let text = serde_json::to_string_pretty(&set).map_err(|e| format!("JWKS: {e}"))?;
    std::fs::write(jwks, text).map_err(|e| format!("{jwks}: {e}"))?;

    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_err(|e| e.to_string())?.as_secs();
    let claims = json!({
        "iss": issuer,
        "aud": audience,
        "sub": "bench-user",
        "scope": "bench",
        "iat": now,
        "exp": now + LIFETIME_SECS,
    });
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(KID.into());
    jsonwebtoken::encode(&header, &claims, &key).map_err(|e| format!("signing: {e}"))
}
