//! Authorization: ordered rules over the request and the identity. The first rule that fails
//! denies with 403 and names itself in the log and in the `rule` label of the deny metric.
//!
//! A rule has an optional `when` condition (the rule applies only if it matches) and one
//! check: `require` (attribute matchers), `cel` (a CEL expression that must be `true`), or
//! `rego` (an OPA Rego query that must be `true`, evaluated in-process by regorus). CEL and
//! Rego see the same input: `{"request": ..., "identity": ...}` (docs/extauth.md).

use std::sync::Arc;

use gatehouse_common::matcher::StringMatcher;
use serde_json::{Value, json};

use crate::identity::claims::value_matches;
use crate::identity::{Identity, lookup_path};
use crate::request::AuthRequest;

/// A request or identity attribute a matcher tests.
#[derive(Clone, Debug, PartialEq)]
pub enum Selector {
    Method,
    Path,
    Host,
    Header(String),
    Query(String),
    Context(String),
    Subject,
    Scopes,
    Claim(String),
    Metadata(String),
}

/// All parts must match.
#[derive(Clone, Debug, Default)]
pub struct Condition {
    pub parts: Vec<(Selector, StringMatcher)>,
}

impl Condition {
    pub fn matches(&self, request: &AuthRequest, identity: &Identity) -> bool {
        self.parts.iter().all(|(selector, matcher)| match selector {
            Selector::Method => matcher.matches(Some(&request.method)),
            Selector::Path => matcher.matches(Some(&request.path)),
            Selector::Host => matcher.matches(Some(&request.host)),
            Selector::Header(name) => matcher.matches(request.header(name)),
            Selector::Query(name) => matcher.matches(request.query_param(name).as_deref()),
            Selector::Context(name) => matcher.matches(request.context.get(name).map(String::as_str)),
            Selector::Subject => matcher.matches(Some(&identity.subject)),
            Selector::Scopes => matcher.matches_list(identity.scopes.iter().map(String::as_str)),
            Selector::Claim(path) => value_matches(matcher, lookup_path(&identity.claims, path)),
            Selector::Metadata(path) => value_matches(matcher, lookup_path(&identity.metadata, path)),
        })
    }
}

pub enum Check {
    Require(Condition),
    Cel(Box<cel::Program>),
    Rego { engine: Box<regorus::Engine>, query: String },
}

pub struct Rule {
    pub name: Arc<str>,
    pub when: Option<Condition>,
    pub check: Check,
}

/// The policy input CEL and Rego see, built once per request and only when a rule needs it.
pub fn policy_input(request: &AuthRequest, identity: &Identity) -> Value {
    json!({ "request": request.to_json(), "identity": identity.to_json() })
}

impl Rule {
    /// `require`, `cel` or `rego`, for spans.
    pub fn kind(&self) -> &'static str {
        match self.check {
            Check::Require(_) => "require",
            Check::Cel(_) => "cel",
            Check::Rego { .. } => "rego",
        }
    }

    /// Whether the request passes this rule. `input` is built on first use.
    pub fn allows(&self, request: &AuthRequest, identity: &Identity, input: &mut Option<Value>) -> bool {
        if let Some(when) = &self.when
            && !when.matches(request, identity)
        {
            return true;
        }
        match &self.check {
            Check::Require(condition) => condition.matches(request, identity),
            Check::Cel(program) => {
                let input = input.get_or_insert_with(|| policy_input(request, identity));
                eval_cel(program, input).unwrap_or_else(|e| {
                    tracing::warn!(rule = %self.name, error = %e, "CEL rule failed to evaluate; denying");
                    false
                })
            }
            Check::Rego { engine, query } => {
                let input = input.get_or_insert_with(|| policy_input(request, identity));
                eval_rego(engine, query, input).unwrap_or_else(|e| {
                    tracing::warn!(rule = %self.name, error = %e, "Rego rule failed to evaluate; denying");
                    false
                })
            }
        }
    }
}

/// Runs a CEL program with `request` and `identity` bound; only a boolean `true` allows.
pub fn eval_cel(program: &cel::Program, input: &Value) -> Result<bool, String> {
    let mut context = cel::Context::default();
    for name in ["request", "identity"] {
        let value = cel::to_value(&input[name]).map_err(|e| e.to_string())?;
        context.add_variable_from_value(name, value);
    }
    match program.execute(&context) {
        Ok(cel::Value::Bool(b)) => Ok(b),
        Ok(other) => Err(format!("expression returned {other:?}, not a bool")),
        Err(e) => Err(e.to_string()),
    }
}

/// Evaluates a Rego rule path (`data.gatehouse.allow`) on a copy of the compiled engine; only
/// a boolean `true` allows, an undefined rule denies.
pub fn eval_rego(engine: &regorus::Engine, query: &str, input: &Value) -> Result<bool, String> {
    let mut engine = engine.clone();
    engine.set_input(regorus::Value::from(input.clone()));
    match engine.eval_rule(query.to_string()) {
        Ok(v) => Ok(v == regorus::Value::Bool(true)),
        Err(e) => Err(e.to_string()),
    }
}
