//! A pre-encoded Check call for load generators (h2load `-d`), and a decoder for one answer.
//!
//! ```sh
//! # GET http://bench.local/bench with context gatehouse_policy=keys and an x-api-key header,
//! # as one length-prefixed gRPC message:
//! cargo run --release -p gatehouse-extauth --example encode_check -- req.bin keys x-api-key=KEY
//! # What a server answered (the body of a gRPC response, e.g. saved by curl):
//! cargo run --release -p gatehouse-extauth --example encode_check -- --decode resp.bin
//! ```

use std::process::ExitCode;

use envoy_types::pb::envoy::service::auth::v3::CheckResponse;
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use gatehouse_extauth::grpc::check_request;
use gatehouse_extauth::policy::POLICY_CONTEXT_KEY;
use prost_types::Any;

const USAGE: &str = "usage: encode_check OUT POLICY [HEADER=VALUE...] | encode_check --decode RESPONSE";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.as_slice() {
        [flag, file] if flag == "--decode" => decode(file),
        [out, policy, headers @ ..] if !out.starts_with('-') => encode(out, policy, headers),
        _ => Err(USAGE.to_string()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("encode_check: {e}");
            ExitCode::FAILURE
        }
    }
}

fn encode(out: &str, policy: &str, headers: &[String]) -> Result<(), String> {
    let headers = headers
        .iter()
        .map(|h| h.split_once('=').ok_or_else(|| format!("{h:?}: expected HEADER=VALUE")))
        .collect::<Result<Vec<(&str, &str)>, String>>()?;
    let request = check_request("GET", "bench.local", "/bench", &headers, &[(POLICY_CONTEXT_KEY, policy)]);
    // `Any` carries the encoded message; this saves a direct dependency on prost.
    let message = Any::from_msg(&request).map_err(|e| format!("encoding: {e}"))?.value;
    let length = u32::try_from(message.len()).map_err(|_| "message over 4 GiB".to_string())?;
    // gRPC framing: uncompressed flag, big-endian length, message.
    let mut frame = vec![0u8];
    frame.extend_from_slice(&length.to_be_bytes());
    frame.extend_from_slice(&message);
    std::fs::write(out, &frame).map_err(|e| format!("{out}: {e}"))?;
    eprintln!("{out}: CheckRequest for policy {policy:?}, {} bytes framed", frame.len());
    Ok(())
}

fn decode(file: &str) -> Result<(), String> {
    let bytes = std::fs::read(file).map_err(|e| format!("{file}: {e}"))?;
    let (prefix, rest) =
        bytes.split_at_checked(5).ok_or_else(|| format!("{file}: shorter than a gRPC frame header"))?;
    let length = u32::from_be_bytes([prefix[1], prefix[2], prefix[3], prefix[4]]) as usize;
    let message = rest.get(..length).ok_or_else(|| format!("{file}: frame says {length} bytes, has {}", rest.len()))?;
    // The type URL from an empty CheckResponse: naming prost's `Name` trait needs prost itself.
    let type_url = Any::from_msg(&CheckResponse::default()).map_err(|e| e.to_string())?.type_url;
    let any = Any { type_url, value: message.to_vec() };
    let response: CheckResponse = any.to_msg().map_err(|e| format!("{file}: not a CheckResponse: {e}"))?;
    let code = response.status.as_ref().map_or(0, |s| s.code);
    let verdict = match &response.http_response {
        Some(HttpResponse::OkResponse(ok)) => format!(
            "ok_response: set {:?}, remove {:?}",
            ok.headers.iter().filter_map(|h| h.header.as_ref()).map(|h| (&h.key, &h.value)).collect::<Vec<_>>(),
            ok.headers_to_remove
        ),
        Some(HttpResponse::DeniedResponse(denied)) => {
            format!("denied_response: HTTP {}, body {}", denied.status.as_ref().map_or(0, |s| s.code), denied.body)
        }
        Some(HttpResponse::ErrorResponse(_)) => "error_response".to_string(),
        None => "no http_response".to_string(),
    };
    println!("CheckResponse: status code {code}{}; {verdict}", if code == 0 { " (OK)" } else { "" });
    Ok(())
}
