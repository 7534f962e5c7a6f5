//! gatehouse-transform: configured by environment variables and one transformation file.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use gatehouse_common::config::Env;
use gatehouse_common::server;
use gatehouse_transform::settings::Settings;
use gatehouse_transform::{App, Listeners};

/// mimalloc: as in the other services, many small per-request allocations from two threads.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "gatehouse-transform",
    version,
    about = "Envoy external processor for request and response transformation"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve ext_proc (the default), configured by environment variables.
    Serve,
    /// Exit 0 if the running service's `/healthcheck` (HOST/PORT) answers 200: the
    /// container health check, for images without curl.
    Healthcheck,
    /// Validate a transformation file and list its transformations, or print the exact errors.
    CheckConfig { path: PathBuf },
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Some(Command::CheckConfig { path }) => match gatehouse_transform::config::load(&path, &Default::default()) {
            Ok(config) => {
                let mut names: Vec<_> = config.by_name.iter().collect();
                names.sort_by_key(|(name, _)| name.as_str());
                for (name, t) in names {
                    println!(
                        "transformation {name}: {} request rule(s), {} response rule(s)",
                        t.request.len(),
                        t.response.len()
                    );
                }
                eprintln!("OK: {}", path.display());
                ExitCode::SUCCESS
            }
            Err(errors) => {
                eprintln!("{errors}");
                ExitCode::FAILURE
            }
        },
        Some(Command::Healthcheck) => server::healthcheck_command(
            "gatehouse-transform",
            Settings::from_env(&Env::from_process()).map(|s| s.service.http_addr),
        ),
        Some(Command::Serve) | None => match serve() {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("gatehouse-transform: {e:#}");
                ExitCode::FAILURE
            }
        },
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
            "starting gatehouse-transform"
        );
        let app = App::build(settings)?;
        app.serve(listeners, shutdown).await?;
        Ok(())
    })
}
