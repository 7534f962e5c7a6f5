//! `envoy.service.ext_proc.v3.ExternalProcessor/Process`: one bidirectional stream per HTTP
//! request. Each ProcessingRequest becomes a call on the [`Exchange`], and its [`Reply`]
//! becomes the ProcessingResponse: a headers/body response with header and body mutations,
//! `mode_override` and `clear_route_cache`, or an ImmediateResponse with a JSON body.

use std::pin::Pin;
use std::time::Instant;

use envoy_types::pb::envoy::config::core::v3::header_value_option::HeaderAppendAction;
use envoy_types::pb::envoy::config::core::v3::{HeaderMap, HeaderValue, HeaderValueOption};
use envoy_types::pb::envoy::extensions::filters::http::ext_proc::v3::ProcessingMode;
use envoy_types::pb::envoy::extensions::filters::http::ext_proc::v3::processing_mode::{BodySendMode, HeaderSendMode};
use envoy_types::pb::envoy::service::ext_proc::v3::common_response::ResponseStatus;
use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_server::{
    ExternalProcessor, ExternalProcessorServer,
};
use envoy_types::pb::envoy::service::ext_proc::v3::processing_request::Request as Phase;
use envoy_types::pb::envoy::service::ext_proc::v3::processing_response::Response as PhaseResponse;
use envoy_types::pb::envoy::service::ext_proc::v3::{
    BodyMutation, BodyResponse, CommonResponse, HeaderMutation, HeadersResponse, ImmediateResponse, ProcessingRequest,
    ProcessingResponse, TrailersResponse, body_mutation,
};
use envoy_types::pb::envoy::r#type::v3::HttpStatus;
use envoy_types::pb::google::protobuf::BoolValue;
use futures::Stream;
use gatehouse_common::pbjson;
use gatehouse_common::telemetry::grpc::{GrpcMethod, record_status};
use serde_json::{Map, Value};
use tonic::{Request, Response, Status, Streaming};
use tracing::Span;

use crate::exchange::{BodyMode, Exchange, Modes, Rejection, Reply};
use crate::message::{Edit, Headers};
use crate::service::Transformer;
use crate::stats::Stats;
use crate::transformation::METADATA_NAMESPACE;

/// The gRPC metadata key (set by the route's `grpc_initial_metadata`) naming the
/// transformation.
pub const TRANSFORMATION_METADATA_KEY: &str = "x-gatehouse-transform";

const PROCESS: GrpcMethod = gatehouse_common::grpc_method!("envoy.service.ext_proc.v3.ExternalProcessor", "Process");

pub struct ProcessService {
    transformer: Transformer,
}

pub fn server(transformer: Transformer) -> ExternalProcessorServer<ProcessService> {
    ExternalProcessorServer::new(ProcessService { transformer })
}

type ResponseStream = Pin<Box<dyn Stream<Item = Result<ProcessingResponse, Status>> + Send>>;

#[tonic::async_trait]
impl ExternalProcessor for ProcessService {
    type ProcessStream = ResponseStream;

    async fn process(
        &self,
        request: Request<Streaming<ProcessingRequest>>,
    ) -> Result<Response<Self::ProcessStream>, Status> {
        // The server span of the trace Envoy's ext_proc filter started, open for the whole
        // stream (it ends when `counted` is dropped), with a child span per phase handled.
        let span = gatehouse_common::grpc_server_span!(
            PROCESS,
            request.metadata(),
            transform.transformation = tracing::field::Empty,
        );
        let name = request.metadata().get(TRANSFORMATION_METADATA_KEY).and_then(|v| v.to_str().ok());
        if !span.is_disabled()
            && let Some(name) = name
        {
            span.record("transform.transformation", name);
        }
        let counted = Counted {
            exchange: self.transformer.exchange(name),
            stats: self.transformer.stats.clone(),
            span,
            code: tonic::Code::Ok,
        };
        let inbound = request.into_inner();
        // No task per stream: the response stream pulls the next message and answers it.
        // The state is `None` once the stream has failed, which ends it. The exchange is
        // counted when `counted` is dropped, however the stream ends.
        let stream = futures::stream::unfold(Some((inbound, counted)), |state| async move {
            let (mut inbound, mut counted) = state?;
            loop {
                match inbound.message().await {
                    Ok(Some(message)) => {
                        let started = Instant::now();
                        let phase = phase_name(&message);
                        let span = phase_span(&counted.span, phase, &message);
                        let handled = span.in_scope(|| handle(&mut counted.exchange, message));
                        if let Some(phase) = phase {
                            counted.stats.answered(phase, started);
                        }
                        match handled {
                            Ok(Some(response)) => return Some((Ok(response), Some((inbound, counted)))),
                            Ok(None) => {}
                            Err(status) => {
                                counted.stats.protocol_error();
                                counted.code = status.code();
                                return Some((Err(status), None));
                            }
                        }
                    }
                    Ok(None) => return None,
                    Err(status) => {
                        tracing::debug!(%status, "ext_proc stream ended by Envoy");
                        return None;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(stream)))
    }
}

/// One stream's exchange, counted in the metrics when dropped. Envoy ends an ext_proc stream
/// with END_STREAM and RST_STREAM together once the HTTP request is done; the reset makes
/// tonic drop the response stream without polling it again, so counting when the input ends
/// missed almost every exchange that came through Envoy.
struct Counted {
    exchange: Exchange,
    stats: Stats,
    /// The stream's server span, ended (with `code`) on drop.
    span: Span,
    code: tonic::Code,
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.stats.finished(&self.exchange);
        record_status(&self.span, self.code);
    }
}

/// The span of one phase under the stream's span: `request_headers`, `request_body`,
/// `response_headers`, `response_body` (with `transform.body.size`, the chunk's bytes) or a
/// trailers phase. Only the phase and sizes: header and body contents never go on spans.
fn phase_span(stream: &Span, phase: Option<&'static str>, message: &ProcessingRequest) -> Span {
    let Some(phase) = phase else { return Span::none() };
    if stream.is_disabled() || message.observability_mode {
        return Span::none();
    }
    let body_size = match &message.request {
        Some(Phase::RequestBody(b)) => Some(b.body.len()),
        Some(Phase::ResponseBody(b)) => Some(b.body.len()),
        _ => None,
    };
    tracing::info_span!(
        parent: stream,
        "transform.phase",
        otel.name = phase,
        transform.phase = phase,
        transform.body.size = body_size.map(|size| size as i64),
    )
}

/// The phase `message` carries, as spans and metrics name it; `None` for a malformed message.
fn phase_name(message: &ProcessingRequest) -> Option<&'static str> {
    Some(match message.request.as_ref()? {
        Phase::RequestHeaders(_) => "request_headers",
        Phase::RequestBody(_) => "request_body",
        Phase::ResponseHeaders(_) => "response_headers",
        Phase::ResponseBody(_) => "response_body",
        Phase::RequestTrailers(_) => "request_trailers",
        Phase::ResponseTrailers(_) => "response_trailers",
    })
}

/// Answers one message; `None` for messages that take no answer (observability mode). A
/// message without a phase is INVALID_ARGUMENT, which ends the stream (Envoy then applies
/// `failure_mode_allow`).
pub fn handle(exchange: &mut Exchange, message: ProcessingRequest) -> Result<Option<ProcessingResponse>, Status> {
    if message.observability_mode {
        return Ok(None);
    }
    let phase =
        message.request.ok_or_else(|| Status::invalid_argument("ProcessingRequest carries no request phase"))?;
    let response = match phase {
        Phase::RequestHeaders(h) => {
            let reply = exchange.on_request_headers(headers(h.headers), h.end_of_stream);
            to_response(reply, |r| PhaseResponse::RequestHeaders(HeadersResponse { response: Some(r) }), true)
        }
        Phase::RequestBody(b) => {
            let reply = exchange.on_request_body(&b.body, b.end_of_stream);
            to_response(reply, |r| PhaseResponse::RequestBody(BodyResponse { response: Some(r) }), true)
        }
        Phase::ResponseHeaders(h) => {
            let reply = exchange.on_response_headers(headers(h.headers), h.end_of_stream);
            to_response(reply, |r| PhaseResponse::ResponseHeaders(HeadersResponse { response: Some(r) }), false)
        }
        Phase::ResponseBody(b) => {
            let reply = exchange.on_response_body(&b.body, b.end_of_stream);
            to_response(reply, |r| PhaseResponse::ResponseBody(BodyResponse { response: Some(r) }), false)
        }
        // Trailers are passed on unchanged.
        Phase::RequestTrailers(_) => ProcessingResponse {
            response: Some(PhaseResponse::RequestTrailers(TrailersResponse::default())),
            ..Default::default()
        },
        Phase::ResponseTrailers(_) => ProcessingResponse {
            response: Some(PhaseResponse::ResponseTrailers(TrailersResponse::default())),
            ..Default::default()
        },
    };
    Ok(Some(response))
}

/// Header values arrive in `raw_value` (Envoy ≥ 1.29); `value` is read for older senders.
fn headers(map: Option<HeaderMap>) -> Headers {
    let mut out = Headers::default();
    for h in map.map(|m| m.headers).unwrap_or_default() {
        let value = if h.raw_value.is_empty() {
            h.value
        } else {
            String::from_utf8(h.raw_value).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
        };
        out.push(h.key, value);
    }
    out
}

fn to_response(
    reply: Reply,
    wrap: impl FnOnce(CommonResponse) -> PhaseResponse,
    request_direction: bool,
) -> ProcessingResponse {
    match reply {
        Reply::Reject(rejection) => immediate(&rejection),
        Reply::Continue { edit, replace, modes } => {
            let Edit { set, append, remove, body, metadata, route_changed } = edit;
            let dynamic_metadata = (!metadata.is_empty()).then(|| {
                let mut namespaces = Map::new();
                namespaces.insert(METADATA_NAMESPACE.to_string(), Value::Object(metadata));
                pbjson::to_struct(&namespaces)
            });
            let common = CommonResponse {
                status: if replace { ResponseStatus::ContinueAndReplace } else { ResponseStatus::Continue } as i32,
                clear_route_cache: request_direction && route_changed,
                header_mutation: header_mutation(set, append, remove),
                body_mutation: body.map(|b| BodyMutation { mutation: Some(body_mutation::Mutation::Body(b)) }),
                trailers: None,
            };
            ProcessingResponse {
                response: Some(wrap(common)),
                dynamic_metadata,
                mode_override: modes.map(processing_mode),
                ..Default::default()
            }
        }
    }
}

fn header_mutation(
    set: Vec<(String, String)>,
    append: Vec<(String, String)>,
    remove: Vec<String>,
) -> Option<HeaderMutation> {
    if set.is_empty() && append.is_empty() && remove.is_empty() {
        return None;
    }
    // ext_proc reads the (deprecated) `append` flag, defaulting to false; `append_action`'s
    // default, APPEND_IF_EXISTS_OR_ADD, is indistinguishable from unset. So: overwrite is
    // spelled with append_action, append with the flag.
    #[allow(deprecated)]
    let option = |(name, value): (String, String), append: bool| HeaderValueOption {
        header: Some(HeaderValue { key: name, raw_value: value.into_bytes(), ..Default::default() }),
        append: append.then_some(BoolValue { value: true }),
        append_action: if append { 0 } else { HeaderAppendAction::OverwriteIfExistsOrAdd as i32 },
        ..Default::default()
    };
    Some(HeaderMutation {
        set_headers: set
            .into_iter()
            .map(|h| option(h, false))
            .chain(append.into_iter().map(|h| option(h, true)))
            .collect(),
        remove_headers: remove,
    })
}

fn processing_mode(modes: Modes) -> ProcessingMode {
    let header = |send: bool| if send { HeaderSendMode::Send } else { HeaderSendMode::Skip } as i32;
    let body = |mode: BodyMode| {
        let send = match mode {
            BodyMode::None => BodySendMode::None,
            BodyMode::Buffered => BodySendMode::Buffered,
            BodyMode::Partial => BodySendMode::BufferedPartial,
        };
        send as i32
    };
    ProcessingMode {
        request_header_mode: HeaderSendMode::Send as i32,
        response_header_mode: header(modes.response_headers),
        request_body_mode: body(modes.request_body),
        response_body_mode: body(modes.response_body),
        request_trailer_mode: HeaderSendMode::Skip as i32,
        response_trailer_mode: HeaderSendMode::Skip as i32,
    }
}

/// The local reply: the status, and `{"error", "message"}` as JSON.
fn immediate(rejection: &Rejection) -> ProcessingResponse {
    let body = serde_json::json!({ "error": rejection.error, "message": rejection.message }).to_string();
    let content_type = HeaderValueOption {
        header: Some(HeaderValue {
            key: "content-type".into(),
            raw_value: b"application/json".to_vec(),
            ..Default::default()
        }),
        append_action: HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
        ..Default::default()
    };
    ProcessingResponse {
        response: Some(PhaseResponse::ImmediateResponse(ImmediateResponse {
            status: Some(HttpStatus { code: i32::from(rejection.status) }),
            headers: Some(HeaderMutation { set_headers: vec![content_type], remove_headers: Vec::new() }),
            body: body.into_bytes(),
            grpc_status: None,
            details: format!("gatehouse_transform_{}", rejection.error),
        })),
        ..Default::default()
    }
}
