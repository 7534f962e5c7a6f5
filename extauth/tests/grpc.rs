//! The Check API in process: what Envoy receives for allows, denies and bad requests.

use envoy_types::pb::envoy::service::auth::v3::CheckRequest;
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use gatehouse_common::config::Env;
use gatehouse_common::server::Shutdown;
use gatehouse_extauth::grpc::check_request;
use gatehouse_extauth::settings::Settings;
use gatehouse_extauth::{App, Listeners, hash_key_sha256};
use tokio::net::TcpListener;

async fn start(dir: &tempfile::TempDir) -> (AuthorizationClient<tonic::transport::Channel>, Shutdown) {
    let file = dir.path().join("policies.yaml");
    let yaml = format!(
        "policies:\n  - name: keys\n    hosts: [api.example.com]\n    identity:\n      any_of:\n        - name: keys\n          api_key:\n            keys: [{{ id: team-a, hash: \"{}\", metadata: {{ plan: gold }} }}]\n",
        hash_key_sha256("secret-a")
    );
    std::fs::write(&file, yaml).unwrap();
    let settings = Settings::from_env(&Env::from_pairs([("EXTAUTH_CONFIG", file.display().to_string())])).unwrap();
    let grpc = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = grpc.local_addr().unwrap().port();
    let app = App::build(settings).await.unwrap();
    let shutdown = Shutdown::new();
    tokio::spawn(app.serve(Listeners { grpc, http: None }, shutdown.clone()));
    let client = AuthorizationClient::connect(format!("http://127.0.0.1:{port}")).await.unwrap();
    (client, shutdown)
}

#[tokio::test]
async fn allow_deny_and_malformed() {
    let dir = tempfile::tempdir().unwrap();
    let (mut client, shutdown) = start(&dir).await;

    // Allowed: OK, the credential is removed upstream, metadata carries the identity.
    let ok = client
        .check(check_request("GET", "api.example.com:8080", "/x", &[("x-api-key", "secret-a")], &[]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ok.status.unwrap().code, 0);
    let Some(HttpResponse::OkResponse(http)) = ok.http_response else { panic!("no OkResponse") };
    assert_eq!(http.headers_to_remove, vec!["x-api-key"]);
    let metadata = gatehouse_common::pbjson::from_struct(&ok.dynamic_metadata.unwrap());
    assert_eq!(metadata["subject"], "team-a");
    assert_eq!(metadata["plan"], "gold");
    assert_eq!(metadata["policy"], "keys");
    assert_eq!(metadata["kind"], "api_key");

    // Denied: UNAUTHENTICATED with a 401 Envoy sends as is.
    let denied = client
        .check(check_request("GET", "api.example.com", "/x", &[("x-request-id", "r-1")], &[]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(denied.status.unwrap().code, tonic::Code::Unauthenticated as i32);
    let Some(HttpResponse::DeniedResponse(http)) = denied.http_response else { panic!("no DeniedResponse") };
    assert_eq!(http.status.unwrap().code, 401);
    let body: serde_json::Value = serde_json::from_str(&http.body).unwrap();
    assert_eq!(
        body,
        serde_json::json!({"error": "unauthorized", "reason": "missing credentials", "policy": "keys", "request_id": "r-1"})
    );

    // A route naming an unknown policy fails closed with 403.
    let unknown = client
        .check(check_request("GET", "api.example.com", "/x", &[], &[("gatehouse_policy", "nope")]))
        .await
        .unwrap()
        .into_inner();
    let Some(HttpResponse::DeniedResponse(http)) = unknown.http_response else { panic!("no DeniedResponse") };
    assert_eq!(http.status.unwrap().code, 403);
    assert!(http.body.contains("no auth policy named \\\"nope\\\""), "{}", http.body);

    // No attributes at all: INVALID_ARGUMENT, which Envoy treats as a service error.
    let err = client.check(CheckRequest::default()).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    shutdown.trigger();
}
