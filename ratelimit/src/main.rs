//! gatehouse-ratelimit: configured by environment variables, as envoyproxy/ratelimit is.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use gatehouse_common::config::Env;
use gatehouse_common::server;
use gatehouse_ratelimit::clock::Clock;
use gatehouse_ratelimit::settings::{ConfigSource, Settings};
use gatehouse_ratelimit::stats::Stats;
use gatehouse_ratelimit::{App, Listeners, load_rules, rules};

/// mimalloc: the service allocates small, short-lived buffers per request from two threads;
/// it measured faster than the system allocator in the load benchmark (BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "gatehouse-ratelimit", version, about = "Envoy rate-limit service")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve ShouldRateLimit (the default), configured by environment variables.
    Serve,
    /// Exit 0 if the running service's `/healthcheck` (HOST/PORT) answers 200: the
    /// container health check, for images without curl.
    Healthcheck,
    /// Validate rule files and print the effective rules, or the exact error.
    CheckConfig {
        /// A rule file, or a directory of them.
        path: PathBuf,
        /// Allow several files to define one domain (as MERGE_DOMAIN_CONFIG=true).
        #[arg(long)]
        merge_domains: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::CheckConfig { path, merge_domains }) => check_config(&path, merge_domains),
        Some(Command::Healthcheck) => server::healthcheck_command(
            "gatehouse-ratelimit",
            Settings::from_env(&Env::from_process()).map(|s| s.http_addr),
        ),
        Some(Command::Serve) | None => match serve() {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("gatehouse-ratelimit: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}

fn check_config(path: &std::path::Path, merge_domains: bool) -> ExitCode {
    let stats = Stats::new(&gatehouse_common::metrics::Metrics::new());
    let result = if path.is_dir() {
        load_rules(path, false, merge_domains, &stats)
    } else {
        rules::RuleSet::load(&[path.to_path_buf()], merge_domains, &stats)
    };
    match result {
        Ok(set) if set.files.is_empty() => {
            eprintln!("{}: no .yaml files found", path.display());
            ExitCode::FAILURE
        }
        Ok(set) => {
            print!("{}", set.dump());
            eprintln!("OK: {} file(s)", set.files.len());
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
    server::run_until_signalled(&settings.telemetry(), |shutdown| async move {
        for warning in &settings.ignored {
            tracing::warn!("{warning}");
        }
        let listeners = Listeners::bind(&settings).await.context("binding listeners")?;
        tracing::info!(
            grpc = %listeners.grpc.describe(),
            http = %settings.http_addr,
            debug = %settings.debug_addr,
            config = %match &settings.config_source {
                ConfigSource::File => settings.config_dir.display().to_string(),
                ConfigSource::Xds(xds) => format!("xds {}", xds.server_url),
            },
            "starting gatehouse-ratelimit"
        );
        let app = App::build(settings, Clock::System).await?;
        app.serve(listeners, shutdown).await?;
        Ok(())
    })
}
