//! The trace context a caller sends: W3C `traceparent`/`tracestate` (Envoy's OpenTelemetry
//! tracer) and B3, single `b3` header or multi `x-b3-*` (Envoy's Zipkin tracer), read from
//! gRPC metadata or HTTP headers.
//!
//! When both forms are present, W3C wins: it is the one Envoy writes last when it is
//! configured for both, and the one that carries `tracestate`.

use std::sync::LazyLock;

use opentelemetry::Context;
use opentelemetry::propagation::text_map_propagator::FieldIter;
use opentelemetry::propagation::{Extractor, Injector, TextMapCompositePropagator, TextMapPropagator};
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tonic::metadata::{KeyRef, MetadataMap};

/// B3, then W3C trace context, so that W3C wins when both are present.
static PROPAGATOR: LazyLock<TextMapCompositePropagator> = LazyLock::new(|| {
    TextMapCompositePropagator::new(vec![Box::new(B3Propagator::new()), Box::new(TraceContextPropagator::new())])
});

/// The remote parent in a gRPC call's metadata; an empty context when there is none or it is
/// malformed (a bad header never fails a request).
pub fn extract_from_metadata(metadata: &MetadataMap) -> Context {
    PROPAGATOR.extract(&MetadataExtractor(metadata))
}

/// The remote parent in HTTP headers, as [`extract_from_metadata`].
pub fn extract_from_headers(headers: &axum::http::HeaderMap) -> Context {
    PROPAGATOR.extract(&opentelemetry_http::HeaderExtractor(headers))
}

/// tonic's metadata as an OpenTelemetry carrier. Binary (`-bin`) entries carry no trace
/// context and are skipped.
#[derive(Debug)]
pub struct MetadataExtractor<'a>(pub &'a MetadataMap);

impl Extractor for MetadataExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0
            .keys()
            .filter_map(|key| match key {
                KeyRef::Ascii(key) => Some(key.as_str()),
                KeyRef::Binary(_) => None,
            })
            .collect()
    }
}

/// Zipkin's B3 headers (<https://github.com/openzipkin/b3-propagation>). Extraction accepts
/// both encodings; injection writes the single `b3` header.
#[derive(Debug)]
pub struct B3Propagator {
    fields: [String; 5],
}

const B3_SINGLE: &str = "b3";
const B3_TRACE_ID: &str = "x-b3-traceid";
const B3_SPAN_ID: &str = "x-b3-spanid";
const B3_SAMPLED: &str = "x-b3-sampled";
const B3_FLAGS: &str = "x-b3-flags";

impl Default for B3Propagator {
    fn default() -> Self {
        Self::new()
    }
}

impl B3Propagator {
    pub fn new() -> Self {
        B3Propagator { fields: [B3_SINGLE, B3_TRACE_ID, B3_SPAN_ID, B3_SAMPLED, B3_FLAGS].map(String::from) }
    }
}

impl TextMapPropagator for B3Propagator {
    fn inject_context(&self, cx: &Context, injector: &mut dyn Injector) {
        let span = cx.span();
        let sc = span.span_context();
        if sc.is_valid() {
            let sampled = if sc.is_sampled() { "1" } else { "0" };
            injector.set(B3_SINGLE, format!("{}-{}-{sampled}", sc.trace_id(), sc.span_id()));
        }
    }

    fn extract_with_context(&self, cx: &Context, extractor: &dyn Extractor) -> Context {
        let span_context = match extractor.get(B3_SINGLE) {
            Some(single) => parse_single(single),
            None => parse_multi(extractor),
        };
        match span_context {
            Some(sc) if sc.is_valid() => cx.with_remote_span_context(sc),
            _ => cx.clone(),
        }
    }

    fn fields(&self) -> FieldIter<'_> {
        FieldIter::new(&self.fields)
    }
}

/// `{trace id}-{span id}[-{sampling}[-{parent span id}]]`. A header with only a sampling
/// decision (`0`, `1`, `d`) names no parent, so it gives no context.
fn parse_single(header: &str) -> Option<SpanContext> {
    let mut parts = header.trim().split('-');
    let trace_id = parse_trace_id(parts.next()?)?;
    let span_id = parse_span_id(parts.next()?)?;
    let flags = match parts.next() {
        None => deferred(),
        Some(sampling) => sampling_flags(sampling)?,
    };
    if let Some(parent) = parts.next() {
        parse_span_id(parent)?;
    }
    if parts.next().is_some() {
        return None;
    }
    Some(SpanContext::new(trace_id, span_id, flags, true, TraceState::default()))
}

fn parse_multi(extractor: &dyn Extractor) -> Option<SpanContext> {
    let trace_id = parse_trace_id(extractor.get(B3_TRACE_ID)?.trim())?;
    let span_id = parse_span_id(extractor.get(B3_SPAN_ID)?.trim())?;
    let flags = if extractor.get(B3_FLAGS).map(str::trim) == Some("1") {
        TraceFlags::SAMPLED
    } else {
        match extractor.get(B3_SAMPLED) {
            None => deferred(),
            Some(sampled) => sampling_flags(sampled.trim())?,
        }
    };
    Some(SpanContext::new(trace_id, span_id, flags, true, TraceState::default()))
}

/// No sampling decision from upstream. OpenTelemetry has no "deferred" flag; recording
/// matches what a B3 caller that defers expects (the trace continues) and what Envoy does
/// when it forwards such a trace.
fn deferred() -> TraceFlags {
    TraceFlags::SAMPLED
}

fn sampling_flags(value: &str) -> Option<TraceFlags> {
    match value {
        "1" | "d" | "true" => Some(TraceFlags::SAMPLED),
        "0" | "false" => Some(TraceFlags::default()),
        _ => None,
    }
}

/// 16 or 32 lowercase hex digits; a 64-bit id is the low half of a 128-bit one.
fn parse_trace_id(hex: &str) -> Option<TraceId> {
    if !(hex.len() == 16 || hex.len() == 32) || !is_lower_hex(hex) {
        return None;
    }
    let id = TraceId::from_hex(hex).ok()?;
    (id != TraceId::INVALID).then_some(id)
}

fn parse_span_id(hex: &str) -> Option<SpanId> {
    if hex.len() != 16 || !is_lower_hex(hex) {
        return None;
    }
    let id = SpanId::from_hex(hex).ok()?;
    (id != SpanId::INVALID).then_some(id)
}

fn is_lower_hex(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const SPAN: &str = "00f067aa0ba902b7";

    fn metadata(pairs: &[(&'static str, &str)]) -> MetadataMap {
        let mut map = MetadataMap::new();
        for (key, value) in pairs {
            map.insert(*key, value.parse().unwrap());
        }
        map
    }

    /// The parent's (trace id, span id, sampled), or `None` for no parent.
    fn parent(pairs: &[(&'static str, &str)]) -> Option<(String, String, bool)> {
        let cx = extract_from_metadata(&metadata(pairs));
        let span = cx.span();
        let sc = span.span_context();
        sc.is_valid().then(|| (sc.trace_id().to_string(), sc.span_id().to_string(), sc.is_sampled()))
    }

    #[test]
    fn extracts_every_supported_form() {
        #[track_caller]
        fn check(pairs: &[(&'static str, &str)], expected: Option<(&str, &str, bool)>) {
            let expected = expected.map(|(t, s, sampled)| (t.to_string(), s.to_string(), sampled));
            assert_eq!(parent(pairs), expected, "{pairs:?}");
        }
        let traceparent = format!("00-{TRACE}-{SPAN}-01");
        check(&[("traceparent", &traceparent)], Some((TRACE, SPAN, true)));
        check(&[("traceparent", &format!("00-{TRACE}-{SPAN}-00"))], Some((TRACE, SPAN, false)));
        check(&[("b3", &format!("{TRACE}-{SPAN}-1"))], Some((TRACE, SPAN, true)));
        check(&[("b3", &format!("{TRACE}-{SPAN}-0-05e3ac9a4f6e3b90"))], Some((TRACE, SPAN, false)));
        check(&[("b3", &format!("{TRACE}-{SPAN}-d"))], Some((TRACE, SPAN, true)));
        check(&[("b3", &format!("{TRACE}-{SPAN}"))], Some((TRACE, SPAN, true)));
        check(&[("b3", &format!("a3ce929d0e0e4736-{SPAN}-1"))], Some(("0000000000000000a3ce929d0e0e4736", SPAN, true)));
        check(&[("x-b3-traceid", TRACE), ("x-b3-spanid", SPAN), ("x-b3-sampled", "1")], Some((TRACE, SPAN, true)));
        check(&[("x-b3-traceid", TRACE), ("x-b3-spanid", SPAN), ("x-b3-sampled", "0")], Some((TRACE, SPAN, false)));
        check(
            &[("x-b3-traceid", TRACE), ("x-b3-spanid", SPAN), ("x-b3-sampled", "0"), ("x-b3-flags", "1")],
            Some((TRACE, SPAN, true)),
        );
        // W3C wins over B3.
        let other = "0af7651916cd43dd8448eb211c80319c";
        check(&[("traceparent", &traceparent), ("b3", &format!("{other}-{SPAN}-1"))], Some((TRACE, SPAN, true)));
        // Malformed or absent: no parent, never an error.
        check(&[], None);
        check(&[("b3", "1")], None);
        check(&[("b3", &format!("{TRACE}-{SPAN}-x"))], None);
        check(&[("b3", &format!("{TRACE}-{SPAN}-1-{SPAN}-extra"))], None);
        check(&[("b3", &format!("{}-{SPAN}-1", TRACE.to_uppercase()))], None);
        check(&[("b3", &format!("{}-{SPAN}-1", "0".repeat(32)))], None);
        check(&[("b3", &format!("{TRACE}-{}-1", "0".repeat(16)))], None);
        check(&[("x-b3-traceid", TRACE)], None);
        check(&[("x-b3-traceid", "xyz"), ("x-b3-spanid", SPAN)], None);
        check(&[("traceparent", "garbage")], None);
    }

    #[test]
    fn b3_injects_the_single_header() {
        let mut carrier = std::collections::HashMap::new();
        let cx = Context::new().with_remote_span_context(SpanContext::new(
            TraceId::from_hex(TRACE).unwrap(),
            SpanId::from_hex(SPAN).unwrap(),
            TraceFlags::SAMPLED,
            true,
            TraceState::default(),
        ));
        B3Propagator::new().inject_context(&cx, &mut carrier);
        assert_eq!(carrier.get("b3").map(String::as_str), Some(format!("{TRACE}-{SPAN}-1").as_str()));
    }
}
