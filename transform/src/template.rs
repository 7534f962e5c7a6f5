//! Templates: minijinja (Jinja2 syntax), compiled once when the config loads.
//!
//! Every template of one config generation lives in one [`Templates`] environment, under a
//! name that says where it came from (`orders/request[0]/headers.set.x-user`), so a failure
//! at request time can be logged with that name (and never shown to the client).
//!
//! Undefined values are errors ([`UndefinedBehavior::SemiStrict`]): `{{ header('x-id') }}`
//! fails when the header is missing, and `{{ header('x-id') | default('') }}` is how a
//! template says "empty is fine". Names a template reads that the engine does not provide
//! are reported at load time.
//!
//! A repeated header or query parameter gives its first value everywhere (`header()`,
//! `request_header()`, `headers`, `query()`, `request.query`); `query_string` has them all.
//!
//! What templates see is documented in docs/transform.md: variables `method`, `path`,
//! `query_string`, `headers`, `request`, `status`, `body`, `body_text`, `extractions` and
//! `request_id`; functions `header()`, `request_header()`, `query()`, `extraction()`, `env()`,
//! `now()`, `random_id()`; filters `b64encode`, `b64decode`, `json_escape` and `tojson`.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use minijinja::value::{Enumerator, Object, ObjectRepr, Value};
use minijinja::{Environment, Error, ErrorKind, State, UndefinedBehavior};

use crate::message::{Headers, Request};

/// Top-level variables a template may read.
const VARIABLES: &[&str] = &[
    "method",
    "path",
    "query_string",
    "headers",
    "request",
    "status",
    "body",
    "body_text",
    "extractions",
    "request_id",
];

/// Functions and minijinja globals, which `undeclared_variables` also reports.
const GLOBALS: &[&str] = &[
    "header",
    "request_header",
    "query",
    "extraction",
    "env",
    "now",
    "random_id",
    "range",
    "dict",
    "namespace",
    "debug",
];

/// A string in the config that may be a template: plain text costs nothing to "render".
#[derive(Clone, Debug)]
pub enum Text {
    Static(String),
    Template(Template),
}

#[derive(Clone, Debug)]
pub struct Template {
    /// Where it was defined; the name it is registered under.
    pub name: Arc<str>,
    /// It reads `body` or `body_text`, so the message body must be buffered first.
    pub reads_body: bool,
    /// It reads `body`, the body parsed as JSON.
    pub reads_json: bool,
}

impl Text {
    pub fn reads_body(&self) -> bool {
        matches!(self, Text::Template(t) if t.reads_body)
    }

    pub fn reads_json(&self) -> bool {
        matches!(self, Text::Template(t) if t.reads_json)
    }
}

/// A template that failed while rendering. `template` goes to the log, never to the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("template {template}: {message}")]
pub struct RenderError {
    pub template: Arc<str>,
    pub message: String,
}

/// The template environment of one config generation.
pub struct Templates {
    env: Environment<'static>,
}

impl std::fmt::Debug for Templates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Templates").finish_non_exhaustive()
    }
}

impl Templates {
    /// `env_vars` is what `env()` can read: a snapshot taken when the config is built.
    pub fn new(env_vars: BTreeMap<String, String>) -> Templates {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::SemiStrict);
        env.set_keep_trailing_newline(true);
        // Bodies are JSON or plain text, never HTML: no auto-escaping.
        env.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
        env.add_function("header", |state: &State, name: &str| lookup(state, "headers", &name.to_ascii_lowercase()));
        env.add_function("request_header", |state: &State, name: &str| {
            let request = state.lookup("request").unwrap_or_default();
            request.get_attr("headers").ok().map(|h| attr(&h, &name.to_ascii_lowercase())).unwrap_or_default()
        });
        env.add_function("query", |state: &State, name: &str| {
            let request = state.lookup("request").unwrap_or_default();
            request.get_attr("query").ok().map(|q| attr(&q, name)).unwrap_or_default()
        });
        env.add_function("extraction", |state: &State, name: &str| lookup(state, "extractions", name));
        let env_vars = Arc::new(env_vars);
        env.add_function("env", move |name: &str| {
            env_vars.get(name).map(|v| Value::from(v.as_str())).unwrap_or(Value::UNDEFINED)
        });
        env.add_function("now", now);
        env.add_function("random_id", random_id);
        env.add_filter("b64encode", |value: &str| BASE64.encode(value));
        env.add_filter("b64decode", |value: &str| -> Result<String, Error> {
            let bytes = BASE64
                .decode(value.trim())
                .map_err(|e| Error::new(ErrorKind::InvalidOperation, format!("b64decode: {e}")))?;
            String::from_utf8(bytes)
                .map_err(|_| Error::new(ErrorKind::InvalidOperation, "b64decode: the result is not UTF-8"))
        });
        env.add_filter("json_escape", |value: &str| {
            let quoted = serde_json::Value::from(value).to_string();
            quoted[1..quoted.len() - 1].to_string()
        });
        Templates { env }
    }

    /// Compiles `source` under `name` unless it is plain text. The error says what is wrong
    /// in the template, for the config error that names the file and line.
    pub fn compile(&mut self, name: &str, source: &str) -> Result<Text, String> {
        if !source.contains("{{") && !source.contains("{%") && !source.contains("{#") {
            return Ok(Text::Static(source.to_string()));
        }
        self.env.add_template_owned(name.to_string(), source.to_string()).map_err(describe)?;
        let template = self.env.get_template(name).map_err(describe)?;
        let used = template.undeclared_variables(false);
        let mut unknown: Vec<&String> =
            used.iter().filter(|v| !VARIABLES.contains(&v.as_str()) && !GLOBALS.contains(&v.as_str())).collect();
        if !unknown.is_empty() {
            unknown.sort();
            return Err(format!(
                "template reads unknown variable(s) {}; available: {}",
                unknown.iter().map(|v| format!("`{v}`")).collect::<Vec<_>>().join(", "),
                VARIABLES.join(", ")
            ));
        }
        let reads_json = used.contains("body");
        let reads_body = reads_json || used.contains("body_text");
        Ok(Text::Template(Template { name: Arc::from(name), reads_body, reads_json }))
    }

    /// Renders `text` in `scope`.
    pub fn render<'a>(&self, text: &'a Text, scope: &Value) -> Result<Cow<'a, str>, RenderError> {
        match text {
            Text::Static(s) => Ok(Cow::Borrowed(s)),
            Text::Template(t) => {
                let failed = |e: Error| RenderError { template: t.name.clone(), message: describe(e) };
                let template = self.env.get_template(&t.name).map_err(failed)?;
                template.render(scope).map(Cow::Owned).map_err(failed)
            }
        }
    }
}

/// minijinja's message with its detail, on one line.
fn describe(e: Error) -> String {
    let mut message = e.to_string();
    if let Some(detail) = e.detail()
        && !message.contains(detail)
    {
        message = format!("{message}: {detail}");
    }
    message
}

fn lookup(state: &State, variable: &str, key: &str) -> Value {
    state.lookup(variable).map(|v| attr(&v, key)).unwrap_or_default()
}

fn attr(value: &Value, key: &str) -> Value {
    value.get_attr(key).unwrap_or_default()
}

fn now() -> Result<String, Error> {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .map_err(|e| Error::new(ErrorKind::InvalidOperation, e.to_string()))
}

/// 128 random bits as 32 hex digits.
fn random_id() -> Result<String, Error> {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| Error::new(ErrorKind::InvalidOperation, "no randomness available"))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// What one message's templates see. Cheap to build: it shares the request and response
/// through `Arc`s, and the body value is converted once per message.
#[derive(Debug)]
pub struct Scope {
    pub request: Arc<Request>,
    /// Set in the response direction.
    pub response: Option<Arc<Headers>>,
    pub body: Option<Value>,
    pub body_text: Option<Arc<str>>,
    pub extractions: Value,
}

impl Scope {
    pub fn into_value(self) -> Value {
        Value::from_object(self)
    }
}

impl Object for Scope {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        ObjectRepr::Map
    }

    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        let request = &self.request;
        Some(match key.as_str()? {
            "method" => Value::from(request.method()),
            "path" => Value::from(request.path_only()),
            "query_string" => Value::from(request.query_string()),
            "headers" => match &self.response {
                Some(headers) => Value::from_object(HeadersObject(headers.clone())),
                None => Value::from_object(HeadersObject(request.headers.clone())),
            },
            "request" => Value::from_object(RequestObject(request.clone())),
            "status" => {
                let status = self.response.as_ref()?.get(":status")?;
                status.parse::<u16>().map(Value::from).unwrap_or_else(|_| Value::from(status))
            }
            "body" => self.body.clone()?,
            "body_text" => Value::from(self.body_text.clone()?),
            "extractions" => self.extractions.clone(),
            "request_id" => Value::from(request.headers.get("x-request-id")?),
            _ => return None,
        })
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        Enumerator::Str(VARIABLES)
    }
}

/// `headers`: one message's headers by lower-case name (the first value of repeated ones).
#[derive(Debug)]
struct HeadersObject(Arc<Headers>);

impl Object for HeadersObject {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        ObjectRepr::Map
    }

    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        self.0.get(key.as_str()?).map(Value::from)
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        let mut seen = HashSet::new();
        let names: Vec<Value> = self
            .0
            .iter()
            .filter(|(name, _)| !name.starts_with(':') && seen.insert(name.as_str()))
            .map(|(name, _)| Value::from(name.as_str()))
            .collect();
        Enumerator::Values(names)
    }
}

/// `request`: the request as it arrived, also in the response direction.
#[derive(Debug)]
struct RequestObject(Arc<Request>);

impl Object for RequestObject {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        ObjectRepr::Map
    }

    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        let request = &self.0;
        Some(match key.as_str()? {
            "method" => Value::from(request.method()),
            "path" => Value::from(request.path_only()),
            "query_string" => Value::from(request.query_string()),
            "headers" => Value::from_object(HeadersObject(request.headers.clone())),
            "query" => Value::from(request.query_map()),
            _ => return None,
        })
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        Enumerator::Str(&["method", "path", "query_string", "headers", "query"])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scope(headers: &[(&str, &str)]) -> Value {
        let request = Arc::new(Request::new(Headers::from_pairs(headers.iter().copied())));
        Scope { request, response: None, body: None, body_text: None, extractions: Value::from(()) }.into_value()
    }

    fn render(source: &str, scope: &Value) -> Result<String, String> {
        let mut t = Templates::new(BTreeMap::from([("STAGE".to_string(), "prod".to_string())]));
        let text = t.compile("t", source)?;
        t.render(&text, scope).map(|s| s.into_owned()).map_err(|e| e.to_string())
    }

    #[test]
    fn functions_and_filters() {
        let s = scope(&[(":method", "GET"), (":path", "/a/b?x=1&y=two"), ("x-user", "ann")]);
        assert_eq!(
            render("{{ method }} {{ path }} {{ query('y') }} {{ header('X-User') }}", &s).unwrap(),
            "GET /a/b two ann"
        );
        assert_eq!(render("{{ env('STAGE') }}", &s).unwrap(), "prod");
        assert_eq!(render("{{ 'ann' | b64encode }}|{{ 'YW5u' | b64decode }}", &s).unwrap(), "YW5u|ann");
        assert_eq!(render(r#"{{ 'a"b' | json_escape }}"#, &s).unwrap(), r#"a\"b"#);
        assert_eq!(render(r#"{{ header('x-user') | tojson }}"#, &s).unwrap(), r#""ann""#);
        assert_eq!(render("{{ headers | tojson }}", &s).unwrap(), r#"{"x-user":"ann"}"#);
        assert_eq!(render("{{ random_id() | length }}", &s).unwrap(), "32");
        assert!(render("{{ now() }}", &s).unwrap().ends_with('Z'));
    }

    #[test]
    fn repeated_headers_and_query_parameters_give_their_first_value() {
        let s = scope(&[
            (":method", "GET"),
            (":path", "/?tag=a&tag=b&one=1"),
            ("x-forwarded-for", "10.0.0.1"),
            ("x-forwarded-for", "10.0.0.2"),
        ]);
        for (source, expected) in [
            ("{{ header('x-forwarded-for') }}", "10.0.0.1"),
            ("{{ headers['x-forwarded-for'] }}", "10.0.0.1"),
            ("{{ request_header('x-forwarded-for') }}", "10.0.0.1"),
            ("{{ query('tag') }}", "a"),
            ("{{ request.query.tag }}", "a"),
            ("{{ query_string }}", "tag=a&tag=b&one=1"),
        ] {
            assert_eq!(render(source, &s).unwrap(), expected, "{source}");
        }
    }

    #[test]
    fn missing_values_fail_unless_defaulted() {
        let s = scope(&[(":method", "GET"), (":path", "/")]);
        let err = render("{{ header('x-missing') }}", &s).unwrap_err();
        assert!(err.contains("undefined"), "{err}");
        assert_eq!(render("{{ header('x-missing') | default('none') }}", &s).unwrap(), "none");
        assert_eq!(render("{% if header('x-missing') %}y{% else %}n{% endif %}", &s).unwrap(), "n");
        assert!(render("{{ env('NOPE') }}", &s).is_err());
    }

    #[test]
    fn load_time_errors() {
        let mut t = Templates::new(BTreeMap::new());
        let err = t.compile("t", "{{ usr }}").unwrap_err();
        assert!(err.contains("`usr`"), "{err}");
        assert!(t.compile("t2", "{{ unclosed").is_err());
        assert!(matches!(t.compile("t3", "plain"), Ok(Text::Static(_))));
        assert!(t.compile("t4", "{{ body.a }}").unwrap().reads_body());
        assert!(!t.compile("t5", "{{ header('a') }}").unwrap().reads_body());
    }
}
