//! The HTTP message as the transformation sees it, free of protobuf types: headers in
//! Envoy's order with lower-case names and pseudo-headers (`:method`, `:path`, `:status`),
//! and the edits a rule makes to one message.

use std::collections::BTreeMap;
use std::sync::Arc;

/// Headers with lower-case names, in the order Envoy sent them; a repeated header appears
/// once per value.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Headers(Vec<(String, String)>);

impl Headers {
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Headers {
        Headers(pairs.into_iter().map(|(k, v)| (k.to_ascii_lowercase(), v.to_string())).collect())
    }

    pub fn push(&mut self, name: String, value: String) {
        self.0.push((name, value));
    }

    /// The first value of `name` (lower-case).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    pub fn iter(&self) -> impl Iterator<Item = &(String, String)> {
        self.0.iter()
    }

    /// `content-encoding: gzip` (the only coding the service decodes).
    pub fn is_gzip(&self) -> bool {
        self.get("content-encoding").is_some_and(|v| v.trim().eq_ignore_ascii_case("gzip"))
    }
}

/// The request as it arrived, shared by both directions of one exchange.
#[derive(Debug)]
pub struct Request {
    pub headers: Arc<Headers>,
}

impl Request {
    pub fn new(headers: Headers) -> Request {
        Request { headers: Arc::new(headers) }
    }

    pub fn method(&self) -> &str {
        self.headers.get(":method").unwrap_or("")
    }

    /// `:path` with its query string.
    pub fn full_path(&self) -> &str {
        self.headers.get(":path").unwrap_or("/")
    }

    /// `:path` without the query string.
    pub fn path_only(&self) -> &str {
        let path = self.full_path();
        path.split_once('?').map_or(path, |(p, _)| p)
    }

    /// The raw query string, without `?`.
    pub fn query_string(&self) -> &str {
        self.full_path().split_once('?').map_or("", |(_, q)| q)
    }

    /// Query parameters, decoded; the first value of a repeated one.
    pub fn query_map(&self) -> BTreeMap<String, String> {
        let mut map = BTreeMap::new();
        for (k, v) in form_urlencoded::parse(self.query_string().as_bytes()) {
            map.entry(k.into_owned()).or_insert_with(|| v.into_owned());
        }
        map
    }
}

/// What a rule does to one message; it becomes a HeaderMutation and a BodyMutation.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Edit {
    /// Set (replace) these headers, pseudo-headers included.
    pub set: Vec<(String, String)>,
    /// Add these values after any existing ones.
    pub append: Vec<(String, String)>,
    pub remove: Vec<String>,
    /// The new body; `None` leaves it as it is.
    pub body: Option<Vec<u8>>,
    /// Entries for the dynamic metadata namespace.
    pub metadata: serde_json::Map<String, serde_json::Value>,
    /// A header the route may depend on changed (request direction only).
    pub route_changed: bool,
}

impl Edit {
    /// Sets `name`, replacing an earlier set of the same header in this edit.
    pub fn set_header(&mut self, name: &str, value: String) {
        self.set.retain(|(k, _)| k != name);
        self.set.push((name.to_string(), value));
    }

    /// Replaces the body and keeps `content-length` true to it: Envoy forwards a buffered
    /// body with the content-length the processor leaves, and a mismatch is a 500.
    pub fn replace_body(&mut self, body: Vec<u8>) {
        self.set_header("content-length", body.len().to_string());
        self.remove.retain(|k| k != "content-length");
        self.body = Some(body);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_parts() {
        let r = Request::new(Headers::from_pairs([(":method", "GET"), (":path", "/a?x=1&x=2&y=%20z")]));
        assert_eq!(r.path_only(), "/a");
        assert_eq!(r.query_string(), "x=1&x=2&y=%20z");
        assert_eq!(r.query_map()["x"], "1");
        assert_eq!(r.query_map()["y"], " z");
    }

    #[test]
    fn replace_body_sets_content_length() {
        let mut e = Edit::default();
        e.remove.push("content-length".into());
        e.replace_body(b"abc".to_vec());
        assert_eq!(e.set, vec![("content-length".to_string(), "3".to_string())]);
        assert!(e.remove.is_empty());
    }
}
