//! JSON log lines carry the trace and span ids of the traced span they are logged in. Its own
//! test binary: the formatter reads the current span from the global dispatcher, which a
//! process can set only once.

use std::sync::{Arc, Mutex};

use gatehouse_common::telemetry::otel::WithTraceIds;
use opentelemetry::trace::{TraceContextExt as _, TracerProvider as _};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

/// A log writer the test reads back.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn json_logs_carry_the_trace_and_span_ids_inside_a_traced_span() {
    let capture = Capture::default();
    let writer = {
        let capture = capture.clone();
        move || capture.clone()
    };
    // No exporter: spans get ids and are dropped when they end.
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
    let logs = tracing_subscriber::fmt::layer()
        .with_writer(writer)
        .json()
        .event_format(WithTraceIds(tracing_subscriber::fmt::format().json().flatten_event(true)))
        .with_filter(tracing_subscriber::filter::filter_fn(|m| !m.is_span()));
    let traces = tracing_opentelemetry::layer().with_tracer(provider.tracer("test"));
    tracing_subscriber::registry().with(logs).with(traces).init();

    tracing::info!(n = 1, "outside");
    let span = tracing::info_span!("traced");
    span.in_scope(|| tracing::info!(n = 2, "inside"));
    let ids = span.context().span().span_context().clone();

    let text = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
    let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).expect(l)).collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert_eq!(lines[0]["message"], "outside");
    assert!(lines[0].get("trace_id").is_none(), "{text}");
    assert_eq!((lines[1]["message"].as_str(), lines[1]["n"].as_i64()), (Some("inside"), Some(2)));
    assert_eq!(lines[1]["trace_id"].as_str(), Some(ids.trace_id().to_string().as_str()), "{text}");
    assert_eq!(lines[1]["span_id"].as_str(), Some(ids.span_id().to_string().as_str()), "{text}");
    assert!(ids.is_valid());
}
