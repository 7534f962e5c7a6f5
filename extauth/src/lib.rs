//! gatehouse-extauth: Envoy's external authorization (`envoy.service.auth.v3`).
//!
//! A request flows: transport ([`grpc`] or the forward-auth endpoint in [`http`]) →
//! [`request::AuthRequest`] → [`service::Authorizer`] picks a [`policy::Policy`] →
//! [`identity`] (who is calling) → [`authz`] (may they) → the response (headers, metadata,
//! a signed JWT from [`signer`]). [`config`] builds policies from the YAML file.

pub mod authz;
pub mod config;
pub mod grpc;
pub mod http;
pub mod identity;
pub mod policy;
pub mod request;
pub mod service;
pub mod settings;
pub mod signer;
pub mod stats;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use gatehouse_common::config::ConfigErrors;
use gatehouse_common::metrics::Metrics;
use gatehouse_common::redis::{RedisConn, RedisSetupError, redis_stats};
use gatehouse_common::reload::{Reloader, WatchSpec};
pub use gatehouse_common::server::Listeners;
use gatehouse_common::server::{self, ServeError, Shutdown};

use crate::identity::jwks::Registry;
use crate::service::Authorizer;
use crate::settings::Settings;
use crate::signer::{Signer, SignerError};
use crate::stats::{Dependencies, Stats};

/// Why a check could not be decided. Bad credentials are not errors: they are denies.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// An IdP, introspection endpoint or Redis cannot be reached and nothing is cached.
    /// Transient: the same request may succeed later.
    #[error("unavailable: {0}")]
    Unavailable(String),
    #[error("internal error: {0}")]
    Internal(String),
    /// The request itself is malformed (e.g. a CheckRequest without HTTP attributes).
    #[error("bad request: {0}")]
    BadRequest(String),
}

impl Error {
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::Unavailable(_))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("invalid auth config:\n{0}")]
    Config(#[from] ConfigErrors),
    #[error(transparent)]
    Redis(#[from] RedisSetupError),
    #[error(transparent)]
    Signer(#[from] SignerError),
    #[error(transparent)]
    Serve(#[from] ServeError),
}

/// Hashes an API key or password with argon2id, for the config file.
pub fn hash_key_argon2(secret: &str) -> Result<String, String> {
    use argon2::password_hash::{PasswordHasher, SaltString, rand_core::OsRng};
    let salt = SaltString::generate(&mut OsRng);
    argon2::Argon2::default().hash_password(secret.as_bytes(), &salt).map(|h| h.to_string()).map_err(|e| e.to_string())
}

/// Hashes an API key with SHA-256, for the config file or Redis: `sha256:<hex>`.
pub fn hash_key_sha256(secret: &str) -> String {
    format!("sha256:{}", identity::api_key::hex(&identity::api_key::sha256(secret.as_bytes())))
}

/// What extauth uses Redis for, the `op` label of its Redis metrics.
const REDIS_OPS: &[&str] =
    &["api_key", "session_load", "session_save", "session_delete", "session_lock", "session_events"];

pub struct App {
    settings: Settings,
    authorizer: Authorizer,
    metrics: Metrics,
    load: Arc<dyn Fn() -> Result<policy::Policies, ConfigErrors> + Send + Sync>,
}

impl App {
    /// Loads the policy file (failing on errors: a service must not start without policy)
    /// and prepares everything but the listeners.
    pub async fn build(settings: Settings) -> Result<App, StartError> {
        let metrics = Metrics::for_service("extauth");
        let stats = Stats::new(&metrics);
        // Registered with or without Redis, so dashboards find the same metrics everywhere.
        let redis_stats = redis_stats(&metrics, REDIS_OPS);
        let redis = match &settings.redis {
            Some(r) => Some(RedisConn::connect(r).await?.instrumented(&redis_stats)),
            None => None,
        };
        let http = reqwest::Client::builder()
            .user_agent(concat!("gatehouse-extauth/", env!("CARGO_PKG_VERSION")))
            .redirect(reqwest::redirect::Policy::limited(3))
            .build()
            .map_err(|e| StartError::Serve(ServeError::Io(std::io::Error::other(e))))?;
        let registry = Arc::new(
            Registry::new(http, tokio::runtime::Handle::current()).with_dependencies(Dependencies::register(&metrics)),
        );
        let file = settings.config_file.clone();
        // Runs on a blocking thread (spawn_blocking, the reloader): it may wait on discovery.
        let load: Arc<dyn Fn() -> Result<policy::Policies, ConfigErrors> + Send + Sync> = Arc::new(move || {
            let ctx = config::BuildContext { jwks: &registry, redis: redis.as_ref(), check_only: false };
            let (policies, warnings) = config::load_and_check_issuers(&file, &ctx)?;
            for warning in warnings {
                tracing::warn!("{warning}");
            }
            Ok(policies)
        });
        let initial = {
            let load = load.clone();
            tokio::task::spawn_blocking(move || load())
                .await
                .map_err(|e| StartError::Serve(ServeError::Io(std::io::Error::other(e))))??
        };
        let policies = Reloader::new(initial, &metrics, "config");
        let signer = Signer::new(
            settings.signing_issuer.clone(),
            settings.signing_key_file.as_deref(),
            Duration::from_secs(30),
        )?;
        let authorizer = Authorizer { policies, signer: Arc::new(signer), stats };
        Ok(App { settings, authorizer, metrics, load })
    }

    pub fn authorizer(&self) -> &Authorizer {
        &self.authorizer
    }

    /// Serves until `shutdown`, watching the policy file for changes.
    pub async fn serve(self, listeners: Listeners, shutdown: Shutdown) -> Result<(), StartError> {
        // The policy file and what it references (htpasswd, Rego, secret files) at start.
        let watch_paths: Vec<PathBuf> = self.authorizer.policies.load().files.clone();
        let mut spec = WatchSpec::new(watch_paths);
        spec.watch_root = self.settings.config_file.parent().map(|p| p.to_path_buf());
        let load = self.load.clone();
        let _watch = self.authorizer.policies.watch(spec, move || load(), {
            let shutdown = shutdown.clone();
            async move { shutdown.wait().await }
        });

        let routes = tonic::service::Routes::default().add_service(grpc::server(self.authorizer.clone()));
        let http = listeners.http.map(|l| (l, http::router(self.authorizer.clone(), &self.metrics)));
        let options = self.settings.service.grpc_options(&self.metrics);
        server::serve_grpc_and_http(listeners.grpc, routes, http, options, shutdown).await?;
        Ok(())
    }
}
