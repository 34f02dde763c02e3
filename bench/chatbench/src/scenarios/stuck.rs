//! The stuck scenario: HTTP clients that ask for a large file and never read the answer.
//!
//! chatd cannot send the rest of such an answer, so only its idle timeout ends the
//! connection, and a close it cannot send either is dropped after the 2 s linger. The
//! scenario checks that this happens once per connection and, above all, what it costs:
//! a deadline left in the past would fire on every loop turn for as long as the
//! connection lives, a spinning thread the functional counters do not show. So the
//! server's CPU over the whole window is measured and held to a bound that
//! `chatbench check` enforces (`max` on the figure).

use serde_json::{Value, json};

use super::{Ctx, figure, hold};
use crate::measure::{self, round3};
use crate::net::{Handler, Out};
use crate::scrape;

/// The kernel receive buffer asked for on each stuck client: a few KiB, so the answer
/// piles up in chatd rather than in this client's kernel buffers.
const RECV_BUFFER: usize = 4096;

/// chatd's linger for a close it decided: after it, the connection is dropped.
const LINGER_SECS: f64 = 2.0;

/// Counts what reaches clients that should see nothing.
#[derive(Default)]
struct Stuck {
    /// Answers read in full: a client that got one was not stuck (a broken setup).
    answers: u64,
    /// Connections that ended while the scenario watched them (errors from this side).
    closed: u64,
}

impl Handler for Stuck {
    fn on_open(&mut self, _: usize, _: u64, _: u64, _: &mut Out<'_>) {}
    fn on_text(&mut self, _: usize, _: &[u8], _: u64, _: &mut Out<'_>) {}

    fn on_response(&mut self, _: usize, _: u16, _: &[u8], _: u64, _: &mut Out<'_>) {
        self.answers += 1;
    }

    fn on_closed(&mut self, _: usize, _: &str) {
        self.closed += 1;
    }
}

/// The figure with the bound `chatbench check` holds it to.
fn bounded(name: &str, value: f64, unit: &str, max: f64) -> Value {
    let mut f = figure(name, value, unit, "lower");
    f["max"] = json!(max);
    f
}

/// N clients send `GET --path` and stop reading; chatd's CPU from then until their idle
/// timeout and linger are over (plus `--slack`), and whether each was closed once.
pub fn stuck(ctx: &Ctx) -> Result<Value, String> {
    let a = &ctx.args;
    let connections: usize = a.get("connections", 10)?;
    let path = a.str_or("path", "/big.bin");
    let idle_timeout: f64 = a.get("idle-timeout", 5.0)?;
    let slack: f64 = a.get("slack", 2.0)?;
    let max_cores: f64 = a.get("max-server-cores", 0.05)?;
    let target = ctx.target()?;
    let idle_before = scrape::read(target, ctx.base, scrape::IDLE_TIMEOUTS);
    let open_before = scrape::read(target, ctx.base, scrape::OPEN_CONNECTIONS);
    let mut net = ctx.net()?;
    let request = crate::http::get(&path, &target.host, None);
    let mut stuck = Stuck::default();
    let mut ids = Vec::with_capacity(connections);
    for _ in 0..connections {
        let id = net
            .connect_stuck(&request, RECV_BUFFER)
            .map_err(|e| format!("connect: {e}"))?;
        ids.push(id);
    }
    // The handshakes, the requests and chatd filling every buffer it can; the idle
    // timeout counts from the last byte it sent, about now.
    hold(&mut net, &mut stuck, 1.0)?;
    if stuck.answers > 0 || stuck.closed > 0 {
        return Err(format!(
            "{} of {connections} clients read a whole answer and {} ended early: {path} must be \
             larger than the kernel buffers (several MiB)",
            stuck.answers, stuck.closed
        ));
    }
    let before = ctx.snapshot();
    let window_s = idle_timeout + LINGER_SECS + slack;
    hold(&mut net, &mut stuck, window_s)?;
    let after = ctx.snapshot();
    let idle_after = scrape::read(target, ctx.base, scrape::IDLE_TIMEOUTS);
    let open_after = scrape::read(target, ctx.base, scrape::OPEN_CONNECTIONS);
    // Counted once: the count must not move once the connections are gone.
    hold(&mut net, &mut stuck, 1.0)?;
    let idle_later = scrape::read(target, ctx.base, scrape::IDLE_TIMEOUTS);
    for &id in &ids {
        net.close(id);
    }
    let costs = measure::costs(&before, &after);
    let server_cores = costs.server_cores();
    let idle_counted = match (idle_before, idle_later) {
        (Some(b), Some(l)) => Some(l.saturating_sub(b)),
        _ => None,
    };
    let not_closed = match (open_before, open_after) {
        (Some(b), Some(a)) => Some(a.saturating_sub(b)),
        _ => None,
    };
    let mut r = ctx.result(
        "stuck",
        json!({"connections": connections, "path": path, "idle_timeout_s": idle_timeout,
               "window_s": window_s, "recv_buffer": RECV_BUFFER}),
    );
    // A figure that could not be read is null, which `chatbench check` refuses.
    let or_nan = |v: Option<f64>| v.unwrap_or(f64::NAN);
    r["figures"] = json!([
        figure(
            "stuck connections not closed",
            or_nan(not_closed.map(|n| n as f64)),
            "",
            "lower"
        ),
        figure(
            "idle timeouts beyond one per stuck connection",
            or_nan(idle_counted.map(|n| n.abs_diff(connections as u64) as f64)),
            "",
            "lower"
        ),
        figure(
            "server CPU while stuck",
            or_nan(costs.server_cpu_ms),
            "ms",
            "lower"
        ),
        bounded(
            "server cores while stuck",
            or_nan(server_cores),
            "",
            max_cores
        ),
    ]);
    r["costs"] = costs.to_json();
    r["limited_by"] = json!("offered load");
    r["stuck"] = json!({
        "idle_timeouts": {"before": idle_before, "after_window": idle_after, "a_second_later": idle_later},
        "open_connections": {"before": open_before, "after_window": open_after},
        "server_cpu_ms": costs.server_cpu_ms.map(round3),
        "window_s": round3(costs.wall_s),
    });
    Ok(r)
}
