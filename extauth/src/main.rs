//! gatehouse-extauth: configured by environment variables and one policy file.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use gatehouse_common::config::Env;
use gatehouse_common::server;
use gatehouse_extauth::settings::Settings;
use gatehouse_extauth::{App, Listeners};

/// mimalloc: as in gatehouse-ratelimit, many small per-request allocations from two threads.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "gatehouse-extauth", version, about = "Envoy external authorization service")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve Check and forward-auth (the default), configured by environment variables.
    Serve,
    /// Exit 0 if the running service's `/healthcheck` (HOST/PORT) answers 200: the
    /// container health check, for images without curl.
    Healthcheck,
    /// Validate a policy file and list its policies, or print the exact errors.
    CheckConfig { path: PathBuf },
    /// Print the hash of an API key (or password) for the policy file or Redis.
    HashKey {
        key: String,
        /// argon2id instead of SHA-256 (slower to check; for low-entropy secrets).
        #[arg(long)]
        argon2: bool,
    },
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Some(Command::HashKey { key, argon2 }) => {
            if argon2 {
                match gatehouse_extauth::hash_key_argon2(&key) {
                    Ok(h) => println!("{h}"),
                    Err(e) => {
                        eprintln!("gatehouse-extauth: {e}");
                        return ExitCode::FAILURE;
                    }
                }
            } else {
                println!("{}", gatehouse_extauth::hash_key_sha256(&key));
            }
            ExitCode::SUCCESS
        }
        Some(Command::CheckConfig { path }) => check_config(path),
        Some(Command::Healthcheck) => server::healthcheck_command(
            "gatehouse-extauth",
            Settings::from_env(&Env::from_process()).map(|s| s.service.http_addr),
        ),
        Some(Command::Serve) | None => match serve() {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("gatehouse-extauth: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}

fn check_config(path: PathBuf) -> ExitCode {
    // Multi-threaded: the load blocks this thread on discovery while a worker drives the I/O.
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("gatehouse-extauth: {e}");
            return ExitCode::FAILURE;
        }
    };
    let _entered = runtime.enter();
    let registry = gatehouse_extauth::identity::jwks::Registry::new(reqwest::Client::new(), runtime.handle().clone());
    let ctx = gatehouse_extauth::config::BuildContext { jwks: &registry, redis: None, check_only: true };
    // Discovery is fetched so that an issuer spelled differently from the IdP's is caught
    // here rather than as a 401 for every token.
    match gatehouse_extauth::config::load_and_check_issuers(&path, &ctx) {
        Ok((policies, warnings)) => {
            let mut names: Vec<_> = policies.by_name.keys().cloned().collect();
            names.sort();
            for name in names {
                println!("policy {name}");
            }
            for warning in warnings {
                eprintln!("warning: {warning}");
            }
            eprintln!("OK: {}", path.display());
            ExitCode::SUCCESS
        }
        Err(errors) => {
            eprintln!("{errors}");
            ExitCode::FAILURE
        }
    }
}

fn serve() -> anyhow::Result<()> {
    let settings = Settings::from_env(&Env::from_process())?;
    server::run_until_signalled(&settings.service.telemetry(), |shutdown| async move {
        let listeners = Listeners::bind(&settings.service).await.context("binding listeners")?;
        tracing::info!(
            grpc = %settings.service.grpc_addr,
            http = %settings.service.http_addr,
            config = %settings.config_file.display(),
            "starting gatehouse-extauth"
        );
        let app = App::build(settings).await?;
        app.serve(listeners, shutdown).await?;
        Ok(())
    })
}
