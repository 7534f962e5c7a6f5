//! Check semantics, shared by the gRPC and HTTP transports: pick the policy, run it, count
//! the result.

use std::sync::Arc;

use gatehouse_common::reload::Reloader;

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
    pub async fn check(&self, request: &AuthRequest) -> (String, Result<Decision, Error>) {
        let policies = self.policies.load();
        let (policy_name, result) = match policies.select(request) {
            Selection::Found(policy) => (policy.name.to_string(), policy.evaluate(request, &self.signer).await),
            Selection::Unknown(name) => {
                // A route names a policy this config lacks: fail closed, and say so loudly.
                tracing::warn!(policy = %name, "route names an unknown policy; denying");
                (name.clone(), Ok(forbidden(format!("no auth policy named {name:?}"))))
            }
            Selection::None => ("".into(), Ok(forbidden("no auth policy for this route".into()))),
        };
        match &result {
            Ok(Decision::Allow(allow)) => {
                self.stats.allowed(&policy_name);
                tracing::debug!(policy = %policy_name, subject = %allow.subject, path = %request.path, "allowed");
            }
            Ok(Decision::Deny(deny)) => {
                let rule = deny.rule.as_deref().unwrap_or("");
                self.stats.denied(&policy_name, deny.status, rule);
                tracing::info!(policy = %policy_name, status = deny.status, rule, reason = %deny.reason, path = %request.path, "denied");
            }
            Err(e) => {
                self.stats.errored(&policy_name);
                tracing::warn!(policy = %policy_name, error = %e, path = %request.path, "cannot decide");
            }
        }
        (policy_name, result)
    }
}

fn forbidden(reason: String) -> Decision {
    Decision::Deny(Deny { status: 403, reason, ..Default::default() })
}
