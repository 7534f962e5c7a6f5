//! gatehouse-extauth end to end: real Envoy (envoy/gateway.yaml) → ext_authz → the service,
//! with a real OIDC provider (npm oidc-provider), Redis, and an upstream that echoes what it
//! received. Every assertion is on what comes out of Envoy: status, headers, the request the
//! upstream saw.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use gatehouse_common::config::Env;
use gatehouse_common::server::Shutdown;
use gatehouse_extauth::settings::Settings;
use gatehouse_extauth::{App, Listeners, hash_key_sha256};
use gatehouse_testkit::echo::Echo;
use gatehouse_testkit::envoy::{Envoy, default_vars};
use gatehouse_testkit::eventually;
use gatehouse_testkit::issuer::{TestIssuer, now, raw_token};
use gatehouse_testkit::oidc::OidcProvider;
use gatehouse_testkit::redis::RedisServer;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::net::TcpListener;

mod support;
use support::{Reply, send, start_ratelimit};

const RESOURCE: &str = "https://api.gatehouse.test";
const KEY_A: &str = "key-a-0123456789abcdef";
const KEY_B: &str = "key-b-0123456789abcdef";
// `openssl passwd -apr1 -salt saltsalt secret`
const ALICE: &str = "alice:$apr1$saltsalt$LrttParrLPdxvgutaSXWJ0";

fn policy_file(issuer: &TestIssuer, idp: &OidcProvider, extra: &str) -> String {
    let (ti, idp_issuer, introspect) = (issuer.issuer(), idp.issuer(), idp.introspection_endpoint());
    let (hash_a, hash_b) = (hash_key_sha256(KEY_A), hash_key_sha256(KEY_B));
    format!(
        r#"
policies:
  - name: keys
    identity:
      any_of:
        - name: keys
          api_key:
            from: [{{ header: x-api-key }}, {{ query: api_key }}]
            keys:
              - {{ id: team-a, hash: "{hash_a}", metadata: {{ plan: gold, owner: team-a }}, scopes: [read, admin] }}
              - {{ id: team-b, hash: "{hash_b}", metadata: {{ plan: free }}, scopes: [read] }}
            redis_prefix: "gatehouse:apikey:"
            redis_cache_ttl: 200ms
    response:
      headers:
        x-user-id: {{ from: sub }}
        x-plan: {{ from: metadata.plan }}
      client_headers:
        x-gatehouse-subject: {{ from: sub }}
      signed_jwt: {{ header: x-gatehouse-jwt, audience: echo, claims: [metadata.plan] }}
  - name: basic
    identity:
      any_of:
        - name: users
          basic: {{ users: ["{ALICE}"] }}
  - name: jwt
    identity:
      any_of:
        - name: test-issuer
          jwt:
            issuer: "{ti}"
            jwks_uri: "{ti}/jwks.json"
            audiences: [gatehouse-api]
            algorithms: [RS256]
            jwks_min_refetch: 1s
            leeway: 5s
            from: [{{ header: authorization, prefix: "Bearer " }}, {{ cookie: access_token }}]
    response:
      headers:
        x-user-id: {{ from: sub }}
      query_set:
        caller: {{ from: sub }}
  - name: oidc
    identity:
      any_of:
        - name: idp
          jwt: {{ issuer: "{idp_issuer}", audiences: ["{RESOURCE}"], required_scopes: [read], jwks_min_refetch: 1s }}
    response:
      headers:
        x-user-id: {{ from: sub }}
        x-scopes: {{ from: scopes }}
  - name: introspection
    identity:
      any_of:
        - name: opaque
          introspection: {{ endpoint: "{introspect}", client_id: gatehouse-introspector, client_secret: introspector-secret }}
    response:
      headers:
        x-user-id: {{ from: sub }}
  - name: introspection-for-orders
    hosts: [orders.gatehouse.test]
    identity:
      any_of:
        - name: opaque
          introspection: {{ endpoint: "{introspect}", client_id: gatehouse-introspector, client_secret: introspector-secret, audiences: [orders-api] }}
  - name: rules
    identity:
      methods:
        - name: keys
          api_key:
            keys:
              - {{ id: team-a, hash: "{hash_a}", metadata: {{ plan: gold }}, scopes: [read, admin] }}
              - {{ id: team-b, hash: "{hash_b}", metadata: {{ plan: free }}, scopes: [read] }}
        - name: users
          basic: {{ users: ["{ALICE}"] }}
      expression: "keys || users"
    authorization:
      - name: free-plan-is-read-only
        when: {{ metadata: {{ plan: {{ equals: free }} }} }}
        require: {{ method: {{ in: [GET, HEAD] }} }}
      - name: admin-needs-admin-scope
        when: {{ path: {{ prefix: /auth/rules/admin }} }}
        cel: '"admin" in identity.scopes'
      - name: no-deletes
        rego:
          query: data.gatehouse.allow
          module: |
            package gatehouse
            default allow := true
            allow := false if {{ input.request.method == "DELETE" }}
  - name: mtls
    identity:
      any_of:
        - name: mesh
          mtls: {{ allow: [{{ prefix: "spiffe://gatehouse.test/" }}] }}
  - name: public
    identity:
      any_of:
        - name: anyone
          anonymous: {{}}
{extra}"#
    )
}

/// Everything one test needs, stopped on drop.
struct Stack {
    envoy: Envoy,
    idp: OidcProvider,
    issuer: TestIssuer,
    redis: RedisServer,
    extauth_http: u16,
    config: PathBuf,
    _echo: Echo,
    _ratelimit: Option<Shutdown>,
    shutdown: Shutdown,
    dir: TempDir,
    client: reqwest::Client,
}

impl Drop for Stack {
    fn drop(&mut self) {
        self.shutdown.trigger();
        if let Some(s) = &self._ratelimit {
            s.trigger();
        }
    }
}

async fn start_extauth(config: &Path, redis: &RedisServer) -> (u16, u16, Shutdown) {
    let env = Env::from_pairs([
        ("EXTAUTH_CONFIG", config.display().to_string()),
        ("REDIS_URL", redis.addr()),
        ("REDIS_TIMEOUT", "500ms".to_string()),
        ("LOG_LEVEL", "warn".to_string()),
    ]);
    let settings = Settings::from_env(&env).expect("settings");
    let grpc = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ports = (grpc.local_addr().unwrap().port(), http.local_addr().unwrap().port());
    let app = App::build(settings).await.expect("extauth starts");
    let shutdown = Shutdown::new();
    tokio::spawn(app.serve(Listeners { grpc, http: Some(http) }, shutdown.clone()));
    (ports.0, ports.1, shutdown)
}

impl Stack {
    async fn start(with_ratelimit: bool) -> Stack {
        let dir = tempfile::tempdir().unwrap();
        let idp = OidcProvider::start().await.expect("OIDC provider (scripts/install-test-deps.sh)");
        let issuer = TestIssuer::start(dir.path()).await;
        let redis = RedisServer::start();
        let config = dir.path().join("policies.yaml");
        std::fs::write(&config, policy_file(&issuer, &idp, "")).unwrap();
        let (grpc, http, shutdown) = start_extauth(&config, &redis).await;
        // One rule: 3 requests per minute per API key id.
        let rules = "domain: gateway\ndescriptors:\n  - key: api_key_id\n    rate_limit: { unit: minute, requests_per_unit: 3 }\n";
        let ratelimit = if with_ratelimit { Some(start_ratelimit(dir.path(), rules).await) } else { None };
        let echo = Echo::start().await;
        let mut vars: BTreeMap<String, String> = default_vars();
        vars.insert("UPSTREAM_PORT".into(), echo.port.to_string());
        vars.insert("EXTAUTH_PORT".into(), grpc.to_string());
        vars.insert("EXTAUTH_HTTP_PORT".into(), http.to_string());
        if let Some((port, _)) = &ratelimit {
            vars.insert("RATELIMIT_PORT".into(), port.to_string());
        }
        let envoy = Envoy::start(&vars).await;
        let stack = Stack {
            envoy,
            idp,
            issuer,
            redis,
            extauth_http: http,
            config,
            _echo: echo,
            _ratelimit: ratelimit.map(|(_, s)| s),
            shutdown,
            dir,
            client: reqwest::Client::new(),
        };
        // The IdP's keys are fetched in the background at start; wait for them to be usable.
        let token = stack.idp.client_credentials_token("read", Some(RESOURCE)).await.unwrap();
        let ready = eventually(Duration::from_secs(10), || async {
            (stack.get("/auth/oidc", &[("authorization", &format!("Bearer {token}"))]).await.status == 200)
                .then_some(())
        })
        .await;
        assert!(ready.is_some(), "extauth never accepted an IdP token");
        stack
    }

    async fn request(&self, method: &str, path: &str, headers: &[(&str, &str)]) -> Reply {
        send(&self.client, method, &self.envoy.url(path), headers, None).await
    }

    async fn get(&self, path: &str, headers: &[(&str, &str)]) -> Reply {
        self.request("GET", path, headers).await
    }

    /// The error /config-status reports once a reload of the policy file was rejected.
    async fn config_rejection(&self) -> String {
        let url = format!("http://127.0.0.1:{}/config-status", self.extauth_http);
        eventually(Duration::from_secs(10), || async {
            let status: Value = reqwest::get(&url).await.ok()?.json().await.ok()?;
            status["last_error"].as_str().map(str::to_string)
        })
        .await
        .expect("the rejection is reported on /config-status")
    }
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_basic_auth_and_anonymous() {
    let s = Stack::start(false).await;

    // No key: 401 with a challenge and a JSON reason.
    let r = s.get("/auth/keys/orders", &[]).await;
    assert_eq!(r.status, 401, "{r:?}");
    assert_eq!(r.header("www-authenticate"), "APIKey realm=\"keys\"");
    assert_eq!(r.json()["error"], "unauthorized");
    assert_eq!(r.json()["reason"], "missing credentials");

    // A wrong key: 401, and the key never appears in the answer.
    let r = s.get("/auth/keys/orders", &[("x-api-key", "not-a-key-5e3f")]).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["reason"], "invalid API key");
    assert!(!r.body.contains("not-a-key-5e3f"));

    // The right key: upstream sees identity headers, a signed JWT, and not the key.
    let r = s.get("/auth/keys/orders", &[("x-api-key", KEY_A), ("x-user-id", "forged")]).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.upstream_header("x-user-id").as_deref(), Some("team-a"), "client's x-user-id is overwritten");
    assert_eq!(r.upstream_header("x-plan").as_deref(), Some("gold"));
    assert_eq!(r.upstream_header("x-api-key"), None, "the credential is stripped");
    assert_eq!(r.header("x-gatehouse-subject"), "team-a", "response header to the client");
    let jwt = r.upstream_header("x-gatehouse-jwt").expect("signed JWT upstream");
    let jwks: Value = reqwest::get(format!("http://127.0.0.1:{}/.well-known/jwks.json", s.extauth_http))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let set: jsonwebtoken::jwk::JwkSet = serde_json::from_value(jwks).unwrap();
    let mut validation = jsonwebtoken::Validation::new(Algorithm::ES256);
    validation.set_audience(&["echo"]);
    validation.set_issuer(&["gatehouse-extauth"]);
    let claims =
        jsonwebtoken::decode::<Value>(&jwt, &jsonwebtoken::DecodingKey::from_jwk(&set.keys[0]).unwrap(), &validation)
            .expect("the upstream can verify the JWT with the service's JWKS")
            .claims;
    assert_eq!(claims["sub"], "team-a");
    assert_eq!(claims["plan"], "gold");

    // From the query string too, and the parameter is removed before the upstream.
    let r = s.get(&format!("/auth/keys/orders?api_key={KEY_B}&page=2"), &[]).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["path"], "/auth/keys/orders?page=2");

    // Keys in Redis: added and revoked at runtime, without a reload.
    let runtime_key = "runtime-key-77aa";
    let redis_key = format!("gatehouse:apikey:{}", &hash_key_sha256(runtime_key)["sha256:".len()..]);
    assert_eq!(s.get("/auth/keys/x", &[("x-api-key", runtime_key)]).await.status, 401);
    tokio::time::sleep(Duration::from_millis(300)).await;
    s.redis.cli(&["SET", &redis_key, r#"{"id":"runtime","metadata":{"plan":"silver"}}"#]).unwrap();
    let r = eventually(Duration::from_secs(3), || async {
        let r = s.get("/auth/keys/x", &[("x-api-key", runtime_key)]).await;
        (r.status == 200).then_some(r)
    })
    .await
    .expect("a key added to Redis is accepted");
    assert_eq!(r.upstream_header("x-plan").as_deref(), Some("silver"));
    s.redis.cli(&["DEL", &redis_key]).unwrap();
    let revoked = eventually(Duration::from_secs(3), || async {
        (s.get("/auth/keys/x", &[("x-api-key", runtime_key)]).await.status == 401).then_some(())
    })
    .await;
    assert!(revoked.is_some(), "a key deleted from Redis is refused");

    // Basic auth.
    let basic = |user_pass: &str| {
        use base64::Engine as _;
        format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(user_pass))
    };
    let r = s.get("/auth/basic/", &[]).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.header("www-authenticate"), "Basic realm=\"basic\", charset=\"UTF-8\"");
    assert_eq!(s.get("/auth/basic/", &[("authorization", &basic("alice:wrong"))]).await.status, 401);
    let r = s.get("/auth/basic/", &[("authorization", &basic("alice:secret"))]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.upstream_header("authorization"), None, "basic credentials are stripped");

    // Anonymous, explicitly allowed.
    assert_eq!(s.get("/auth/public/", &[]).await.status, 200);

    // Forward-auth called directly, as NGINX auth_request or Traefik ForwardAuth do: the
    // original request arrives in X-Forwarded-* / X-Original-* headers.
    let forward = |headers: &[(&str, &str)]| {
        let mut req = s.client.get(format!("http://127.0.0.1:{}/forward-auth/keys", s.extauth_http));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.send()
    };
    let r = forward(&[("x-forwarded-method", "GET"), ("x-forwarded-uri", "/orders?api_key=nope")]).await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["www-authenticate"], "APIKey realm=\"keys\"");
    let r = forward(&[("x-original-uri", &format!("/orders?api_key={KEY_A}"))]).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-user-id"], "team-a", "identity headers for the proxy to copy upstream");

    // Forward-auth through Envoy's HTTP ext_authz mode: same policy, same answers.
    let r = s.get("/auth/http/orders", &[]).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.header("www-authenticate"), "APIKey realm=\"keys\"");
    let r = s.get("/auth/http/orders", &[("x-api-key", KEY_A)]).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.upstream_header("x-user-id").as_deref(), Some("team-a"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_and_introspection_from_a_real_idp() {
    let s = Stack::start(false).await;

    let token = s.idp.client_credentials_token("read", Some(RESOURCE)).await.unwrap();
    let r = s.get("/auth/oidc/x", &[("authorization", &bearer(&token))]).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.upstream_header("x-user-id").as_deref(), Some("gatehouse-test"));
    assert_eq!(r.upstream_header("x-scopes").as_deref(), Some("read"));
    assert_eq!(r.upstream_header("authorization"), None);

    // Missing: a Bearer challenge. A token for another audience: invalid_token.
    let r = s.get("/auth/oidc/x", &[]).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.header("www-authenticate"), "Bearer realm=\"oidc\"");
    let other = s.idp.client_credentials_token("read", Some("https://other.gatehouse.test")).await.unwrap();
    let r = s.get("/auth/oidc/x", &[("authorization", &bearer(&other))]).await;
    assert_eq!(r.status, 401);
    assert_eq!(
        r.header("www-authenticate"),
        "Bearer realm=\"oidc\", error=\"invalid_token\", error_description=\"wrong audience\""
    );

    // The IdP rotates its signing key: a token with the new kid is accepted after one refetch.
    s.idp.rotate_keys(false).await.unwrap();
    let rotated = s.idp.client_credentials_token("read", Some(RESOURCE)).await.unwrap();
    let ok = eventually(Duration::from_secs(5), || async {
        (s.get("/auth/oidc/x", &[("authorization", &bearer(&rotated))]).await.status == 200).then_some(())
    })
    .await;
    assert!(ok.is_some(), "token signed with the rotated key");

    // Introspection of an opaque token.
    let opaque = s.idp.client_credentials_token("read", None).await.unwrap();
    let r = s.get("/auth/introspect/x", &[("authorization", &bearer(&opaque))]).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.upstream_header("x-user-id").as_deref(), Some("gatehouse-test"));
    let r = s.get("/auth/introspect/x", &[("authorization", "Bearer not-a-real-token")]).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["reason"], "token is not active");
    // An active token whose answer names no audience does not satisfy `audiences`.
    let r = s.get("/auth/host/x", &[("host", "orders.gatehouse.test"), ("authorization", &bearer(&opaque))]).await;
    assert_eq!(r.status, 401, "{r:?}");
    assert_eq!(r.json()["reason"], "missing aud claim");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idp_down_cached_keys_keep_working_and_new_issuers_fail_with_503() {
    let mut s = Stack::start(false).await;
    let token = s.idp.client_credentials_token("read", Some(RESOURCE)).await.unwrap();
    let opaque = s.idp.client_credentials_token("read", None).await.unwrap();
    assert_eq!(s.get("/auth/introspect/x", &[("authorization", &bearer(&opaque))]).await.status, 200);
    s.idp.stop();

    // Already-fetched keys keep validating; the introspection answer is cached.
    let r = s.get("/auth/oidc/x", &[("authorization", &bearer(&token))]).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(s.get("/auth/introspect/x", &[("authorization", &bearer(&opaque))]).await.status, 200);
    // An uncached opaque token cannot be decided: 503 (status_on_error), not 401.
    let r = s.get("/auth/introspect/x", &[("authorization", "Bearer never-seen")]).await;
    assert_eq!(r.status, 503, "{r:?}");

    // A policy for an issuer that was never reachable: 503 as well.
    let dead = format!("http://127.0.0.1:{}", gatehouse_testkit::free_port());
    let extra = format!(
        "  - name: dead\n    hosts: [dead.gatehouse.test]\n    identity:\n      any_of:\n        - name: dead-idp\n          jwt: {{ issuer: \"{dead}\", timeout: 200ms }}\n"
    );
    std::fs::write(&s.config, policy_file(&s.issuer, &s.idp, &extra)).unwrap();
    let forged = s.issuer.mint(&json!({"iss": dead, "exp": now() + 60}));
    let r = eventually(Duration::from_secs(10), || async {
        let r = s.get("/auth/host/x", &[("host", "dead.gatehouse.test"), ("authorization", &bearer(&forged))]).await;
        (r.status != 403).then_some(r)
    })
    .await
    .expect("the reloaded config has the new policy");
    assert_eq!(r.status, 503, "{r:?}");

    // A broken file is rejected: the last good policies keep serving, and the error shows.
    std::fs::write(&s.config, "policies:\n  - name: keys\n    identity: { any_of: [] }\n    typo: 1\n").unwrap();
    let status = s.config_rejection().await;
    assert!(status.contains("policies.yaml:4:5: unknown field `typo`"), "{status}");
    assert_eq!(s.get("/auth/keys/x", &[("x-api-key", KEY_A)]).await.status, 200);
}

/// Issue 9: `issuer: "http://idp/"` against an IdP that issues `http://idp` used to load and
/// then refuse every token. OIDC Discovery requires identical issuers; the mismatch is refused
/// at start and at reload, with both spellings in the error, and the old policies keep serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_issuer_spelled_unlike_its_discovery_document_is_refused_at_load() {
    let s = Stack::start(false).await;
    let ti = s.issuer.issuer();
    let extra = format!(
        "  - name: slash\n    hosts: [slash.gatehouse.test]\n    identity:\n      any_of:\n        - name: slashed\n          jwt: {{ issuer: \"{ti}/\" }}\n"
    );
    let expected = format!(
        "jwt.issuer: the issuer is configured as \"{ti}/\" but its discovery document ({ti}/.well-known/openid-configuration) names \"{ti}\""
    );

    // At reload: rejected, reported, and the running policies keep answering through Envoy.
    std::fs::write(&s.config, policy_file(&s.issuer, &s.idp, &extra)).unwrap();
    let status = s.config_rejection().await;
    assert!(status.contains(&expected), "{status}");
    assert!(status.contains("policies.yaml:"), "the error names the file and line: {status}");
    let token = s.issuer.mint(&s.issuer.claims("gatehouse-api"));
    assert_eq!(s.get("/auth/jwt/x", &[("authorization", &bearer(&token))]).await.status, 200);
    let r = s.get("/auth/host/x", &[("host", "slash.gatehouse.test"), ("authorization", &bearer(&token))]).await;
    assert_ne!(r.status, 200, "the refused policy never served: {r:?}");

    // At start: the service refuses to start with the same error.
    let config = s.dir.path().join("slash.yaml");
    std::fs::write(&config, policy_file(&s.issuer, &s.idp, &extra)).unwrap();
    let env = Env::from_pairs([
        ("EXTAUTH_CONFIG", config.display().to_string()),
        ("REDIS_URL", s.redis.addr()),
        ("LOG_LEVEL", "warn".to_string()),
    ]);
    let err = match App::build(Settings::from_env(&env).unwrap()).await {
        Ok(_) => panic!("extauth started with a mismatched issuer"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains(&expected), "{err}");

    // The exact spelling loads.
    std::fs::write(&config, policy_file(&s.issuer, &s.idp, &extra.replace(&format!("{ti}/"), &ti))).unwrap();
    assert!(App::build(Settings::from_env(&env).unwrap()).await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_and_invalid_tokens_are_rejected() {
    let s = Stack::start(false).await;
    let i = &s.issuer;
    let good = i.claims("gatehouse-api");
    let with = |patch: Value| {
        let mut c = good.clone();
        for (k, v) in patch.as_object().unwrap() {
            c[k] = v.clone();
        }
        c
    };
    let without = |claim: &str| {
        let mut c = good.clone();
        c.as_object_mut().unwrap().remove(claim);
        c
    };
    let r = s.get("/auth/jwt/x?a=1", &[("authorization", &bearer(&i.mint(&good)))]).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["path"], "/auth/jwt/x?a=1&caller=user-1", "query parameter set from the identity");
    // The same token from a cookie.
    let cookie = format!("theme=dark; access_token={}", i.mint(&good));
    assert_eq!(s.get("/auth/jwt/x", &[("cookie", &cookie)]).await.status, 200);

    let attacker_dir = s.dir.path().join("attacker");
    std::fs::create_dir_all(&attacker_dir).unwrap();
    let (attacker_key, _, n) = gatehouse_testkit::issuer::rsa_key(&attacker_dir, "attacker");
    let attacker = EncodingKey::from_rsa_pem(&attacker_key).unwrap();
    let attacker_token = |header: Header| jsonwebtoken::encode(&header, &good, &attacker).unwrap();
    let mut jku = Header::new(Algorithm::RS256);
    jku.kid = Some("attacker".into());
    jku.jku = Some("http://127.0.0.1:1/jwks.json".into());
    let mut x5u = Header::new(Algorithm::RS256);
    x5u.x5u = Some("http://127.0.0.1:1/cert.pem".into());
    x5u.kid = Some(i.kid.clone());
    let mut embedded: Value = json!({"alg": "RS256", "typ": "JWT", "kid": "attacker", "jwk": {
        "kty": "RSA", "e": "AQAB", "n": base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, &n)}});
    let embedded_token = {
        let unsigned = raw_token(&embedded, &good, b"");
        let signing_input = unsigned.rsplit_once('.').unwrap().0.to_string();
        let sig = jsonwebtoken::crypto::sign(signing_input.as_bytes(), &attacker, Algorithm::RS256).unwrap();
        format!("{signing_input}.{sig}")
    };
    embedded["kid"] = json!(i.kid);
    let hs256 = {
        let mut h = Header::new(Algorithm::HS256);
        h.kid = Some(i.kid.clone());
        jsonwebtoken::encode(&h, &good, &EncodingKey::from_secret(i.public_pem())).unwrap()
    };

    let cases: Vec<(&str, String, &str)> = vec![
        (
            "alg none",
            raw_token(&json!({"alg": "none", "typ": "JWT"}), &good, b""),
            "malformed token or unsupported algorithm",
        ),
        ("HS256 with the RSA public key", hs256, "algorithm HS256 is not allowed"),
        ("expired", i.mint(&with(json!({"exp": now() - 60}))), "token expired"),
        ("not yet valid", i.mint(&with(json!({"nbf": now() + 600}))), "token not yet valid"),
        ("wrong iss", i.mint(&with(json!({"iss": "http://127.0.0.1:1"}))), "wrong issuer"),
        ("wrong aud", i.mint(&with(json!({"aud": "someone-else"}))), "wrong audience"),
        // A constrained claim that is missing or mistyped never satisfies the constraint
        // (issue 9): the same IdP mints such tokens for other services.
        ("no aud", i.mint(&without("aud")), "missing aud claim"),
        ("aud null", i.mint(&with(json!({"aud": null}))), "missing aud claim"),
        ("aud a number", i.mint(&with(json!({"aud": 123}))), "aud claim is not a string or an array of strings"),
        (
            "aud with a number",
            i.mint(&with(json!({"aud": ["billing", 1]}))),
            "aud claim is not a string or an array of strings",
        ),
        (
            "aud an object",
            i.mint(&with(json!({"aud": {"gatehouse-api": true}}))),
            "aud claim is not a string or an array of strings",
        ),
        ("no iss", i.mint(&without("iss")), "missing iss claim"),
        ("iss an array", i.mint(&with(json!({"iss": [i.issuer()]}))), "iss claim is not a string"),
        ("no exp", i.mint(&without("exp")), "missing exp claim"),
        ("exp a string", i.mint(&with(json!({"exp": (now() + 600).to_string()}))), "exp claim is not a number"),
        ("nbf a string", i.mint(&with(json!({"nbf": "0"}))), "nbf claim is not a number"),
        (
            "crit header",
            {
                let mut h = Header::new(Algorithm::RS256);
                h.kid = Some(i.kid.clone());
                h.crit = Some(vec!["http://example.com/must-understand".into()]);
                i.mint_with(h, &good)
            },
            "unsupported critical header extension",
        ),
        (
            "unknown kid",
            {
                let mut h = Header::new(Algorithm::RS256);
                h.kid = Some("no-such-kid".into());
                i.mint_with(h, &good)
            },
            "unknown signing key",
        ),
        ("jku header", attacker_token(jku), "unknown signing key"),
        ("x5u header", attacker_token(x5u), "invalid signature"),
        ("embedded jwk", embedded_token, "unknown signing key"),
        ("oversized", i.mint(&with(json!({"pad": "x".repeat(10_000)}))), "token too large"),
    ];
    for (name, token, reason) in cases {
        let r = s.get("/auth/jwt/x", &[("authorization", &bearer(&token))]).await;
        assert_eq!(r.status, 401, "{name}: {r:?}");
        assert_eq!(r.json()["reason"], reason, "{name}");
        assert!(r.header("www-authenticate").contains("error=\"invalid_token\""), "{name}: {r:?}");
        assert!(!r.body.contains(&token[..20]), "{name}: the token is not echoed");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_deny_with_403_and_name_the_rule() {
    let s = Stack::start(false).await;
    let a = [("x-api-key", KEY_A)];
    let b = [("x-api-key", KEY_B)];
    assert_eq!(s.request("POST", "/auth/rules/orders", &a).await.status, 200);
    assert_eq!(s.request("GET", "/auth/rules/orders", &b).await.status, 200);

    let r = s.request("POST", "/auth/rules/orders", &b).await;
    assert_eq!(r.status, 403, "require rule");
    assert_eq!(r.json()["error"], "forbidden");
    assert_eq!(r.json()["reason"], "forbidden by rule free-plan-is-read-only");

    assert_eq!(s.get("/auth/rules/admin/users", &a).await.status, 200);
    let r = s.get("/auth/rules/admin/users", &b).await;
    assert_eq!(r.status, 403, "CEL rule");
    assert_eq!(r.json()["reason"], "forbidden by rule admin-needs-admin-scope");

    let r = s.request("DELETE", "/auth/rules/orders/1", &a).await;
    assert_eq!(r.status, 403, "Rego rule");
    assert_eq!(r.json()["reason"], "forbidden by rule no-deletes");

    // The expression's second method: basic auth works on the same route; rules apply to it.
    use base64::Engine as _;
    let basic = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode("alice:secret"));
    assert_eq!(s.get("/auth/rules/orders", &[("authorization", &basic)]).await.status, 200);

    let metrics =
        reqwest::get(format!("http://127.0.0.1:{}/metrics", s.extauth_http)).await.unwrap().text().await.unwrap();
    assert!(
        metrics.contains(
            r#"gatehouse_extauth_decisions_total{policy="rules",result="deny",status="403",rule="no-deletes"} 1"#
        ),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_api_key_limits_from_extauth_metadata() {
    let s = Stack::start(true).await;
    for i in 0..3 {
        let r = s.get("/auth/limited/x", &[("x-api-key", KEY_A)]).await;
        assert_eq!(r.status, 200, "request {i}: {r:?}");
    }
    assert_eq!(s.get("/auth/limited/x", &[("x-api-key", KEY_A)]).await.status, 429, "team-a is over its limit");
    assert_eq!(s.get("/auth/limited/x", &[("x-api-key", KEY_B)]).await.status, 200, "team-b has its own counter");
    assert_eq!(s.get("/auth/limited/x", &[]).await.status, 401, "no key: denied before the limiter");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_principal_from_envoy() {
    let s = Stack::start(false).await;
    let pki = s.envoy.pki.as_ref().expect("envoy fixture PKI");
    let url = format!("https://127.0.0.1:{}/auth/mtls/x", s.envoy.mtls_port);
    let out = tokio::process::Command::new("curl")
        .args(["-s", "-o", "-", "-w", "\n%{http_code}", "--cacert"])
        .arg(&pki.ca_cert)
        .arg("--cert")
        .arg(&pki.client_cert)
        .arg("--key")
        .arg(&pki.client_key)
        .arg(&url)
        .output()
        .await
        .expect("curl");
    let out = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, status) = out.rsplit_once('\n').unwrap();
    assert_eq!(status, "200", "{out}");
    let echoed: Value = serde_json::from_str(body).unwrap();
    assert_eq!(echoed["path"], "/auth/mtls/x");
    // Over plain HTTP there is no client certificate: the same policy answers 401.
    assert_eq!(s.get("/auth/mtls/x", &[]).await.status, 401);
}
