//! Extractors: named values taken from a header, the path, a query parameter or the body,
//! by regex capture group, JSON pointer or JSONPath. Templates read them with
//! `extraction('name')`; a value that is not there is undefined (an error unless the template
//! gives a `default`).

use regex::Regex;
use serde_json::Value;
use serde_json_path::JsonPath;

use crate::message::Request;

#[derive(Clone, Debug)]
pub enum Source {
    Header(String),
    Path,
    Query(String),
    Body,
}

#[derive(Clone, Debug)]
pub enum Method {
    /// The first match's group (a regex search, not a whole-value match).
    Regex { regex: Regex, group: Group },
    /// JSON pointer into the body.
    Pointer(String),
    /// JSONPath into the body; one match gives the value, several give an array.
    JsonPath(JsonPath),
    /// The whole value.
    Whole,
}

#[derive(Clone, Debug)]
pub enum Group {
    Index(usize),
    Name(String),
}

#[derive(Clone, Debug)]
pub struct Extractor {
    pub name: String,
    pub source: Source,
    pub method: Method,
}

/// What extractors read from one message.
#[derive(Clone, Copy, Debug)]
pub struct Input<'a> {
    pub request: &'a Request,
    /// The headers of the message being transformed (request or response).
    pub headers: &'a crate::message::Headers,
    pub body_text: Option<&'a str>,
    pub body_json: Option<&'a Value>,
}

impl Extractor {
    pub fn reads_body(&self) -> bool {
        matches!(self.source, Source::Body)
    }

    pub fn needs_json(&self) -> bool {
        matches!(self.method, Method::Pointer(_) | Method::JsonPath(_))
    }

    pub fn extract(&self, input: &Input) -> Option<Value> {
        let text: Option<std::borrow::Cow<str>> = match &self.source {
            Source::Header(name) => input.headers.get(name).map(Into::into),
            Source::Path => Some(input.request.path_only().into()),
            Source::Query(name) => input.request.query_map().remove(name).map(Into::into),
            Source::Body => input.body_text.map(Into::into),
        };
        match &self.method {
            Method::Whole => text.map(|t| Value::String(t.into_owned())),
            Method::Regex { regex, group } => {
                let text = text?;
                let captures = regex.captures(&text)?;
                let m = match group {
                    Group::Index(i) => captures.get(*i),
                    Group::Name(n) => captures.name(n),
                }?;
                Some(Value::String(m.as_str().to_string()))
            }
            Method::Pointer(pointer) => input.body_json?.pointer(pointer).cloned(),
            Method::JsonPath(path) => {
                let nodes = path.query(input.body_json?).all();
                match nodes.len() {
                    0 => None,
                    1 => Some(nodes[0].clone()),
                    _ => Some(Value::Array(nodes.into_iter().cloned().collect())),
                }
            }
        }
    }
}

/// Compiles a regex extractor's pattern and checks its group.
pub fn regex_method(pattern: &str, group: Option<Group>) -> Result<Method, String> {
    let regex = Regex::new(pattern).map_err(|e| format!("invalid regex {pattern:?}: {e}"))?;
    let group = match group {
        Some(Group::Index(i)) if i >= regex.captures_len() => {
            return Err(format!("regex {pattern:?} has no group {i}"));
        }
        Some(Group::Name(n)) if !regex.capture_names().flatten().any(|c| c == n) => {
            return Err(format!("regex {pattern:?} has no group named {n:?}"));
        }
        Some(g) => g,
        None if regex.captures_len() > 1 => Group::Index(1),
        None => Group::Index(0),
    };
    Ok(Method::Regex { regex, group })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::message::Headers;

    #[test]
    fn extracts() {
        let headers = Headers::from_pairs([(":path", "/orders/42?tenant=t1"), ("x-user", "user-7")]);
        let request = Request::new(headers.clone());
        let body = json!({"items": [{"sku": "a"}, {"sku": "b"}], "order": {"id": 9}});
        let input = Input { request: &request, headers: &headers, body_text: Some("id=55;"), body_json: Some(&body) };
        let ex = |source, method| Extractor { name: "x".into(), source, method }.extract(&input);
        assert_eq!(ex(Source::Header("x-user".into()), regex_method(r"user-(\d+)", None).unwrap()), Some(json!("7")));
        assert_eq!(
            ex(Source::Path, regex_method(r"/orders/(?P<id>\d+)", Some(Group::Name("id".into()))).unwrap()),
            Some(json!("42"))
        );
        assert_eq!(ex(Source::Query("tenant".into()), Method::Whole), Some(json!("t1")));
        assert_eq!(ex(Source::Body, regex_method(r"id=(\d+)", None).unwrap()), Some(json!("55")));
        assert_eq!(ex(Source::Body, Method::Pointer("/order/id".into())), Some(json!(9)));
        let path = |p: &str| Method::JsonPath(JsonPath::parse(p).unwrap());
        assert_eq!(ex(Source::Body, path("$.items[*].sku")), Some(json!(["a", "b"])));
        assert_eq!(ex(Source::Body, path("$.items[0].sku")), Some(json!("a")));
        assert_eq!(ex(Source::Body, path("$.nothing")), None);
        assert_eq!(ex(Source::Header("x-missing".into()), Method::Whole), None);
    }

    #[test]
    fn bad_groups_fail_at_load() {
        assert!(regex_method("a(b)", Some(Group::Index(2))).is_err());
        assert!(regex_method("a(?P<x>b)", Some(Group::Name("y".into()))).is_err());
        assert!(regex_method("(", None).is_err());
    }
}
