//! An OTLP/gRPC trace collector that only counts, for the tracing benchmark
//! (`TRACING=1 scripts/bench-ratelimit.sh`): it answers every Export at once and prints the
//! number of spans received so far each second, so a benchmark can read how many arrived
//! without the sink's memory growing with them.
//!
//!     cargo run --release -p gatehouse-testkit --example otlp_sink -- 127.0.0.1:4317

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use tonic::{Request, Response, Status};

#[derive(Clone, Default)]
struct Counter {
    spans: Arc<AtomicU64>,
}

#[tonic::async_trait]
impl TraceService for Counter {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let spans: usize =
            request.get_ref().resource_spans.iter().flat_map(|r| &r.scope_spans).map(|s| s.spans.len()).sum();
        self.spans.fetch_add(spans as u64, Ordering::Relaxed);
        Ok(Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:4317".into());
    let addr = addr.parse().unwrap_or_else(|e| panic!("{addr}: {e}"));
    let counter = Counter::default();
    let spans = counter.spans.clone();
    tokio::spawn(async move {
        let mut last = u64::MAX;
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let now = spans.load(Ordering::Relaxed);
            if now != last {
                println!("spans {now}");
                last = now;
            }
        }
    });
    tonic::transport::Server::builder()
        .add_service(TraceServiceServer::new(counter).max_decoding_message_size(64 << 20))
        .serve(addr)
        .await
        .expect("serve OTLP");
}
