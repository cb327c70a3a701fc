//! Parses the command line and runs one scenario; the report's JSON is the last
//! line of stdout.

use clap::Parser;
use sluice_loadtest::cli::{execute, Cli};

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match execute(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sluice-loadtest: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
