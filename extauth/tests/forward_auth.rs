//! Forward-auth over real HTTP against the in-process server: what NGINX `auth_request`,
//! Traefik or Envoy's HTTP mode receive when a request carries an oversized token. NGINX
//! passes 401 and 403 on and turns every other status into a 500, so a too-large request must
//! be a 401 like any other bad credential, never a 431.

use gatehouse_common::config::Env;
use gatehouse_common::server::Shutdown;
use gatehouse_extauth::settings::Settings;
use gatehouse_extauth::{App, Listeners};
use serde_json::{Value, json};
use tokio::net::TcpListener;

/// One JWT policy. Its issuer is never reached: token size is checked before keys are needed.
async fn start(dir: &tempfile::TempDir) -> (String, Shutdown) {
    let file = dir.path().join("policies.yaml");
    std::fs::write(
        &file,
        "policies:\n  - name: api\n    identity:\n      any_of:\n        - name: bearer\n          jwt: { issuer: \"http://127.0.0.1:9\", jwks_uri: \"http://127.0.0.1:9/jwks.json\", timeout: 200ms }\n",
    )
    .unwrap();
    let settings = Settings::from_env(&Env::from_pairs([("EXTAUTH_CONFIG", file.display().to_string())])).unwrap();
    let grpc = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}/forward-auth/api", http.local_addr().unwrap());
    let app = App::build(settings).await.unwrap();
    let shutdown = Shutdown::new();
    tokio::spawn(app.serve(Listeners { grpc, http: Some(http) }, shutdown.clone()));
    (base, shutdown)
}

/// The status, content type and JSON body of a forward-auth call as NGINX sends it.
async fn call(base: &str, extra: &[(String, String)]) -> (u16, String, Value) {
    let mut request = reqwest::Client::new()
        .get(base)
        .header("x-original-method", "GET")
        .header("x-original-uri", "/orders")
        .header("x-request-id", "r-1");
    for (name, value) in extra {
        request = request.header(name, value);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let content_type = response.headers().get("content-type").map(|v| v.to_str().unwrap().to_string());
    let text = response.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or_else(|e| panic!("status {status}, body {text:?}: {e}"));
    (status, content_type.unwrap_or_default(), body)
}

fn bearer(bytes: usize) -> Vec<(String, String)> {
    vec![("authorization".into(), format!("Bearer {}", "a".repeat(bytes)))]
}

#[tokio::test]
async fn oversized_requests_are_denied_with_401_json_never_431() {
    let dir = tempfile::tempdir().unwrap();
    let (base, shutdown) = start(&dir).await;

    // Over jwt.max_token_bytes (8 KiB) but within the header limit: the policy decides.
    let token_too_large =
        json!({"error": "unauthorized", "reason": "token too large", "policy": "api", "request_id": "r-1"});
    assert_eq!(call(&base, &bearer(20_000)).await, (401, "application/json".into(), token_too_large));

    // Over the 64 KiB header limit (hyper would answer 431), over hyper's own read buffer
    // (about 400 KiB), and over its 100 headers: no policy runs, the deny says why.
    let headers_too_large = json!({"error": "unauthorized", "reason": "request headers too large (over 64 KiB)"});
    let many_headers: Vec<_> = (0..150).map(|i| (format!("x-h{i}"), "v".to_string())).collect();
    for (case, headers) in
        [("100 KB token", bearer(100_000)), ("1 MB token", bearer(1_000_000)), ("150 headers", many_headers)]
    {
        let (status, content_type, body) = call(&base, &headers).await;
        assert_eq!((status, content_type.as_str(), &body), (401, "application/json", &headers_too_large), "{case}");
    }

    // The port still serves, and an ordinary deny is untouched.
    let missing =
        json!({"error": "unauthorized", "reason": "missing credentials", "policy": "api", "request_id": "r-1"});
    assert_eq!(call(&base, &[]).await, (401, "application/json".into(), missing));
    shutdown.trigger();
}
