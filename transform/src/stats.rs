//! Prometheus metrics of exchanges.

use std::time::Instant;

use gatehouse_common::metrics::{Durations, ErrorStats, Metrics, durations};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use crate::exchange::{Exchange, Outcome};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ExchangeLabels {
    pub transformation: String,
    /// `transformed`, or `rejected` with the status the client got.
    pub result: &'static str,
    /// The status of a rejection; 0 otherwise.
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabels {
    phase: &'static str,
}

#[derive(Clone)]
pub struct Stats {
    exchanges: Family<ExchangeLabels, Counter>,
    durations: Durations<PhaseLabels>,
    errors: ErrorStats,
}

impl Stats {
    pub fn new(metrics: &Metrics) -> Stats {
        Stats {
            exchanges: metrics.register(
                &metrics.name("exchanges"),
                "Request/response exchanges a transformation ran on, by result",
                Family::default(),
            ),
            durations: metrics.register(
                &metrics.name("request_duration_seconds"),
                "Time to answer one ext_proc message, by phase",
                durations(),
            ),
            errors: ErrorStats::register(
                metrics,
                "Exchanges that failed, by the rejection's error or `protocol` (a malformed ext_proc stream)",
                &[
                    "invalid_body",
                    "body_too_large",
                    "transformation_failed",
                    "unknown_transformation",
                    "bad_upstream_response",
                    "protocol",
                ],
            ),
        }
    }

    /// Records the time one message of `phase` took to answer.
    pub fn answered(&self, phase: &'static str, started: Instant) {
        self.durations.get_or_create(&PhaseLabels { phase }).observe(started.elapsed().as_secs_f64());
    }

    /// Counts a stream Envoy sent that the service could not follow.
    pub fn protocol_error(&self) {
        self.errors.count("protocol");
    }

    /// Counts a finished exchange; exchanges on routes without a transformation are not counted.
    pub fn finished(&self, exchange: &Exchange) {
        let (result, status) = match exchange.outcome {
            Outcome::Skipped => return,
            Outcome::Transformed => ("transformed", 0),
            Outcome::Rejected(status, error) => {
                self.errors.count(error);
                ("rejected", status)
            }
        };
        let labels = ExchangeLabels { transformation: exchange.transformation_name().to_string(), result, status };
        self.exchanges.get_or_create(&labels).inc();
    }
}
