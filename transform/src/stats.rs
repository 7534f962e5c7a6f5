//! Prometheus metrics of exchanges.

use gatehouse_common::metrics::Metrics;
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

#[derive(Clone)]
pub struct Stats {
    exchanges: Family<ExchangeLabels, Counter>,
}

impl Stats {
    pub fn new(metrics: &Metrics) -> Stats {
        Stats {
            exchanges: metrics.register(
                "transform_exchanges",
                "Request/response exchanges a transformation ran on, by result",
                Family::default(),
            ),
        }
    }

    /// Counts a finished exchange; exchanges on routes without a transformation are not counted.
    pub fn finished(&self, exchange: &Exchange) {
        let (result, status) = match exchange.outcome {
            Outcome::Skipped => return,
            Outcome::Transformed => ("transformed", 0),
            Outcome::Rejected(status) => ("rejected", status),
        };
        let labels = ExchangeLabels { transformation: exchange.transformation_name().to_string(), result, status };
        self.exchanges.get_or_create(&labels).inc();
    }
}
