//! The scenarios. Each is bounded in time, measures the server around its measured
//! phase, and returns one JSON result object (see `report` for its shape). The
//! robustness scenarios (slow, burst) are in [`robust`], the stuck HTTP readers in
//! [`stuck`], the long run with churn in [`soak`].

mod robust;
mod soak;
mod stuck;

pub use robust::{burst, slow};
pub use soak::soak;
pub use stuck::stuck;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::args::Args;
use crate::load::{Load, Mode};
use crate::measure::{self, Costs, round3};
use crate::net::{Handler, Kind, Net, Out, Target};
use crate::payload::{self, Stamp};
use crate::setup;
use crate::stats::{Latencies, Summary, ratio};
use crate::storm::Storm;

/// What every scenario shares.
pub struct Ctx {
    pub args: Args,
    pub base: Instant,
    pub target: Option<Target>,
    pub mode: Mode,
    pub pids: Vec<u32>,
    /// The database server's postmaster, measured with its children (`--db-pid`).
    pub db_pid: Option<u32>,
    pub label: String,
    pub users: usize,
    pub token_cache: Option<PathBuf>,
    /// Path of the WebSocket endpoint.
    pub ws_path: String,
}

impl Ctx {
    fn target(&self) -> Result<&Target, String> {
        self.target
            .as_ref()
            .ok_or_else(|| "--addr and --ca are required".to_string())
    }

    pub fn tokens(&self) -> Result<Vec<String>, String> {
        match self.mode {
            Mode::Raw => Ok(Vec::new()),
            Mode::Chatd => setup::tokens(
                self.target()?,
                self.base,
                self.users,
                self.token_cache.as_deref(),
            ),
        }
    }

    fn net(&self) -> Result<Net, String> {
        Net::new(self.target()?.clone(), self.base).map_err(|e| e.to_string())
    }

    fn snapshot(&self) -> measure::Snapshot {
        measure::snapshot(&self.pids, self.db_pid)
    }

    fn mode_name(&self) -> &'static str {
        match self.mode {
            Mode::Chatd => "chatd",
            Mode::Raw => "raw",
        }
    }

    /// The common head of a result object.
    fn result(&self, scenario: &str, params: Value) -> Value {
        json!({
            "scenario": scenario,
            "label": self.label,
            "mode": self.mode_name(),
            "params": params,
        })
    }
}

/// One headline figure of a result.
fn figure(name: &str, value: f64, unit: &str, better: &str) -> Value {
    json!({"name": name, "value": round3(value), "unit": unit, "better": better})
}

fn latency_json(s: &Summary) -> Value {
    json!({
        "count": s.count,
        "p50_ms": round3(s.p50_ms),
        "p90_ms": round3(s.p90_ms),
        "p99_ms": round3(s.p99_ms),
        "p999_ms": round3(s.p999_ms),
        "max_ms": round3(s.max_ms),
    })
}

fn kib_per(after: Option<u64>, before: Option<u64>, n: usize) -> Option<f64> {
    match (after, before) {
        (Some(a), Some(b)) if n > 0 => Some((a as f64 - b as f64) / n as f64),
        _ => None,
    }
}

/// Runs the loop for `secs` seconds (answering pings, counting what arrives).
fn hold(net: &mut Net, handler: &mut dyn Handler, secs: f64) -> Result<(), String> {
    let until = Instant::now() + Duration::from_secs_f64(secs);
    while Instant::now() < until {
        net.turn(handler, Duration::from_millis(50))
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// `hold` for a [`Load`], sampling the server's RSS as it goes when that is watched.
fn hold_load(net: &mut Net, load: &mut Load, secs: f64) -> Result<(), String> {
    let until = Instant::now() + Duration::from_secs_f64(secs);
    while Instant::now() < until {
        net.turn(load, Duration::from_millis(50))
            .map_err(|e| e.to_string())?;
        load.poll_rss();
    }
    Ok(())
}

// ---------------------------------------------------------------------------------
// idle

/// N authenticated WebSockets opened (full handshakes), held, then closed.
pub fn idle(ctx: &Ctx) -> Result<Value, String> {
    let a = &ctx.args;
    let n: usize = a.get("connections", 10_000)?;
    let concurrency: usize = a.get("concurrency", 200)?;
    let hold_secs: f64 = a.get("hold", 8.0)?;
    let timeout: f64 = a.get("timeout", 120.0)?;
    let tokens = ctx.tokens()?;
    let mut net = ctx.net()?;
    let mut load = Load::new(ctx.mode, 0);
    let before = ctx.snapshot();
    let deadline = Instant::now() + Duration::from_secs_f64(timeout);
    let (ids, open_secs) =
        load.open_members(&mut net, n, &tokens, &ctx.ws_path, concurrency, deadline)?;
    let opened_snap = ctx.snapshot();
    let opened = load.ready_count();
    hold(&mut net, &mut load, hold_secs)?;
    let held_snap = ctx.snapshot();
    let still_open = load.ready_count();
    let pings = net.counters.pings_answered;
    // Close in the order opened: with round-robin users, a user's last connection goes
    // last, so presence traffic stays small.
    for id in ids {
        net.close(id);
    }
    // chatd lingers up to 2 s on closing connections and looks for a passed load once a
    // second: 5 s is enough for both.
    hold(&mut net, &mut load, 5.0)?;
    let closed_snap = ctx.snapshot();
    let open_costs = measure::costs(&before, &opened_snap);
    let hold_costs = measure::costs(&opened_snap, &held_snap);
    let handshakes = load.handshake.summary();
    let rss_per_conn = kib_per(held_snap.server_rss_kib(), before.server_rss_kib(), opened);
    let mut r = ctx.result(
        "idle",
        json!({"connections": n, "users": if ctx.mode == Mode::Chatd { tokens.len() } else { 0 },
               "concurrency": concurrency, "hold_s": hold_secs}),
    );
    let mut figures = vec![
        figure(
            "connections/s",
            ratio(opened as f64, open_secs),
            "/s",
            "higher",
        ),
        figure("failed connections", (n - opened) as f64, "", "lower"),
    ];
    if let Some(kib) = rss_per_conn {
        figures.push(figure("server RSS per connection", kib, "KiB", "lower"));
    }
    if let (Some(before_kib), Some(closed_kib)) =
        (before.server_rss_kib(), closed_snap.server_rss_kib())
    {
        figures.push(figure(
            "server RSS before the load",
            before_kib as f64 / 1024.0,
            "MiB",
            "lower",
        ));
        figures.push(figure(
            "server RSS 5 s after all closed",
            closed_kib as f64 / 1024.0,
            "MiB",
            "lower",
        ));
    }
    if let Some(us) = open_costs.server_us_per(opened as u64) {
        figures.push(figure(
            "server CPU per connection (TLS handshake + upgrade + JWT)",
            us / 1000.0,
            "ms",
            "lower",
        ));
    }
    figures.push(figure(
        "client CPU per connection",
        open_costs.client_cpu_ms / opened.max(1) as f64,
        "ms",
        "lower",
    ));
    r["figures"] = json!(figures);
    r["latency_ms"] = latency_json(&handshakes);
    r["latency_of"] = json!("TCP connect to 101 answer");
    r["costs"] = open_costs.to_json();
    r["hold_costs"] = hold_costs.to_json();
    r["limited_by"] = json!(open_costs.limited_by(1.0));
    r["server_rss_kib"] = json!({
        "before": before.server_rss_kib(),
        "after_open": opened_snap.server_rss_kib(),
        "after_hold": held_snap.server_rss_kib(),
        "after_close": closed_snap.server_rss_kib(),
    });
    r["opened"] = json!(opened);
    r["open_after_hold"] = json!(still_open);
    r["pings_answered"] = json!(pings);
    r["closed"] = json!(load.counters.closed);
    Ok(r)
}

// ---------------------------------------------------------------------------------
// fanout, rooms, login-storm: paced senders into rooms

/// What one measured phase of a chat load produced.
#[derive(Default)]
struct Phase {
    costs: Costs,
    latency: Summary,
    sent: u64,
    acked: u64,
    /// Sends (chatd) that got neither an `ok` nor an error reply by the end of the
    /// drain: a server that went away leaves them.
    unanswered: u64,
    expected: u64,
    delivered: u64,
    out_of_order: u64,
    send_errors: BTreeMap<String, u64>,
    /// Connections that ended during the phase, by how (the slow scenario's slow
    /// members, whose closes it expects, are not in it).
    closed: BTreeMap<String, u64>,
    duration_s: f64,
    drain_s: f64,
    max_send_lag_ms: f64,
    /// Latency by second of the phase, when the load keeps a timeline.
    timeline: Vec<Summary>,
}

impl Phase {
    fn lost(&self) -> u64 {
        self.expected.saturating_sub(self.delivered)
    }

    /// Closes the phase did not ask for: each one is a member the server dropped.
    fn unexpected_closes(&self) -> u64 {
        self.closed.values().sum()
    }

    fn offered_per_s(&self, members_per_message: f64) -> f64 {
        ratio(self.sent as f64 * members_per_message, self.duration_s)
    }

    fn achieved_per_s(&self) -> f64 {
        ratio(self.delivered as f64, self.duration_s + self.drain_s)
    }

    fn to_json(&self, members_per_message: f64) -> Value {
        let mut phase = json!({
            "offered_deliveries_per_s": round3(self.offered_per_s(members_per_message)),
            "achieved_deliveries_per_s": round3(self.achieved_per_s()),
            "messages_sent": self.sent,
            "messages_acked": self.acked,
            "messages_unanswered": self.unanswered,
            "deliveries_expected": self.expected,
            "deliveries_received": self.delivered,
            "lost": self.lost(),
            "out_of_order_or_duplicate": self.out_of_order,
            "send_errors": self.send_errors,
            "closed": self.closed,
            "duration_s": round3(self.duration_s),
            "drain_s": round3(self.drain_s),
            "max_send_lag_ms": round3(self.max_send_lag_ms),
            "server_us_per_delivery": self.costs.server_us_per(self.delivered).map(round3),
            "client_us_per_delivery": round3(ratio(self.costs.client_cpu_ms * 1000.0, self.delivered as f64)),
            "latency_ms": latency_json(&self.latency),
            "costs": self.costs.to_json(),
            "limited_by": self.costs.limited_by(1.0),
        });
        if !self.timeline.is_empty() {
            let per_second = |f: fn(&Summary) -> f64| {
                self.timeline
                    .iter()
                    .map(|s| round3(f(s)))
                    .collect::<Vec<_>>()
            };
            phase["p99_ms_by_second"] = json!(per_second(|s| s.p99_ms));
            phase["max_ms_by_second"] = json!(per_second(|s| s.max_ms));
        }
        phase
    }
}

/// Sends at `rate_per_sender` for `duration`, then waits up to `drain` for every
/// expected delivery and reply.
fn run_phase(
    ctx: &Ctx,
    net: &mut Net,
    load: &mut Load,
    rate_per_sender: f64,
    duration: Duration,
    drain: Duration,
) -> Result<Phase, String> {
    load.counters = Default::default();
    let expected_before = load.expected();
    let delivered_before = load.delivered();
    let before = ctx.snapshot();
    let start = Instant::now();
    let start_ns = net.now_ns();
    load.counters.start_ns = start_ns;
    load.start_schedule(rate_per_sender, start_ns);
    let end_ns = start_ns + duration.as_nanos() as u64;
    loop {
        let now = net.now_ns();
        if now >= end_ns {
            break;
        }
        let mut next = load.send_due(net, now).unwrap_or(end_ns);
        if let Some(storm) = load.storm.as_mut() {
            next = next.min(storm.tick(net, now));
        }
        let wait = Duration::from_nanos(next.min(end_ns).saturating_sub(net.now_ns()));
        net.turn(load, wait).map_err(|e| e.to_string())?;
        load.poll_rss();
    }
    load.stop_schedule();
    let sending_s = start.elapsed().as_secs_f64();
    let drain_start = Instant::now();
    let drain_until = drain_start + drain;
    let mut drained_at = None;
    while Instant::now() < drain_until {
        let c = &load.counters;
        let answered =
            ctx.mode == Mode::Raw || c.acked + c.send_errors.values().sum::<u64>() >= c.sent;
        let delivered = load.delivered().saturating_sub(delivered_before);
        if answered && delivered >= load.expected().saturating_sub(expected_before) {
            drained_at = Some(Instant::now());
            break;
        }
        net.turn(load, Duration::from_millis(2))
            .map_err(|e| e.to_string())?;
        load.poll_rss();
    }
    // Deliveries counted up to the last one received.
    let last_ns = load.counters.last_receive_ns;
    let drain_s = match drained_at {
        Some(_) => (last_ns.saturating_sub(start_ns) as f64 / 1e9 - sending_s).max(0.0),
        None => drain.as_secs_f64(),
    };
    let after = ctx.snapshot();
    let c = std::mem::take(&mut load.counters);
    let unanswered = match ctx.mode {
        Mode::Chatd => c
            .sent
            .saturating_sub(c.acked + c.send_errors.values().sum::<u64>()),
        Mode::Raw => 0,
    };
    let mut latency = c.latency;
    let timeline = c.timeline.into_iter().map(|mut l| l.summary()).collect();
    Ok(Phase {
        costs: measure::costs(&before, &after),
        latency: latency.summary(),
        sent: c.sent,
        acked: c.acked,
        unanswered,
        expected: load.expected().saturating_sub(expected_before),
        delivered: load.delivered().saturating_sub(delivered_before),
        out_of_order: c.out_of_order,
        send_errors: c.send_errors,
        closed: c.closed,
        duration_s: sending_s,
        drain_s,
        max_send_lag_ms: c.max_send_lag_ns as f64 / 1e6,
        timeline,
    })
}

/// Opens the members of `rooms` rooms of `size` members each and makes the first
/// `senders` members of each room senders. Returns the member ids.
fn build_rooms(
    ctx: &Ctx,
    net: &mut Net,
    load: &mut Load,
    rooms: usize,
    size: usize,
    senders: usize,
    prefix: &str,
) -> Result<Vec<usize>, String> {
    let tokens = ctx.tokens()?;
    let concurrency: usize = ctx.args.get("concurrency", 200)?;
    let total = rooms * size;
    let deadline = Instant::now() + Duration::from_secs(60 + total as u64 / 100);
    let (ids, _) = load.open_members(net, total, &tokens, &ctx.ws_path, concurrency, deadline)?;
    let ready = load.ready_count();
    if ready < total {
        return Err(format!(
            "only {ready} of {total} members connected: {:?}",
            load.counters.closed
        ));
    }
    for (r, chunk) in ids.chunks(size).enumerate() {
        let name = if rooms == 1 {
            prefix.to_string()
        } else {
            format!("{prefix}{r}")
        };
        load.join(net, &name, chunk);
    }
    load.wait_joined(net, Instant::now() + Duration::from_secs(60))?;
    for chunk in ids.chunks(size) {
        for &id in chunk.iter().take(senders) {
            load.add_sender(id);
        }
    }
    // Let presence frames and anything else from the joins pass before measuring.
    hold(net, load, 0.5)?;
    load.counters = Default::default();
    Ok(ids)
}

/// Runs the load for `--warmup` seconds, unmeasured: new connections, buffers and the
/// allocator settle before the figures are taken.
fn warm_up(
    ctx: &Ctx,
    net: &mut Net,
    load: &mut Load,
    rate: f64,
    drain: Duration,
) -> Result<(), String> {
    let secs: f64 = ctx.args.get("warmup", 2.0)?;
    if secs > 0.0 {
        run_phase(ctx, net, load, rate, Duration::from_secs_f64(secs), drain)?;
    }
    Ok(())
}

fn close_all(net: &mut Net, load: &mut Load, ids: &[usize]) -> Result<(), String> {
    for &id in ids {
        net.close(id);
    }
    hold(net, load, 0.5)
}

/// M members in one room, S of them sending R messages/s each.
pub fn fanout(ctx: &Ctx) -> Result<Value, String> {
    let a = &ctx.args;
    let members: usize = a.get("members", 1000)?;
    let senders: usize = a.get("senders", 10)?;
    let rate: f64 = a.get("rate", 10.0)?;
    let secs: f64 = a.get("duration", 10.0)?;
    let size: usize = a.get("size", 64)?;
    let drain = Duration::from_secs_f64(a.get("drain", 5.0)?);
    let max_mode: bool = a.get("max", false)?;
    let aligned: bool = a.get("aligned", false)?;
    let mut net = ctx.net()?;
    let mut load = Load::new(ctx.mode, size);
    load.aligned = aligned;
    let ids = build_rooms(ctx, &mut net, &mut load, 1, members, senders, "fan")?;
    let per_message = members as f64;
    let first_rate = if max_mode {
        a.get("max-start", 100_000.0)? / (senders as f64 * per_message)
    } else {
        rate
    };
    warm_up(ctx, &mut net, &mut load, first_rate, drain)?;
    let mut r;
    if !max_mode {
        let phase = run_phase(
            ctx,
            &mut net,
            &mut load,
            rate,
            Duration::from_secs_f64(secs),
            drain,
        )?;
        r = ctx.result(
            if aligned { "fanout-aligned" } else { "fanout" },
            json!({"members": members, "senders": senders, "rate_per_sender": rate,
                   "duration_s": secs, "text_bytes": size, "users": ctx.users.min(members),
                   "senders_aligned": aligned}),
        );
        r["figures"] = json!(chat_figures(&phase, per_message));
        r["latency_ms"] = latency_json(&phase.latency);
        r["latency_of"] = json!("send to message event, per member");
        r["costs"] = phase.costs.to_json();
        r["limited_by"] = json!(phase.costs.limited_by(1.0));
        r["phase"] = phase.to_json(per_message);
    } else {
        let start: f64 = a.get("max-start", 100_000.0)?;
        let limit: f64 = a.get("max-limit", 8_000_000.0)?;
        let target_p99: f64 = a.get("max-p99-ms", 100.0)?;
        let max_steps: usize = a.get("max-steps", 14)?;
        let mut search = MaxSearch::new(start, limit);
        let mut steps = Vec::new();
        let mut best: Option<(f64, Phase)> = None;
        while let Some(offered) = search.next() {
            if steps.len() >= max_steps {
                break;
            }
            let per_sender = offered / (senders as f64 * per_message);
            let phase = run_phase(
                ctx,
                &mut net,
                &mut load,
                per_sender,
                Duration::from_secs_f64(secs),
                drain,
            )?;
            let achieved = phase.achieved_per_s();
            let ok = phase.lost() == 0
                && phase.closed.is_empty()
                && phase.unanswered == 0
                && phase.latency.p99_ms <= target_p99
                && achieved >= 0.95 * phase.offered_per_s(per_message);
            eprintln!(
                "chatbench: fanout max step {offered:.0}/s offered: {achieved:.0}/s achieved, \
                 p99 {:.1} ms, lost {}, {}",
                phase.latency.p99_ms,
                phase.lost(),
                if ok { "pass" } else { "FAIL" }
            );
            let mut step_json = phase.to_json(per_message);
            step_json["pass"] = json!(ok);
            steps.push(step_json);
            search.record(offered, ok);
            if ok && best.as_ref().is_none_or(|(b, _)| achieved > *b) {
                best = Some((achieved, phase));
            }
        }
        r = ctx.result(
            "fanout-max",
            json!({"members": members, "senders": senders, "duration_s": secs,
                   "text_bytes": size, "p99_target_ms": target_p99, "start": start, "limit": limit,
                   "users": ctx.users.min(members)}),
        );
        match best {
            Some((achieved, phase)) => {
                r["figures"] = json!([
                    figure(
                        &format!("max deliveries/s with p99 <= {target_p99} ms, 0 loss"),
                        achieved,
                        "/s",
                        "higher"
                    ),
                    figure(
                        "server CPU per delivery",
                        phase.costs.server_us_per(phase.delivered).unwrap_or(0.0),
                        "µs",
                        "lower"
                    ),
                ]);
                r["latency_ms"] = latency_json(&phase.latency);
                r["costs"] = phase.costs.to_json();
                // What limited the best step; the first failing step above it says what
                // stopped the search (see `steps`).
                r["limited_by"] = json!(phase.costs.limited_by(1.0));
            }
            None => {
                r["figures"] = json!([figure(
                    "max deliveries/s (no step passed)",
                    0.0,
                    "/s",
                    "higher"
                )]);
                r["limited_by"] = json!(
                    steps
                        .last()
                        .and_then(|s| s["limited_by"].as_str())
                        .unwrap_or("?")
                );
            }
        }
        r["latency_of"] = json!("send to message event, per member");
        r["steps"] = json!(steps);
    }
    close_all(&mut net, &mut load, &ids)?;
    Ok(r)
}

/// The offered rates of `fanout --max`: doubling from `start` until a step fails (or
/// halving, down to start/8, if the first one fails), then bisecting between the best
/// pass and the lowest failure until they are within 10%.
#[derive(Debug, Clone)]
struct MaxSearch {
    start: f64,
    limit: f64,
    pass: Option<f64>,
    fail: Option<f64>,
    last: Option<f64>,
}

impl MaxSearch {
    fn new(start: f64, limit: f64) -> Self {
        MaxSearch {
            start,
            limit,
            pass: None,
            fail: None,
            last: None,
        }
    }

    fn record(&mut self, offered: f64, ok: bool) {
        if ok {
            self.pass = Some(self.pass.map_or(offered, |p| p.max(offered)));
        } else {
            self.fail = Some(self.fail.map_or(offered, |f| f.min(offered)));
        }
    }

    /// The next rate to try, or None when the search is done.
    fn next(&mut self) -> Option<f64> {
        let next = match (self.last, self.pass, self.fail) {
            (None, _, _) => Some(self.start),
            (Some(_), Some(pass), None) => Some(pass * 2.0).filter(|&r| r <= self.limit),
            (Some(_), None, Some(fail)) => Some(fail / 2.0).filter(|&r| r >= self.start / 8.0),
            (Some(_), Some(pass), Some(fail)) if fail > pass * 1.1 => Some((pass + fail) / 2.0),
            _ => None,
        };
        // Past the limit after a pass: try the limit itself once.
        let next = match (next, self.pass, self.fail) {
            (None, Some(pass), None) if pass < self.limit => Some(self.limit),
            _ => next,
        };
        self.last = next;
        next
    }
}

fn chat_figures(phase: &Phase, per_message: f64) -> Vec<Value> {
    let mut figures = vec![
        figure(
            "offered deliveries/s",
            phase.offered_per_s(per_message),
            "/s",
            "higher",
        ),
        figure(
            "achieved deliveries/s",
            phase.achieved_per_s(),
            "/s",
            "higher",
        ),
        figure("lost deliveries", phase.lost() as f64, "", "lower"),
        figure(
            "unexpected closes",
            phase.unexpected_closes() as f64,
            "",
            "lower",
        ),
        figure("unanswered sends", phase.unanswered as f64, "", "lower"),
    ];
    if let Some(us) = phase.costs.server_us_per(phase.delivered) {
        figures.push(figure("server CPU per delivery", us, "µs", "lower"));
    }
    if let Some(us) = phase.costs.db_us_per(phase.delivered) {
        figures.push(figure("database CPU per delivery", us, "µs", "lower"));
    }
    if let Some(rss) = phase.costs.server_rss_after_kib {
        figures.push(figure("server RSS", rss as f64 / 1024.0, "MiB", "lower"));
    }
    figures
}

/// Many small rooms with steady traffic.
pub fn rooms(ctx: &Ctx) -> Result<Value, String> {
    if ctx.mode == Mode::Raw {
        return Err("rooms needs chatd (a broadcast server has no rooms)".into());
    }
    let a = &ctx.args;
    let rooms: usize = a.get("rooms", 1000)?;
    let size: usize = a.get("room-size", 10)?;
    let senders: usize = a.get("senders-per-room", 1)?;
    let rate: f64 = a.get("rate", 5.0)?;
    let secs: f64 = a.get("duration", 10.0)?;
    let text: usize = a.get("size", 64)?;
    let drain = Duration::from_secs_f64(a.get("drain", 5.0)?);
    let mut net = ctx.net()?;
    let mut load = Load::new(ctx.mode, text);
    let ids = build_rooms(ctx, &mut net, &mut load, rooms, size, senders, "room")?;
    warm_up(ctx, &mut net, &mut load, rate, drain)?;
    let phase = run_phase(
        ctx,
        &mut net,
        &mut load,
        rate,
        Duration::from_secs_f64(secs),
        drain,
    )?;
    let per_message = size as f64;
    let mut r = ctx.result(
        "rooms",
        json!({"rooms": rooms, "room_size": size, "senders_per_room": senders,
               "rate_per_sender": rate, "duration_s": secs, "text_bytes": text,
               "users": ctx.users}),
    );
    r["figures"] = json!(chat_figures(&phase, per_message));
    r["latency_ms"] = latency_json(&phase.latency);
    r["latency_of"] = json!("send to message event, per member");
    r["costs"] = phase.costs.to_json();
    r["limited_by"] = json!(phase.costs.limited_by(1.0));
    r["phase"] = phase.to_json(per_message);
    close_all(&mut net, &mut load, &ids)?;
    Ok(r)
}

/// A fanout measured without, then with, logins at a fixed rate.
pub fn login_storm(ctx: &Ctx) -> Result<Value, String> {
    if ctx.mode == Mode::Raw {
        return Err("login-storm needs chatd".into());
    }
    let a = &ctx.args;
    let members: usize = a.get("members", 1000)?;
    let senders: usize = a.get("senders", 10)?;
    let rate: f64 = a.get("rate", 10.0)?;
    let secs: f64 = a.get("duration", 10.0)?;
    let logins_per_s: f64 = a.get("login-rate", 20.0)?;
    let pool: usize = a.get("login-connections", 8)?;
    // The chat load is the fanout's (100,000 deliveries/s by default): what the argon2
    // stalls do to it while the server carries a full chat load.
    let drain = Duration::from_secs_f64(a.get("drain", 5.0)?);
    let mut net = ctx.net()?;
    let mut load = Load::new(ctx.mode, 64);
    let ids = build_rooms(ctx, &mut net, &mut load, 1, members, senders, "storm")?;
    warm_up(ctx, &mut net, &mut load, rate, drain)?;
    let duration = Duration::from_secs_f64(secs);
    let calm = run_phase(ctx, &mut net, &mut load, rate, duration, drain)?;
    let host = net.target().host.clone();
    load.storm = Some(Storm::new(
        &host,
        ctx.users,
        logins_per_s,
        pool,
        net.now_ns(),
    ));
    let stormy = run_phase(ctx, &mut net, &mut load, rate, duration, drain)?;
    let mut storm = load.storm.take().ok_or("storm state lost")?;
    storm.close_all(&mut net);
    let login_latency = storm.latency.summary();
    let per_message = members as f64;
    let mut r = ctx.result(
        "login-storm",
        json!({"members": members, "senders": senders, "rate_per_sender": rate,
               "duration_s": secs, "login_rate": logins_per_s, "login_connections": pool,
               "users": ctx.users.min(members)}),
    );
    r["figures"] = json!([
        figure(
            "chat p99 without logins",
            calm.latency.p99_ms,
            "ms",
            "lower"
        ),
        figure(
            "chat p99 during logins",
            stormy.latency.p99_ms,
            "ms",
            "lower"
        ),
        figure(
            "logins/s",
            ratio(login_latency.count as f64, stormy.duration_s),
            "/s",
            "higher"
        ),
        figure(
            "lost deliveries",
            (calm.lost() + stormy.lost()) as f64,
            "",
            "lower"
        ),
        figure(
            "unexpected closes",
            (calm.unexpected_closes() + stormy.unexpected_closes()) as f64,
            "",
            "lower"
        ),
    ]);
    r["latency_ms"] = latency_json(&stormy.latency);
    r["latency_of"] = json!("send to message event during the logins");
    r["costs"] = stormy.costs.to_json();
    r["limited_by"] = json!(stormy.costs.limited_by(1.0));
    r["without_logins"] = calm.to_json(per_message);
    r["during_logins"] = stormy.to_json(per_message);
    r["logins"] = json!({
        "sent": storm.sent,
        "skipped_pool_busy": storm.skipped,
        "statuses": storm.statuses.iter().map(|(k, v)| (k.to_string(), *v)).collect::<BTreeMap<_, _>>(),
        "closed": storm.closed,
        "latency_ms": latency_json(&login_latency),
    });
    close_all(&mut net, &mut load, &ids)?;
    Ok(r)
}

// ---------------------------------------------------------------------------------
// ingest

/// Connections each in its own room that keep `window` sends outstanding each (a
/// closed loop), or send on a schedule at a fixed total rate (`paced`), with at most
/// `window` outstanding each.
struct Ingest {
    window: usize,
    size: usize,
    running: bool,
    /// Sends go out on the schedule, not when a reply frees a place in the window.
    paced: bool,
    rooms: Vec<String>,
    /// Sends in flight per connection (indexed by connection id).
    in_flight: Vec<usize>,
    room_of: Vec<usize>,
    latency: Latencies,
    acked: u64,
    sent: u64,
    errors: BTreeMap<String, u64>,
    closed: BTreeMap<String, u64>,
    scratch: Vec<u8>,
    seq: u32,
}

impl Ingest {
    fn send(&mut self, id: usize, now_ns: u64, out: &mut dyn FnMut(&[u8])) {
        self.scratch.clear();
        self.scratch
            .extend_from_slice(br#"{"type":"send","room":""#);
        self.scratch
            .extend_from_slice(self.rooms[self.room_of[id]].as_bytes());
        self.scratch.extend_from_slice(br#"","text":""#);
        let stamp = Stamp {
            send_ns: now_ns,
            sender: 0,
            seq: self.seq,
        };
        self.seq = self.seq.wrapping_add(1);
        payload::write_text(&mut self.scratch, stamp, self.size);
        self.scratch.extend_from_slice(br#"","ref":"#);
        // The ref is the send time: the reply alone gives the latency.
        self.scratch
            .extend_from_slice(now_ns.max(1).to_string().as_bytes());
        self.scratch.push(b'}');
        out(&self.scratch);
        self.in_flight[id] += 1;
        self.sent += 1;
    }
}

impl Handler for Ingest {
    fn on_open(&mut self, _: usize, _: u64, _: u64, _: &mut Out<'_>) {}

    fn on_text(&mut self, id: usize, text: &[u8], now_ns: u64, out: &mut Out<'_>) {
        if payload::kind(text) != payload::Kind::Reply {
            return;
        }
        let Some(reply) = payload::reply(text) else {
            return;
        };
        self.in_flight[id] = self.in_flight[id].saturating_sub(1);
        if reply.ok {
            self.acked += 1;
            if let Some(sent) = reply.reference {
                self.latency.record_ns(now_ns.saturating_sub(sent));
            }
        } else {
            *self
                .errors
                .entry(payload::error_code(text).to_string())
                .or_default() += 1;
        }
        if self.running && !self.paced {
            while self.in_flight[id] < self.window {
                self.send(id, now_ns, &mut |bytes| out.text(bytes));
            }
        }
    }

    fn on_closed(&mut self, id: usize, reason: &str) {
        self.in_flight[id] = 0;
        *self.closed.entry(reason.to_string()).or_default() += 1;
    }
}

/// Sends each connection owes by `elapsed_s` at `per_conn` sends/s, the `slot`-th of
/// `slots` connections starting `slot / slots` of an interval late, so that together
/// they send evenly spread rather than in bursts.
fn paced_due(elapsed_s: f64, per_conn: f64, slot: usize, slots: usize) -> u64 {
    let lag = slot as f64 / slots.max(1) as f64;
    (elapsed_s * per_conn + 1.0 - lag).floor().max(0.0) as u64
}

/// Acknowledged sends per second into the database, and the send-to-reply latency:
/// a closed loop (`--window` outstanding per connection) or, with `--rate`, sends at
/// that fixed total rate (scenario `ingest-rate`).
pub fn ingest(ctx: &Ctx) -> Result<Value, String> {
    if ctx.mode == Mode::Raw {
        return Err("ingest needs chatd".into());
    }
    let a = &ctx.args;
    let conns: usize = a.get("connections", 100)?;
    let rate: f64 = a.get("rate", 0.0)?;
    let paced = rate > 0.0;
    let window: usize = a.get("window", if paced { 1000 } else { 8 })?;
    let secs: f64 = a.get("duration", 10.0)?;
    let size: usize = a.get("size", 64)?;
    if !rate.is_finite() || rate < 0.0 {
        return Err(format!("--rate {rate}: a rate of sends per second, or 0"));
    }
    let mut net = ctx.net()?;
    let mut load = Load::new(ctx.mode, size);
    let ids = build_rooms(ctx, &mut net, &mut load, conns, 1, 0, "ingest")?;
    let max_id = ids.iter().copied().max().unwrap_or(0);
    let mut ingest = Ingest {
        window,
        size,
        running: true,
        paced,
        rooms: load.rooms.iter().map(|r| r.name.clone()).collect(),
        in_flight: vec![0; max_id + 1],
        room_of: vec![0; max_id + 1],
        latency: Latencies::default(),
        acked: 0,
        sent: 0,
        errors: BTreeMap::new(),
        closed: BTreeMap::new(),
        scratch: Vec::new(),
        seq: 0,
    };
    for (room, &id) in ids.iter().enumerate() {
        ingest.room_of[id] = room;
    }
    let before = ctx.snapshot();
    let start = Instant::now();
    let now = net.now_ns();
    if !paced {
        for &id in &ids {
            for _ in 0..window {
                ingest.send(id, now, &mut |bytes| net.send_text(id, bytes));
            }
        }
    }
    let per_conn = rate / ids.len().max(1) as f64;
    // Per connection: sends made on the schedule, and those skipped with the window full.
    let mut scheduled = vec![0u64; ids.len()];
    let mut skipped = 0u64;
    let end = start + Duration::from_secs_f64(secs);
    while Instant::now() < end {
        if paced {
            let elapsed = start.elapsed().as_secs_f64();
            let now = net.now_ns();
            for (slot, &id) in ids.iter().enumerate() {
                let due = paced_due(elapsed, per_conn, slot, ids.len());
                while scheduled[slot] < due {
                    scheduled[slot] += 1;
                    if ingest.in_flight[id] >= window {
                        skipped += 1;
                    } else {
                        ingest.send(id, now, &mut |bytes| net.send_text(id, bytes));
                    }
                }
            }
        }
        let wait = Duration::from_millis(if paced { 1 } else { 10 });
        net.turn(&mut ingest, wait).map_err(|e| e.to_string())?;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let acked_in_time = ingest.acked;
    let after = ctx.snapshot();
    ingest.running = false;
    let drain_until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < drain_until && ingest.in_flight.iter().any(|&n| n > 0) {
        net.turn(&mut ingest, Duration::from_millis(10))
            .map_err(|e| e.to_string())?;
    }
    let costs = measure::costs(&before, &after);
    let latency = ingest.latency.summary();
    let mut r = ctx.result(
        if paced { "ingest-rate" } else { "ingest" },
        json!({"connections": conns, "window": window, "duration_s": secs, "text_bytes": size,
               "rate": rate}),
    );
    let mut figures = Vec::new();
    if paced {
        figures.push(figure("offered sends/s", rate, "/s", "higher"));
    }
    figures.push(figure(
        "acknowledged sends/s",
        ratio(acked_in_time as f64, elapsed),
        "/s",
        "higher",
    ));
    if let Some(us) = costs.server_us_per(acked_in_time) {
        figures.push(figure(
            "server CPU per acknowledged send",
            us,
            "µs",
            "lower",
        ));
    }
    if let Some(us) = costs.db_us_per(acked_in_time) {
        figures.push(figure(
            "database CPU per acknowledged send",
            us,
            "µs",
            "lower",
        ));
    }
    // Sends answered with an error (on PostgreSQL, `unavailable` once a send waited
    // database_timeout_ms): not acknowledged, so not in the rate; by code in `errors`.
    let error_replies: u64 = ingest.errors.values().sum();
    figures.push(figure("error replies", error_replies as f64, "", "lower"));
    if paced {
        // The schedule met a full window: the server fell behind the offered rate.
        figures.push(figure(
            "sends skipped (window full)",
            skipped as f64,
            "",
            "lower",
        ));
        let unanswered: usize = ingest.in_flight.iter().sum();
        figures.push(figure("unanswered sends", unanswered as f64, "", "lower"));
    }
    r["figures"] = json!(figures);
    r["latency_ms"] = latency_json(&latency);
    r["latency_of"] = json!("send request to ok reply");
    r["costs"] = costs.to_json();
    r["limited_by"] = json!(costs.limited_by(1.0));
    r["sent"] = json!(ingest.sent);
    r["acked"] = json!(ingest.acked);
    r["errors"] = json!(ingest.errors);
    r["closed"] = json!(ingest.closed);
    close_all(&mut net, &mut load, &ids)?;
    Ok(r)
}

// ---------------------------------------------------------------------------------
// http

/// Closed-loop keep-alive clients alternating GET /healthz and GET /me.
struct HttpLoad {
    requests: Vec<Vec<u8>>,
    next: Vec<usize>,
    sent_at: Vec<u64>,
    running: bool,
    in_flight: usize,
    latency: Latencies,
    statuses: BTreeMap<u16, u64>,
    closed: BTreeMap<String, u64>,
    done: u64,
}

impl Handler for HttpLoad {
    fn on_open(&mut self, _: usize, _: u64, _: u64, _: &mut Out<'_>) {}
    fn on_text(&mut self, _: usize, _: &[u8], _: u64, _: &mut Out<'_>) {}

    fn on_response(
        &mut self,
        id: usize,
        status: u16,
        _body: &[u8],
        now_ns: u64,
        out: &mut Out<'_>,
    ) {
        self.in_flight -= 1;
        self.latency
            .record_ns(now_ns.saturating_sub(self.sent_at[id]));
        *self.statuses.entry(status).or_default() += 1;
        self.done += 1;
        if self.running {
            let n = self.next[id];
            self.next[id] = n + 1;
            out.raw(&self.requests[n % self.requests.len()]);
            self.sent_at[id] = now_ns;
            self.in_flight += 1;
        }
    }

    fn on_closed(&mut self, _id: usize, reason: &str) {
        *self.closed.entry(reason.to_string()).or_default() += 1;
    }
}

pub fn http(ctx: &Ctx) -> Result<Value, String> {
    let a = &ctx.args;
    let conns: usize = a.get("connections", 50)?;
    let secs: f64 = a.get("duration", 10.0)?;
    let paths = a.str_or("paths", "/healthz,/me");
    let tokens = if paths.contains("/me") {
        ctx.tokens()?
    } else {
        Vec::new()
    };
    let mut net = ctx.net()?;
    let host = net.target().host.clone();
    let requests: Vec<Vec<u8>> = paths
        .split(',')
        .map(|p| {
            let bearer = (p == "/me")
                .then(|| tokens.first().map(String::as_str))
                .flatten();
            crate::http::get(p, &host, bearer)
        })
        .collect();
    let mut load = HttpLoad {
        requests,
        next: Vec::new(),
        sent_at: Vec::new(),
        running: true,
        in_flight: 0,
        latency: Latencies::default(),
        statuses: BTreeMap::new(),
        closed: BTreeMap::new(),
        done: 0,
    };
    // Warm-up: connect every client (handshakes are not what this measures).
    let mut ids = Vec::new();
    for i in 0..conns {
        let id = net
            .connect(Kind::Http, &load.requests[i % load.requests.len()])
            .map_err(|e| e.to_string())?;
        if load.next.len() <= id {
            load.next.resize(id + 1, 0);
            load.sent_at.resize(id + 1, 0);
        }
        load.next[id] = i + 1;
        load.sent_at[id] = net.now_ns();
        load.in_flight += 1;
        ids.push(id);
    }
    hold(&mut net, &mut load, 1.0)?;
    load.latency.clear();
    load.statuses.clear();
    load.done = 0;
    let before = ctx.snapshot();
    let start = Instant::now();
    hold(&mut net, &mut load, secs)?;
    let done = load.done;
    let elapsed = start.elapsed().as_secs_f64();
    let after = ctx.snapshot();
    load.running = false;
    let drain_until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < drain_until && load.in_flight > 0 {
        net.turn(&mut load, Duration::from_millis(10))
            .map_err(|e| e.to_string())?;
    }
    for id in ids {
        net.close(id);
    }
    let costs = measure::costs(&before, &after);
    let latency = load.latency.summary();
    let mut r = ctx.result(
        "http",
        json!({"connections": conns, "duration_s": secs, "paths": paths}),
    );
    let mut figures = vec![figure(
        "requests/s",
        ratio(done as f64, elapsed),
        "/s",
        "higher",
    )];
    if let Some(us) = costs.server_us_per(done) {
        figures.push(figure("server CPU per request", us, "µs", "lower"));
    }
    if let Some(us) = costs.db_us_per(done) {
        figures.push(figure("database CPU per request", us, "µs", "lower"));
    }
    let non_2xx: u64 = load
        .statuses
        .iter()
        .filter(|(s, _)| !(200..300).contains(*s))
        .map(|(_, n)| n)
        .sum();
    figures.push(figure("non-2xx responses", non_2xx as f64, "", "lower"));
    r["figures"] = json!(figures);
    r["latency_ms"] = latency_json(&latency);
    r["latency_of"] = json!("request to response");
    r["costs"] = costs.to_json();
    r["limited_by"] = json!(costs.limited_by(1.0));
    r["statuses"] = json!(
        load.statuses
            .iter()
            .map(|(k, v)| (k.to_string(), *v))
            .collect::<BTreeMap<_, _>>()
    );
    r["closed"] = json!(load.closed);
    Ok(r)
}

// ---------------------------------------------------------------------------------
// static: wrk against a small static file

/// What wrk printed.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct WrkOutput {
    pub requests: u64,
    pub requests_per_s: f64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub non_2xx: u64,
    pub socket_errors: u64,
}

/// A wrk duration (`950.00us`, `1.20ms`, `2.00s`, `1.00m`) in milliseconds.
fn wrk_ms(value: &str) -> Option<f64> {
    let split = value.find(|c: char| c.is_ascii_alphabetic())?;
    let (number, unit) = value.split_at(split);
    let number: f64 = number.parse().ok()?;
    Some(match unit {
        "us" => number / 1000.0,
        "ms" => number,
        "s" => number * 1000.0,
        "m" => number * 60_000.0,
        _ => return None,
    })
}

/// Parses wrk's report (run with `--latency`).
pub fn parse_wrk(text: &str) -> Option<WrkOutput> {
    let mut out = WrkOutput::default();
    let mut seen_rate = false;
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["Requests/sec:", v] => {
                out.requests_per_s = v.parse().ok()?;
                seen_rate = true;
            }
            ["50%", v] => out.p50_ms = wrk_ms(v),
            ["99%", v] => out.p99_ms = wrk_ms(v),
            [n, "requests", "in", ..] => out.requests = n.parse().ok()?,
            ["Non-2xx", "or", "3xx", "responses:", n] => out.non_2xx = n.parse().ok()?,
            ["Socket", "errors:", rest @ ..] => {
                out.socket_errors = rest
                    .iter()
                    .filter_map(|w| w.trim_end_matches(',').parse::<u64>().ok())
                    .sum();
            }
            _ => {}
        }
    }
    seen_rate.then_some(out)
}

pub fn static_file(ctx: &Ctx) -> Result<Value, String> {
    let a = &ctx.args;
    let url = a.required("url")?;
    let wrk_args = a.str_or("wrk-args", "-t1 -c100 -d10s");
    let before = ctx.snapshot();
    let output = std::process::Command::new("wrk")
        .args(wrk_args.split_whitespace())
        .arg("--latency")
        .arg(&url)
        .output()
        .map_err(|e| format!("cannot run wrk: {e}"))?;
    let after = ctx.snapshot();
    let text = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        return Err(format!(
            "wrk failed: {}{}",
            text,
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    let wrk = parse_wrk(&text).ok_or_else(|| format!("cannot read wrk's output:\n{text}"))?;
    // wrk is a child process: our own rusage does not include it, so its CPU is the
    // rest of the machine's busy time here.
    let costs = measure::costs(&before, &after);
    let mut r = ctx.result("static", json!({"url": url, "wrk": wrk_args}));
    r["mode"] = json!("wrk");
    let mut figures = vec![figure("requests/s", wrk.requests_per_s, "/s", "higher")];
    if let Some(us) = costs.server_us_per(wrk.requests) {
        figures.push(figure("server CPU per request", us, "µs", "lower"));
    }
    figures.push(figure(
        "errors (non-2xx + socket)",
        (wrk.non_2xx + wrk.socket_errors) as f64,
        "",
        "lower",
    ));
    r["figures"] = json!(figures);
    r["latency_ms"] = json!({"p50_ms": wrk.p50_ms, "p99_ms": wrk.p99_ms, "count": wrk.requests});
    r["latency_of"] = json!("wrk request to response");
    let mut costs_json = costs.to_json();
    costs_json["client"] = json!("wrk (its CPU is in other_cpu_ms)");
    r["costs"] = costs_json;
    // wrk's CPU is the other processes' time here: judge the limit with it as the client.
    let as_client = Costs {
        client_cpu_ms: costs.other_cpu_ms.unwrap_or(0.0),
        other_cpu_ms: Some(0.0),
        ..costs
    };
    r["limited_by"] = json!(
        as_client
            .limited_by(1.0)
            .replace("client CPU", "client CPU (wrk)")
    );
    r["wrk_output"] = json!(text);
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_search(start: f64, limit: f64, capacity: f64) -> Vec<(f64, bool)> {
        let mut search = MaxSearch::new(start, limit);
        let mut tried = Vec::new();
        while let Some(rate) = search.next() {
            let ok = rate <= capacity;
            search.record(rate, ok);
            tried.push((rate, ok));
            assert!(tried.len() < 40, "the search ends");
        }
        tried
    }

    #[test]
    fn paced_sends_are_spread_over_the_connections() {
        // 4 connections at 10/s each: the first sends at once, the others a quarter of
        // an interval apart; after a second each has sent 10 (the last just due).
        assert_eq!(paced_due(0.0, 10.0, 0, 4), 1);
        assert_eq!(paced_due(0.0, 10.0, 1, 4), 0);
        assert_eq!(paced_due(0.026, 10.0, 1, 4), 1);
        assert_eq!(paced_due(0.074, 10.0, 3, 4), 0);
        assert_eq!(paced_due(0.076, 10.0, 3, 4), 1);
        let total: u64 = (0..4).map(|slot| paced_due(0.999, 10.0, slot, 4)).sum();
        assert_eq!(total, 40);
        let total: u64 = (0..100).map(|slot| paced_due(10.0, 100.0, slot, 100)).sum();
        assert_eq!(
            total, 100_001,
            "10 s at 10,000/s, the first connection one ahead"
        );
    }

    #[test]
    fn max_search_doubles_then_bisects() {
        let tried = run_search(100.0, 10_000.0, 700.0);
        let rates: Vec<f64> = tried.iter().map(|t| t.0).collect();
        assert_eq!(rates[..4], [100.0, 200.0, 400.0, 800.0]);
        assert_eq!(rates[4], 600.0);
        let best = tried
            .iter()
            .filter(|t| t.1)
            .map(|t| t.0)
            .fold(0.0, f64::max);
        assert!(best > 630.0 && best <= 700.0, "{tried:?}");
    }

    #[test]
    fn max_search_halves_when_the_first_step_fails_and_stops_at_the_limit() {
        let tried = run_search(100.0, 10_000.0, 30.0);
        assert_eq!(tried[0], (100.0, false));
        assert_eq!(tried[1], (50.0, false));
        assert_eq!(tried[2], (25.0, true));
        let all_fail = run_search(100.0, 1000.0, 1.0);
        assert_eq!(all_fail.last().unwrap().0, 12.5);
        let capped = run_search(100.0, 1000.0, 1e9);
        let rates: Vec<f64> = capped.iter().map(|t| t.0).collect();
        assert_eq!(rates, [100.0, 200.0, 400.0, 800.0, 1000.0]);
    }

    #[test]
    fn a_phase_that_lost_members_reports_honest_finite_figures() {
        // The server went away mid-phase: nothing was sent after, the clock may not
        // have moved at all, and three members were dropped.
        let phase = Phase {
            sent: 10,
            acked: 8,
            unanswered: 2,
            expected: 800,
            delivered: 500,
            closed: BTreeMap::from([("eof".to_string(), 3)]),
            ..Phase::default()
        };
        assert_eq!(phase.lost(), 300);
        assert_eq!(phase.unexpected_closes(), 3);
        assert_eq!(phase.achieved_per_s(), 0.0);
        assert_eq!(phase.offered_per_s(100.0), 0.0);
        let figures = chat_figures(&phase, 100.0);
        let value = |name: &str| {
            figures
                .iter()
                .find(|f| f["name"] == name)
                .and_then(|f| f["value"].as_f64())
        };
        assert_eq!(value("lost deliveries"), Some(300.0));
        assert_eq!(value("unexpected closes"), Some(3.0));
        assert_eq!(value("unanswered sends"), Some(2.0));
        assert!(
            figures.iter().all(|f| f["value"].as_f64().is_some()),
            "{figures:?}"
        );
        let json = phase.to_json(100.0);
        assert_eq!(json["lost"], 300);
        assert_eq!(json["achieved_deliveries_per_s"], 0.0);
        // More delivered than expected (a duplicate) is no negative loss.
        let dup = Phase {
            expected: 5,
            delivered: 6,
            ..Phase::default()
        };
        assert_eq!(dup.lost(), 0);
    }

    #[test]
    fn wrk_report() {
        let text = "Running 10s test @ https://127.0.0.1:8443/
  1 threads and 100 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.10ms  300.00us   5.00ms   70.00%
    Req/Sec    90.00k     1.00k   95.00k    80.00%
  Latency Distribution
     50%  950.00us
     75%    1.20ms
     90%    1.50ms
     99%    2.10ms
  900123 requests in 10.00s, 1.00GB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 5
Requests/sec:  90012.30
Transfer/sec:    100.00MB
";
        let w = parse_wrk(text).unwrap();
        assert_eq!(w.requests, 900_123);
        assert_eq!(w.requests_per_s, 90012.3);
        assert_eq!(w.p50_ms, Some(0.95));
        assert_eq!(w.p99_ms, Some(2.1));
        assert_eq!(w.non_2xx, 5);
        assert_eq!(w.socket_errors, 3);
        assert_eq!(parse_wrk("garbage"), None);
        assert_eq!(wrk_ms("2.00s"), Some(2000.0));
    }
}
