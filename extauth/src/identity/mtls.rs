//! Client-certificate identity: the principal Envoy reports for the downstream TLS peer (the
//! URI SAN, which is the SPIFFE ID under a mesh, else the certificate subject), checked against
//! allow-lists.

use std::sync::Arc;

use gatehouse_common::matcher::StringMatcher;
use serde_json::Value;

use super::{Identity, Kind, Outcome, Rejection};
use crate::request::AuthRequest;

pub struct MtlsAuth {
    /// A principal is allowed if any matcher matches it.
    pub allow: Vec<StringMatcher>,
}

impl MtlsAuth {
    pub fn authenticate(&self, name: &Arc<str>, request: &AuthRequest) -> Outcome {
        let principal = request.source.principal.as_str();
        if principal.is_empty() {
            return Outcome::Missing;
        }
        if !self.allow.iter().any(|m| m.matches(Some(principal))) {
            return Outcome::Rejected(Rejection::new("client certificate not allowed"));
        }
        let mut identity = Identity::new(name, Kind::Mtls, principal);
        identity.claims.insert("principal".into(), Value::String(principal.into()));
        if let Some(rest) = principal.strip_prefix("spiffe://") {
            let trust_domain = rest.split('/').next().unwrap_or_default();
            identity.claims.insert("spiffe_id".into(), Value::String(principal.into()));
            identity.claims.insert("trust_domain".into(), Value::String(trust_domain.into()));
        }
        Outcome::Authenticated(identity)
    }
}
