//! Drives JWT verification (`gatehouse_extauth::identity::jwt`) against a fixed in-memory key
//! set (`fuzz/fixtures/jwks.json`, an ES256 and an RS256 key; `Jwks::fixed` never fetches).
//! The first byte's bit 0 picks the strict policy; bit 1 picks the kind of the rest:
//! - raw (clear): the rest is a token sent in `Authorization: Bearer …`; the seeds are real
//!   tokens (valid, expired, wrong audience, `alg: none`, HS256 signed with the public key,
//!   `crit`, unknown `kid`), so mutations start from every branch of the checks;
//! - signed (set): the rest builds arbitrary claims (registered claims of every JSON type,
//!   times around now), signed here with the fixture ES256 key, so the claim checks run on
//!   inputs the signature check would otherwise stop.
//!
//! Asserts: no panic; no `Err` (the keys are always there); an authenticated token has the
//! configured `iss` as a string, an `aud` naming the audience, an `exp` within leeway of now
//! and no `nbf` (but `null`, which counts as absent) in the future; under the strict policy
//! it also has the required scope and claim; a signed token with the fixture key's `kid` and
//! valid claims (a string `sub`, as RFC 7519 and jsonwebtoken require) is accepted.
#![no_main]

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use arbitrary::{Arbitrary, Unstructured};
use gatehouse_common::matcher::MatchSpec;
use gatehouse_extauth::identity::Outcome;
use gatehouse_extauth::identity::jwks::Jwks;
use gatehouse_extauth::identity::jwt::{JwtAuth, now_secs, scopes_of, token_cache};
use gatehouse_extauth::identity::source::Source;
use gatehouse_extauth::request::AuthRequest;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value, json};

const ISSUER: &str = "https://issuer.fuzz.invalid";
const AUDIENCE: &str = "gatehouse";
const LEEWAY: u64 = 30;

static SIGNING_KEY: LazyLock<EncodingKey> = LazyLock::new(|| {
    EncodingKey::from_ec_pem(include_bytes!("../fixtures/fuzz_es256_key.pem")).expect("the fixture key parses")
});

/// `(plain, strict)`: the second also requires scope `orders:read` and `tenant: acme`.
static AUTH: LazyLock<(JwtAuth, JwtAuth)> = LazyLock::new(|| {
    let set: JwkSet = serde_json::from_str(include_str!("../fixtures/jwks.json")).expect("the fixture JWKS parses");
    let jwks = Arc::new(Jwks::fixed(&set));
    let auth = |strict: bool| JwtAuth {
        sources: vec![Source::Header { name: "authorization".into(), prefix: Some("Bearer ".into()) }],
        issuer: ISSUER.into(),
        audiences: vec![AUDIENCE.into()],
        algorithms: vec![Algorithm::ES256, Algorithm::ES384, Algorithm::RS256, Algorithm::PS256, Algorithm::EdDSA],
        leeway: Duration::from_secs(LEEWAY),
        max_token_bytes: 8 * 1024,
        required_scopes: if strict { vec!["orders:read".into()] } else { Vec::new() },
        required_claims: if strict {
            vec![("tenant".into(), MatchSpec::Equals("acme".into()).compile().expect("a plain matcher"))]
        } else {
            Vec::new()
        },
        jwks: jwks.clone(),
        // Nothing cached: every input is verified, and replays alone.
        cache: token_cache(0),
    };
    (auth(false), auth(true))
});

/// A claim's value, of any JSON type, usually a plausible one.
#[derive(Arbitrary, Debug)]
enum Claim {
    Absent,
    Null,
    Expected,
    Text(String),
    /// Seconds from now.
    Time(i32),
    Float(f64),
    Bool(bool),
    List(Vec<String>),
    ListWithExpected(Vec<String>),
    Object(Vec<(String, String)>),
}

impl Claim {
    fn value(&self, expected: &str, now: i64) -> Option<Value> {
        Some(match self {
            Claim::Absent => return None,
            Claim::Null => Value::Null,
            Claim::Expected => json!(expected),
            Claim::Text(s) => json!(s),
            Claim::Time(delta) => json!(now + i64::from(*delta)),
            Claim::Float(f) => json!(f),
            Claim::Bool(b) => json!(b),
            Claim::List(items) => json!(items),
            Claim::ListWithExpected(items) => {
                let mut items = items.clone();
                items.push(expected.to_string());
                json!(items)
            }
            Claim::Object(pairs) => Value::Object(pairs.iter().map(|(k, v)| (k.clone(), json!(v))).collect()),
        })
    }
}

#[derive(Arbitrary, Debug)]
enum Kid {
    Es256,
    Rs256,
    None,
    Other(String),
}

#[derive(Arbitrary, Debug)]
struct Signed {
    kid: Kid,
    iss: Claim,
    aud: Claim,
    exp: Claim,
    nbf: Claim,
    sub: Claim,
    scope: Claim,
    tenant: Claim,
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let strict = mode & 1 != 0;
    let (plain, strict_auth) = &*AUTH;
    let now = now_secs() as i64;
    let (token, signed_claims) = if mode & 2 == 0 {
        let Ok(token) = std::str::from_utf8(rest) else { return };
        (token.to_string(), None)
    } else {
        let Ok(signed) = Signed::arbitrary_take_rest(Unstructured::new(rest)) else { return };
        let Signed { kid, iss, aud, exp, nbf, sub, scope, tenant } = signed;
        let mut claims = Map::new();
        for (name, claim, expected) in [
            ("iss", &iss, ISSUER),
            ("aud", &aud, AUDIENCE),
            ("exp", &exp, "3000000000"),
            ("nbf", &nbf, "0"),
            ("sub", &sub, "alice"),
            ("scope", &scope, "orders:read"),
            ("tenant", &tenant, "acme"),
        ] {
            if let Some(v) = claim.value(expected, now) {
                claims.insert(name.into(), v);
            }
        }
        let mut header = Header::new(Algorithm::ES256);
        header.kid = match kid {
            Kid::Es256 => Some("fuzz-es256".into()),
            Kid::Rs256 => Some("fuzz-rs256".into()),
            Kid::None => None,
            Kid::Other(s) => Some(s),
        };
        let token = jsonwebtoken::encode(&header, &claims, &SIGNING_KEY).expect("ES256 signing cannot fail");
        (token, Some((header.kid, claims)))
    };
    let auth = if strict { strict_auth } else { plain };
    let mut request = AuthRequest::default();
    request.headers.insert("authorization".into(), format!("Bearer {token}"));
    let outcome = gatehouse_fuzz::runtime()
        .block_on(auth.authenticate(&Arc::from("fuzz"), &request))
        .expect("a fixed key set never makes verification unavailable");

    if let Outcome::Authenticated(identity) = &outcome {
        let claims = &identity.claims;
        assert_eq!(claims.get("iss"), Some(&json!(ISSUER)), "{claims:?}");
        let aud_ok = match claims.get("aud") {
            Some(Value::String(a)) => a == AUDIENCE,
            Some(Value::Array(items)) => items.iter().all(Value::is_string) && items.contains(&json!(AUDIENCE)),
            _ => false,
        };
        assert!(aud_ok, "{claims:?}");
        let exp = claims.get("exp").and_then(Value::as_f64).expect("an accepted token has a numeric exp");
        assert!(exp + LEEWAY as f64 >= now as f64, "expired token accepted: {claims:?}");
        // `null` is an absent claim (identity::claims), and an absent `nbf` constrains nothing.
        if let Some(nbf) = claims.get("nbf").filter(|v| !v.is_null()) {
            let nbf = nbf.as_f64().unwrap_or_else(|| panic!("an accepted token has a non-numeric nbf: {claims:?}"));
            assert!(nbf <= (now as u64 + LEEWAY + 1) as f64, "token not yet valid accepted: {claims:?}");
        }
        if strict {
            assert!(scopes_of(claims).iter().any(|s| s == "orders:read"), "{claims:?}");
            // A matcher tests an array of strings as a list (identity::claims::value_matches).
            let tenant_ok = match claims.get("tenant") {
                Some(Value::String(t)) => t == "acme",
                Some(Value::Array(items)) => items.iter().all(Value::is_string) && items.contains(&json!("acme")),
                _ => false,
            };
            assert!(tenant_ok, "{claims:?}");
        }
    }

    // A well-formed token signed by the fixture key, with every claim as expected, passes.
    if let Some((kid, claims)) = signed_claims {
        let expected = |name: &str| match name {
            "exp" => claims.get(name).and_then(Value::as_i64).is_some_and(|t| t > now + 2),
            "nbf" => claims.get(name).is_none_or(|v| v.as_i64().is_some_and(|t| t < now - 2)),
            "iss" => claims.get(name) == Some(&json!(ISSUER)),
            "aud" => claims.get(name) == Some(&json!(AUDIENCE)),
            "scope" => !strict || claims.get(name) == Some(&json!("orders:read")),
            "tenant" => !strict || claims.get(name) == Some(&json!("acme")),
            // RFC 7519 §4.1.2: a StringOrURI; jsonwebtoken refuses any other type.
            "sub" => claims.get(name).is_none_or(Value::is_string),
            _ => true,
        };
        let all_expected = ["exp", "nbf", "iss", "aud", "sub", "scope", "tenant"].into_iter().all(expected);
        if all_expected && kid.as_deref() == Some("fuzz-es256") {
            assert!(matches!(outcome, Outcome::Authenticated(_)), "a valid token was refused: {outcome:?} {claims:?}");
        }
    }
});
