//! Health as `/healthcheck` and `grpc.health.v1` report it: unhealthy once shutdown starts,
//! and, with HEALTHY_WITH_AT_LEAST_ONE_CONFIG_LOADED, until a config with a domain is loaded.

use std::time::Duration;

use gatehouse_common::reload::Reloader;
use gatehouse_common::server::Shutdown;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::rules::RuleSet;

/// The gRPC health service name, as envoyproxy/ratelimit registers it.
pub const SERVICE_NAME: &str = "ratelimit";

#[derive(Clone)]
pub struct Health {
    shutdown: Shutdown,
    rules: Reloader<RuleSet>,
    require_config: bool,
}

impl Health {
    pub fn new(shutdown: Shutdown, rules: Reloader<RuleSet>, require_config: bool) -> Self {
        Health { shutdown, rules, require_config }
    }

    pub fn is_healthy(&self) -> bool {
        !self.shutdown.is_triggered() && (!self.require_config || !self.rules.load().is_empty())
    }

    /// Keeps the gRPC health service in step with [`Health::is_healthy`] until shutdown.
    pub fn spawn_grpc_sync(&self, reporter: HealthReporter) {
        let this = self.clone();
        tokio::spawn(async move {
            let mut last = None;
            loop {
                let status = if this.is_healthy() { ServingStatus::Serving } else { ServingStatus::NotServing };
                if last != Some(status) {
                    reporter.set_service_status(SERVICE_NAME, status).await;
                    reporter.set_service_status("", status).await;
                    last = Some(status);
                }
                if this.shutdown.is_triggered() {
                    return;
                }
                tokio::select! {
                    _ = this.shutdown.wait(), if status == ServingStatus::Serving => {}
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                }
            }
        });
    }
}
