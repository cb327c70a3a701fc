//! `sluice`: parse the configuration, start logging, run the node; or, as
//! `sluice token`, print a token for development. Nothing else.

use std::process::ExitCode;

use sluice_node::{app, config, token, Config};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("token") {
        return token(&args[1..]);
    }
    if args.iter().any(|a| a == "--help" || a == "-h") {
        print!("{}", config::help());
        return ExitCode::SUCCESS;
    }
    let config = match Config::from_env_and_args(args) {
        Ok(c) => c,
        Err(e) => {
            for line in &e.0 {
                eprintln!("sluice: config: {line}");
            }
            return ExitCode::from(2);
        }
    };
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    if config.log_json {
        // One JSON object per line, the event's fields at the top level, so a log
        // collector indexes `connection_id`, `close_code`, … without parsing text.
        tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_env_filter(filter)
            .init();
    } else {
        tracing_subscriber::fmt().with_env_filter(filter).init();
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("sluice: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(app::run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sluice: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `sluice token …`: prints a signed token on stdout, or one line on stderr.
fn token(args: &[String]) -> ExitCode {
    if args.iter().any(|a| a == "--help" || a == "-h") {
        print!("{}", token::USAGE);
        return ExitCode::SUCCESS;
    }
    let minted = token::Request::parse(args, |k| std::env::var(k).ok()).and_then(|r| r.mint());
    match minted {
        Ok(t) => {
            println!("{t}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("sluice token: {e}");
            ExitCode::from(2)
        }
    }
}
