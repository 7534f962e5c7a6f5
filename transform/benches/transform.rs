//! Hot functions of the request path: template rendering, JSON patching of a 4 KiB body, and
//! whole exchanges as the gRPC layer drives them. `cargo bench -p gatehouse-transform`

use std::collections::BTreeMap;
use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use gatehouse_transform::config;
use gatehouse_transform::exchange::Exchange;
use gatehouse_transform::message::{Headers, Request};
use gatehouse_transform::template::Scope;
use gatehouse_transform::transformation::{Message, Transformations};

const CONFIG: &str = r#"
transformations:
  - name: headers
    request:
      - headers:
          set:
            x-static: gatehouse
            x-user-id: "{{ header('x-user') | default('anonymous') }}"
  - name: patch
    request:
      - body:
          - json:
              - set: { path: /meta/user, value: "{{ header('x-user') | default('anonymous') }}" }
              - remove: /drop
              - rename: { from: /old, to: /new }
  - name: envelope
    request:
      - body:
          - template: '{"user": {{ header("x-user") | tojson }}, "path": {{ path | tojson }}, "items": {{ body.items | length }}}'
"#;

fn transformations() -> Arc<Transformations> {
    Arc::new(config::parse(Path::new("bench.yaml"), CONFIG, &BTreeMap::new()).expect("valid bench config"))
}

fn request_headers() -> Headers {
    Headers::from_pairs([
        (":method", "POST"),
        (":path", "/orders/42?page=2"),
        (":authority", "api.example.com"),
        ("content-type", "application/json"),
        ("x-user", "ann"),
        ("x-request-id", "4b9f2f3e-1c2d-4e5f-8a9b-0c1d2e3f4a5b"),
    ])
}

/// A JSON document of about 4 KiB.
fn body_4k() -> Vec<u8> {
    let items: Vec<serde_json::Value> = (0..64)
        .map(|i| serde_json::json!({"sku": format!("sku-{i:04}"), "qty": i, "note": "lorem ipsum dolor sit amet"}))
        .collect();
    let doc = serde_json::json!({"items": items, "drop": "x", "old": {"a": 1}});
    let bytes = serde_json::to_vec(&doc).unwrap();
    assert!((3500..5000).contains(&bytes.len()), "{}", bytes.len());
    bytes
}

fn templates(c: &mut Criterion) {
    let config = transformations();
    let request = Arc::new(Request::new(request_headers()));
    let rule = &config.by_name["headers"].request[0];
    let text = &rule.headers.set.iter().find(|(k, _)| k == "x-user-id").unwrap().1;
    c.bench_function("render header template", |b| {
        b.iter(|| {
            let scope = Scope {
                request: request.clone(),
                response: None,
                body: None,
                body_text: None,
                extractions: minijinja::Value::from(()),
            }
            .into_value();
            black_box(config.templates.render(text, &scope).unwrap().len())
        })
    });
    let envelope = &config.by_name["envelope"];
    let body = body_4k();
    c.bench_function("body template over a 4 KiB JSON body", |b| {
        b.iter(|| {
            let message = Message { request: &request, response: None, body: Some(&body), body_allowed: true };
            black_box(envelope.request[0].apply(envelope, &config.templates, message).unwrap())
        })
    });
}

fn json_patch(c: &mut Criterion) {
    let config = transformations();
    let request = Arc::new(Request::new(request_headers()));
    let patch = &config.by_name["patch"];
    let body = body_4k();
    c.bench_function("JSON patch of a 4 KiB body", |b| {
        b.iter(|| {
            let message = Message { request: &request, response: None, body: Some(&body), body_allowed: true };
            black_box(patch.request[0].apply(patch, &config.templates, message).unwrap())
        })
    });
}

fn exchanges(c: &mut Criterion) {
    let config = transformations();
    c.bench_function("exchange: header-only transformation", |b| {
        b.iter(|| {
            let mut exchange = Exchange::new(config.clone(), Some("headers"));
            black_box(exchange.on_request_headers(request_headers(), true))
        })
    });
    let body = body_4k();
    c.bench_function("exchange: headers + 4 KiB JSON patch", |b| {
        b.iter(|| {
            let mut exchange = Exchange::new(config.clone(), Some("patch"));
            black_box(exchange.on_request_headers(request_headers(), false));
            black_box(exchange.on_request_body(&body, true))
        })
    });
}

criterion_group!(benches, templates, json_patch, exchanges);
criterion_main!(benches);
