//! Signing keys of token issuers: OIDC discovery, JWKS fetching, background refresh, and a
//! rate cap on refetches for unknown `kid`s.
//!
//! Keys are fetched when the config that names the issuer loads, then every `refresh`, off
//! the request path. A token whose `kid` is unknown triggers a refetch at most once per
//! `min_refetch` per issuer, so forged kids cannot flood the IdP. Key sets outlive config
//! reloads: [`Registry`] hands a reloaded config the same [`Jwks`] for the same source.
//!
//! Headers that point at keys (`jku`, `x5u`, an embedded `jwk`) are never looked at: keys come
//! only from the configured issuer.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey};
use parking_lot::Mutex;
use serde::Deserialize;
use tokio::time::Instant;

use crate::Error;
use crate::stats::Dependencies;

/// Where an issuer's keys come from.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub enum KeySource {
    /// `{issuer}/.well-known/openid-configuration` names the `jwks_uri`. `issuer` is spelled
    /// exactly as configured: the discovery document must name the identical string.
    Discovery {
        issuer: String,
    },
    Uri(String),
}

/// The discovery document's address: OIDC Discovery §4 removes a terminating `/` from the
/// issuer before appending the well-known path.
pub fn discovery_url(issuer: &str) -> String {
    format!("{}/.well-known/openid-configuration", issuer.trim_end_matches('/'))
}

/// What the issuer's discovery document said, as far as load-time checks need it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Discovered {
    /// The document's `issuer`, whether or not it matches the configured one.
    Issuer { url: String, issuer: String },
    /// The document could not be fetched or parsed: nothing could be checked.
    Unreachable(String),
}

/// How often keys are fetched.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub struct Refresh {
    pub every: Duration,
    pub min_refetch: Duration,
    pub timeout: Duration,
}

/// One verification key.
pub struct VerifyKey {
    pub key: DecodingKey,
    /// The algorithms this key may verify: the JWK's `alg`, else every algorithm of its type.
    pub algorithms: Vec<Algorithm>,
}

#[derive(Default)]
pub struct KeySet {
    pub by_kid: HashMap<String, Arc<VerifyKey>>,
    /// Keys without a `kid`, tried for tokens without one.
    pub unnamed: Vec<Arc<VerifyKey>>,
}

impl KeySet {
    /// The keys of `set` usable for verification; the others are skipped.
    fn from_jwks(set: &JwkSet) -> KeySet {
        let mut keys = KeySet::default();
        for jwk in &set.keys {
            let Some(key) = verify_key(jwk) else {
                continue;
            };
            match &jwk.common.key_id {
                Some(kid) => {
                    keys.by_kid.insert(kid.clone(), Arc::new(key));
                }
                None => keys.unnamed.push(Arc::new(key)),
            }
        }
        keys
    }
}

/// What a key lookup found.
pub enum Lookup {
    Found(Vec<Arc<VerifyKey>>),
    UnknownKid,
}

#[derive(Deserialize)]
struct Discovery {
    issuer: String,
    jwks_uri: String,
}

pub struct Jwks {
    source: KeySource,
    refresh: Refresh,
    http: reqwest::Client,
    deps: Dependencies,
    keys: ArcSwapOption<KeySet>,
    /// When the last fetch started; caps refetches.
    last_attempt: Mutex<Option<Instant>>,
    /// The `issuer` the last discovery document named (discovery sources only).
    discovered_issuer: Mutex<Option<String>>,
    /// One fetch at a time.
    fetching: tokio::sync::Mutex<()>,
}

impl Jwks {
    fn new(source: KeySource, refresh: Refresh, http: reqwest::Client, deps: Dependencies) -> Jwks {
        Jwks {
            source,
            refresh,
            http,
            deps,
            keys: ArcSwapOption::empty(),
            last_attempt: Mutex::new(None),
            discovered_issuer: Mutex::new(None),
            fetching: tokio::sync::Mutex::new(()),
        }
    }

    /// The keys for a token's `kid`. Fetches again if the kid is unknown and the last fetch
    /// is older than `min_refetch`. Fails only when no keys were ever fetched.
    pub async fn lookup(&self, kid: Option<&str>) -> Result<Lookup, Error> {
        let found = self.find(kid);
        self.deps.cache("jwks", found.is_some());
        if let Some(found) = found {
            return Ok(Lookup::Found(found));
        }
        let may_fetch = self.last_attempt.lock().is_none_or(|t| t.elapsed() >= self.refresh.min_refetch);
        if may_fetch {
            let _guard = self.fetching.lock().await;
            // Another request may have fetched while this one waited.
            if let Some(found) = self.find(kid) {
                return Ok(Lookup::Found(found));
            }
            if self.last_attempt.lock().is_none_or(|t| t.elapsed() >= self.refresh.min_refetch) {
                if let Err(e) = self.fetch().await {
                    tracing::warn!(source = ?self.source, error = %e, "fetching signing keys failed");
                }
                if let Some(found) = self.find(kid) {
                    return Ok(Lookup::Found(found));
                }
            }
        }
        if self.keys.load().is_none() {
            return Err(Error::Unavailable(format!("no signing keys yet for {}", self.describe())));
        }
        Ok(Lookup::UnknownKid)
    }

    fn find(&self, kid: Option<&str>) -> Option<Vec<Arc<VerifyKey>>> {
        let keys = self.keys.load();
        let keys = keys.as_ref()?;
        match kid {
            Some(kid) => keys.by_kid.get(kid).map(|k| vec![k.clone()]),
            None if !keys.unnamed.is_empty() => Some(keys.unnamed.clone()),
            // No kid and only named keys: a single-key set is unambiguous.
            None if keys.by_kid.len() == 1 => Some(keys.by_kid.values().cloned().collect()),
            None => None,
        }
    }

    fn describe(&self) -> String {
        match &self.source {
            KeySource::Discovery { issuer } => format!("issuer {issuer}"),
            KeySource::Uri(uri) => uri.clone(),
        }
    }

    /// Fetches the key set (after discovery, if configured) and swaps it in.
    pub async fn fetch(&self) -> Result<(), String> {
        *self.last_attempt.lock() = Some(Instant::now());
        let jwks_uri = match &self.source {
            KeySource::Uri(uri) => uri.clone(),
            KeySource::Discovery { issuer } => {
                let url = discovery_url(issuer);
                let doc: Discovery = self.get_json("discovery", &url).await?;
                *self.discovered_issuer.lock() = Some(doc.issuer.clone());
                // OIDC Discovery §4.3: identical, not merely equal up to a trailing `/`. Tokens
                // are checked against the configured string, so anything looser would load a
                // config under which every token fails.
                if doc.issuer != *issuer {
                    return Err(issuer_mismatch(issuer, &doc.issuer, &url));
                }
                doc.jwks_uri
            }
        };
        let set: JwkSet = self.get_json("jwks", &jwks_uri).await?;
        tracing::debug!(source = ?self.source, keys = set.keys.len(), "signing keys fetched");
        self.keys.store(Some(Arc::new(KeySet::from_jwks(&set))));
        Ok(())
    }

    /// A key set given up front and never fetched, for tests and the fuzz targets, which must
    /// reach no IdP: a token with an unknown `kid` is refused.
    pub fn fixed(set: &JwkSet) -> Jwks {
        let never = Refresh { every: Duration::MAX, min_refetch: Duration::MAX, timeout: Duration::ZERO };
        let jwks = Jwks::new(KeySource::Uri(String::new()), never, reqwest::Client::new(), Dependencies::detached());
        jwks.keys.store(Some(Arc::new(KeySet::from_jwks(set))));
        // With `min_refetch` at its maximum, this attempt is never followed by another.
        *jwks.last_attempt.lock() = Some(Instant::now());
        jwks
    }

    /// The issuer named by the discovery document, fetching it unless a fetch already
    /// recorded it. `None` for a key source without discovery. For load-time checks: it may
    /// wait for one HTTP round trip (bounded by the configured timeout).
    pub async fn discovered(&self) -> Option<Discovered> {
        let KeySource::Discovery { issuer } = &self.source else {
            return None;
        };
        let url = discovery_url(issuer);
        let _guard = self.fetching.lock().await;
        if let Some(issuer) = self.discovered_issuer.lock().clone() {
            return Some(Discovered::Issuer { url, issuer });
        }
        Some(match self.get_json::<Discovery>("discovery", &url).await {
            Ok(doc) => {
                *self.discovered_issuer.lock() = Some(doc.issuer.clone());
                Discovered::Issuer { url, issuer: doc.issuer }
            }
            Err(e) => Discovered::Unreachable(e),
        })
    }

    /// GETs `url` as JSON; `call` (`discovery` or `jwks`) labels its metrics and span.
    async fn get_json<T: serde::de::DeserializeOwned>(&self, call: &'static str, url: &str) -> Result<T, String> {
        self.deps
            .idp(call, async {
                let response =
                    self.http.get(url).timeout(self.refresh.timeout).send().await.map_err(|e| format!("{url}: {e}"))?;
                if !response.status().is_success() {
                    return Err(format!("{url}: HTTP {}", response.status()));
                }
                let body = response.bytes().await.map_err(|e| format!("{url}: {e}"))?;
                if body.len() > 1 << 20 {
                    return Err(format!("{url}: response over 1 MiB"));
                }
                serde_json::from_slice(&body).map_err(|e| format!("{url}: {e}"))
            })
            .await
    }
}

/// The error for a discovery document that names another issuer, showing both spellings.
pub fn issuer_mismatch(configured: &str, discovered: &str, url: &str) -> String {
    format!(
        "the issuer is configured as {configured:?} but its discovery document ({url}) names {discovered:?}; OIDC Discovery requires them to be identical, and tokens carry the discovered one: write {discovered:?}"
    )
}

/// A JWK usable for signature verification: public, asymmetric, not marked for encryption.
fn verify_key(jwk: &Jwk) -> Option<VerifyKey> {
    use jsonwebtoken::jwk::{AlgorithmParameters, PublicKeyUse};
    if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
        return None;
    }
    let family: &[Algorithm] = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => &[
            Algorithm::RS256,
            Algorithm::RS384,
            Algorithm::RS512,
            Algorithm::PS256,
            Algorithm::PS384,
            Algorithm::PS512,
        ],
        AlgorithmParameters::EllipticCurve(_) => &[Algorithm::ES256, Algorithm::ES384],
        AlgorithmParameters::OctetKeyPair(_) => &[Algorithm::EdDSA],
        // Symmetric keys are never accepted from a JWKS: that is algorithm confusion.
        AlgorithmParameters::OctetKey(_) => return None,
        _ => return None,
    };
    let algorithms = match jwk.common.key_algorithm.and_then(|a| a.to_string().parse::<Algorithm>().ok()) {
        Some(alg) if family.contains(&alg) => vec![alg],
        Some(_) => return None,
        None => family.to_vec(),
    };
    Some(VerifyKey { key: DecodingKey::from_jwk(jwk).ok()?, algorithms })
}

/// Key sets by source, shared across config reloads so a reload does not refetch every
/// issuer's keys, and so each source has one refresh loop.
pub struct Registry {
    http: reqwest::Client,
    deps: Dependencies,
    runtime: tokio::runtime::Handle,
    live: Mutex<HashMap<(KeySource, Refresh), Weak<Jwks>>>,
}

impl Registry {
    pub fn new(http: reqwest::Client, runtime: tokio::runtime::Handle) -> Registry {
        Registry { http, deps: Dependencies::detached(), runtime, live: Mutex::new(HashMap::new()) }
    }

    /// Counts the key sets' fetches and lookups, and the other methods' IdP calls, in `deps`.
    pub fn with_dependencies(mut self, deps: Dependencies) -> Registry {
        self.deps = deps;
        self
    }

    /// Where the identity methods count their IdP calls and cache lookups.
    pub fn dependencies(&self) -> &Dependencies {
        &self.deps
    }

    /// The key set for `source`, created (and first fetched in the background) if no live
    /// config uses it yet.
    pub fn get(&self, source: KeySource, refresh: Refresh) -> Arc<Jwks> {
        let mut live = self.live.lock();
        live.retain(|_, weak| weak.strong_count() > 0);
        let id = (source.clone(), refresh);
        if let Some(existing) = live.get(&id).and_then(Weak::upgrade) {
            return existing;
        }
        let jwks = Arc::new(Jwks::new(source, refresh, self.http.clone(), self.deps.clone()));
        live.insert(id, Arc::downgrade(&jwks));
        let weak = Arc::downgrade(&jwks);
        self.runtime.spawn(async move {
            loop {
                let Some(jwks) = weak.upgrade() else { return };
                let every = jwks.refresh.every;
                {
                    let _guard = jwks.fetching.lock().await;
                    if let Err(e) = jwks.fetch().await {
                        tracing::warn!(source = ?jwks.source, error = %e, "fetching signing keys failed");
                    }
                }
                // Retry sooner while no keys are known.
                let wait = if jwks.keys.load().is_none() { jwks.refresh.min_refetch.min(every) } else { every };
                drop(jwks);
                tokio::time::sleep(wait).await;
            }
        });
        jwks
    }

    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// The runtime the key sets refresh on.
    pub fn runtime(&self) -> &tokio::runtime::Handle {
        &self.runtime
    }
}
