//! One HTTP request/response exchange: the state kept across the messages of one ext_proc
//! stream, and the decision for each message. Transport-free: `grpc.rs` translates.
//!
//! The service asks Envoy only for what the selected rule needs (`mode_override` on the
//! headers replies): the request body only when the request rule reads it, response headers
//! only when the transformation has response rules, the response body only when the matching
//! response rule reads it. A rule that writes a body without reading one answers on the
//! headers with CONTINUE_AND_REPLACE, which also turns a body-less GET into a POST with a body.

use std::sync::Arc;

use crate::message::{Edit, Headers, Request};
use crate::transformation::{Failure, Message, Rule, Transformation, Transformations};

/// Which phases Envoy should send for the rest of the exchange.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Modes {
    pub request_body: bool,
    pub response_headers: bool,
    pub response_body: bool,
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
    Rejected(u16),
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
            return Reply::pass(Some(Modes { request_body: true, response_headers, response_body: false }));
        }
        let body = rule.reads_body.then_some(&[][..]);
        let modes = Some(Modes { response_headers, ..Modes::default() });
        self.apply(&t, rule, Direction::Request, Phase::Headers(body), modes)
    }

    pub fn on_request_body(&mut self, body: &[u8]) -> Reply {
        self.on_body(Direction::Request, body)
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
        if rule.reads_body && !end_of_stream {
            return Reply::pass(Some(Modes { response_headers: true, response_body: true, ..Modes::default() }));
        }
        let body = rule.reads_body.then_some(&[][..]);
        self.apply(&t, rule, Direction::Response, Phase::Headers(body), None)
    }

    pub fn on_response_body(&mut self, body: &[u8]) -> Reply {
        self.on_body(Direction::Response, body)
    }

    /// A buffered body, for the rule chosen on that direction's headers if it reads one.
    fn on_body(&mut self, direction: Direction, body: &[u8]) -> Reply {
        let Some(t) = self.transformation.clone() else { return Reply::pass(None) };
        let (rules, chosen) = match direction {
            Direction::Request => (&t.request, self.request_rule),
            Direction::Response => (&t.response, self.response_rule),
        };
        match chosen.map(|i| &rules[i]) {
            Some(rule) if rule.reads_body => self.apply(&t, rule, direction, Phase::Body(body), None),
            _ => Reply::pass(None),
        }
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
        self.outcome = Outcome::Rejected(rejection.status);
        Reply::Reject(rejection)
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
"#;

    fn exchange(name: Option<&str>) -> Exchange {
        let config = crate::config::parse(Path::new("t.yaml"), CONFIG, &BTreeMap::new()).unwrap();
        Exchange::new(Arc::new(config), name)
    }

    fn request(path: &str) -> Headers {
        Headers::from_pairs([(":method", "POST"), (":path", path)])
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
        let reading = Modes { request_body: true, response_headers: true, ..none };
        assert_eq!(modes(&exchange(Some("t")).on_request_headers(request("/read"), false)), Some(reading));

        let mut e = exchange(Some("t"));
        e.on_request_headers(request("/x"), true);
        let reply = e.on_response_headers(Headers::from_pairs([(":status", "500")]), false);
        assert_eq!(modes(&reply), Some(Modes { response_headers: true, response_body: true, ..none }));
        let Reply::Continue { edit, replace, .. } = e.on_response_body(br#"{"e": 1}"#) else { panic!() };
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
        let Reply::Reject(r) = e.on_request_body(b"{oops") else { panic!() };
        assert_eq!((r.status, r.error), (400, "invalid_body"));
        assert_eq!(e.outcome, Outcome::Rejected(400));
        let Reply::Reject(r) = exchange(Some("nope")).on_request_headers(request("/x"), true) else { panic!() };
        assert_eq!((r.status, r.error), (500, "unknown_transformation"));
    }
}
