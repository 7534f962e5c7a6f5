//! `gatehouse-extauth check-config`: an issuer spelled unlike its discovery document is an
//! error that shows both spellings; an IdP that cannot be reached is only a warning.

use std::process::Command;

use tokio::net::TcpListener;

/// Serves a discovery document naming `http://127.0.0.1:{port}` (no trailing slash).
async fn idp() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let issuer = format!("http://127.0.0.1:{}", listener.local_addr().unwrap().port());
    let doc = serde_json::json!({"issuer": issuer, "jwks_uri": format!("{issuer}/jwks.json")});
    let app = axum::Router::new()
        .route("/.well-known/openid-configuration", axum::routing::get(move || async move { axum::Json(doc) }))
        .route("/jwks.json", axum::routing::get(|| async { axum::Json(serde_json::json!({"keys": []})) }));
    tokio::spawn(async move { axum::serve(listener, app).await });
    issuer
}

/// Runs check-config on a one-policy file for `issuer`; returns (success, stderr).
async fn check_config(issuer: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("policies.yaml");
    let yaml = format!(
        "policies:\n  - name: api\n    identity:\n      any_of:\n        - name: idp\n          jwt: {{ issuer: \"{issuer}\", timeout: 2s }}\n"
    );
    std::fs::write(&file, yaml).unwrap();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_gatehouse-extauth")).arg("check-config").arg(&file).output().unwrap()
    })
    .await
    .unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trailing_slash_the_idp_does_not_use_is_refused() {
    let issuer = idp().await;
    let (ok, stderr) = check_config(&format!("{issuer}/")).await;
    assert!(!ok, "{stderr}");
    assert!(stderr.contains("policies.yaml:6:"), "the error names file and line: {stderr}");
    let expected = format!(
        "policy \"api\", method \"idp\": jwt.issuer: the issuer is configured as \"{issuer}/\" but its discovery document ({issuer}/.well-known/openid-configuration) names \"{issuer}\""
    );
    assert!(stderr.contains(&expected), "{stderr}");

    let (ok, stderr) = check_config(&issuer).await;
    assert!(ok, "the exact spelling passes: {stderr}");
    assert!(!stderr.contains("warning"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_idp_is_a_warning() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = format!("http://127.0.0.1:{}", listener.local_addr().unwrap().port());
    drop(listener);
    let (ok, stderr) = check_config(&dead).await;
    assert!(ok, "{stderr}");
    assert!(
        stderr.contains(&format!("warning: policy \"api\", method \"idp\": jwt.issuer \"{dead}\" was not checked")),
        "{stderr}"
    );
}
