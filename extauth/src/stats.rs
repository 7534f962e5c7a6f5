//! Prometheus metrics of decisions.

use gatehouse_common::metrics::Metrics;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabels {
    pub policy: String,
    /// `allow`, `deny` or `error`.
    pub result: &'static str,
    /// The HTTP status of a deny (401, 403); 200 for allows, 0 for errors.
    pub status: u16,
    /// The authorization rule that denied, if any.
    pub rule: String,
}

#[derive(Clone)]
pub struct Stats {
    decisions: Family<DecisionLabels, Counter>,
}

impl Stats {
    pub fn new(metrics: &Metrics) -> Stats {
        Stats {
            decisions: metrics.register(
                "extauth_decisions",
                "Check decisions by policy, result, status and failing rule",
                Family::default(),
            ),
        }
    }

    fn count(&self, policy: &str, result: &'static str, status: u16, rule: &str) {
        self.decisions
            .get_or_create(&DecisionLabels { policy: policy.to_string(), result, status, rule: rule.to_string() })
            .inc();
    }

    pub fn allowed(&self, policy: &str) {
        self.count(policy, "allow", 200, "");
    }

    pub fn denied(&self, policy: &str, status: u16, rule: &str) {
        self.count(policy, "deny", status, rule);
    }

    pub fn errored(&self, policy: &str) {
        self.count(policy, "error", 0, "");
    }
}
