//! The request being authorized, independent of transport: the gRPC `Check` call and the HTTP
//! forward-auth endpoint both build an [`AuthRequest`], and nothing below them sees either.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

/// The TLS peer of the downstream connection, as Envoy reports it.
#[derive(Clone, Debug, Default)]
pub struct Peer {
    /// `ip:port`.
    pub address: String,
    /// The URI SAN (a SPIFFE ID under a mesh) of the client certificate, else its subject.
    pub principal: String,
    /// The client certificate, PEM, when Envoy is configured with `include_peer_certificate`.
    pub certificate: String,
}

#[derive(Clone, Debug, Default)]
pub struct AuthRequest {
    pub method: String,
    /// `http` or `https`.
    pub scheme: String,
    /// Host without a default port (`:authority`).
    pub host: String,
    /// The path without the query string.
    pub path: String,
    /// The raw query string, without `?`.
    pub query: String,
    /// Lower-case names; repeated headers joined by `,` as Envoy sends them.
    pub headers: BTreeMap<String, String>,
    /// The body, when Envoy buffers it (`with_request_body`).
    pub body: Option<Vec<u8>>,
    pub source: Peer,
    /// TLS SNI requested by the client.
    pub sni: String,
    /// The route's `context_extensions`, e.g. `gatehouse_policy: orders-api`.
    pub context: BTreeMap<String, String>,
    /// `metadata_context.filter_metadata`, as JSON.
    pub metadata: Map<String, Value>,
}

impl AuthRequest {
    /// Splits `path?query`.
    pub fn set_path_and_query(&mut self, path_and_query: &str) {
        let (path, query) = path_and_query.split_once('?').unwrap_or((path_and_query, ""));
        self.path = path.to_string();
        self.query = query.to_string();
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }

    /// The first query parameter called `name`, percent-decoded.
    pub fn query_param(&self, name: &str) -> Option<String> {
        form_urlencoded::parse(self.query.as_bytes()).find(|(k, _)| k == name).map(|(_, v)| v.into_owned())
    }

    /// The cookie called `name`.
    pub fn cookie(&self, name: &str) -> Option<&str> {
        let header = self.header("cookie")?;
        header.split(';').filter_map(|pair| pair.trim().split_once('=')).find(|(k, _)| *k == name).map(|(_, v)| v)
    }

    /// The request as CEL and Rego policies see it under `request`. This shape is documented in
    /// docs/extauth.md and is a stable interface.
    pub fn to_json(&self) -> Value {
        // The first value of a repeated parameter, as `query_param` and matchers see it.
        let mut query = Map::new();
        for (k, v) in form_urlencoded::parse(self.query.as_bytes()) {
            query.entry(k.into_owned()).or_insert_with(|| Value::String(v.into_owned()));
        }
        json!({
            "method": self.method,
            "scheme": self.scheme,
            "host": self.host,
            "path": self.path,
            "query": query,
            "headers": self.headers,
            "source": {
                "address": self.source.address,
                "principal": self.source.principal,
            },
            "sni": self.sni,
            "context": self.context,
            "body": self.body.as_deref().map(String::from_utf8_lossy),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_from_query_and_cookie() {
        let mut r = AuthRequest::default();
        r.set_path_and_query("/orders?api_key=a%2Bb&x=1");
        r.headers.insert("cookie".into(), "theme=dark; session=abc=def; k=v".into());
        assert_eq!(r.path, "/orders");
        assert_eq!(r.query_param("api_key").as_deref(), Some("a+b"));
        assert_eq!(r.query_param("missing"), None);
        assert_eq!(r.cookie("session"), Some("abc=def"));
        assert_eq!(r.cookie("k"), Some("v"));
        assert_eq!(r.cookie("sess"), None);
    }
}
