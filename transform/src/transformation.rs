//! A transformation and its rules, and how a rule turns one message into an [`Edit`].
//!
//! A transformation has request rules and response rules; in each direction the first rule
//! whose matcher matches applies. Applying a rule: read the body if the rule needs it
//! (size limit, gzip, JSON), run the extractors, then compute the new body, headers,
//! path/method/query (requests) or status (responses), and dynamic metadata. Every template
//! of the rule sees the message as it arrived, not as other operations of the same rule
//! changed it.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use gatehouse_common::matcher::StringMatcher;
use minijinja::Value as TemplateValue;
use serde_json::{Map, Value};

use crate::extract::{Extractor, Input};
use crate::json_patch::{self, Pointer};
use crate::message::{Edit, Headers, Request};
use crate::nesting;
use crate::template::{RenderError, Scope, Templates, Text};
use crate::xml::{self, XmlMapping};

/// The dynamic metadata namespace transformations write to.
pub const METADATA_NAMESPACE: &str = "gatehouse.transform";

/// One config generation: every transformation and the templates they use.
#[derive(Debug)]
pub struct Transformations {
    pub by_name: HashMap<String, Arc<Transformation>>,
    pub templates: Templates,
    /// The config file, for the watcher.
    pub files: Vec<PathBuf>,
}

#[derive(Debug)]
pub struct Transformation {
    pub name: String,
    pub max_body_bytes: usize,
    pub gzip: Gzip,
    pub request: Vec<Rule>,
    pub response: Vec<Rule>,
}

/// What to do with a gzip-encoded body a rule needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gzip {
    /// Leave the body untouched (its body operations are skipped) and log it.
    Passthrough,
    /// Decompress, transform, compress again.
    Decode,
}

#[derive(Debug)]
pub struct Rule {
    /// `name/request[0]`, for logs and metrics.
    pub label: String,
    pub matcher: Matcher,
    pub extract: Vec<Extractor>,
    pub headers: HeaderOps,
    pub path: Option<Text>,
    pub method: Option<Text>,
    pub query: QueryOps,
    pub status: Option<Text>,
    pub body: Vec<BodyStep>,
    pub metadata: Vec<(String, Text)>,
    /// The rule reads the message body, so Envoy must buffer it and send it.
    pub reads_body: bool,
    /// The body must be JSON before anything runs (templates read `body`, JSON extractors).
    pub body_json: bool,
}

#[derive(Debug, Default)]
pub struct Matcher {
    pub path: Option<StringMatcher>,
    pub method: Option<StringMatcher>,
    pub headers: Vec<(String, StringMatcher)>,
    pub query: Vec<(String, StringMatcher)>,
    pub status: Option<StringMatcher>,
}

#[derive(Debug, Default)]
pub struct HeaderOps {
    pub set: Vec<(String, Text)>,
    pub append: Vec<(String, Text)>,
    pub remove: Vec<String>,
    pub rename: Vec<(String, String)>,
}

#[derive(Debug, Default)]
pub struct QueryOps {
    pub set: Vec<(String, Text)>,
    pub remove: Vec<String>,
}

/// One step of a body pipeline; each works on the previous step's output.
#[derive(Debug)]
pub enum BodyStep {
    /// A whole-body template (it reads the original body as `body` / `body_text`).
    Template(Text),
    Json(Vec<JsonOp>),
    /// The request as an AWS API Gateway proxy event (requests only).
    Envelope,
    XmlToJson(XmlMapping),
    JsonToXml {
        mapping: XmlMapping,
        content_type: String,
    },
}

#[derive(Debug)]
pub enum JsonOp {
    Set { path: Pointer, value: JsonValue },
    Merge { path: Pointer, value: JsonValue },
    Remove(Pointer),
    Rename { from: Pointer, to: Pointer },
}

/// A JSON value from the config whose strings may be templates.
#[derive(Debug)]
pub enum JsonValue {
    Literal(Value),
    /// Rendered, then used as a string.
    Text(Text),
    /// Rendered, then parsed as JSON (`{ json: "{{ body.items | length }}" }`).
    Json(Text),
    Array(Vec<JsonValue>),
    Object(Vec<(String, JsonValue)>),
}

impl JsonValue {
    /// Whether any template in the value satisfies `test`.
    pub fn any_text(&self, test: &dyn Fn(&Text) -> bool) -> bool {
        match self {
            JsonValue::Literal(_) => false,
            JsonValue::Text(t) | JsonValue::Json(t) => test(t),
            JsonValue::Array(items) => items.iter().any(|v| v.any_text(test)),
            JsonValue::Object(entries) => entries.iter().any(|(_, v)| v.any_text(test)),
        }
    }

    fn render(&self, templates: &Templates, scope: &TemplateValue) -> Result<Value, Failure> {
        Ok(match self {
            JsonValue::Literal(v) => v.clone(),
            JsonValue::Text(t) => Value::String(templates.render(t, scope)?.into_owned()),
            JsonValue::Json(t) => {
                let text = templates.render(t, scope)?;
                serde_json::from_str(&text).map_err(|e| {
                    let name = match t {
                        Text::Template(t) => t.name.to_string(),
                        Text::Static(_) => "json".into(),
                    };
                    Failure::Output(format!("{name}: the rendered value is not JSON: {e}"))
                })?
            }
            JsonValue::Array(items) => {
                Value::Array(items.iter().map(|v| v.render(templates, scope)).collect::<Result<_, _>>()?)
            }
            JsonValue::Object(entries) => Value::Object(
                entries
                    .iter()
                    .map(|(k, v)| Ok((k.clone(), v.render(templates, scope)?)))
                    .collect::<Result<Map<_, _>, Failure>>()?,
            ),
        })
    }
}

/// Why a message could not be transformed. Each becomes an ImmediateResponse (grpc.rs).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Failure {
    /// The body is not what the rule needs (not JSON, not XML).
    #[error("{0}")]
    BadBody(String),
    /// The body is larger than `max_body_bytes` (after decompression, if decoded).
    #[error("body larger than {0} bytes")]
    TooLarge(usize),
    #[error(transparent)]
    Template(#[from] RenderError),
    /// A template produced something that cannot be used (a header value with a newline, a
    /// status that is not a number, a path without `/`).
    #[error("{0}")]
    Output(String),
}

/// The message a rule applies to.
#[derive(Clone, Copy, Debug)]
pub struct Message<'a> {
    pub request: &'a Arc<Request>,
    /// The response headers, in the response direction.
    pub response: Option<&'a Arc<Headers>>,
    /// The buffered body; `None` when the rule runs on headers alone.
    pub body: Option<&'a [u8]>,
    /// False for a message that cannot carry a body: the response to a HEAD request, a 204 or
    /// a 304. The rule's body steps are skipped there, so it neither invents a body nor
    /// replaces the `content-length` the upstream sent (for HEAD, the length a GET would get).
    pub body_allowed: bool,
}

impl Message<'_> {
    fn headers(&self) -> &Arc<Headers> {
        self.response.unwrap_or(&self.request.headers)
    }
}

impl Matcher {
    pub fn matches_request(&self, request: &Request) -> bool {
        self.path.as_ref().is_none_or(|m| m.matches(Some(request.path_only())))
            && self.method.as_ref().is_none_or(|m| m.matches(Some(request.method())))
            && self.headers.iter().all(|(name, m)| m.matches(request.headers.get(name)))
            && (self.query.is_empty() || {
                let query = request.query_map();
                self.query.iter().all(|(name, m)| m.matches(query.get(name).map(String::as_str)))
            })
    }

    pub fn matches_response(&self, request: &Request, response: &Headers) -> bool {
        self.status.as_ref().is_none_or(|m| m.matches(response.get(":status")))
            && self.headers.iter().all(|(name, m)| m.matches(response.get(name)))
            && self.path.as_ref().is_none_or(|m| m.matches(Some(request.path_only())))
            && self.method.as_ref().is_none_or(|m| m.matches(Some(request.method())))
    }
}

impl Rule {
    /// Computes the rule's edit of `message`.
    pub fn apply(&self, t: &Transformation, templates: &Templates, message: Message) -> Result<Edit, Failure> {
        let headers = message.headers();
        let mut body = message.body;
        let mut decoded: Option<Vec<u8>> = None;
        if let Some(raw) = body {
            if raw.len() > t.max_body_bytes {
                return Err(Failure::TooLarge(t.max_body_bytes));
            }
            if headers.is_gzip() && !raw.is_empty() {
                match t.gzip {
                    Gzip::Decode => decoded = Some(gunzip(raw, t.max_body_bytes)?),
                    Gzip::Passthrough => {
                        tracing::info!(rule = %self.label, "body is gzip-encoded; left untouched (gzip: passthrough)");
                        body = None;
                    }
                }
            }
        }
        let raw = decoded.as_deref().or(body);
        let body_text: Option<Arc<str>> = raw.filter(|_| self.reads_body).map(|b| String::from_utf8_lossy(b).into());
        let body_json: Option<Value> = match raw {
            Some(b) if self.body_json => Some(parse_json(b)?),
            _ => None,
        };

        let input =
            Input { request: message.request, headers, body_text: body_text.as_deref(), body_json: body_json.as_ref() };
        let extractions: Map<String, Value> =
            self.extract.iter().filter_map(|e| Some((e.name.clone(), e.extract(&input)?))).collect();
        let scope = Scope {
            request: message.request.clone(),
            response: message.response.cloned(),
            body: body_json.as_ref().map(TemplateValue::from_serialize),
            body_text: body_text.clone(),
            extractions: TemplateValue::from_serialize(&extractions),
        }
        .into_value();

        let mut edit = Edit::default();
        // The body first: its conversion sets a content-type that header operations may
        // then override.
        if !self.body.is_empty() && message.body_allowed && (raw.is_some() || !self.reads_body) {
            let (new_body, content_type) = self.run_body(templates, &scope, message.request, raw, body_json)?;
            if let Some(content_type) = content_type {
                edit.set_header("content-type", content_type);
            }
            let new_body = if headers.is_gzip() {
                if decoded.is_some() {
                    gzip(&new_body)?
                } else {
                    // Replaced without being read: the new body is not compressed.
                    edit.remove.push("content-encoding".into());
                    new_body
                }
            } else {
                new_body
            };
            edit.replace_body(new_body);
        }
        self.apply_headers(templates, &scope, headers, &mut edit)?;
        if message.response.is_none() {
            self.apply_request_line(templates, &scope, message.request, &mut edit)?;
            edit.route_changed = !edit.set.is_empty() || !edit.remove.is_empty() || !edit.append.is_empty();
        } else if let Some(status) = &self.status {
            let status = templates.render(status, &scope)?;
            let code: u16 =
                status.trim().parse().ok().filter(|c| (200..=599).contains(c)).ok_or_else(|| {
                    Failure::Output(format!("{}: status {status:?} is not an HTTP status", self.label))
                })?;
            edit.set_header(":status", code.to_string());
        }
        for (key, text) in &self.metadata {
            edit.metadata.insert(key.clone(), Value::String(templates.render(text, &scope)?.into_owned()));
        }
        Ok(edit)
    }

    fn run_body(
        &self,
        templates: &Templates,
        scope: &TemplateValue,
        request: &Request,
        raw: Option<&[u8]>,
        parsed: Option<Value>,
    ) -> Result<(Vec<u8>, Option<String>), Failure> {
        enum Working {
            Bytes(Vec<u8>),
            Json(Value),
        }
        fn json(w: Working) -> Result<Value, Failure> {
            match w {
                Working::Json(v) => Ok(v),
                Working::Bytes(b) => parse_json(&b),
            }
        }
        let mut working = match parsed {
            Some(v) => Working::Json(v),
            None => Working::Bytes(raw.unwrap_or_default().to_vec()),
        };
        let mut content_type = None;
        for step in &self.body {
            working = match step {
                BodyStep::Template(text) => Working::Bytes(templates.render(text, scope)?.into_owned().into_bytes()),
                BodyStep::Json(ops) => {
                    let mut doc = json(working)?;
                    for op in ops {
                        apply_json_op(&mut doc, op, templates, scope).map_err(|e| match e {
                            Failure::Output(m) => Failure::Output(format!("{}: {m}", self.label)),
                            other => other,
                        })?;
                    }
                    // Operations can move a deep part of the body further down.
                    nesting::check(&doc).map_err(|e| Failure::BadBody(format!("the JSON body would be {e}")))?;
                    content_type = Some("application/json".to_string());
                    Working::Json(doc)
                }
                BodyStep::Envelope => {
                    content_type = Some("application/json".to_string());
                    Working::Json(envelope(request, raw.unwrap_or_default()))
                }
                BodyStep::XmlToJson(mapping) => {
                    let bytes = match working {
                        Working::Bytes(b) => b,
                        Working::Json(v) => v.to_string().into_bytes(),
                    };
                    content_type = Some("application/json".to_string());
                    Working::Json(xml::xml_to_json(&bytes, mapping).map_err(Failure::BadBody)?)
                }
                BodyStep::JsonToXml { mapping, content_type: ct } => {
                    let doc = json(working)?;
                    content_type = Some(ct.clone());
                    Working::Bytes(xml::json_to_xml(&doc, mapping).map_err(Failure::BadBody)?)
                }
            };
        }
        let bytes = match working {
            Working::Bytes(b) => b,
            Working::Json(v) => serde_json::to_vec(&v).map_err(|e| Failure::Output(e.to_string()))?,
        };
        Ok((bytes, content_type))
    }

    fn apply_headers(
        &self,
        templates: &Templates,
        scope: &TemplateValue,
        headers: &Headers,
        edit: &mut Edit,
    ) -> Result<(), Failure> {
        let ops = &self.headers;
        for (from, to) in &ops.rename {
            if let Some(value) = headers.get(from) {
                edit.remove.push(from.clone());
                edit.set_header(to, value.to_string());
            }
        }
        edit.remove.extend(ops.remove.iter().cloned());
        for (name, text) in &ops.set {
            let value = header_value(&self.label, name, templates.render(text, scope)?)?;
            edit.set_header(name, value);
        }
        for (name, text) in &ops.append {
            let value = header_value(&self.label, name, templates.render(text, scope)?)?;
            edit.append.push((name.clone(), value));
        }
        Ok(())
    }

    fn apply_request_line(
        &self,
        templates: &Templates,
        scope: &TemplateValue,
        request: &Request,
        edit: &mut Edit,
    ) -> Result<(), Failure> {
        if let Some(method) = &self.method {
            let method = templates.render(method, scope)?.trim().to_ascii_uppercase();
            if method.is_empty() || !method.bytes().all(|b| b.is_ascii_alphabetic()) {
                return Err(Failure::Output(format!("{}: method {method:?} is not an HTTP method", self.label)));
            }
            edit.set_header(":method", method);
        }
        if self.path.is_none() && self.query.set.is_empty() && self.query.remove.is_empty() {
            return Ok(());
        }
        let rendered = match &self.path {
            Some(p) => templates.render(p, scope)?.trim().to_string(),
            None => request.full_path().to_string(),
        };
        if !rendered.starts_with('/') || rendered.contains(['\r', '\n', ' ']) {
            return Err(Failure::Output(format!(
                "{}: path {rendered:?} must start with '/' and have no spaces",
                self.label
            )));
        }
        let (path, query) = match rendered.split_once('?') {
            Some((p, q)) => (p.to_string(), q.to_string()),
            // A new path without `?` keeps the original query string.
            None => (rendered, request.query_string().to_string()),
        };
        let query = if self.query.set.is_empty() && self.query.remove.is_empty() {
            query
        } else {
            let mut pairs: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .filter(|(k, _)| !self.query.remove.contains(k))
                .collect();
            for (name, text) in &self.query.set {
                let value = templates.render(text, scope)?.into_owned();
                pairs.retain(|(k, _)| k != name);
                pairs.push((name.clone(), value));
            }
            form_urlencoded::Serializer::new(String::new()).extend_pairs(pairs).finish()
        };
        let full = if query.is_empty() { path } else { format!("{path}?{query}") };
        if full != request.full_path() {
            edit.set_header(":path", full);
        }
        Ok(())
    }
}

fn apply_json_op(doc: &mut Value, op: &JsonOp, templates: &Templates, scope: &TemplateValue) -> Result<(), Failure> {
    match op {
        JsonOp::Set { path, value } => {
            let value = value.render(templates, scope)?;
            json_patch::set(doc, path, value).map_err(Failure::Output)
        }
        JsonOp::Merge { path, value } => {
            let value = value.render(templates, scope)?;
            json_patch::merge(doc, path, &value).map_err(Failure::Output)
        }
        JsonOp::Remove(path) => {
            json_patch::remove(doc, path);
            Ok(())
        }
        JsonOp::Rename { from, to } => json_patch::rename(doc, from, to).map_err(Failure::Output),
    }
}

/// An empty body is JSON `null`, so a body can be built up on a request that had none.
fn parse_json(bytes: &[u8]) -> Result<Value, Failure> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Null);
    }
    serde_json::from_slice(bytes).map_err(|e| Failure::BadBody(format!("body is not valid JSON: {e}")))
}

fn header_value(label: &str, name: &str, value: std::borrow::Cow<str>) -> Result<String, Failure> {
    if value.contains(['\r', '\n', '\0']) {
        return Err(Failure::Output(format!("{label}: the value of header {name} contains a line break")));
    }
    Ok(value.into_owned())
}

/// The request as an AWS API Gateway (REST, proxy integration) event.
pub fn envelope(request: &Request, body: &[u8]) -> Value {
    let mut headers = Map::new();
    let mut multi_headers: Map<String, Value> = Map::new();
    for (name, value) in request.headers.iter() {
        let name = if name == ":authority" { "host" } else { name.as_str() };
        if name.starts_with(':') {
            continue;
        }
        headers.insert(name.to_string(), Value::String(value.clone()));
        match multi_headers.entry(name.to_string()).or_insert_with(|| Value::Array(Vec::new())) {
            Value::Array(values) => values.push(Value::String(value.clone())),
            _ => unreachable!("inserted as an array"),
        }
    }
    let mut query = Map::new();
    let mut multi_query: Map<String, Value> = Map::new();
    for (k, v) in form_urlencoded::parse(request.query_string().as_bytes()) {
        query.insert(k.to_string(), Value::String(v.to_string()));
        match multi_query.entry(k.into_owned()).or_insert_with(|| Value::Array(Vec::new())) {
            Value::Array(values) => values.push(Value::String(v.into_owned())),
            _ => unreachable!("inserted as an array"),
        }
    }
    let or_null = |m: Map<String, Value>| if m.is_empty() { Value::Null } else { Value::Object(m) };
    let (body, base64) = match std::str::from_utf8(body) {
        _ if body.is_empty() => (Value::Null, false),
        Ok(text) => (Value::String(text.to_string()), false),
        Err(_) => (Value::String(BASE64.encode(body)), true),
    };
    serde_json::json!({
        "resource": request.path_only(),
        "path": request.path_only(),
        "httpMethod": request.method(),
        "headers": headers,
        "multiValueHeaders": multi_headers,
        "queryStringParameters": or_null(query),
        "multiValueQueryStringParameters": or_null(multi_query),
        "pathParameters": null,
        "stageVariables": null,
        "requestContext": {
            "requestId": request.headers.get("x-request-id"),
            "httpMethod": request.method(),
            "path": request.path_only(),
        },
        "body": body,
        "isBase64Encoded": base64,
    })
}

fn gunzip(bytes: &[u8], limit: usize) -> Result<Vec<u8>, Failure> {
    use std::io::Read;
    let mut out = Vec::new();
    // One byte past the limit tells "too large" from "exactly the limit".
    flate2::read::GzDecoder::new(bytes)
        .take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| Failure::BadBody(format!("body is not valid gzip: {e}")))?;
    if out.len() > limit {
        return Err(Failure::TooLarge(limit));
    }
    Ok(out)
}

fn gzip(bytes: &[u8]) -> Result<Vec<u8>, Failure> {
    use std::io::Write;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(bytes).and_then(|_| encoder.finish()).map_err(|e| Failure::Output(format!("gzip: {e}")))
}
