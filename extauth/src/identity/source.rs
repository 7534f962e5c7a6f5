//! Where a credential is read from: a header (with an optional scheme prefix such as
//! `Bearer `), a query parameter, or a cookie. Methods try their sources in order.

use serde::Deserialize;

use crate::request::AuthRequest;

/// One source as written in the config: exactly one of `header`, `query`, `cookie`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SourceSpec {
    pub header: Option<String>,
    pub query: Option<String>,
    pub cookie: Option<String>,
    /// For headers: a scheme the value must start with, matched case-insensitively
    /// (`Bearer `); it is stripped.
    pub prefix: Option<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Source {
    Header { name: String, prefix: Option<String> },
    Query(String),
    Cookie(String),
}

impl SourceSpec {
    pub fn header(name: &str, prefix: Option<&str>) -> SourceSpec {
        SourceSpec { header: Some(name.into()), query: None, cookie: None, prefix: prefix.map(Into::into) }
    }

    pub fn build(&self) -> Result<Source, String> {
        match (&self.header, &self.query, &self.cookie) {
            (Some(h), None, None) => Ok(Source::Header { name: h.to_ascii_lowercase(), prefix: self.prefix.clone() }),
            (None, Some(q), None) if self.prefix.is_none() => Ok(Source::Query(q.clone())),
            (None, None, Some(c)) if self.prefix.is_none() => Ok(Source::Cookie(c.clone())),
            (None, _, _) | (_, None, None) if self.prefix.is_some() => Err("`prefix` applies to `header` only".into()),
            _ => Err("a credential source needs exactly one of `header`, `query` or `cookie`".into()),
        }
    }
}

impl Source {
    /// The credential, if this source holds one. A header without the expected prefix holds
    /// none (it may carry another scheme for another method).
    pub fn extract(&self, request: &AuthRequest) -> Option<String> {
        let value = match self {
            Source::Header { name, prefix } => {
                let value = request.header(name)?;
                match prefix {
                    None => value.to_string(),
                    Some(prefix) => {
                        let head = value.get(..prefix.len())?;
                        if !head.eq_ignore_ascii_case(prefix) {
                            return None;
                        }
                        value[prefix.len()..].trim().to_string()
                    }
                }
            }
            Source::Query(name) => request.query_param(name)?,
            Source::Cookie(name) => request.cookie(name)?.to_string(),
        };
        (!value.is_empty()).then_some(value)
    }

    /// What upstream must not see once the credential is consumed: (header, query parameter).
    pub fn strip_target(&self) -> (Option<&str>, Option<&str>) {
        match self {
            Source::Header { name, .. } => (Some(name), None),
            Source::Query(name) => (None, Some(name)),
            Source::Cookie(_) => (None, None),
        }
    }
}

/// The first credential any of `sources` holds.
pub fn first_credential(sources: &[Source], request: &AuthRequest) -> Option<String> {
    sources.iter().find_map(|s| s.extract(request))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_prefix_is_case_insensitive_and_required() {
        let bearer = SourceSpec::header("Authorization", Some("Bearer ")).build().unwrap();
        let mut r = AuthRequest::default();
        r.headers.insert("authorization".into(), "bearer abc.def".into());
        assert_eq!(bearer.extract(&r).as_deref(), Some("abc.def"));
        r.headers.insert("authorization".into(), "Basic Zm9vOmJhcg==".into());
        assert_eq!(bearer.extract(&r), None);
        r.headers.insert("authorization".into(), "Bearer ".into());
        assert_eq!(bearer.extract(&r), None);
    }

    #[test]
    fn exactly_one_place() {
        let two = SourceSpec { header: Some("a".into()), query: Some("b".into()), cookie: None, prefix: None };
        assert!(two.build().is_err());
        let none = SourceSpec { header: None, query: None, cookie: None, prefix: None };
        assert!(none.build().is_err());
        let prefix_on_query =
            SourceSpec { header: None, query: Some("k".into()), cookie: None, prefix: Some("x".into()) };
        assert_eq!(prefix_on_query.build().unwrap_err(), "`prefix` applies to `header` only");
    }
}
