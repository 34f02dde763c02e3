//! chatbench: the load generator and benchmark harness of chatd.
//!
//! One thread, one mio event loop driving many non-blocking rustls connections with its
//! own small WebSocket framing, so the generator costs as little CPU as it can on a
//! machine it shares with the server. Every message carries its send time; latency is
//! the receive time minus the send time on one monotonic clock.
//!
//! # Layout
//! - [`net`]: the event loop and connections (TLS, HTTP upgrade, frames, pings).
//! - [`frame`], [`http`], [`payload`]: wire formats, pure and unit-tested.
//! - [`load`]: WebSocket members, rooms and paced senders; [`storm`]: paced logins.
//! - [`scenarios`]: idle, fanout (and `--max`), rooms, login-storm, ingest, http, static,
//!   the robustness scenarios slow, burst and stuck, and soak (a long run with churn).
//! - [`measure`], [`procstat`]: CPU and memory of the server, the client and the machine;
//!   [`scrape`]: chatd's own counters from `/metrics`.
//! - [`stats`]: percentiles; [`report`]: the results file and the table.
//! - [`setup`]: TLS trust, accounts and tokens; [`args`]: flags.

mod args;
mod frame;
mod http;
mod load;
mod measure;
mod net;
mod payload;
mod procstat;
mod report;
mod scenarios;
mod scrape;
mod setup;
mod stats;
mod storm;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use serde_json::Value;

use args::Args;
use load::Mode;
use scenarios::Ctx;

const USAGE: &str = "usage: chatbench SCENARIO [--flag value ...]

scenarios: idle, fanout, rooms, login-storm, ingest, http, static, slow, burst, stuck,
  soak
other commands: accounts (register, log in and cache the tokens), free-port,
  report --results FILE [--primary LABEL] [--median true | --compare true
    [--labels A,B]],
  check --results FILE (fails if any run lost a delivery, failed a connection, had a
    connection closed it did not expect, or has a figure that is missing or not a number)
common flags:
  --addr HOST:PORT       server address (required except for static and report)
  --ca PEM               the server's certificate, the only trust root (required)
  --server-name NAME     name verified in the certificate (localhost)
  --mode chatd|raw       chatd protocol, or a plain broadcast WebSocket server (chatd)
  --server-pid PID[,PID] processes measured (CPU, RSS); summed
  --db-pid PID           the server's database server (a PostgreSQL postmaster):
                         its CPU and its children's, reported apart
  --label NAME           name of the server in the results (chatd, or node in raw mode)
  --results FILE         append the result object to this JSON array
  --tokens FILE          cache of the users' tokens (read if it holds enough)
  --users N              distinct user accounts the connections are spread over (100)
  --kx GROUP             key exchange: x25519 (default), secp256r1, X25519MLKEM768, default
  --ws-path PATH         WebSocket path (/ws for chatd, / in raw mode)
See bench/README.md for each scenario's flags.";

fn main() -> ExitCode {
    let mut words = std::env::args().skip(1);
    let Some(scenario) = words.next() else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    if scenario == "--help" || scenario == "-h" {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    let args = match Args::parse(words) {
        Ok(args) => args,
        Err(e) => {
            eprintln!("chatbench: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(&scenario, args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("chatbench {scenario}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Flags every scenario takes.
const COMMON_FLAGS: &[&str] = &[
    "addr",
    "ca",
    "server-name",
    "mode",
    "server-pid",
    "label",
    "results",
    "tokens",
    "users",
    "kx",
    "ws-path",
    "db-pid",
];

/// Each scenario's own flags: anything else is refused before the run starts.
fn scenario_flags(scenario: &str) -> Option<&'static [&'static str]> {
    Some(match scenario {
        "idle" => &["connections", "concurrency", "hold", "timeout"],
        "fanout" => &[
            "members",
            "senders",
            "rate",
            "duration",
            "size",
            "drain",
            "concurrency",
            "max",
            "max-start",
            "max-limit",
            "max-steps",
            "max-p99-ms",
            "warmup",
            "aligned",
        ],
        "rooms" => &[
            "rooms",
            "room-size",
            "senders-per-room",
            "rate",
            "duration",
            "size",
            "drain",
            "concurrency",
            "warmup",
        ],
        "login-storm" => &[
            "members",
            "senders",
            "rate",
            "duration",
            "login-rate",
            "login-connections",
            "drain",
            "concurrency",
            "warmup",
        ],
        "ingest" => &[
            "connections",
            "window",
            "duration",
            "size",
            "concurrency",
            "rate",
        ],
        "slow" => &[
            "members",
            "slow",
            "senders",
            "rate",
            "duration",
            "size",
            "drain",
            "concurrency",
            "warmup",
            "baseline",
            "max-outbound-bytes",
            "resume",
        ],
        "burst" => &[
            "connections",
            "silent",
            "hold",
            "header-timeout",
            "slack",
            "timeout",
        ],
        "stuck" => &[
            "connections",
            "path",
            "idle-timeout",
            "slack",
            "max-server-cores",
        ],
        "soak" => &[
            "secs",
            "clients",
            "rooms",
            "rooms-per-client",
            "send-every",
            "room-every",
            "online",
            "offline",
            "misbehave",
            "abrupt",
            "login-share",
            "size",
            "concurrency",
            "slow-readers",
            "sample-every",
            "settle",
            "final-timeout",
            "drain",
            "seed",
        ],
        "http" => &["connections", "duration", "paths"],
        "static" => &["url", "wrk-args"],
        "report" => &["results", "primary", "median", "compare", "labels"],
        "check" => &["results"],
        "accounts" => &[],
        "free-port" => &[],
        _ => return None,
    })
}

fn run(scenario: &str, args: Args) -> Result<(), String> {
    let own = scenario_flags(scenario)
        .ok_or_else(|| format!("unknown scenario `{scenario}`\n\n{USAGE}"))?;
    let unknown = args.unknown(COMMON_FLAGS, own);
    if !unknown.is_empty() {
        return Err(format!(
            "unknown flags for {scenario}: {}",
            unknown.join(" ")
        ));
    }
    if scenario == "free-port" {
        // For servers that cannot take port 0 (nginx): bind one, print it, let it go.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
        println!(
            "{}",
            listener.local_addr().map_err(|e| e.to_string())?.port()
        );
        return Ok(());
    }
    if scenario == "check" {
        let path = PathBuf::from(args.required("results")?);
        let text =
            std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let results: Vec<Value> = serde_json::from_str(&text).map_err(|e| e.to_string())?;
        let problems = report::problems(&results);
        if problems.is_empty() {
            println!("{} results: nothing lost, nothing failed", results.len());
            return Ok(());
        }
        return Err(format!(
            "results with losses, failures or missing figures:\n  {}",
            problems.join("\n  ")
        ));
    }
    if scenario == "report" {
        let path = PathBuf::from(args.required("results")?);
        let primary = args.str_or("primary", "chatd");
        let text =
            std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut results: Vec<Value> = serde_json::from_str(&text).map_err(|e| e.to_string())?;
        if args.get("compare", false)? {
            let labels = args.str_or("labels", "");
            let only: Vec<&str> = labels.split(',').filter(|l| !l.is_empty()).collect();
            print!("{}", report::comparison(&results, &only));
            return Ok(());
        }
        if args.get("median", false)? {
            results = report::medians(&results);
        }
        print!("{}", report::table(&results, &primary));
        return Ok(());
    }
    // Every connection is a descriptor: raise the soft limit to the hard one.
    if let Err(e) = rlimit::increase_nofile_limit(u64::MAX) {
        eprintln!("chatbench: cannot raise the open files limit: {e}");
    }
    let mode = match args.str_or("mode", "chatd").as_str() {
        "chatd" => Mode::Chatd,
        "raw" => Mode::Raw,
        other => return Err(format!("--mode {other}: chatd or raw")),
    };
    let target = match (args.opt_str("addr"), args.opt_str("ca")) {
        (Some(addr), Some(ca)) => Some(setup::target(
            &addr,
            Path::new(&ca),
            &args.str_or("server-name", "localhost"),
            &args.str_or("kx", "x25519"),
        )?),
        _ => None,
    };
    let pids = match args.opt_str("server-pid") {
        Some(list) => list
            .split(',')
            .map(|p| {
                p.trim()
                    .parse::<u32>()
                    .map_err(|_| format!("--server-pid: bad `{p}`"))
            })
            .collect::<Result<Vec<_>, _>>()?,
        None => Vec::new(),
    };
    let db_pid = match args.opt_str("db-pid") {
        Some(p) => Some(
            p.trim()
                .parse::<u32>()
                .map_err(|_| format!("--db-pid: bad `{p}`"))?,
        ),
        None => None,
    };
    let default_label = if mode == Mode::Chatd { "chatd" } else { "node" };
    let ctx = Ctx {
        base: Instant::now(),
        target,
        mode,
        pids,
        db_pid,
        label: args.str_or("label", default_label),
        users: args.get("users", 100)?,
        token_cache: args.opt_str("tokens").map(PathBuf::from),
        ws_path: args.str_or("ws-path", if mode == Mode::Chatd { "/ws" } else { "/" }),
        args,
    };
    let results = ctx.args.opt_str("results").map(PathBuf::from);
    let run = match scenario {
        "idle" => scenarios::idle,
        "fanout" => scenarios::fanout,
        "rooms" => scenarios::rooms,
        "login-storm" => scenarios::login_storm,
        "ingest" => scenarios::ingest,
        "http" => scenarios::http,
        "static" => scenarios::static_file,
        "slow" => scenarios::slow,
        "burst" => scenarios::burst,
        "stuck" => scenarios::stuck,
        "soak" => scenarios::soak,
        "accounts" => {
            let tokens = ctx.tokens()?;
            println!("{} accounts with tokens", tokens.len());
            return Ok(());
        }
        other => return Err(format!("unknown scenario `{other}`\n\n{USAGE}")),
    };
    let mut result = run(&ctx)?;
    result["load_average"] = Value::from(load_average());
    let one = report::table(std::slice::from_ref(&result), &ctx.label);
    print!("{one}");
    if let Some(path) = results {
        report::append(&path, result)?;
    }
    Ok(())
}

/// The 1-minute load average at the end of the scenario (other load skews figures).
fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(0.0)
}
