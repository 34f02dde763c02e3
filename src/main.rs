//! The `chatd` binary: arguments, configuration, logging, then [`chatd::run`].

use std::path::PathBuf;
use std::process::ExitCode;

use chatd::config::Config;

const USAGE: &str = "usage: chatd [--config PATH]

Serves HTTPS and WSS on one port. PATH defaults to ./server.conf; every key can be
overridden with an environment variable CHATD_<KEY> (e.g. CHATD_PORT=9443).";

fn main() -> ExitCode {
    // args_os: a path need not be UTF-8 (std::env::args() would panic on it).
    let mut args = std::env::args_os().skip(1);
    let mut config_path: Option<PathBuf> = None;
    while let Some(arg) = args.next() {
        match arg.to_string_lossy().as_ref() {
            "--config" | "-c" => match args.next() {
                Some(path) => config_path = Some(PathBuf::from(path)),
                None => return usage_error("--config needs a path"),
            },
            "--help" | "-h" => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            "--version" | "-V" => {
                println!("chatd {}", env!("CARGO_PKG_VERSION"));
                return ExitCode::SUCCESS;
            }
            other => return usage_error(&format!("unknown argument `{other}`")),
        }
    }
    let required = config_path.is_some();
    let path = config_path.unwrap_or_else(|| PathBuf::from("server.conf"));
    // vars_os: std::env::vars() panics on the first variable that is not UTF-8.
    let env = chatd::config::utf8_environment(std::env::vars_os());
    let config = match env.and_then(|env| Config::load(&path, required, env)) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("chatd: configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    init_logging(config.log_level);
    match chatd::run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e}");
            eprintln!("chatd: {e}");
            ExitCode::FAILURE
        }
    }
}

fn usage_error(message: &str) -> ExitCode {
    eprintln!("chatd: {message}\n\n{USAGE}");
    ExitCode::from(2)
}

/// Logs go to stderr; RUST_LOG, when set, overrides `log_level`.
fn init_logging(level: log::LevelFilter) {
    let mut builder = env_logger::Builder::new();
    builder.filter_level(level);
    builder.filter_module("rustls", log::LevelFilter::Warn.min(level));
    if let Ok(spec) = std::env::var("RUST_LOG") {
        builder.parse_filters(&spec);
    }
    builder.format_timestamp_micros();
    builder.init();
}
