//! gatehouse-transform: request and response transformation as Envoy's external processor
//! (`envoy.service.ext_proc.v3`).
//!
//! A stream flows: [`grpc`] (one ext_proc stream per HTTP request) → [`exchange::Exchange`]
//! (what to ask Envoy for, which rule applies) → [`transformation::Rule::apply`] (body,
//! headers, request line, status, metadata) → an [`message::Edit`] → mutations back to Envoy.
//! [`config`] builds [`transformation::Transformations`] from the YAML file; [`template`],
//! [`extract`], [`json_patch`] and [`xml`] are the operations' building blocks.

pub mod config;
pub mod exchange;
pub mod extract;
pub mod grpc;
pub mod http;
pub mod json_patch;
pub mod message;
pub mod nesting;
pub mod service;
pub mod settings;
pub mod stats;
pub mod template;
pub mod transformation;
pub mod xml;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use gatehouse_common::config::ConfigErrors;
use gatehouse_common::metrics::Metrics;
use gatehouse_common::reload::{Reloader, WatchSpec};
pub use gatehouse_common::server::Listeners;
use gatehouse_common::server::{self, ServeError, Shutdown};

use crate::service::Transformer;
use crate::settings::Settings;
use crate::stats::Stats;
use crate::transformation::Transformations;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("invalid transformation config:\n{0}")]
    Config(#[from] ConfigErrors),
    #[error(transparent)]
    Serve(#[from] ServeError),
}

type Loader = Arc<dyn Fn() -> Result<Transformations, ConfigErrors> + Send + Sync>;

pub struct App {
    settings: Settings,
    transformer: Transformer,
    metrics: Metrics,
    load: Loader,
}

impl App {
    /// Loads the transformation file (failing on errors: a service must not start with a
    /// config it cannot apply).
    pub fn build(settings: Settings) -> Result<App, StartError> {
        let metrics = Metrics::for_service("transform");
        let stats = Stats::new(&metrics);
        let file = settings.config_file.clone();
        let env: BTreeMap<String, String> = settings.template_env.clone();
        let load: Loader = Arc::new(move || config::load(&file, &env));
        let config = Reloader::new(load()?, &metrics, "config");
        Ok(App { settings, transformer: Transformer { config, stats }, metrics, load })
    }

    /// Serves until `shutdown`, watching the transformation file for changes.
    pub async fn serve(self, listeners: Listeners, shutdown: Shutdown) -> Result<(), StartError> {
        let watch_paths: Vec<PathBuf> = self.transformer.config.load().files.clone();
        let mut spec = WatchSpec::new(watch_paths);
        spec.watch_root = self.settings.config_file.parent().map(|p| p.to_path_buf());
        let load = self.load.clone();
        let _watch = self.transformer.config.watch(spec, move || load(), {
            let shutdown = shutdown.clone();
            async move { shutdown.wait().await }
        });

        let routes = tonic::service::Routes::default().add_service(grpc::server(self.transformer.clone()));
        let http = listeners.http.map(|l| (l, http::router(self.transformer.clone(), &self.metrics)));
        let options = self.settings.service.grpc_options(&self.metrics);
        server::serve_grpc_and_http(listeners.grpc, routes, http, options, shutdown).await?;
        Ok(())
    }
}
