//! Check semantics, shared by the gRPC and HTTP transports: pick the policy, run it, count
//! the result.

use std::sync::Arc;

use gatehouse_common::reload::Reloader;
use tracing::Instrument as _;
use tracing::field::Empty;

use crate::Error;
use crate::policy::{Decision, Deny, Policies, Selection};
use crate::request::AuthRequest;
use crate::signer::Signer;
use crate::stats::Stats;

#[derive(Clone)]
pub struct Authorizer {
    pub policies: Reloader<Policies>,
    pub signer: Arc<Signer>,
    pub stats: Stats,
}

impl Authorizer {
    /// Decides `request`. Returns the policy name for logs with the decision.
    ///
    /// Traced as two spans under the caller's: `policy selection` (`extauth.policy`), and
    /// `decision` around the policy's evaluation (the identity methods' spans are its
    /// children), with `extauth.decision` (`allowed`, `denied` or `error`) and, when there is
    /// an answer, `http.response.status_code`.
    pub async fn check(&self, request: &AuthRequest) -> (String, Result<Decision, Error>) {
        let started = std::time::Instant::now();
        let policies = self.policies.load();
        let selection = {
            let span = tracing::info_span!("extauth.policy", otel.name = "policy selection", extauth.policy = Empty);
            let _entered = span.enter();
            let selection = policies.select(request);
            if !span.is_disabled() {
                match &selection {
                    Selection::Found(policy) => span.record("extauth.policy", &*policy.name),
                    Selection::Unknown(name) => span.record("extauth.policy", name.as_str()),
                    Selection::None => span.record("extauth.policy", ""),
                };
            }
            selection
        };
        let span = tracing::info_span!(
            "extauth.decision",
            otel.name = "decision",
            extauth.policy = Empty,
            extauth.decision = Empty,
            http.response.status_code = Empty,
            otel.status_code = Empty,
        );
        let (policy_name, result) = match selection {
            Selection::Found(policy) => {
                (policy.name.to_string(), policy.evaluate(request, &self.signer).instrument(span.clone()).await)
            }
            Selection::Unknown(name) => {
                // A route names a policy this config lacks: fail closed, and say so loudly.
                tracing::warn!(policy = %name, "route names an unknown policy; denying");
                (name.clone(), Ok(forbidden(format!("no auth policy named {name:?}"))))
            }
            Selection::None => ("".into(), Ok(forbidden("no auth policy for this route".into()))),
        };
        if !span.is_disabled() {
            span.record("extauth.policy", policy_name.as_str());
            match &result {
                Ok(Decision::Allow(_)) => {
                    span.record("extauth.decision", "allowed");
                    span.record("http.response.status_code", 200);
                }
                Ok(Decision::Deny(deny)) => {
                    span.record("extauth.decision", "denied");
                    span.record("http.response.status_code", i64::from(deny.status));
                }
                Err(_) => {
                    span.record("extauth.decision", "error");
                    span.record("otel.status_code", "error");
                }
            };
        }
        match &result {
            Ok(Decision::Allow(allow)) => {
                self.stats.allowed(&policy_name, started);
                tracing::debug!(policy = %policy_name, subject = %allow.subject, path = %request.path, "allowed");
            }
            Ok(Decision::Deny(deny)) => {
                let rule = deny.rule.as_deref().unwrap_or("");
                self.stats.denied(&policy_name, deny.status, rule, started);
                tracing::info!(policy = %policy_name, status = deny.status, rule, reason = %deny.reason, path = %request.path, "denied");
            }
            Err(e) => {
                self.stats.errored(&policy_name, e, started);
                tracing::warn!(policy = %policy_name, error = %e, path = %request.path, "cannot decide");
            }
        }
        (policy_name, result)
    }
}

fn forbidden(reason: String) -> Decision {
    Decision::Deny(Deny { status: 403, reason, ..Default::default() })
}
