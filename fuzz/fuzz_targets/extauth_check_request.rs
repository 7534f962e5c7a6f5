//! Drives the ext_authz gRPC path without a network: arbitrary bytes decoded as a protobuf
//! `CheckRequest` (as tonic would), mapped to an `AuthRequest` by
//! `grpc::from_check_request`, decided by the demo policies (`examples/extauth/policies.yaml`:
//! API keys, Basic, matchers, CEL, Rego; no IdP, no Redis) and turned into the
//! `CheckResponse` Envoy gets.
//!
//! Asserts: no panic; only a request without HTTP attributes is refused as malformed; header
//! names come out lower-case and the path without its query; the demo policies always
//! decide (no error: they need nothing that can be unavailable); a deny is a 401 or 403 whose
//! body is JSON.
#![no_main]

use envoy_types::pb::envoy::service::auth::v3::CheckRequest;
use gatehouse_extauth::grpc::{denied_response, from_check_request, ok_response};
use gatehouse_extauth::policy::Decision;
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let Ok(check) = CheckRequest::decode(data) else { return };
    let has_http = check.attributes.as_ref().and_then(|a| a.request.as_ref()).and_then(|r| r.http.as_ref()).is_some();
    let request = match from_check_request(check) {
        Ok(request) => request,
        Err(e) => {
            assert!(!has_http, "a request with HTTP attributes was refused: {e}");
            return;
        }
    };
    for name in request.headers.keys() {
        assert_eq!(*name, name.to_ascii_lowercase());
    }
    assert!(!request.path.contains('?'), "{:?}", request.path);
    let _ = request.to_json();
    let _ = request.query_param("api_key");
    let _ = request.cookie("session");

    let authorizer = gatehouse_fuzz::demo_authorizer();
    let (policy, decision) = gatehouse_fuzz::runtime().block_on(authorizer.check(&request));
    match decision.expect("the demo policies always decide") {
        Decision::Allow(allow) => {
            let _ = ok_response(allow);
        }
        Decision::Deny(deny) => {
            assert!(matches!(deny.status, 401 | 403), "{deny:?}");
            let response = denied_response(&deny, &policy, &request);
            let Some(envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse::DeniedResponse(denied)) =
                response.http_response
            else {
                panic!("a deny without a denied response")
            };
            serde_json::from_str::<serde_json::Value>(&denied.body).expect("a deny body is JSON");
        }
    }
});
