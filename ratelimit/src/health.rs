//! Health as `/healthcheck` and `grpc.health.v1` report it: unhealthy once shutdown starts,
//! with HEALTHY_WITH_AT_LEAST_ONE_CONFIG_LOADED until a config with a domain is loaded, and
//! with REDIS_HEALTH_CHECK_ACTIVE_CONNECTION while Redis does not answer.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use gatehouse_common::redis::RedisConn;
use gatehouse_common::reload::Reloader;
use gatehouse_common::server::Shutdown;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::rules::RuleSet;

/// The gRPC health service name, as envoyproxy/ratelimit registers it.
pub const SERVICE_NAME: &str = "ratelimit";

/// How often REDIS_HEALTH_CHECK_ACTIVE_CONNECTION pings Redis, and how long a PING may take.
const REDIS_PROBE_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Clone)]
pub struct Health {
    shutdown: Shutdown,
    rules: Reloader<RuleSet>,
    require_config: bool,
    /// Whether every Redis answered its last PING; `None` when health does not follow Redis.
    redis_up: Option<Arc<AtomicBool>>,
}

impl Health {
    pub fn new(shutdown: Shutdown, rules: Reloader<RuleSet>, require_config: bool) -> Self {
        Health { shutdown, rules, require_config, redis_up: None }
    }

    /// REDIS_HEALTH_CHECK_ACTIVE_CONNECTION: unhealthy until, and whenever, one of `redis`
    /// (the store's and REDIS_PERSECOND's) fails to answer a PING within a second. They are
    /// pinged every second until shutdown.
    pub fn follow_redis(mut self, redis: Vec<RedisConn>) -> Self {
        let up = Arc::new(AtomicBool::new(false));
        self.redis_up = Some(up.clone());
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            let mut was_up = None;
            while !shutdown.is_triggered() {
                let pings = redis.iter().map(|conn| tokio::time::timeout(REDIS_PROBE_INTERVAL, conn.ping()));
                let now_up = futures::future::join_all(pings).await.iter().all(|r| matches!(r, Ok(Ok(()))));
                up.store(now_up, Ordering::Relaxed);
                if was_up.is_some_and(|was| was != now_up) {
                    if now_up {
                        tracing::info!("Redis answers again: healthy (REDIS_HEALTH_CHECK_ACTIVE_CONNECTION)");
                    } else {
                        tracing::warn!("Redis does not answer: unhealthy (REDIS_HEALTH_CHECK_ACTIVE_CONNECTION)");
                    }
                }
                was_up = Some(now_up);
                tokio::select! {
                    _ = shutdown.wait() => {}
                    _ = tokio::time::sleep(REDIS_PROBE_INTERVAL) => {}
                }
            }
        });
        self
    }

    pub fn is_healthy(&self) -> bool {
        !self.shutdown.is_triggered()
            && (!self.require_config || !self.rules.load().is_empty())
            && self.redis_up.as_ref().is_none_or(|up| up.load(Ordering::Relaxed))
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
