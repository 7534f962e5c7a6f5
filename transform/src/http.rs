//! The HTTP port: health, metrics and config status.

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use gatehouse_common::metrics::Metrics;
use serde_json::json;

use crate::service::Transformer;

#[derive(Clone)]
struct AppState {
    transformer: Transformer,
}

/// The service's own endpoints; `common::server` adds `/healthcheck`.
pub fn router(transformer: Transformer, metrics: &Metrics) -> Router {
    Router::new()
        .route("/config-status", get(config_status))
        .with_state(AppState { transformer })
        .merge(metrics.router("/metrics"))
}

async fn config_status(State(state): State<AppState>) -> Response {
    let mut body = state.transformer.config.status().to_json();
    let mut names: Vec<String> = state.transformer.config.load().by_name.keys().cloned().collect();
    names.sort();
    body["transformations"] = json!(names);
    ([(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}
