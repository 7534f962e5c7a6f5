//! Claim checks shared by every path that accepts token claims: JWTs, introspection answers.
//!
//! **Invariant:** a constraint is satisfied only by a claim that is present and has the type
//! the RFC gives it. A missing, `null` or mistyped claim never satisfies one: a policy with
//! `audiences: [orders-api]` refuses a token without `aud`, with `aud: 123`, with
//! `aud: ["orders-api", 1]` or with an object, because any of those can be minted by the same
//! IdP for another service.
//!
//! The registered claims follow RFC 7519 §4.1: `iss` is a string, `aud` a string or an array
//! of strings, `exp` and `nbf` NumericDates (JSON numbers, possibly fractional).

use gatehouse_common::matcher::StringMatcher;
use serde_json::{Map, Value};

use super::Rejection;

/// What a method requires of a token's registered claims.
#[derive(Clone, Copy, Debug)]
pub struct Registered<'a> {
    /// The exact `iss` required, if any.
    pub issuer: Option<&'a str>,
    /// `aud` must name one of these; empty means `aud` is not checked.
    pub audiences: &'a [String],
    /// Whether a token without `exp` is refused (JWTs: yes; introspection: `exp` is optional).
    pub require_exp: bool,
    /// Clock skew allowed on `exp` and `nbf`, in seconds.
    pub leeway: u64,
}

/// Checks the registered claims at `now` (seconds since the epoch). `Ok` carries `exp`,
/// rounded down, if the token has one.
pub fn check_registered(
    claims: &Map<String, Value>,
    rules: &Registered<'_>,
    now: u64,
) -> Result<Option<u64>, Rejection> {
    if let Some(issuer) = rules.issuer {
        match present(claims, "iss") {
            None => return Err(Rejection::invalid_token("missing iss claim")),
            Some(Value::String(iss)) if iss == issuer => {}
            Some(Value::String(_)) => return Err(Rejection::invalid_token("wrong issuer")),
            Some(_) => return Err(Rejection::invalid_token("iss claim is not a string")),
        }
    }
    if !rules.audiences.is_empty() {
        let named = |aud: &str| rules.audiences.iter().any(|a| a == aud);
        let ok = match present(claims, "aud") {
            None => return Err(Rejection::invalid_token("missing aud claim")),
            Some(Value::String(aud)) => named(aud),
            Some(Value::Array(items)) => {
                let mut strings = Vec::with_capacity(items.len());
                for item in items {
                    match item.as_str() {
                        Some(s) => strings.push(s),
                        None => {
                            return Err(Rejection::invalid_token("aud claim is not a string or an array of strings"));
                        }
                    }
                }
                strings.into_iter().any(named)
            }
            Some(_) => return Err(Rejection::invalid_token("aud claim is not a string or an array of strings")),
        };
        if !ok {
            return Err(Rejection::invalid_token("wrong audience"));
        }
    }
    let exp = numeric_date(claims, "exp")?;
    match exp {
        None if rules.require_exp => return Err(Rejection::invalid_token("missing exp claim")),
        Some(exp) if exp + (rules.leeway as f64) < now as f64 => return Err(Rejection::invalid_token("token expired")),
        _ => {}
    }
    if let Some(nbf) = numeric_date(claims, "nbf")?
        && nbf > (now + rules.leeway) as f64
    {
        return Err(Rejection::invalid_token("token not yet valid"));
    }
    // `as` saturates: a huge or negative exp becomes u64::MAX or 0, never wraps.
    Ok(exp.map(|e| e as u64))
}

/// A claim, treating `null` as absent.
fn present<'a>(claims: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    claims.get(name).filter(|v| !v.is_null())
}

/// A NumericDate claim: absent is `None`, anything but a finite number is a rejection.
fn numeric_date(claims: &Map<String, Value>, name: &'static str) -> Result<Option<f64>, Rejection> {
    match present(claims, name) {
        None => Ok(None),
        Some(v) => match v.as_f64() {
            Some(n) if n.is_finite() => Ok(Some(n)),
            _ => Err(Rejection::invalid_token(format!("{name} claim is not a number"))),
        },
    }
}

/// Whether a claim (or metadata value) satisfies a matcher, strictly by type:
/// - missing or `null`: only `present: false` matches;
/// - a string, number or boolean: matched as its text (`true`, `42`);
/// - an array: matched as a list, and only if every element is a string;
/// - an object, or an array holding anything but strings: only `present: true` matches.
pub fn value_matches(matcher: &StringMatcher, value: Option<&Value>) -> bool {
    let value = value.filter(|v| !v.is_null());
    match value {
        None => matcher.matches(None),
        Some(Value::String(s)) => matcher.matches(Some(s)),
        Some(v @ (Value::Number(_) | Value::Bool(_))) => matcher.matches(Some(&v.to_string())),
        Some(Value::Array(items)) if items.iter().all(Value::is_string) => {
            matcher.matches_list(items.iter().filter_map(Value::as_str))
        }
        Some(_) => matches!(matcher, StringMatcher::Present(true)),
    }
}

#[cfg(test)]
mod tests {
    use gatehouse_common::matcher::MatchSpec;
    use serde_json::json;

    use super::*;

    const NOW: u64 = 1_000_000;

    fn claims(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    /// `expected` is `Ok(())` or the rejection reason.
    fn check(v: Value, expected: Result<(), &str>) {
        let audiences = ["orders-api".to_string()];
        let rules = Registered { issuer: Some("https://idp"), audiences: &audiences, require_exp: true, leeway: 30 };
        let got = check_registered(&claims(v.clone()), &rules, NOW).map(|_| ()).map_err(|r| r.reason);
        assert_eq!(got, expected.map_err(str::to_string), "{v}");
    }

    #[test]
    fn registered_claims_are_strict() {
        let ok = |extra: Value| {
            let mut c = json!({"iss": "https://idp", "aud": "orders-api", "exp": NOW + 60});
            c.as_object_mut().unwrap().extend(claims(extra));
            c
        };
        check(ok(json!({})), Ok(()));
        check(ok(json!({"aud": ["billing", "orders-api"]})), Ok(()));
        check(ok(json!({"exp": (NOW + 60) as f64 + 0.5})), Ok(()));
        check(ok(json!({"exp": NOW - 10})), Ok(()));
        check(ok(json!({"nbf": NOW + 10})), Ok(()));

        check(ok(json!({"aud": null})), Err("missing aud claim"));
        check(json!({"iss": "https://idp", "exp": NOW + 60}), Err("missing aud claim"));
        check(ok(json!({"aud": 123})), Err("aud claim is not a string or an array of strings"));
        check(ok(json!({"aud": ["billing", 1]})), Err("aud claim is not a string or an array of strings"));
        check(ok(json!({"aud": ["orders-api", 1]})), Err("aud claim is not a string or an array of strings"));
        check(ok(json!({"aud": {"orders-api": true}})), Err("aud claim is not a string or an array of strings"));
        check(ok(json!({"aud": "billing"})), Err("wrong audience"));
        check(ok(json!({"aud": []})), Err("wrong audience"));

        check(json!({"aud": "orders-api", "exp": NOW + 60}), Err("missing iss claim"));
        check(ok(json!({"iss": "https://idp/"})), Err("wrong issuer"));
        check(ok(json!({"iss": ["https://idp"]})), Err("iss claim is not a string"));

        check(json!({"iss": "https://idp", "aud": "orders-api"}), Err("missing exp claim"));
        check(ok(json!({"exp": "9999999999"})), Err("exp claim is not a number"));
        check(ok(json!({"exp": true})), Err("exp claim is not a number"));
        check(ok(json!({"exp": NOW - 31})), Err("token expired"));
        check(ok(json!({"nbf": "0"})), Err("nbf claim is not a number"));
        check(ok(json!({"nbf": NOW + 31})), Err("token not yet valid"));
    }

    #[test]
    fn unconstrained_claims_are_not_checked() {
        let rules = Registered { issuer: None, audiences: &[], require_exp: false, leeway: 0 };
        assert_eq!(check_registered(&claims(json!({"aud": 1, "iss": 2})), &rules, NOW), Ok(None));
        assert_eq!(check_registered(&claims(json!({"exp": NOW + 5})), &rules, NOW), Ok(Some(NOW + 5)));
        // exp and nbf are checked whenever present, constrained or not.
        assert!(check_registered(&claims(json!({"exp": "soon"})), &rules, NOW).is_err());
        assert!(check_registered(&claims(json!({"exp": NOW - 1})), &rules, NOW).is_err());
    }

    #[test]
    fn matchers_on_json_values() {
        let m = |spec: MatchSpec| spec.compile().unwrap();
        let rows: &[(MatchSpec, Value, bool)] = &[
            (MatchSpec::Equals("acme".into()), json!("acme"), true),
            (MatchSpec::Equals("true".into()), json!(true), true),
            (MatchSpec::Equals("42".into()), json!(42), true),
            (MatchSpec::Contains("admin".into()), json!(["user", "admin"]), true),
            (MatchSpec::Contains("admin".into()), json!(["user", 1, "admin"]), false),
            (MatchSpec::Contains("admin".into()), json!({"admin": true}), false),
            (MatchSpec::Contains("admin".into()), json!("{\"admin\":1}"), true),
            (MatchSpec::Present(true), json!({"a": 1}), true),
            (MatchSpec::Present(true), json!(null), false),
            (MatchSpec::Present(false), json!(null), true),
            (MatchSpec::Equals("".into()), json!(null), false),
            (MatchSpec::Regex(".*".into()), json!({"a": 1}), false),
        ];
        for (spec, value, expected) in rows {
            assert_eq!(value_matches(&m(spec.clone()), Some(value)), *expected, "{spec:?} on {value}");
        }
        assert!(!value_matches(&m(MatchSpec::Regex(".*".into())), None));
    }
}
