//! `envoy.service.auth.v3.Authorization/Check`: CheckRequest → [`AuthRequest`], and the
//! decision back into a CheckResponse. This is the one place errors become gRPC statuses.

use std::collections::HashMap;

use envoy_types::pb::envoy::config::core::v3::header_value_option::HeaderAppendAction;
use envoy_types::pb::envoy::config::core::v3::{HeaderValue, HeaderValueOption, QueryParameter};
use envoy_types::pb::envoy::service::auth::v3::authorization_server::{Authorization, AuthorizationServer};
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{CheckRequest, CheckResponse, DeniedHttpResponse, OkHttpResponse};
use envoy_types::pb::envoy::r#type::v3::HttpStatus;
use envoy_types::pb::google::rpc;
use gatehouse_common::pbjson;
use gatehouse_common::telemetry::grpc::{GrpcMethod, record_status};
use tonic::{Request, Response, Status};
use tracing::Instrument as _;

use crate::Error;
use crate::policy::{Allow, Decision, Deny};
use crate::request::{AuthRequest, Peer};
use crate::service::Authorizer;

const CHECK: GrpcMethod = gatehouse_common::grpc_method!("envoy.service.auth.v3.Authorization", "Check");

pub struct CheckService {
    authorizer: Authorizer,
}

pub fn server(authorizer: Authorizer) -> AuthorizationServer<CheckService> {
    AuthorizationServer::new(CheckService { authorizer })
}

#[tonic::async_trait]
impl Authorization for CheckService {
    async fn check(&self, request: Request<CheckRequest>) -> Result<Response<CheckResponse>, Status> {
        // The server span of the trace Envoy's ext_authz filter started; the policy, identity
        // and decision spans (service.rs, identity/mod.rs) are its children. No request
        // attribute goes on it: headers carry the credentials.
        let span = gatehouse_common::grpc_server_span!(CHECK, request.metadata());
        let result = self.decide(request.into_inner()).instrument(span.clone()).await;
        record_status(&span, result.as_ref().map_or_else(Status::code, |_| tonic::Code::Ok));
        result
    }
}

impl CheckService {
    async fn decide(&self, request: CheckRequest) -> Result<Response<CheckResponse>, Status> {
        let request = from_check_request(request).map_err(to_status)?;
        let (policy, decision) = self.authorizer.check(&request).await;
        match decision {
            Ok(Decision::Allow(allow)) => Ok(Response::new(ok_response(allow))),
            Ok(Decision::Deny(deny)) => Ok(Response::new(denied_response(&deny, &policy, &request))),
            Err(e) => Err(to_status(e)),
        }
    }
}

/// How Envoy's ext_authz filter reacts to each status (docs/extauth.md):
/// - a CheckResponse with code OK allows; any other code denies with our HTTP response;
/// - a gRPC error status (UNAVAILABLE, INTERNAL, INVALID_ARGUMENT) is an authorization-server
///   failure: with `failure_mode_allow: true` Envoy lets the request through, otherwise it
///   answers `status_on_error` (403 by default; the reference config uses 503).
pub fn to_status(error: Error) -> Status {
    match error {
        Error::Unavailable(message) => Status::unavailable(message),
        Error::Internal(message) => Status::internal(message),
        Error::BadRequest(message) => Status::invalid_argument(message),
    }
}

/// Reads the attributes Envoy sends.
pub fn from_check_request(check: CheckRequest) -> Result<AuthRequest, Error> {
    let attributes = check.attributes.ok_or_else(|| Error::BadRequest("CheckRequest has no attributes".into()))?;
    let http = attributes
        .request
        .and_then(|r| r.http)
        .ok_or_else(|| Error::BadRequest("CheckRequest has no HTTP request attributes".into()))?;
    let mut request = AuthRequest {
        method: http.method,
        scheme: http.scheme,
        host: http.host,
        sni: attributes.tls_session.map(|t| t.sni).unwrap_or_default(),
        context: attributes.context_extensions.into_iter().collect(),
        ..Default::default()
    };
    request.set_path_and_query(&http.path);
    if request.query.is_empty() && !http.query.is_empty() {
        request.query = http.query;
    }
    request.headers = http.headers.into_iter().map(|(k, v)| (k.to_ascii_lowercase(), v)).collect();
    // With `encode_raw_headers`, headers arrive in header_map instead.
    if let Some(map) = http.header_map {
        for HeaderValue { key, value, raw_value } in map.headers {
            let value = if raw_value.is_empty() { value } else { String::from_utf8_lossy(&raw_value).into_owned() };
            request
                .headers
                .entry(key.to_ascii_lowercase())
                .and_modify(|v| {
                    v.push(',');
                    v.push_str(&value)
                })
                .or_insert(value);
        }
    }
    if !http.raw_body.is_empty() {
        request.body = Some(http.raw_body);
    } else if !http.body.is_empty() {
        request.body = Some(http.body.into_bytes());
    }
    if let Some(source) = attributes.source {
        request.source = Peer {
            address: source.address.and_then(|a| a.address).map(socket_address).unwrap_or_default(),
            principal: source.principal,
            certificate: source.certificate,
        };
    }
    if let Some(metadata) = attributes.metadata_context {
        request.metadata = metadata
            .filter_metadata
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::Value::Object(pbjson::from_struct(v))))
            .collect();
    }
    Ok(request)
}

fn socket_address(address: envoy_types::pb::envoy::config::core::v3::address::Address) -> String {
    use envoy_types::pb::envoy::config::core::v3::address::Address;
    use envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier;
    match address {
        Address::SocketAddress(sa) => match sa.port_specifier {
            Some(PortSpecifier::PortValue(port)) => format!("{}:{port}", sa.address),
            _ => sa.address,
        },
        Address::Pipe(p) => p.path,
        Address::EnvoyInternalAddress(_) => String::new(),
    }
}

fn header(name: &str, value: &str, action: HeaderAppendAction) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue { key: name.to_string(), value: value.to_string(), raw_value: Vec::new() }),
        append_action: action as i32,
        ..Default::default()
    }
}

fn ok_status() -> Option<rpc::Status> {
    Some(rpc::Status { code: tonic::Code::Ok as i32, ..Default::default() })
}

pub fn ok_response(allow: Allow) -> CheckResponse {
    let overwrite = HeaderAppendAction::OverwriteIfExistsOrAdd;
    let ok = OkHttpResponse {
        headers: allow.upstream_headers.iter().map(|(k, v)| header(k, v, overwrite)).collect(),
        headers_to_remove: allow.remove_headers,
        query_parameters_to_set: allow
            .query_set
            .into_iter()
            .map(|(key, value)| QueryParameter { key, value })
            .collect(),
        query_parameters_to_remove: allow.query_remove,
        response_headers_to_add: allow
            .client_headers
            .iter()
            .map(|(k, v)| header(k, v, HeaderAppendAction::AppendIfExistsOrAdd))
            .collect(),
        ..Default::default()
    };
    CheckResponse {
        status: ok_status(),
        dynamic_metadata: Some(pbjson::to_struct(&allow.metadata)),
        http_response: Some(HttpResponse::OkResponse(ok)),
    }
}

pub fn denied_response(deny: &Deny, policy: &str, request: &AuthRequest) -> CheckResponse {
    let mut headers = vec![header("content-type", "application/json", HeaderAppendAction::OverwriteIfExistsOrAdd)];
    for challenge in &deny.challenges {
        headers.push(header("www-authenticate", challenge, HeaderAppendAction::AppendIfExistsOrAdd));
    }
    // Appended, so that two Set-Cookie headers do not replace each other.
    for (name, value) in &deny.headers {
        headers.push(header(name, value, HeaderAppendAction::AppendIfExistsOrAdd));
    }
    let code = match deny.status {
        401 | 302 | 303 => tonic::Code::Unauthenticated,
        503 => tonic::Code::Unavailable,
        _ => tonic::Code::PermissionDenied,
    };
    CheckResponse {
        status: Some(rpc::Status { code: code as i32, message: deny.reason.clone(), details: Vec::new() }),
        dynamic_metadata: None,
        http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
            status: Some(HttpStatus { code: i32::from(deny.status) }),
            headers,
            body: deny.body(policy, request.header("x-request-id")),
        })),
    }
}

/// For tests: a CheckRequest from parts.
pub fn check_request(
    method: &str,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
    context: &[(&str, &str)],
) -> CheckRequest {
    use envoy_types::pb::envoy::service::auth::v3::AttributeContext;
    use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Request as AttrRequest};
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(AttrRequest {
                http: Some(HttpRequest {
                    method: method.into(),
                    host: host.into(),
                    path: path.into(),
                    scheme: "http".into(),
                    headers: headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            context_extensions: context.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<HashMap<_, _>>(),
            ..Default::default()
        }),
    }
}
