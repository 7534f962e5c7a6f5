//! Short-lived JWTs about the caller, signed by the service (ES256) for upstreams to trust
//! instead of re-validating the original credential. The public key is served as a JWKS on
//! the HTTP port (`/.well-known/jwks.json`).
//!
//! The key comes from `SIGNING_KEY_FILE` (PKCS#8 PEM, P-256) so replicas share it, or is
//! generated at start (fine for one replica; upstreams refetch the JWKS on an unknown kid).

use std::path::Path;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use moka::sync::Cache;
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use serde_json::{Map, Value, json};

use crate::identity::api_key::{Digest, hex, sha256};
use crate::identity::jwt::now_secs;

pub struct Signer {
    issuer: String,
    kid: String,
    key: EncodingKey,
    jwks: Value,
    /// Minted tokens by claims digest, with their `exp`; reused for half their lifetime.
    minted: Cache<Digest, (String, u64)>,
}

#[derive(Debug, thiserror::Error)]
pub enum SignerError {
    #[error("{path}: {message}")]
    Key { path: String, message: String },
    #[error("generating a signing key: {0}")]
    Generate(String),
}

impl Signer {
    /// Loads a PKCS#8 P-256 key from `path`, or generates one.
    /// `max_reuse` bounds how long a minted token is kept for reuse; a token is reused only
    /// for the first half of its own lifetime either way.
    pub fn new(issuer: String, path: Option<&Path>, max_reuse: Duration) -> Result<Signer, SignerError> {
        let pkcs8 = match path {
            Some(path) => {
                let err = |message: String| SignerError::Key { path: path.display().to_string(), message };
                let pem = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
                let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
                base64::engine::general_purpose::STANDARD
                    .decode(body.trim())
                    .map_err(|e| err(format!("not a PEM key: {e}")))?
            }
            None => EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
                .map_err(|e| SignerError::Generate(e.to_string()))?
                .as_ref()
                .to_vec(),
        };
        let pair =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &pkcs8, &SystemRandom::new()).map_err(|e| {
                SignerError::Key {
                    path: path.map(|p| p.display().to_string()).unwrap_or_default(),
                    message: format!("not a PKCS#8 P-256 private key: {e}"),
                }
            })?;
        // An uncompressed point: 0x04 || x || y.
        let public = pair.public_key().as_ref();
        let kid = hex(&sha256(public)[..8]);
        let jwks = json!({ "keys": [{
            "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": kid,
            "x": URL_SAFE_NO_PAD.encode(&public[1..33]),
            "y": URL_SAFE_NO_PAD.encode(&public[33..65]),
        }]});
        Ok(Signer {
            issuer,
            kid,
            key: EncodingKey::from_ec_der(&pkcs8),
            jwks,
            minted: Cache::builder().max_capacity(100_000).time_to_live(max_reuse.max(Duration::from_secs(1))).build(),
        })
    }

    pub fn jwks(&self) -> &Value {
        &self.jwks
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// Signs `claims` plus `iss`, `iat` and `exp = now + ttl`. The same claims within the reuse
    /// window get the same token.
    pub fn mint(&self, mut claims: Map<String, Value>, ttl: Duration) -> Result<String, jsonwebtoken::errors::Error> {
        claims.insert("iss".into(), Value::String(self.issuer.clone()));
        let digest = sha256(Value::Object(claims.clone()).to_string().as_bytes());
        let now = now_secs();
        if let Some((token, exp)) = self.minted.get(&digest)
            && exp > now + ttl.as_secs() / 2
        {
            return Ok(token);
        }
        claims.insert("iat".into(), now.into());
        let exp = now + ttl.as_secs();
        claims.insert("exp".into(), exp.into());
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        let token = jsonwebtoken::encode(&header, &claims, &self.key)?;
        self.minted.insert(digest, (token.clone(), exp));
        Ok(token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::jwk::JwkSet;
    use jsonwebtoken::{DecodingKey, Validation};

    #[test]
    fn minted_tokens_verify_with_the_published_jwks() {
        let signer = Signer::new("gatehouse-extauth".into(), None, Duration::from_secs(30)).unwrap();
        let mut claims = Map::new();
        claims.insert("sub".into(), "alice".into());
        claims.insert("aud".into(), "orders".into());
        let token = signer.mint(claims.clone(), Duration::from_secs(60)).unwrap();
        assert_eq!(signer.mint(claims, Duration::from_secs(60)).unwrap(), token, "reused within the window");

        let set: JwkSet = serde_json::from_value(signer.jwks().clone()).unwrap();
        let key = DecodingKey::from_jwk(&set.keys[0]).unwrap();
        let mut validation = Validation::new(Algorithm::ES256);
        validation.set_audience(&["orders"]);
        validation.set_issuer(&["gatehouse-extauth"]);
        let data = jsonwebtoken::decode::<Map<String, Value>>(&token, &key, &validation).unwrap();
        assert_eq!(data.claims["sub"], "alice");
        assert_eq!(data.header.kid.as_deref(), set.keys[0].common.key_id.as_deref());
    }
}
