//! The `mailpilot` binary: parse the command line, set up logging and the runtime, run, and turn
//! the result into an exit status. Everything else lives in the library.

use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::prelude::*;

use mailpilot::cli::Cli;
use mailpilot::exit::{classify, Exit};
use mailpilot::output::{report_error, Output};
use mailpilot::paths::Env;

fn main() -> ExitCode {
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let parsed = match mailpilot::cli::as_sendmail(&argv) {
        Some(cli) => Ok(cli),
        None => Cli::try_parse_from(&argv),
    };
    let cli = match parsed {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(Exit::Usage.code())
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    init_tracing(cli.verbose, cli.quiet);
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            report_error(&anyhow::Error::new(e).context("failed to start the async runtime"));
            return ExitCode::from(Exit::Failure.code());
        }
    };
    let exit = match runtime.block_on(mailpilot::cli::run(cli, Env::from_process())) {
        Ok(exit) => exit,
        Err(e) => {
            report_error(&e);
            classify(&e)
        }
    };
    ExitCode::from(exit.code())
}

/// Logs go to stderr. `-v`/`-q` set mailpilot's level (warnings by default); `RUST_LOG` (as
/// `level` or `target=level,...`) replaces that filter when set.
fn init_tracing(verbose: u8, quiet: bool) {
    let level = match (quiet, verbose) {
        (true, _) => LevelFilter::ERROR,
        (false, 0) => LevelFilter::WARN,
        (false, 1) => LevelFilter::INFO,
        (false, 2) => LevelFilter::DEBUG,
        (false, _) => LevelFilter::TRACE,
    };
    let default = Targets::new()
        .with_default(LevelFilter::WARN)
        .with_target("mailpilot", level);
    let filter = match std::env::var("RUST_LOG") {
        Ok(spec) if !spec.trim().is_empty() => spec.parse::<Targets>().unwrap_or_else(|e| {
            Output::default().warn(&format!("ignoring RUST_LOG={spec:?}: {e}"));
            default.clone()
        }),
        _ => default,
    };
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_target(true),
        )
        .with(filter)
        .init();
}
