//! The ext_proc stream in process: a malformed message ends the stream with
//! INVALID_ARGUMENT, and a request without a transformation costs one round trip.

use envoy_types::pb::envoy::config::core::v3::{HeaderMap, HeaderValue};
use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_client::ExternalProcessorClient;
use envoy_types::pb::envoy::service::ext_proc::v3::processing_request::Request as Phase;
use envoy_types::pb::envoy::service::ext_proc::v3::processing_response::Response as PhaseResponse;
use envoy_types::pb::envoy::service::ext_proc::v3::{HttpHeaders, ProcessingRequest};
use gatehouse_common::config::Env;
use gatehouse_common::server::Shutdown;
use gatehouse_transform::settings::Settings;
use gatehouse_transform::{App, Listeners};
use tokio::net::TcpListener;

async fn start() -> (ExternalProcessorClient<tonic::transport::Channel>, Shutdown, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("t.yaml");
    std::fs::write(&config, "transformations:\n  - name: t\n    request:\n      - headers: { set: { x-a: \"1\" } }\n")
        .unwrap();
    let env = Env::from_pairs([("TRANSFORM_CONFIG", config.display().to_string())]);
    let app = App::build(Settings::from_env(&env).unwrap()).unwrap();
    let grpc = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = grpc.local_addr().unwrap().port();
    let shutdown = Shutdown::new();
    tokio::spawn(app.serve(Listeners { grpc, http: None }, shutdown.clone()));
    let client = ExternalProcessorClient::connect(format!("http://127.0.0.1:{port}")).await.unwrap();
    (client, shutdown, dir)
}

fn headers() -> ProcessingRequest {
    let header =
        |k: &str, v: &str| HeaderValue { key: k.into(), raw_value: v.as_bytes().to_vec(), ..Default::default() };
    ProcessingRequest {
        request: Some(Phase::RequestHeaders(HttpHeaders {
            headers: Some(HeaderMap { headers: vec![header(":method", "GET"), header(":path", "/")] }),
            end_of_stream: true,
            ..Default::default()
        })),
        ..Default::default()
    }
}

#[tokio::test]
async fn malformed_messages_end_the_stream_with_invalid_argument() {
    let (mut client, shutdown, _dir) = start().await;
    let mut responses = client.process(once(ProcessingRequest::default())).await.unwrap().into_inner();
    let status = responses.message().await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status}");
    shutdown.trigger();
}

#[tokio::test]
async fn the_transformation_is_named_by_stream_metadata() {
    let (mut client, shutdown, _dir) = start().await;
    let mut request = tonic::Request::new(once(headers()));
    request.metadata_mut().insert("x-gatehouse-transform", "t".parse().unwrap());
    let mut responses = client.process(request).await.unwrap().into_inner();
    let response = responses.message().await.unwrap().unwrap();
    let Some(PhaseResponse::RequestHeaders(h)) = response.response else { panic!("{response:?}") };
    let set = h.response.unwrap().header_mutation.unwrap().set_headers;
    assert_eq!(set[0].header.as_ref().unwrap().key, "x-a");

    // No name: nothing to do, and Envoy is told to send nothing more.
    let mut responses = client.process(once(headers())).await.unwrap().into_inner();
    let response = responses.message().await.unwrap().unwrap();
    assert!(matches!(response.response, Some(PhaseResponse::RequestHeaders(_))));
    assert_eq!(response.mode_override.unwrap().response_header_mode, 2, "SKIP");
    shutdown.trigger();
}

fn once(message: ProcessingRequest) -> impl futures::Stream<Item = ProcessingRequest> + Send + 'static {
    futures::stream::iter([message])
}
