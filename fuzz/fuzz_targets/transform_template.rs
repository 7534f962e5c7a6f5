//! Drives `gatehouse_transform::template`: fixed templates, the demo transformations' and
//! others that use every function and filter, rendered over an arbitrary message. The input
//! is an HTTP request (`POST /orders?page=2`, header lines, a blank line, the body); the body
//! is offered as `body_text` and, when it is JSON, as `body`; an `x-fuzz-status` header turns
//! the scope into the response direction with that `:status`.
//!
//! Asserts: no panic on any headers or body; a failure names its template; `json_escape`
//! always yields the inside of a JSON string, so `{"echo": "{{ body_text | json_escape }}"}`
//! parses and holds `body_text` unchanged.
#![no_main]

use std::collections::BTreeMap;
use std::sync::{Arc, LazyLock};

use gatehouse_transform::message::{Headers, Request};
use gatehouse_transform::template::{Scope, Templates, Text};
use libfuzzer_sys::fuzz_target;
use minijinja::Value;

const SOURCES: &[&str] = &[
    "{{ header('x-user') | default('anonymous') }}",
    "{{ method }} {{ path }}?{{ query_string }}",
    "{{ header('x-http-method-override') | default(method) }}",
    "{{ extraction('order_id') | default('none') }}",
    "{{ query('page') | default('1') }} {{ request_header('x-user') }} {{ request.headers['x-user'] }}",
    r#"{"user": {{ header('x-user') | default('anonymous') | tojson }}, "search": {{ query('q') | default('') | tojson }}, "stage": {{ env('STAGE') | default('dev') | tojson }}}"#,
    r#"{"error": {"code": "upstream_unavailable", "status": {{ status }}, "request_id": {{ request_id | default('') | tojson }}}}"#,
    r#"{"echo": "{{ body_text | json_escape }}"}"#,
    "{{ body.order.id }} {% for item in body['items'] %}{{ item.name }}:{{ item.qty * 2 }},{% endfor %}",
    "{{ body | tojson }} {{ body_text | length }}",
    "{{ body_text | b64encode }} {{ header('x-b64') | b64decode }}",
    "{% for k, v in headers | items %}{{ k }}={{ v }};{% endfor %}",
    "{% if status is defined and status >= 500 %}upstream failed{% else %}{{ status | default(0) }}{% endif %}",
    "{{ now() }} {{ random_id() | length }} {{ extractions | tojson }}",
    "{{ body_text | urlencode }} {{ body_text | upper | replace('A', 'b') | truncate(10) }}",
];

/// The index of the `json_escape` template above.
const ECHO: usize = 7;

static TEMPLATES: LazyLock<(Templates, Vec<Text>)> = LazyLock::new(|| {
    let mut templates = Templates::new(BTreeMap::from([("STAGE".to_string(), "fuzz".to_string())]));
    let texts = SOURCES
        .iter()
        .enumerate()
        .map(|(i, source)| templates.compile(&format!("t{i}"), source).unwrap_or_else(|e| panic!("{source}: {e}")))
        .collect();
    (templates, texts)
});

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let (head, body) = text.split_once("\r\n\r\n").or_else(|| text.split_once("\n\n")).unwrap_or((text, ""));
    let mut lines = head.lines();
    let mut request_line = lines.next().unwrap_or_default().split(' ');
    let method = request_line.next().unwrap_or_default();
    let target = request_line.next().unwrap_or("/");
    let fields: Vec<(&str, &str)> =
        lines.filter_map(|l| l.split_once(':')).map(|(n, v)| (n.trim(), v.trim())).collect();
    let mut pairs = vec![(":method", method), (":path", target), (":authority", "fuzz.invalid")];
    pairs.extend(fields.iter().copied());
    let request = Arc::new(Request::new(Headers::from_pairs(pairs)));
    let response = fields.iter().find(|(n, _)| n.eq_ignore_ascii_case("x-fuzz-status")).map(|(_, status)| {
        let mut pairs = vec![(":status", *status)];
        pairs.extend(fields.iter().copied());
        Arc::new(Headers::from_pairs(pairs))
    });
    let json = serde_json::from_str::<serde_json::Value>(body).ok();
    let order_id = json.as_ref().and_then(|j| j.pointer("/order/id")).cloned().unwrap_or_default();
    let extractions = serde_json::json!({ "order_id": order_id });
    let scope = Scope {
        request,
        response,
        body: json.as_ref().map(Value::from_serialize),
        body_text: Some(Arc::from(body)),
        extractions: Value::from_serialize(&extractions),
    }
    .into_value();

    let (templates, texts) = &*TEMPLATES;
    for (i, text) in texts.iter().enumerate() {
        match templates.render(text, &scope) {
            Ok(out) if i == ECHO => {
                let echoed: serde_json::Value =
                    serde_json::from_str(&out).unwrap_or_else(|e| panic!("json_escape broke JSON: {e}: {out}"));
                assert_eq!(echoed["echo"].as_str(), Some(body));
            }
            Ok(_) => {}
            Err(e) => assert_eq!(&*e.template, format!("t{i}"), "{e}"),
        }
    }
});
