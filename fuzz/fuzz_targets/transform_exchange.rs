//! Drives whole ext_proc streams through `gatehouse_transform::grpc::handle` and `Exchange`,
//! over the demo transformations (`examples/transform/transformations.yaml`: headers,
//! rewrite, JSON patch, GET → POST, AWS envelope, SOAP, error envelope, gzip, metadata, a
//! failing template). The first byte picks the transformation the route names (one of the
//! demo's, an unknown one, or none); the rest is a sequence of length-delimited protobuf
//! `ProcessingRequest`s, as Envoy sends them on one stream, in any order.
//!
//! Asserts: no panic; only a message without a phase ends the stream with an error; every
//! body the service writes goes with a `content-length` equal to its length, or with
//! `content-length` removed (chunked); an immediate response is a 4xx/5xx with a JSON body.
#![no_main]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, LazyLock};

use envoy_types::pb::envoy::service::ext_proc::v3::processing_response::Response as PhaseResponse;
use envoy_types::pb::envoy::service::ext_proc::v3::{CommonResponse, ProcessingRequest, body_mutation};
use gatehouse_transform::config;
use gatehouse_transform::exchange::Exchange;
use gatehouse_transform::grpc::handle;
use gatehouse_transform::transformation::Transformations;
use libfuzzer_sys::fuzz_target;
use prost::Message;

static CONFIG: LazyLock<(Arc<Transformations>, Vec<String>)> = LazyLock::new(|| {
    let file = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/transform/transformations.yaml"));
    let config = config::load(file, &BTreeMap::new()).expect("the demo transformations load");
    let mut names: Vec<String> = config.by_name.keys().cloned().collect();
    names.sort();
    (Arc::new(config), names)
});

fn check_body_length(common: &CommonResponse) {
    let Some(body_mutation::Mutation::Body(body)) = common.body_mutation.as_ref().and_then(|m| m.mutation.as_ref())
    else {
        return;
    };
    let mutation = common.header_mutation.as_ref();
    let removed = mutation.is_some_and(|m| m.remove_headers.iter().any(|h| h.eq_ignore_ascii_case("content-length")));
    let set: Vec<&[u8]> = mutation
        .map(|m| {
            m.set_headers
                .iter()
                .filter_map(|o| o.header.as_ref())
                .filter(|h| h.key.eq_ignore_ascii_case("content-length"))
                .map(|h| h.raw_value.as_slice())
                .collect()
        })
        .unwrap_or_default();
    let length = body.len().to_string();
    assert!(
        removed || set == [length.as_bytes()],
        "a body of {} bytes with content-length {set:?} (removed: {removed})",
        body.len()
    );
}

fuzz_target!(|data: &[u8]| {
    let Some((&choice, mut stream)) = data.split_first() else { return };
    let (config, names) = &*CONFIG;
    let name = match usize::from(choice) % (names.len() + 2) {
        i if i < names.len() => Some(names[i].as_str()),
        i if i == names.len() => Some("not-configured"),
        _ => None,
    };
    let mut exchange = Exchange::new(config.clone(), name);
    while !stream.is_empty() {
        let Ok(message) = ProcessingRequest::decode_length_delimited(&mut stream) else { return };
        let has_phase = message.request.is_some() || message.observability_mode;
        let response = match handle(&mut exchange, message) {
            Ok(Some(response)) => response,
            Ok(None) => continue,
            Err(status) => {
                assert!(!has_phase, "a message with a phase ended the stream: {status}");
                return;
            }
        };
        match response.response {
            Some(PhaseResponse::RequestHeaders(r) | PhaseResponse::ResponseHeaders(r)) => {
                check_body_length(r.response.as_ref().expect("a headers response carries a common response"))
            }
            Some(PhaseResponse::RequestBody(r) | PhaseResponse::ResponseBody(r)) => {
                check_body_length(r.response.as_ref().expect("a body response carries a common response"))
            }
            Some(PhaseResponse::ImmediateResponse(immediate)) => {
                let code = immediate.status.map_or(0, |s| s.code);
                assert!((400..600).contains(&code), "immediate response {code}");
                serde_json::from_slice::<serde_json::Value>(&immediate.body)
                    .expect("an immediate response body is JSON");
            }
            _ => {}
        }
    }
});
