//! One HTTP request/response exchange: the state kept across the messages of one ext_proc
//! stream, and the decision for each message. Transport-free: `grpc.rs` translates.
//!
//! The service asks Envoy only for what the selected rule needs (`mode_override` on the
//! headers replies): the request body only when the request rule reads it, response headers
//! only when the transformation has response rules, the response body only when the matching
//! response rule reads it. A rule that writes a body without reading one answers on the
//! headers with CONTINUE_AND_REPLACE, which also turns a body-less GET into a POST with a body.
//!
//! A body is never asked for in a way that can leave Envoy holding more than its buffer limit
//! (see [`BodyMode`]): a `content-length` over `max_body_bytes` is refused on the headers, a
//! body with a `content-length` within it is BUFFERED, and a body of unknown length is
//! BUFFERED_PARTIAL, which Envoy cuts off at its buffer limit, where the service refuses it.

use std::sync::Arc;

use crate::message::{Edit, Headers, Request};
use crate::transformation::{Failure, Message, Rule, Transformation, Transformations};

/// Which phases Envoy should send for the rest of the exchange.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Modes {
    pub request_body: BodyMode,
    pub response_headers: bool,
    pub response_body: BodyMode,
}

/// How Envoy sends a body, when the rule reads it.
///
/// Envoy holds body data that arrives while the headers message is out as "streaming" data:
/// over its buffer limit it stops reading from the client (or upstream) instead of answering
/// 413. If the headers reply then switches the body to BUFFERED, Envoy waits for the end of a
/// body it no longer reads, until its stream idle timeout (5 minutes, then 408). So BUFFERED
/// is only asked for a body whose `content-length` is within `max_body_bytes`, which is below
/// Envoy's buffer limit; a body of unknown length is asked for BUFFERED_PARTIAL, which Envoy
/// sends whole if it fits its buffer and otherwise cut off at the limit with
/// `end_of_stream: false`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BodyMode {
    /// Not sent.
    #[default]
    None,
    /// BUFFERED: the whole body, in one message.
    Buffered,
    /// BUFFERED_PARTIAL: the whole body, or the first buffer-full of one too large to buffer.
    Partial,
}

/// The answer to one message.
#[derive(Debug, PartialEq)]
pub enum Reply {
    /// Apply `edit` and continue. `replace`: CONTINUE_AND_REPLACE (the body in `edit`
    /// replaces any body, and no more messages come for this direction).
    Continue { edit: Edit, replace: bool, modes: Option<Modes> },
    /// Answer the client now.
    Reject(Rejection),
}

impl Reply {
    fn pass(modes: Option<Modes>) -> Reply {
        Reply::Continue { edit: Edit::default(), replace: false, modes }
    }
}

/// A local reply: the HTTP status and a JSON body that is safe to show the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub status: u16,
    /// Machine-readable: `invalid_body`, `body_too_large`, `transformation_failed`,
    /// `unknown_transformation`, `bad_upstream_response`.
    pub error: &'static str,
    pub message: String,
}

/// The message a rule runs on: headers (with an empty body when the message has none and the
/// rule reads it), or the buffered body.
#[derive(Clone, Copy, Debug)]
enum Phase<'a> {
    Headers(Option<&'a [u8]>),
    Body(&'a [u8]),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Direction {
    Request,
    Response,
}

/// The outcome label of the exchange, for metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// No transformation named for the route.
    Skipped,
    /// A transformation ran (whether or not a rule matched).
    Transformed,
    /// Answered locally with this status; the rejection's machine-readable `error`.
    Rejected(u16, &'static str),
}

pub struct Exchange {
    config: Arc<Transformations>,
    transformation: Option<Arc<Transformation>>,
    /// The name Envoy asked for, when it is unknown.
    unknown: Option<String>,
    request: Option<Arc<Request>>,
    response: Option<Arc<Headers>>,
    request_rule: Option<usize>,
    response_rule: Option<usize>,
    /// How the bodies were asked for: a partial one is too large.
    request_body: BodyMode,
    response_body: BodyMode,
    pub outcome: Outcome,
}

impl Exchange {
    /// `name` comes from the stream's `x-gatehouse-transform` metadata (the route's
    /// `grpc_initial_metadata`); no name means there is nothing to do.
    pub fn new(config: Arc<Transformations>, name: Option<&str>) -> Exchange {
        let transformation = name.and_then(|n| config.by_name.get(n).cloned());
        let unknown = name.filter(|_| transformation.is_none()).map(str::to_string);
        Exchange {
            config,
            transformation,
            unknown,
            request: None,
            response: None,
            request_rule: None,
            response_rule: None,
            request_body: BodyMode::None,
            response_body: BodyMode::None,
            outcome: Outcome::Skipped,
        }
    }

    pub fn transformation_name(&self) -> &str {
        match (&self.transformation, &self.unknown) {
            (Some(t), _) => &t.name,
            (None, Some(name)) => name,
            (None, None) => "",
        }
    }

    pub fn on_request_headers(&mut self, headers: Headers, end_of_stream: bool) -> Reply {
        let request = Arc::new(Request::new(headers));
        self.request = Some(request.clone());
        if let Some(name) = &self.unknown {
            tracing::warn!(transformation = %name, "route names a transformation that is not configured");
            return self.reject(Rejection {
                status: 500,
                error: "unknown_transformation",
                message: "the gateway is misconfigured".into(),
            });
        }
        let Some(t) = self.transformation.clone() else {
            return Reply::pass(Some(Modes::default()));
        };
        self.outcome = Outcome::Transformed;
        let response_headers = !t.response.is_empty();
        self.request_rule = t.request.iter().position(|r| r.matcher.matches_request(&request));
        let Some(rule) = self.request_rule.map(|i| &t.request[i]) else {
            return Reply::pass(Some(Modes { response_headers, ..Modes::default() }));
        };
        if rule.reads_body && !end_of_stream {
            return match body_mode(&request.headers, t.max_body_bytes) {
                Ok(mode) => {
                    self.request_body = mode;
                    Reply::pass(Some(Modes { request_body: mode, response_headers, ..Modes::default() }))
                }
                Err(failure) => {
                    let rejection = rejection(&rule.label, Direction::Request, &failure);
                    self.reject(rejection)
                }
            };
        }
        let body = rule.reads_body.then_some(&[][..]);
        let modes = Some(Modes { response_headers, ..Modes::default() });
        self.apply(&t, rule, Direction::Request, Phase::Headers(body), modes)
    }

    /// `end_of_stream` is false for the first buffer-full of a body too large for Envoy to
    /// buffer (BUFFERED_PARTIAL).
    pub fn on_request_body(&mut self, body: &[u8], end_of_stream: bool) -> Reply {
        self.on_body(Direction::Request, body, end_of_stream)
    }

    pub fn on_response_headers(&mut self, headers: Headers, end_of_stream: bool) -> Reply {
        let response = Arc::new(headers);
        self.response = Some(response.clone());
        let (Some(t), Some(request)) = (self.transformation.clone(), self.request.clone()) else {
            return Reply::pass(None);
        };
        self.response_rule = t.response.iter().position(|r| r.matcher.matches_response(&request, &response));
        let Some(rule) = self.response_rule.map(|i| &t.response[i]) else {
            return Reply::pass(None);
        };
        if rule.reads_body && !end_of_stream && self.response_body_allowed() {
            return match body_mode(&response, t.max_body_bytes) {
                Ok(mode) => {
                    self.response_body = mode;
                    Reply::pass(Some(Modes { response_headers: true, response_body: mode, ..Modes::default() }))
                }
                Err(failure) => {
                    let rejection = rejection(&rule.label, Direction::Response, &failure);
                    self.reject(rejection)
                }
            };
        }
        let body = rule.reads_body.then_some(&[][..]);
        self.apply(&t, rule, Direction::Response, Phase::Headers(body), None)
    }

    pub fn on_response_body(&mut self, body: &[u8], end_of_stream: bool) -> Reply {
        self.on_body(Direction::Response, body, end_of_stream)
    }

    /// A buffered body, for the rule chosen on that direction's headers if it reads one.
    fn on_body(&mut self, direction: Direction, body: &[u8], end_of_stream: bool) -> Reply {
        let Some(t) = self.transformation.clone() else { return Reply::pass(None) };
        let (rules, chosen, asked) = match direction {
            Direction::Request => (&t.request, self.request_rule, self.request_body),
            Direction::Response => (&t.response, self.response_rule, self.response_body),
        };
        match chosen.map(|i| &rules[i]) {
            // Envoy cut the body off at its buffer limit, which is above max_body_bytes; the
            // rest is still coming, so it must not be transformed.
            Some(rule) if asked == BodyMode::Partial && !end_of_stream => {
                let rejection = rejection(&rule.label, direction, &Failure::TooLarge(t.max_body_bytes));
                self.reject(rejection)
            }
            Some(rule) if rule.reads_body => self.apply(&t, rule, direction, Phase::Body(body), None),
            _ => Reply::pass(None),
        }
    }

    /// A response to HEAD, a 204 or a 304 has no body, and a rule must not give it one.
    fn response_body_allowed(&self) -> bool {
        let head = self.request.as_ref().is_some_and(|r| r.method() == "HEAD");
        let bodiless_status = self.response.as_ref().is_some_and(|h| matches!(h.get(":status"), Some("204" | "304")));
        !head && !bodiless_status
    }

    fn apply(
        &mut self,
        t: &Transformation,
        rule: &Rule,
        direction: Direction,
        phase: Phase,
        modes: Option<Modes>,
    ) -> Reply {
        let (body, at_headers) = match phase {
            Phase::Headers(body) => (body, true),
            Phase::Body(body) => (Some(body), false),
        };
        let Some(request) = &self.request else {
            // Envoy always sends request headers first; anything else is a protocol error.
            return Reply::pass(None);
        };
        let message = Message {
            request,
            response: if direction == Direction::Response { self.response.as_ref() } else { None },
            body,
            body_allowed: direction == Direction::Request || self.response_body_allowed(),
        };
        match rule.apply(t, &self.config.templates, message) {
            Ok(edit) => {
                // A body written on the headers message needs CONTINUE_AND_REPLACE; in a body
                // message, CONTINUE with a body mutation replaces it.
                let replace = at_headers && edit.body.is_some();
                Reply::Continue { edit, replace, modes }
            }
            Err(failure) => {
                let rejection = rejection(&rule.label, direction, &failure);
                self.reject(rejection)
            }
        }
    }

    fn reject(&mut self, rejection: Rejection) -> Reply {
        self.outcome = Outcome::Rejected(rejection.status, rejection.error);
        Reply::Reject(rejection)
    }
}

/// How Envoy should send the body of a message with `headers` to a rule that reads it, or
/// the failure when its `content-length` already says it is over `limit`.
fn body_mode(headers: &Headers, limit: usize) -> Result<BodyMode, Failure> {
    match headers.get("content-length").map(|v| v.trim().parse::<u64>()) {
        Some(Ok(length)) if length > limit as u64 => Err(Failure::TooLarge(limit)),
        // Within max_body_bytes, so within Envoy's buffer limit (docs/transform.md).
        Some(Ok(_)) => Ok(BodyMode::Buffered),
        // Chunked, or HTTP/2 without a length: the size is known only once Envoy has it.
        // (Envoy's codecs refuse a content-length that is not a number.)
        _ => Ok(BodyMode::Partial),
    }
}

/// Maps a failure to what the client sees; details go to the log only.
fn rejection(rule: &str, direction: Direction, failure: &Failure) -> Rejection {
    match (direction, failure) {
        (Direction::Request, Failure::BadBody(message)) => {
            tracing::debug!(rule, %message, "request body rejected");
            Rejection { status: 400, error: "invalid_body", message: message.clone() }
        }
        (Direction::Request, Failure::TooLarge(limit)) => Rejection {
            status: 413,
            error: "body_too_large",
            message: format!("the request body is larger than {limit} bytes"),
        },
        (Direction::Response, Failure::BadBody(_) | Failure::TooLarge(_)) => {
            tracing::warn!(rule, error = %failure, "upstream response could not be transformed");
            Rejection {
                status: 502,
                error: "bad_upstream_response",
                message: "the upstream response could not be transformed".into(),
            }
        }
        (_, Failure::Template(_) | Failure::Output(_)) => {
            tracing::error!(rule, error = %failure, "transformation failed");
            Rejection {
                status: 500,
                error: "transformation_failed",
                message: "the request could not be transformed".into(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::Path;

    use super::*;

    const CONFIG: &str = r#"
transformations:
  - name: t
    max_body_bytes: 64
    request:
      - match: { path: { prefix: /headers } }
        headers: { set: { x-a: "1" } }
      - match: { path: { prefix: /create } }
        body: [ { template: '{"made": true}' } ]
      - match: { path: { prefix: /read } }
        body: [ { json: [ { set: { path: /read, value: true } } ] } ]
    response:
      - match: { status: { equals: "500" } }
        body: [ { json: [ { set: { path: /wrapped, value: true } } ] } ]
      - match: { status: { regex: "200|204|304" } }
        headers: { set: { x-seen: "1" } }
        body: [ { template: '{"replaced": true}' } ]
  - name: deep
    request:
      - match: { path: { prefix: /nest } }
        body: [ { json: [ { set: { path: /deeper, json: "{{ body | tojson }}" } } ] } ]
      - match: { path: { prefix: /xml } }
        body: [ { xml_to_json: {} } ]
    response:
      - body: [ { xml_to_json: {} } ]
"#;

    fn exchange(name: Option<&str>) -> Exchange {
        let config = crate::config::parse(Path::new("t.yaml"), CONFIG, &BTreeMap::new()).unwrap();
        Exchange::new(Arc::new(config), name)
    }

    fn request(path: &str) -> Headers {
        Headers::from_pairs([(":method", "POST"), (":path", path)])
    }

    fn with_length(mut headers: Headers, length: &str) -> Headers {
        headers.push("content-length".into(), length.into());
        headers
    }

    fn modes(reply: &Reply) -> Option<Modes> {
        match reply {
            Reply::Continue { modes, .. } => *modes,
            Reply::Reject(r) => panic!("{r:?}"),
        }
    }

    #[test]
    fn asks_envoy_only_for_what_the_rule_needs() {
        let none = Modes::default();
        assert_eq!(modes(&exchange(None).on_request_headers(request("/x"), false)), Some(none));
        let with_response = Modes { response_headers: true, ..none };
        assert_eq!(modes(&exchange(Some("t")).on_request_headers(request("/headers"), false)), Some(with_response));
        let reading = Modes { request_body: BodyMode::Buffered, response_headers: true, ..none };
        let read = with_length(request("/read"), "2");
        assert_eq!(modes(&exchange(Some("t")).on_request_headers(read, false)), Some(reading));

        let mut e = exchange(Some("t"));
        e.on_request_headers(request("/x"), true);
        let reply = e.on_response_headers(Headers::from_pairs([(":status", "500"), ("content-length", "8")]), false);
        assert_eq!(modes(&reply), Some(Modes { response_headers: true, response_body: BodyMode::Buffered, ..none }));
        let Reply::Continue { edit, replace, .. } = e.on_response_body(br#"{"e": 1}"#, true) else { panic!() };
        assert!(!replace);
        assert_eq!(edit.body.as_deref(), Some(&br#"{"e":1,"wrapped":true}"#[..]));
        assert_eq!(
            edit.set,
            vec![("content-type".into(), "application/json".into()), ("content-length".into(), "22".into())]
        );
    }

    #[test]
    fn a_body_written_without_reading_replaces_on_the_headers() {
        let Reply::Continue { edit, replace, .. } = exchange(Some("t")).on_request_headers(request("/create"), true)
        else {
            panic!()
        };
        assert!(replace);
        assert_eq!(edit.body.as_deref(), Some(&br#"{"made": true}"#[..]));
        // A body-less request on a rule that reads the body: transformed on the headers.
        let Reply::Continue { edit, replace, .. } = exchange(Some("t")).on_request_headers(request("/read"), true)
        else {
            panic!()
        };
        assert!(replace);
        assert_eq!(edit.body.as_deref(), Some(&br#"{"read":true}"#[..]));
    }

    #[test]
    fn failures_and_unknown_names_reject() {
        let mut e = exchange(Some("t"));
        e.on_request_headers(request("/read"), false);
        let Reply::Reject(r) = e.on_request_body(b"{oops", true) else { panic!() };
        assert_eq!((r.status, r.error), (400, "invalid_body"));
        assert_eq!(e.outcome, Outcome::Rejected(400, "invalid_body"));
        let Reply::Reject(r) = exchange(Some("nope")).on_request_headers(request("/x"), true) else { panic!() };
        assert_eq!((r.status, r.error), (500, "unknown_transformation"));
    }

    /// What a request or response announces → how its body is asked for, or the status
    /// that refuses it; then what a body message with `end_of_stream` gives.
    #[test]
    fn bodies_are_asked_for_within_envoys_buffer() {
        // (content-length, mode asked for / rejection status on the headers)
        let announced: &[(Option<&str>, Result<BodyMode, u16>)] = &[
            (Some("2"), Ok(BodyMode::Buffered)),
            (Some("64"), Ok(BodyMode::Buffered)),
            (Some("65"), Err(413)),
            (Some("99999999999"), Err(413)),
            (None, Ok(BodyMode::Partial)),
        ];
        for (length, expected) in announced {
            let headers = length.map_or_else(|| request("/read"), |l| with_length(request("/read"), l));
            let mut e = exchange(Some("t"));
            let got = match e.on_request_headers(headers, false) {
                Reply::Continue { modes, .. } => Ok(modes.unwrap().request_body),
                Reply::Reject(r) => Err(r.status),
            };
            assert_eq!(got, *expected, "request content-length {length:?}");

            let mut e = exchange(Some("t"));
            e.on_request_headers(request("/x"), true);
            let mut response = Headers::from_pairs([(":status", "500")]);
            if let Some(l) = length {
                response.push("content-length".into(), l.to_string());
            }
            let got = match e.on_response_headers(response, false) {
                Reply::Continue { modes, .. } => Ok(modes.unwrap().response_body),
                Reply::Reject(r) => Err(r.status),
            };
            assert_eq!(got, expected.map_err(|_| 502), "response content-length {length:?}");
        }

        // BUFFERED_PARTIAL: the whole body is transformed; a cut-off one is refused, even
        // when the part Envoy sent is small (Envoy's buffer limit is the one it reached).
        for (end_of_stream, status) in [(true, None), (false, Some(413))] {
            let mut e = exchange(Some("t"));
            e.on_request_headers(request("/read"), false);
            let got = match e.on_request_body(b"{}", end_of_stream) {
                Reply::Continue { .. } => None,
                Reply::Reject(r) => Some((r.status, r.error)),
            };
            assert_eq!(got, status.map(|s| (s, "body_too_large")), "end_of_stream: {end_of_stream}");
        }
        let mut e = exchange(Some("t"));
        e.on_request_headers(request("/x"), true);
        e.on_response_headers(Headers::from_pairs([(":status", "500")]), false);
        let Reply::Reject(r) = e.on_response_body(b"{}", false) else { panic!() };
        assert_eq!((r.status, r.error), (502, "bad_upstream_response"));
    }

    #[test]
    fn responses_without_a_body_get_none() {
        // (method, status, body written)
        for (method, status, written) in
            [("GET", "200", true), ("HEAD", "200", false), ("GET", "204", false), ("GET", "304", false)]
        {
            let mut e = exchange(Some("t"));
            e.on_request_headers(Headers::from_pairs([(":method", method), (":path", "/x")]), true);
            let response = Headers::from_pairs([(":status", status), ("content-length", "10")]);
            let Reply::Continue { edit, replace, .. } = e.on_response_headers(response, true) else { panic!() };
            assert_eq!((edit.body.is_some(), replace), (written, written), "{method} {status}");
            // The other operations still apply; content-length is left as the upstream sent it.
            assert!(edit.set.contains(&("x-seen".into(), "1".into())), "{method} {status}: {edit:?}");
            let length_set = edit.set.iter().any(|(k, _)| k == "content-length");
            assert_eq!(length_set, written, "{method} {status}: {edit:?}");
        }
        // A rule that reads the body is not asked for one either.
        let mut e = exchange(Some("t"));
        e.on_request_headers(Headers::from_pairs([(":method", "HEAD"), (":path", "/x")]), true);
        let reply = e.on_response_headers(Headers::from_pairs([(":status", "500"), ("content-length", "10")]), false);
        let Reply::Continue { edit, modes, .. } = reply else { panic!() };
        assert_eq!((edit.body, modes), (None, None));
    }

    #[test]
    fn deep_bodies_are_refused_not_recursed_into() {
        let json = |levels: usize| format!("{{\"a\": {}{}}}", "[".repeat(levels), "]".repeat(levels));
        let xml = |levels: usize| format!("{}{}", "<e>".repeat(levels), "</e>".repeat(levels));
        // (path, body, accepted). /nest copies the body one level down into itself.
        let cases = [
            ("/nest", json(125), true),
            // serde_json parses it (127 levels), but the copy would be 128 deep.
            ("/nest", json(126), false),
            ("/nest", json(20_000), false),
            ("/xml", xml(127), true),
            ("/xml", xml(128), false),
            // The report: 140 KB of nested elements took ~900 MiB and overflowed the stack.
            ("/xml", xml(20_000), false),
        ];
        for (path, body, accepted) in cases {
            let levels = body.matches('[').count() + body.matches("<e>").count();
            let mut e = exchange(Some("deep"));
            e.on_request_headers(request(path), false);
            match e.on_request_body(body.as_bytes(), true) {
                Reply::Continue { edit, .. } => {
                    assert!(accepted, "{path} {levels} levels was accepted");
                    let sent: serde_json::Value = serde_json::from_slice(&edit.body.unwrap()).unwrap();
                    assert!(crate::nesting::depth(&sent) < crate::nesting::MAX_DEPTH);
                }
                Reply::Reject(r) => {
                    assert!(!accepted, "{path} {levels} levels: {r:?}");
                    assert_eq!((r.status, r.error), (400, "invalid_body"), "{path} {levels} levels");
                    assert!(
                        r.message.contains("128 or more levels deep") || r.message.contains("recursion limit"),
                        "{r:?}"
                    );
                }
            }
        }
        let mut e = exchange(Some("deep"));
        e.on_request_headers(request("/x"), true);
        e.on_response_headers(Headers::from_pairs([(":status", "200")]), false);
        let Reply::Reject(r) = e.on_response_body(xml(20_000).as_bytes(), true) else { panic!() };
        assert_eq!((r.status, r.error), (502, "bad_upstream_response"));
    }
}
