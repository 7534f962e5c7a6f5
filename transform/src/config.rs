//! The transformation file: YAML parsed into the `*Spec` structs (unknown fields are errors),
//! then built into [`Transformations`]: matchers and regexes compiled, every template compiled
//! and checked for unknown variables. Errors name the file, the line and the field. The format
//! is documented in docs/transform.md.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use gatehouse_common::config::{ConfigError, ConfigErrors, Position, Spanned, load_yaml, parse_yaml};
use gatehouse_common::matcher::{MatchSpec, StringMatcher};
use serde::Deserialize;
use serde_json::Value;

use crate::extract::{self, Extractor, Group, Method, Source};
use crate::json_patch::Pointer;
use crate::template::{Templates, Text};
use crate::transformation::{
    BodyStep, Gzip, HeaderOps, JsonOp, JsonValue, Matcher, QueryOps, Rule, Transformation, Transformations,
};
use crate::xml::{MappingError, XmlMapping};

/// Envoy's default buffer limit (a listener's `per_connection_buffer_limit_bytes`), which
/// envoy/gateway.yaml keeps.
pub const ENVOY_DEFAULT_BUFFER_LIMIT: usize = 1024 * 1024;

/// The default `max_body_bytes`, 960 KiB. It must be below Envoy's buffer limit, not equal to
/// it: a body the service accepts is then always one Envoy can buffer, and a larger one gets
/// the service's JSON 413 rather than Envoy's plain-text one or, for a body that arrives while
/// the headers are with the service, no answer at all (see `exchange::BodyMode`).
pub const DEFAULT_MAX_BODY_BYTES: usize = ENVOY_DEFAULT_BUFFER_LIMIT - 64 * 1024;

const _: () = assert!(DEFAULT_MAX_BODY_BYTES < ENVOY_DEFAULT_BUFFER_LIMIT);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSpec {
    /// Default for every transformation.
    pub max_body_bytes: Option<usize>,
    pub transformations: Vec<TransformationSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransformationSpec {
    pub name: Spanned<String>,
    pub max_body_bytes: Option<usize>,
    /// `passthrough` (default) or `decode`.
    pub gzip: Option<Spanned<String>>,
    #[serde(default)]
    pub request: Vec<RuleSpec>,
    #[serde(default)]
    pub response: Vec<RuleSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    #[serde(rename = "match", default)]
    pub matcher: Option<Spanned<MatchSpecs>>,
    #[serde(default)]
    pub extract: BTreeMap<String, Spanned<ExtractSpec>>,
    #[serde(default)]
    pub headers: HeaderSpec,
    pub path: Option<Spanned<String>>,
    pub method: Option<Spanned<String>>,
    #[serde(default)]
    pub query: QuerySpec,
    /// Responses only.
    pub status: Option<Spanned<String>>,
    #[serde(default)]
    pub body: Vec<Spanned<BodyStepSpec>>,
    #[serde(default)]
    pub metadata: BTreeMap<String, Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MatchSpecs {
    pub path: Option<MatchSpec>,
    pub method: Option<MatchSpec>,
    #[serde(default)]
    pub headers: BTreeMap<String, MatchSpec>,
    #[serde(default)]
    pub query: BTreeMap<String, MatchSpec>,
    /// Responses only: the status code as text, e.g. `{ regex: "5.." }`.
    pub status: Option<MatchSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExtractSpec {
    /// `header:<name>`, `query:<name>`, `path` or `body`.
    pub from: String,
    pub regex: Option<String>,
    /// A group number or name; default 1 when the regex has groups, else the whole match.
    pub group: Option<GroupSpec>,
    pub pointer: Option<String>,
    pub jsonpath: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum GroupSpec {
    Index(usize),
    Name(String),
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderSpec {
    #[serde(default)]
    pub set: BTreeMap<String, Spanned<String>>,
    #[serde(default)]
    pub append: BTreeMap<String, Spanned<String>>,
    #[serde(default)]
    pub remove: Vec<String>,
    #[serde(default)]
    pub rename: BTreeMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuerySpec {
    #[serde(default)]
    pub set: BTreeMap<String, Spanned<String>>,
    #[serde(default)]
    pub remove: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum BodyStepSpec {
    Template(String),
    Json(Vec<JsonOpSpec>),
    /// `aws`: an AWS API Gateway proxy event.
    Envelope(String),
    XmlToJson(XmlSpec),
    JsonToXml(XmlSpec),
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum JsonOpSpec {
    Set(SetSpec),
    Merge(SetSpec),
    Remove(String),
    Rename(RenameSpec),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetSpec {
    pub path: String,
    /// Any JSON value; its strings may be templates.
    pub value: Option<Value>,
    /// A template whose output is parsed as JSON.
    pub json: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenameSpec {
    pub from: String,
    pub to: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct XmlSpec {
    /// Default `@`; must not be able to start an XML name.
    pub attribute_prefix: Option<Spanned<String>>,
    /// Default `#text`; must not be an XML name.
    pub text_key: Option<Spanned<String>>,
    #[serde(default)]
    pub arrays: Vec<String>,
    pub root: Option<Spanned<String>>,
    /// Default true.
    pub declaration: Option<bool>,
    /// JSON → XML: the content-type to set. Default `application/xml`.
    pub content_type: Option<String>,
}

/// Reads and builds a transformation file. `env` is what templates' `env()` can read.
pub fn load(file: &Path, env: &BTreeMap<String, String>) -> Result<Transformations, ConfigErrors> {
    let spec: FileSpec = load_yaml(file)?;
    build(file, spec, env)
}

/// Builds from YAML text; `file` names the source in errors.
pub fn parse(file: &Path, text: &str, env: &BTreeMap<String, String>) -> Result<Transformations, ConfigErrors> {
    let spec: FileSpec = parse_yaml(file, text)?;
    build(file, spec, env)
}

fn build(file: &Path, spec: FileSpec, env: &BTreeMap<String, String>) -> Result<Transformations, ConfigErrors> {
    let mut builder = Builder { file, templates: Templates::new(env.clone()), errors: Vec::new() };
    let default_max = spec.max_body_bytes.unwrap_or(DEFAULT_MAX_BODY_BYTES);
    let mut by_name = HashMap::new();
    for t in spec.transformations {
        let name = t.name.value.clone();
        let position = Position::of(&t.name);
        if name.is_empty() || name.contains(char::is_whitespace) {
            builder.error(position, format!("transformations.name: {name:?} must be non-empty, without spaces"));
        }
        let built = builder.transformation(t, default_max);
        if by_name.insert(name.clone(), Arc::new(built)).is_some() {
            builder.error(position, format!("transformations.name: duplicate transformation {name:?}"));
        }
    }
    if !builder.errors.is_empty() {
        return Err(ConfigErrors(builder.errors));
    }
    Ok(Transformations { by_name, templates: builder.templates, files: vec![file.to_path_buf()] })
}

struct Builder<'a> {
    file: &'a Path,
    templates: Templates,
    errors: Vec<ConfigError>,
}

impl Builder<'_> {
    fn error(&mut self, position: Position, message: impl Into<String>) {
        self.errors.push(ConfigError::at(self.file, position, message));
    }

    fn transformation(&mut self, spec: TransformationSpec, default_max: usize) -> Transformation {
        let name = spec.name.value.clone();
        let gzip = match spec.gzip.as_ref().map(|g| g.value.as_str()) {
            None | Some("passthrough") => Gzip::Passthrough,
            Some("decode") => Gzip::Decode,
            Some(other) => {
                let position = spec.gzip.as_ref().map(Position::of).unwrap_or_default();
                self.error(position, format!("gzip: {other:?} is not one of passthrough, decode"));
                Gzip::Passthrough
            }
        };
        let request = spec
            .request
            .into_iter()
            .enumerate()
            .map(|(i, r)| self.rule(format!("{name}/request[{i}]"), r, false, Position::of(&spec.name)))
            .collect();
        let response = spec
            .response
            .into_iter()
            .enumerate()
            .map(|(i, r)| self.rule(format!("{name}/response[{i}]"), r, true, Position::of(&spec.name)))
            .collect();
        Transformation { name, max_body_bytes: spec.max_body_bytes.unwrap_or(default_max), gzip, request, response }
    }

    /// Compiles a template; errors are reported at `position` naming `field`.
    fn text(&mut self, label: &str, field: &str, source: &str, position: Position) -> Text {
        match self.templates.compile(&format!("{label}/{field}"), source) {
            Ok(text) => text,
            Err(e) => {
                self.error(position, format!("{field}: {e}"));
                Text::Static(String::new())
            }
        }
    }

    fn spanned_text(&mut self, label: &str, field: &str, source: &Spanned<String>) -> Text {
        self.text(label, field, &source.value, Position::of(source))
    }

    fn matcher(&mut self, spec: Option<Spanned<MatchSpecs>>, response: bool) -> Matcher {
        let Some(spec) = spec else { return Matcher::default() };
        let position = Position::of(&spec);
        let spec = spec.value;
        let compile = |field: &str, m: &MatchSpec, errors: &mut Vec<ConfigError>| -> Option<StringMatcher> {
            m.compile()
                .map_err(|e| errors.push(ConfigError::at(self.file, position, format!("match.{field}: {e}"))))
                .ok()
        };
        let mut errors = Vec::new();
        let matcher = Matcher {
            path: spec.path.as_ref().and_then(|m| compile("path", m, &mut errors)),
            method: spec.method.as_ref().and_then(|m| compile("method", m, &mut errors)),
            headers: spec
                .headers
                .iter()
                .filter_map(|(k, m)| Some((k.to_ascii_lowercase(), compile(&format!("headers.{k}"), m, &mut errors)?)))
                .collect(),
            query: spec
                .query
                .iter()
                .filter_map(|(k, m)| Some((k.clone(), compile(&format!("query.{k}"), m, &mut errors)?)))
                .collect(),
            status: spec.status.as_ref().and_then(|m| compile("status", m, &mut errors)),
        };
        self.errors.extend(errors);
        if response && !spec.query.is_empty() {
            self.error(
                position,
                "match.query: response rules match on status and headers (and the request's path and method)",
            );
        }
        if !response && spec.status.is_some() {
            self.error(position, "match.status: only response rules have a status");
        }
        matcher
    }

    fn rule(&mut self, label: String, spec: RuleSpec, response: bool, fallback: Position) -> Rule {
        let position = spec.matcher.as_ref().map(Position::of).unwrap_or(fallback);
        let matcher = self.matcher(spec.matcher, response);

        let extract: Vec<Extractor> =
            spec.extract.iter().filter_map(|(name, e)| self.extractor(name, &e.value, Position::of(e))).collect();

        let headers = HeaderOps {
            set: spec
                .headers
                .set
                .iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), self.spanned_text(&label, &format!("headers.set.{k}"), v)))
                .collect(),
            append: spec
                .headers
                .append
                .iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), self.spanned_text(&label, &format!("headers.append.{k}"), v)))
                .collect(),
            remove: spec.headers.remove.iter().map(|k| k.to_ascii_lowercase()).collect(),
            rename: spec.headers.rename.iter().map(|(k, v)| (k.to_ascii_lowercase(), v.to_ascii_lowercase())).collect(),
        };
        for name in headers.set.iter().map(|(k, _)| k).chain(headers.append.iter().map(|(k, _)| k)) {
            if name.starts_with(':') || name == "host" {
                self.error(
                    position,
                    format!("headers: {name:?} cannot be set as a header; use path, method or status"),
                );
            }
        }
        let path = spec.path.as_ref().map(|p| self.spanned_text(&label, "path", p));
        let method = spec.method.as_ref().map(|m| self.spanned_text(&label, "method", m));
        let query = QueryOps {
            set: spec
                .query
                .set
                .iter()
                .map(|(k, v)| (k.clone(), self.spanned_text(&label, &format!("query.set.{k}"), v)))
                .collect(),
            remove: spec.query.remove.clone(),
        };
        let status = spec.status.as_ref().map(|s| self.spanned_text(&label, "status", s));
        if response {
            if let Some(p) = spec.path.as_ref().or(spec.method.as_ref()) {
                self.error(Position::of(p), "path/method: response rules cannot rewrite the request line");
            }
            if !query.set.is_empty() || !query.remove.is_empty() {
                self.error(position, "query: response rules cannot rewrite the query");
            }
        } else if let Some(s) = &spec.status {
            self.error(Position::of(s), "status: only response rules set a status");
        }
        let body: Vec<BodyStep> =
            spec.body.iter().enumerate().filter_map(|(i, step)| self.body_step(&label, i, step, response)).collect();
        let metadata = spec
            .metadata
            .iter()
            .map(|(k, v)| (k.clone(), self.spanned_text(&label, &format!("metadata.{k}"), v)))
            .collect::<Vec<_>>();

        let texts: Vec<&Text> = headers
            .set
            .iter()
            .chain(&headers.append)
            .chain(&query.set)
            .map(|(_, t)| t)
            .chain([&path, &method, &status].into_iter().flatten())
            .chain(metadata.iter().map(|(_, t)| t))
            .chain(body.iter().filter_map(|s| match s {
                BodyStep::Template(t) => Some(t),
                _ => None,
            }))
            .collect();
        let json_values: Vec<&JsonValue> = body
            .iter()
            .filter_map(|s| match s {
                BodyStep::Json(ops) => Some(ops),
                _ => None,
            })
            .flatten()
            .filter_map(|op| match op {
                JsonOp::Set { value, .. } | JsonOp::Merge { value, .. } => Some(value),
                _ => None,
            })
            .collect();
        // A step that starts from the message body (rather than the previous step's output).
        let steps_read_body = body.iter().enumerate().any(|(i, step)| match step {
            BodyStep::Template(_) => false,
            BodyStep::Envelope => true,
            BodyStep::Json(_) | BodyStep::XmlToJson(_) | BodyStep::JsonToXml { .. } => i == 0,
        }) || json_values.iter().any(|v| v.any_text(&Text::reads_body));
        let body_json = texts.iter().any(|t| t.reads_json())
            || json_values.iter().any(|v| v.any_text(&Text::reads_json))
            || extract.iter().any(|e| e.reads_body() && e.needs_json());
        let reads_body =
            texts.iter().any(|t| t.reads_body()) || steps_read_body || extract.iter().any(Extractor::reads_body);
        Rule { label, matcher, extract, headers, path, method, query, status, body, metadata, reads_body, body_json }
    }

    fn extractor(&mut self, name: &str, spec: &ExtractSpec, position: Position) -> Option<Extractor> {
        let mut fail = |message: String| {
            self.error(position, format!("extract.{name}: {message}"));
            None
        };
        let source = match spec.from.split_once(':') {
            Some(("header", h)) if !h.is_empty() => Source::Header(h.to_ascii_lowercase()),
            Some(("query", q)) if !q.is_empty() => Source::Query(q.to_string()),
            None if spec.from == "path" => Source::Path,
            None if spec.from == "body" => Source::Body,
            _ => return fail(format!("from: {:?} is not one of header:<name>, query:<name>, path, body", spec.from)),
        };
        let chosen =
            [spec.regex.is_some(), spec.pointer.is_some(), spec.jsonpath.is_some()].iter().filter(|b| **b).count();
        if chosen > 1 {
            return fail("use one of regex, pointer, jsonpath".into());
        }
        if spec.group.is_some() && spec.regex.is_none() {
            return fail("group needs a regex".into());
        }
        let method = if let Some(regex) = &spec.regex {
            let group = spec.group.as_ref().map(|g| match g {
                GroupSpec::Index(i) => Group::Index(*i),
                GroupSpec::Name(n) => Group::Name(n.clone()),
            });
            match extract::regex_method(regex, group) {
                Ok(m) => m,
                Err(e) => return fail(e),
            }
        } else if let Some(pointer) = &spec.pointer {
            if let Err(e) = Pointer::parse(pointer) {
                return fail(e);
            }
            Method::Pointer(pointer.clone())
        } else if let Some(path) = &spec.jsonpath {
            match serde_json_path::JsonPath::parse(path) {
                Ok(p) => Method::JsonPath(p),
                Err(e) => return fail(format!("invalid JSONPath {path:?}: {e}")),
            }
        } else {
            Method::Whole
        };
        if matches!(method, Method::Pointer(_) | Method::JsonPath(_)) && !matches!(source, Source::Body) {
            return fail("pointer and jsonpath read the body: use from: body".into());
        }
        Some(Extractor { name: name.to_string(), source, method })
    }

    fn body_step(&mut self, label: &str, i: usize, step: &Spanned<BodyStepSpec>, response: bool) -> Option<BodyStep> {
        let position = Position::of(step);
        let field = format!("body[{i}]");
        Some(match &step.value {
            BodyStepSpec::Template(source) => {
                BodyStep::Template(self.text(label, &format!("{field}.template"), source, position))
            }
            BodyStepSpec::Json(ops) => {
                let mut built = Vec::new();
                for (j, op) in ops.iter().enumerate() {
                    let field = format!("{field}.json[{j}]");
                    match self.json_op(label, &field, op, position) {
                        Ok(op) => built.push(op),
                        Err(e) => self.error(position, format!("{field}: {e}")),
                    }
                }
                BodyStep::Json(built)
            }
            BodyStepSpec::Envelope(kind) => {
                if kind != "aws" {
                    self.error(position, format!("{field}.envelope: {kind:?} is not a known envelope (aws)"));
                }
                if response {
                    self.error(position, format!("{field}.envelope: the request envelope applies to requests only"));
                }
                BodyStep::Envelope
            }
            BodyStepSpec::XmlToJson(spec) => {
                BodyStep::XmlToJson(self.xml_mapping(&format!("{field}.xml_to_json"), spec, position))
            }
            BodyStepSpec::JsonToXml(spec) => BodyStep::JsonToXml {
                mapping: self.xml_mapping(&format!("{field}.json_to_xml"), spec, position),
                content_type: spec.content_type.clone().unwrap_or_else(|| "application/xml".into()),
            },
        })
    }

    fn json_op(&mut self, label: &str, field: &str, op: &JsonOpSpec, position: Position) -> Result<JsonOp, String> {
        Ok(match op {
            JsonOpSpec::Set(s) | JsonOpSpec::Merge(s) => {
                let path = Pointer::parse(&s.path)?;
                let value = match (&s.value, &s.json) {
                    (Some(v), None) => self.json_value(label, &format!("{field}.value"), v, position),
                    (None, Some(t)) => JsonValue::Json(self.text(label, &format!("{field}.json"), t, position)),
                    _ => return Err("give exactly one of value, json".into()),
                };
                if matches!(op, JsonOpSpec::Set(_)) {
                    JsonOp::Set { path, value }
                } else {
                    JsonOp::Merge { path, value }
                }
            }
            JsonOpSpec::Remove(p) => JsonOp::Remove(Pointer::parse(p)?),
            JsonOpSpec::Rename(r) => JsonOp::Rename { from: Pointer::parse(&r.from)?, to: Pointer::parse(&r.to)? },
        })
    }

    fn json_value(&mut self, label: &str, field: &str, value: &Value, position: Position) -> JsonValue {
        match value {
            Value::String(s) => match self.text(label, field, s, position) {
                Text::Static(s) => JsonValue::Literal(Value::String(s)),
                t => JsonValue::Text(t),
            },
            Value::Array(items) => {
                let items: Vec<JsonValue> = items
                    .iter()
                    .enumerate()
                    .map(|(i, v)| self.json_value(label, &format!("{field}[{i}]"), v, position))
                    .collect();
                if items.iter().all(|v| matches!(v, JsonValue::Literal(_))) {
                    JsonValue::Literal(value.clone())
                } else {
                    JsonValue::Array(items)
                }
            }
            Value::Object(map) => {
                let entries: Vec<(String, JsonValue)> = map
                    .iter()
                    .map(|(k, v)| (k.clone(), self.json_value(label, &format!("{field}.{k}"), v, position)))
                    .collect();
                if entries.iter().all(|(_, v)| matches!(v, JsonValue::Literal(_))) {
                    JsonValue::Literal(value.clone())
                } else {
                    JsonValue::Object(entries)
                }
            }
            other => JsonValue::Literal(other.clone()),
        }
    }

    /// Builds a mapping and refuses one that is ambiguous (see [`XmlMapping::validate`]), each
    /// problem at its field's line (`position`, the step's, when the field is a default).
    fn xml_mapping(&mut self, field: &str, spec: &XmlSpec, position: Position) -> XmlMapping {
        let defaults = XmlMapping::default();
        let value = |s: &Option<Spanned<String>>| s.as_ref().map(|s| s.value.clone());
        let mapping = XmlMapping {
            attribute_prefix: value(&spec.attribute_prefix).unwrap_or(defaults.attribute_prefix),
            text_key: value(&spec.text_key).unwrap_or(defaults.text_key),
            arrays: spec.arrays.iter().cloned().collect::<HashSet<_>>(),
            root: value(&spec.root),
            declaration: spec.declaration.unwrap_or(defaults.declaration),
        };
        for problem in mapping.validate().err().unwrap_or_default() {
            let at = match problem {
                MappingError::AttributePrefix(_) => &spec.attribute_prefix,
                MappingError::TextKey(_) => &spec.text_key,
                MappingError::Root(_) => &spec.root,
            };
            self.error(at.as_ref().map_or(position, Position::of), format!("{field}.{problem}"));
        }
        mapping
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_ok(text: &str) -> Transformations {
        parse(Path::new("t.yaml"), text, &BTreeMap::new()).unwrap_or_else(|e| panic!("{e}"))
    }

    fn parse_err(text: &str) -> String {
        parse(Path::new("t.yaml"), text, &BTreeMap::new()).unwrap_err().to_string()
    }

    #[test]
    fn builds_and_classifies_rules() {
        let t = parse_ok(
            r#"
transformations:
  - name: a
    request:
      - match: { path: { prefix: /x } }
        headers: { set: { x-a: "{{ header('x-b') }}" } }
      - body:
          - template: '{"user": {{ header("x-user") | tojson }}}'
      - body:
          - json: [ { set: { path: /a, value: 1 } } ]
      - headers: { set: { x-id: "{{ body.id }}" } }
"#,
        );
        let rules = &t.by_name["a"].request;
        assert!(!rules[0].reads_body);
        assert!(!rules[1].reads_body, "a template that does not read the body");
        assert!(rules[2].reads_body && !rules[2].body_json);
        assert!(rules[3].reads_body && rules[3].body_json);
        assert_eq!(t.by_name["a"].max_body_bytes, DEFAULT_MAX_BODY_BYTES);
    }

    #[test]
    fn errors_name_line_and_field() {
        let err = parse_err(
            r#"
transformations:
  - name: a
    request:
      - headers:
          set:
            x-a: "{{ usr }}"
"#,
        );
        assert!(err.starts_with("t.yaml:7:"), "{err}");
        assert!(err.contains("headers.set.x-a") && err.contains("`usr`"), "{err}");

        let err = parse_err("transformations:\n  - name: a\n    request:\n      - extract: { x: { from: nowhere } }\n");
        assert!(err.contains("extract.x: from"), "{err}");
        let err = parse_err("transformations:\n  - name: a\n  - name: a\n");
        assert!(err.starts_with("t.yaml:3:") && err.contains("duplicate"), "{err}");
        let err = parse_err("transformations:\n  - name: a\n    request:\n      - status: '500'\n");
        assert!(err.contains("only response rules"), "{err}");
        let err = parse_err("transformations:\n  - name: a\n    request:\n      - bdy: []\n");
        assert!(err.starts_with("t.yaml:4:") && err.contains("bdy"), "{err}");
        let err = parse_err("transformations:\n  - name: a\n    request:\n      - body: [ { template: '{{ x' } ]\n");
        assert!(err.contains("body[0].template"), "{err}");
    }

    #[test]
    fn ambiguous_xml_mappings_are_refused_at_their_line() {
        let err = parse_err(
            r#"
transformations:
  - name: a
    response:
      - body:
          - template: "{}"
          - xml_to_json:
              arrays: [a/b]
              text_key: value
              attribute_prefix: _
"#,
        );
        let errors: Vec<&str> = err.lines().collect();
        assert_eq!(errors.len(), 2, "{err}");
        assert!(errors[0].starts_with("t.yaml:10:"), "{err}");
        assert!(errors[0].contains("body[1].xml_to_json.attribute_prefix: \"_\" can start an element name"), "{err}");
        assert!(errors[1].starts_with("t.yaml:9:"), "{err}");
        assert!(errors[1].contains("body[1].xml_to_json.text_key: \"value\" is an XML name"), "{err}");

        let err =
            parse_err("transformations:\n  - name: a\n    request:\n      - body: [ { json_to_xml: { root: 1x } } ]\n");
        assert!(err.starts_with("t.yaml:4:") && err.contains("body[0].json_to_xml.root: \"1x\""), "{err}");
        parse_ok(
            "transformations:\n  - name: a\n    request:\n      - body: [ { json_to_xml: { attribute_prefix: '-', text_key: $ } } ]\n",
        );
    }
}
