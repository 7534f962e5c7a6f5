//! Policy-file validation: every mistake is reported with file, line and field, and insecure
//! combinations are refused at load.

use gatehouse_extauth::config::{BuildContext, load};
use gatehouse_extauth::identity::jwks::Registry;

/// Loads `yaml` and returns the error text (empty if it loaded).
async fn errors(yaml: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("policies.yaml");
    std::fs::write(&file, yaml).unwrap();
    let registry = Registry::new(reqwest::Client::new(), tokio::runtime::Handle::current());
    let out = match load(&file, &BuildContext { jwks: &registry, redis: None, check_only: false }) {
        Ok(_) => String::new(),
        Err(e) => e.to_string(),
    };
    out.replace(&format!("{}", file.display()), "policies.yaml")
}

fn check(got: &str, expected: &[&str]) {
    for e in expected {
        assert!(got.contains(e), "expected {e:?} in:\n{got}");
    }
}

const KEY: &str = "sha256:2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b";

#[tokio::test]
async fn a_valid_file_loads() {
    let yaml = format!(
        "policies:\n  - name: a\n    hosts: [a.example.com, '*.a.example.com']\n    identity:\n      any_of:\n        - name: k\n          api_key:\n            keys: [{{ id: x, hash: \"{KEY}\" }}]\ndefault_policy: a\n"
    );
    assert_eq!(errors(&yaml).await, "");
}

#[tokio::test]
async fn shared_secret_algorithms_are_refused() {
    let yaml = r#"
policies:
  - name: api
    identity:
      any_of:
        - name: users
          jwt:
            issuer: https://idp.example.com
            algorithms: [RS256, HS256]
"#;
    check(
        &errors(yaml).await,
        &["policies.yaml:9:25: policy \"api\", method \"users\": jwt.algorithms: HS256 is a shared-secret algorithm"],
    );
}

#[tokio::test]
async fn mistakes_name_file_line_and_field() {
    check(
        &errors("policies:\n  - name: a\n    identity:\n      any_of:\n        - name: k\n          api_key:\n            keys: [{ id: x, hash: plain-text-key }]\n").await,
        &["policies.yaml:7:", "hash must be `sha256:<64 hex digits>` or an argon2 PHC string"],
    );
    check(
        &errors("policies:\n  - name: a\n    identity:\n      any_of:\n        - name: k\n          api_kye: {}\n")
            .await,
        &["policies.yaml:6:", "api_kye"],
    );
    check(
        &errors(&format!("policies:\n  - name: a\n    identity:\n      methods:\n        - name: k\n          api_key: {{ keys: [{{ id: x, hash: \"{KEY}\" }}] }}\n      expression: \"k || jwt\"\n")).await,
        &["policies.yaml:7:19:", "expression names \"jwt\", which is not a method of this policy"],
    );
    check(
        &errors(&format!("policies:\n  - name: a\n    identity: {{ any_of: [{{ name: k, api_key: {{ keys: [{{ id: x, hash: \"{KEY}\" }}] }} }}] }}\n    authorization:\n      - name: bad-cel\n        cel: 'request.method =='\n      - name: bad-regex\n        require: {{ path: {{ regex: '(' }} }}\n")).await,
        &["policies.yaml:5:15: policy \"a\", rule \"bad-cel\": cel:", "policies.yaml:7:15: policy \"a\", rule \"bad-regex\": invalid regex"],
    );
    check(
        &errors(&format!("policies:\n  - name: a\n    identity: {{ any_of: [{{ name: k, api_key: {{ keys: [{{ id: x, hash: \"{KEY}\" }}] }} }}] }}\n  - name: a\n    identity: {{ any_of: [{{ name: k, anonymous: {{}} }}] }}\ndefault_policy: b\n")).await,
        &["policies.yaml:4:11: policies: duplicate policy name \"a\"", "default_policy: no policy named \"b\""],
    );
    check(
        &errors("policies:\n  - name: a\n    identity: { any_of: [{ name: k, api_key: { redis_prefix: 'k:' } }] }\n")
            .await,
        &["api_key.redis_prefix needs Redis: set REDIS_URL"],
    );
    check(
        &errors("policies:\n  - name: a\n    identity: { any_of: [{ name: k, anonymous: {} }] }\n    authorization:\n      - name: r\n        rego: { query: data.x.allow, module: 'package x\nallow if {' }\n").await,
        &["policies.yaml:5:15: policy \"a\", rule \"r\": rego:"],
    );
}

/// A signed upstream JWT never takes `aud`, `exp`, `iss` or `sub` from the caller's token.
#[tokio::test]
async fn signed_jwt_cannot_copy_reserved_claims() {
    let yaml = format!(
        "policies:\n  - name: a\n    identity: {{ any_of: [{{ name: k, api_key: {{ keys: [{{ id: x, hash: \"{KEY}\" }}] }} }}] }}\n    response:\n      signed_jwt: {{ audience: orders, claims: [claims.aud, metadata.plan, claims.exp] }}\n"
    );
    let got = errors(&yaml).await;
    check(
        &got,
        &[
            "policies.yaml:2:11: policy \"a\": response.signed_jwt.claims: \"claims.aud\" would set the \"aud\" claim",
            "\"claims.exp\" would set the \"exp\" claim",
        ],
    );
    assert!(!got.contains("metadata.plan"), "{got}");
}

#[tokio::test]
async fn browser_login_mistakes_are_named() {
    // Without Redis (REDIS_URL) a browser login has nowhere to keep sessions; a cookie secret
    // must be long enough; the cookie prefix must be __Host-; enums are spelt out.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("short.key"), "too short").unwrap();
    let yaml = format!(
        r#"
policies:
  - name: app
    identity:
      any_of:
        - name: browser
          oidc_login:
            issuer: https://idp.example.com
            client_id: web
            redirect_uri: /app/callback
            cookie_secret_file: {dir}/short.key
            cookie_prefix: session
            redirect: sometimes
            client_auth: client_secret_jwt
"#,
        dir = dir.path().display()
    );
    check(
        &errors(&yaml).await,
        &[
            "oidc_login.redirect_uri must be an absolute http(s) URL",
            "oidc_login.client_auth: \"client_secret_jwt\"; expected client_secret_basic, client_secret_post or none",
            "oidc_login.cookie_secret_file holds 9 bytes; it needs at least 32 random bytes",
        ],
    );
    std::fs::write(dir.path().join("good.key"), [7u8; 32]).unwrap();
    let yaml = yaml.replace("short.key", "good.key");
    check(
        &errors(&yaml).await,
        &[
            "policies.yaml:12:28: policy \"app\", method \"browser\": oidc_login.cookie_prefix must start with __Host-",
            "oidc_login.redirect: \"sometimes\"; expected auto, always or never",
            "oidc_login keeps sessions in Redis: set REDIS_URL, or choose `session: {store: cookie}`",
        ],
    );
    // Redirect targets from the config are held to the rules for `rd=`; the store and the
    // cache are spelt out and bounded.
    let yaml = format!(
        r#"
policies:
  - name: app
    identity:
      any_of:
        - name: browser
          oidc_login:
            issuer: https://idp.example.com
            client_id: web
            redirect_uri: https://app.example.com/app/callback
            cookie_secret_file: {dir}/good.key
            after_logout_url: //evil.example.com/
            session: {{ store: cookie, cache_ttl: 5m }}
        - name: also
          oidc_login:
            issuer: https://idp.example.com
            client_id: web
            redirect_uri: https://app.example.com/app/callback
            cookie_secret_file: {dir}/good.key
            after_logout_url: https://elsewhere.example.com/bye
            allowed_redirect_hosts: [app.example.com]
            session: {{ store: cookie }}
        - name: third
          oidc_login:
            issuer: https://idp.example.com
            client_id: web
            redirect_uri: https://app.example.com/app/callback
            cookie_secret_file: {dir}/good.key
            session: {{ store: files }}
"#,
        dir = dir.path().display()
    );
    check(
        &errors(&yaml).await,
        &[
            "policies.yaml:12:31: policy \"app\", method \"browser\": oidc_login.after_logout_url \"//evil.example.com/\": starts with //",
            "oidc_login.session.cache_ttl is at most 30s",
            "oidc_login.session.store: \"files\"; expected redis or cookie",
            "oidc_login.after_logout_url \"https://elsewhere.example.com/bye\": host not allow-listed",
            "policy \"app\": method \"also\": a policy has at most one oidc_login",
        ],
    );
}
