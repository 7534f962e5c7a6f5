//! The HTTP port: health, metrics and config status.

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use gatehouse_common::metrics::Metrics;
use gatehouse_common::server::Shutdown;
use serde_json::json;

use crate::service::Transformer;

#[derive(Clone)]
struct AppState {
    transformer: Transformer,
    shutdown: Shutdown,
}

/// `/healthcheck` fails once `shutdown` triggers, so load balancers stop sending while
/// connections drain.
pub fn router(transformer: Transformer, metrics: &Metrics, shutdown: Shutdown) -> Router {
    Router::new()
        .route("/healthcheck", get(healthcheck))
        .route("/config-status", get(config_status))
        .with_state(AppState { transformer, shutdown })
        .merge(metrics.router("/metrics"))
}

async fn healthcheck(State(state): State<AppState>) -> Response {
    if state.shutdown.is_triggered() {
        StatusCode::SERVICE_UNAVAILABLE.into_response()
    } else {
        (StatusCode::OK, "OK").into_response()
    }
}

async fn config_status(State(state): State<AppState>) -> Response {
    let mut body = state.transformer.config.status().to_json();
    let mut names: Vec<String> = state.transformer.config.load().by_name.keys().cloned().collect();
    names.sort();
    body["transformations"] = json!(names);
    ([(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}
