//! Prometheus metrics: one registry per process, encoded in the text exposition format.
//!
//! Metrics are registered while a service is being built; the request path only touches the
//! metric handles (atomics), never the registry.

use std::sync::Arc;

use parking_lot::RwLock;
use prometheus_client::encoding::text::encode;
use prometheus_client::registry::{Metric, Registry};

#[derive(Clone, Default)]
pub struct Metrics {
    registry: Arc<RwLock<Registry>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `metric` under `name` and returns it, so callers can keep the handle.
    pub fn register<M: Metric + Clone>(&self, name: &str, help: &str, metric: M) -> M {
        self.registry.write().register(name, help, metric.clone());
        metric
    }

    /// The text exposition of every registered metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail; an error would only come from a broken encoder.
        if let Err(e) = encode(&mut out, &self.registry.read()) {
            tracing::error!(error = %e, "failed to encode metrics");
        }
        out
    }

    /// An axum route serving [`Metrics::encode`] with the OpenMetrics content type.
    pub fn router(&self, path: &str) -> axum::Router {
        let metrics = self.clone();
        axum::Router::new().route(
            path,
            axum::routing::get(move || {
                let body = metrics.encode();
                async move {
                    (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        body,
                    )
                }
            }),
        )
    }
}
