//! The robustness scenarios: chatd's memory and its other clients when some clients
//! misbehave.
//!
//! - slow: a fan-out in which some members stop reading; chatd must close them (1013)
//!   once `max_outbound_bytes` are queued for one, keep its memory bounded, and deliver
//!   everything to the others on time.
//! - burst: thousands of clients connect in the same instant, plus silent connections
//!   that never send a byte and must be closed after `header_timeout_secs`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::{Ctx, build_rooms, close_all, figure, hold_load, latency_json, run_phase, warm_up};
use crate::load::{Load, Mode};
use crate::measure::{self, PeakRss, round3};
use crate::net::SilentEnd;
use crate::procstat;
use crate::scrape;
use crate::stats::{Latencies, ratio};

/// How often the server's RSS is sampled while a load runs.
const RSS_EVERY: Duration = Duration::from_millis(100);

/// Bytes of a `message` event around its text (type, id, room, from, ts).
const EVENT_OVERHEAD: usize = 110;

/// What the kernel buffers for a client that does not read, on loopback, before the
/// server's own queue for it grows: chatd's socket send buffer starts near 4 MiB there
/// (`tcp_wmem` autotuning with a 64 KiB MSS), the client's receive buffer holds more.
const LOOPBACK_KERNEL_BUFFER: u64 = 4 << 20;

fn mib(kib: Option<u64>) -> Option<f64> {
    kib.map(|k| k as f64 / 1024.0)
}

/// Difference of two optional counter readings.
fn delta(after: Option<u64>, before: Option<u64>) -> Option<u64> {
    Some(after?.saturating_sub(before?))
}

/// Counts how each connection ended, by reason.
fn tally<'a>(reasons: impl Iterator<Item = &'a str>) -> BTreeMap<String, u64> {
    let mut counts = BTreeMap::new();
    for reason in reasons {
        *counts.entry(reason.to_string()).or_default() += 1;
    }
    counts
}

// ---------------------------------------------------------------------------------
// slow

/// A fan-out where the last `--slow` members stop reading once the room is formed.
pub fn slow(ctx: &Ctx) -> Result<Value, String> {
    if ctx.mode == Mode::Raw {
        return Err("slow needs chatd (it reads chatd's own count of 1013 closes)".into());
    }
    let a = &ctx.args;
    let members: usize = a.get("members", 1000)?;
    let slow: usize = a.get("slow", 100)?;
    let senders: usize = a.get("senders", 10)?;
    let rate: f64 = a.get("rate", 10.0)?;
    let secs: f64 = a.get("duration", 20.0)?;
    let size: usize = a.get("size", 4000)?;
    let drain = Duration::from_secs_f64(a.get("drain", 5.0)?);
    let baseline_secs: f64 = a.get("baseline", 5.0)?;
    let cap: u64 = a.get("max-outbound-bytes", 1_048_576)?;
    let resume_secs: f64 = a.get("resume", 10.0)?;
    if slow == 0 || slow + senders > members {
        return Err(format!(
            "--slow {slow}: between 1 and members - senders ({})",
            members.saturating_sub(senders)
        ));
    }
    let per_slow_member = (senders as f64 * rate * secs) as u64 * (size + EVENT_OVERHEAD) as u64;
    if per_slow_member < cap + LOOPBACK_KERNEL_BUFFER {
        eprintln!(
            "chatbench: slow members get about {:.1} MiB each in {secs} s; on loopback the \
             kernel buffers about {} MiB for a client before chatd's queue grows, so they may \
             not reach max_outbound_bytes ({:.1} MiB): raise --rate, --size or --duration",
            per_slow_member as f64 / 1048576.0,
            LOOPBACK_KERNEL_BUFFER >> 20,
            cap as f64 / 1048576.0
        );
    }
    let target = ctx.target()?;
    let mut net = ctx.net()?;
    let mut load = Load::new(ctx.mode, size);
    let ids = build_rooms(ctx, &mut net, &mut load, 1, members, senders, "slow")?;
    warm_up(ctx, &mut net, &mut load, rate, drain)?;
    // Every member reading: the readers' latency to compare with.
    let baseline = if baseline_secs > 0.0 {
        let duration = Duration::from_secs_f64(baseline_secs);
        Some(run_phase(ctx, &mut net, &mut load, rate, duration, drain)?)
    } else {
        None
    };
    let closed_before = scrape::read(target, ctx.base, scrape::SLOW_CONSUMERS);
    let before = ctx.snapshot();
    let slow_ids: Vec<usize> = ids[members - slow..].to_vec();
    for &id in &slow_ids {
        load.set_slow(id);
        net.pause_reading(id);
    }
    load.peak_rss = Some(PeakRss::new(&ctx.pids, RSS_EVERY));
    load.timeline = true;
    let phase_start = Instant::now();
    let phase = run_phase(
        ctx,
        &mut net,
        &mut load,
        rate,
        Duration::from_secs_f64(secs),
        drain,
    )?;
    // chatd gives a closed consumer 2 s to take its close frame, and shrinks what a
    // load grew once a second: wait for both before reading "after".
    hold_load(&mut net, &mut load, 3.0)?;
    let mut peak = load.peak_rss.take().ok_or("RSS watch lost")?;
    peak.finish();
    let after_load = ctx.snapshot();
    let closed_after = scrape::read(target, ctx.base, scrape::SLOW_CONSUMERS);
    let closed_by_chatd = delta(closed_after, closed_before);
    // What waits in the slow members' own receive buffers, then everything the kernel
    // still holds for them: they read again, to the end of what chatd sent.
    let unread: Vec<u64> = slow_ids
        .iter()
        .filter_map(|&id| net.unread_bytes(id))
        .collect();
    for &id in &slow_ids {
        net.resume_reading(id, &mut load);
    }
    let resume_until = Instant::now() + Duration::from_secs_f64(resume_secs);
    let slow_open = |load: &Load| {
        slow_ids
            .iter()
            .filter(|&&id| load.members[id].as_ref().is_some_and(|m| !m.closed))
            .count()
    };
    while slow_open(&load) > 0 && Instant::now() < resume_until {
        net.turn(&mut load, Duration::from_millis(10))
            .map_err(|e| e.to_string())?;
    }
    let slow_members: Vec<_> = slow_ids
        .iter()
        .filter_map(|&id| load.members[id].as_ref())
        .collect();
    let ends = tally(
        slow_members
            .iter()
            .map(|m| m.end.as_deref().unwrap_or("still open")),
    );
    let slow_bytes: u64 = slow_members.iter().map(|m| m.slow_bytes).sum();
    let slow_frames: u64 = slow_members.iter().map(|m| m.slow_frames).sum();
    close_all(&mut net, &mut load, &ids)?;
    hold_load(&mut net, &mut load, 4.5)?;
    let closed_snap = ctx.snapshot();

    let before_kib = before.server_rss_kib();
    let growth_kib = match (peak.peak_kib(), before_kib) {
        (Some(p), Some(b)) => Some(p.saturating_sub(b)),
        _ => None,
    };
    let bound_bytes = slow as u64 * cap;
    let mut r = ctx.result(
        "slow",
        json!({"members": members, "slow": slow, "senders": senders, "rate_per_sender": rate,
               "duration_s": secs, "text_bytes": size, "max_outbound_bytes": cap,
               "baseline_s": baseline_secs, "users": ctx.users.min(members)}),
    );
    let mut figures = vec![
        figure("readers' lost deliveries", phase.lost() as f64, "", "lower"),
        figure(
            "unexpected closes (readers)",
            phase.unexpected_closes() as f64,
            "",
            "lower",
        ),
        figure("unanswered sends", phase.unanswered as f64, "", "lower"),
        figure(
            "readers' deliveries/s",
            phase.achieved_per_s(),
            "/s",
            "higher",
        ),
    ];
    if let Some(b) = &baseline {
        figures.push(figure(
            "readers' p99, every member reading",
            b.latency.p99_ms,
            "ms",
            "lower",
        ));
    }
    figures.push(figure(
        "readers' p99, slow members not reading",
        phase.latency.p99_ms,
        "ms",
        "lower",
    ));
    figures.push(figure(
        "readers' max, slow members not reading",
        phase.latency.max_ms,
        "ms",
        "lower",
    ));
    if let Some(closed) = closed_by_chatd {
        figures.push(figure(
            "slow members closed by chatd (1013)",
            closed as f64,
            "",
            "higher",
        ));
        figures.push(figure(
            "slow members not closed",
            slow.saturating_sub(closed as usize) as f64,
            "",
            "lower",
        ));
    }
    if let Some(us) = phase.costs.server_us_per(phase.delivered) {
        figures.push(figure("server CPU per reader delivery", us, "µs", "lower"));
    }
    for (name, kib) in [
        ("server RSS before", before_kib),
        ("server RSS peak, slow members not reading", peak.peak_kib()),
        (
            "server RSS after the load (readers connected)",
            after_load.server_rss_kib(),
        ),
        (
            "server RSS 5 s after all closed",
            closed_snap.server_rss_kib(),
        ),
    ] {
        if let Some(v) = mib(kib) {
            figures.push(figure(name, v, "MiB", "lower"));
        }
    }
    if let Some(g) = growth_kib {
        figures.push(figure(
            "peak RSS growth / (slow x max_outbound_bytes)",
            ratio(g as f64 * 1024.0, bound_bytes as f64),
            "",
            "lower",
        ));
    }
    figures.push(figure(
        "kernel-buffered per slow member, read after its close",
        ratio(slow_bytes as f64, slow as f64) / 1048576.0,
        "MiB",
        "lower",
    ));
    r["figures"] = json!(figures);
    r["latency_ms"] = latency_json(&phase.latency);
    r["latency_of"] = json!("send to message event, per reader, slow members not reading");
    r["costs"] = phase.costs.to_json();
    r["limited_by"] = json!(phase.costs.limited_by(1.0));
    r["phase"] = phase.to_json((members - slow) as f64);
    if let Some(b) = &baseline {
        r["baseline"] = b.to_json(members as f64);
    }
    r["server_rss_kib"] = json!({
        "before": before_kib,
        "peak": peak.peak_kib(),
        "peak_sampled": peak.sampled_kib,
        "peak_sampled_after_s": peak.sampled_at.map(|t| round3(t.duration_since(phase_start).as_secs_f64())),
        "samples": peak.samples,
        "max_by_second": peak.by_second_kib,
        "vmhwm_at_start": peak.hwm_start_kib,
        "vmhwm_at_end": peak.hwm_end_kib,
        "after_load": after_load.server_rss_kib(),
        "after_close": closed_snap.server_rss_kib(),
    });
    r["bound"] = json!({
        "slow_x_max_outbound_mib": round3(bound_bytes as f64 / 1048576.0),
        "peak_growth_mib": mib(growth_kib).map(round3),
        "offered_per_slow_member_mib": round3(per_slow_member as f64 / 1048576.0),
    });
    r["slow_members"] = json!({
        "count": slow,
        "closed_by_chatd": closed_by_chatd,
        "chatd_slow_consumers_total": {"before": closed_before, "after": closed_after},
        "ends_after_reading_again": ends,
        "unread_in_receive_buffer_bytes": {
            "mean": ratio(unread.iter().sum::<u64>() as f64, unread.len() as f64).round(),
            "max": unread.iter().max(),
        },
        "frames_read_after_close": slow_frames,
        "bytes_read_after_close": slow_bytes,
    });
    Ok(r)
}

// ---------------------------------------------------------------------------------
// burst

/// Silent connections' ends, judged against the header timeout.
#[derive(Debug, Clone, PartialEq)]
struct SilentSummary {
    /// Ended by the server (EOF or reset).
    closed: usize,
    /// Of those, within `header_timeout + slack` of the connect.
    in_time: usize,
    /// Of those, before `header_timeout` (the server closed them for another reason).
    early: usize,
    /// Connect to close, seconds: min, p50, max (of the closed ones).
    min_s: f64,
    p50_s: f64,
    max_s: f64,
    /// How each ended, by kind; still open ones as `not closed`.
    ends: BTreeMap<String, u64>,
}

fn summarize_silent(
    ends: &[SilentEnd],
    total: usize,
    timeout_s: f64,
    slack_s: f64,
) -> SilentSummary {
    let closed: Vec<&SilentEnd> = ends
        .iter()
        .filter(|e| e.how == "eof" || e.how == "reset")
        .collect();
    let secs = |e: &SilentEnd| e.after_ns as f64 / 1e9;
    let mut times = Latencies::default();
    for e in &closed {
        times.record_ns(e.after_ns);
    }
    let summary = times.summary();
    let mut kinds = tally(ends.iter().map(|e| e.how.as_str()));
    if total > ends.len() {
        kinds.insert("not closed".into(), (total - ends.len()) as u64);
    }
    SilentSummary {
        closed: closed.len(),
        in_time: closed
            .iter()
            .filter(|e| secs(e) <= timeout_s + slack_s)
            .count(),
        early: closed.iter().filter(|e| secs(e) < timeout_s).count(),
        min_s: closed
            .iter()
            .map(|e| secs(e))
            .reduce(f64::min)
            .unwrap_or(0.0),
        p50_s: summary.p50_ms / 1e3,
        max_s: summary.max_ms / 1e3,
        ends: kinds,
    }
}

/// N WebSocket clients connecting in the same instant, plus silent TCP connections.
pub fn burst(ctx: &Ctx) -> Result<Value, String> {
    if ctx.mode == Mode::Raw {
        return Err("burst needs chatd (it reads chatd's own count of header timeouts)".into());
    }
    let a = &ctx.args;
    let n: usize = a.get("connections", 10_000)?;
    let silent: usize = a.get("silent", 200)?;
    let hold_secs: f64 = a.get("hold", 2.0)?;
    let header_timeout: f64 = a.get("header-timeout", 10.0)?;
    let slack: f64 = a.get("slack", 1.0)?;
    let timeout: f64 = a.get("timeout", 60.0)?;
    let target = ctx.target()?;
    let tokens = ctx.tokens()?;
    let somaxconn = procstat::sysctl("net/core/somaxconn");
    let syn_backlog = procstat::sysctl("net/ipv4/tcp_max_syn_backlog");
    let mut net = ctx.net()?;
    net.prepare_tls(n).map_err(|e| format!("TLS: {e}"))?;
    let mut load = Load::new(ctx.mode, 0);
    let timeouts_before = scrape::read(target, ctx.base, scrape::HEADER_TIMEOUTS);
    let before = ctx.snapshot();
    load.peak_rss = Some(PeakRss::new(&ctx.pids, RSS_EVERY));
    let start = Instant::now();
    // Every connect is issued before the loop turns once: the silent ones, then all the
    // WebSockets (a concurrency window as large as the burst).
    for _ in 0..silent {
        net.connect_silent()
            .map_err(|e| format!("silent connect: {e}"))?;
    }
    let deadline = start + Duration::from_secs_f64(timeout);
    let (ids, open_secs) = load.open_members(&mut net, n, &tokens, &ctx.ws_path, n, deadline)?;
    let connects = ids
        .iter()
        .filter_map(|&id| load.members[id].as_ref().map(|m| m.connect_ns));
    let (first, last) = connects.fold((u64::MAX, 0), |(lo, hi), t| (lo.min(t), hi.max(t)));
    let issue_ms = last.saturating_sub(first) as f64 / 1e6;
    let opened_snap = ctx.snapshot();
    let opened = load.ready_count();
    hold_load(&mut net, &mut load, hold_secs)?;
    let held_snap = ctx.snapshot();
    for &id in &ids {
        net.close(id);
    }
    let closed_at = Instant::now();
    // The silent connections' header timeout runs from chatd's accept, at most a
    // little after their connect.
    let silent_until = start + Duration::from_secs_f64(header_timeout + slack + 2.0);
    while net.silent_open() > 0 && Instant::now() < silent_until {
        net.turn(&mut load, Duration::from_millis(20))
            .map_err(|e| e.to_string())?;
        load.poll_rss();
    }
    let settle = 5.0 - closed_at.elapsed().as_secs_f64();
    if settle > 0.0 {
        hold_load(&mut net, &mut load, settle)?;
    }
    let closed_snap = ctx.snapshot();
    let silent_left = net.silent_open();
    net.close_silent();
    let timeouts_after = scrape::read(target, ctx.base, scrape::HEADER_TIMEOUTS);
    let mut peak = load.peak_rss.take().ok_or("RSS watch lost")?;
    peak.finish();
    let silent_summary = summarize_silent(&net.silent_ends, silent, header_timeout, slack);
    let open_costs = measure::costs(&before, &opened_snap);
    let welcome = load.welcome.summary();

    let mut r = ctx.result(
        "burst",
        json!({"connections": n, "silent": silent, "hold_s": hold_secs,
               "header_timeout_s": header_timeout, "slack_s": slack,
               "users": tokens.len(), "somaxconn": somaxconn,
               "tcp_max_syn_backlog": syn_backlog}),
    );
    let mut figures = vec![
        figure(
            "connections/s (connect to welcome)",
            ratio(opened as f64, open_secs),
            "/s",
            "higher",
        ),
        figure("failed connections", (n - opened) as f64, "", "lower"),
        figure("connect to welcome, max", welcome.max_ms, "ms", "lower"),
        figure(
            "listen overflows (kernel, machine-wide)",
            open_costs.listen_overflows as f64,
            "",
            "lower",
        ),
    ];
    if let Some(cap) = somaxconn {
        figures.push(figure(
            "accept backlog cap (net.core.somaxconn)",
            cap as f64,
            "",
            "higher",
        ));
    }
    if let Some(us) = open_costs.server_us_per(opened as u64) {
        figures.push(figure(
            "server CPU per connection",
            us / 1000.0,
            "ms",
            "lower",
        ));
    }
    for (name, kib) in [
        ("server RSS before", before.server_rss_kib()),
        ("server RSS peak", peak.peak_kib()),
        (
            "server RSS 5 s after all closed",
            closed_snap.server_rss_kib(),
        ),
    ] {
        if let Some(v) = mib(kib) {
            figures.push(figure(name, v, "MiB", "lower"));
        }
    }
    figures.push(figure(
        "silent connections closed by chatd",
        silent_summary.closed as f64,
        "",
        "higher",
    ));
    figures.push(figure(
        &format!("silent ones not closed within header timeout + {slack} s"),
        (silent - silent_summary.in_time) as f64,
        "",
        "lower",
    ));
    if silent_summary.closed > 0 {
        figures.push(figure(
            "silent: connect to close, min",
            silent_summary.min_s,
            "s",
            "lower",
        ));
        figures.push(figure(
            "silent: connect to close, max",
            silent_summary.max_s,
            "s",
            "lower",
        ));
    }
    r["figures"] = json!(figures);
    r["latency_ms"] = latency_json(&welcome);
    r["latency_of"] = json!("TCP connect to welcome frame");
    r["handshake_latency_ms"] = latency_json(&load.handshake.summary());
    r["costs"] = open_costs.to_json();
    r["hold_costs"] = measure::costs(&opened_snap, &held_snap).to_json();
    r["limited_by"] = json!(open_costs.limited_by(1.0));
    r["connects_issued_ms"] = json!(round3(issue_ms));
    r["opened"] = json!(opened);
    r["failures"] = json!(load.counters.closed);
    r["server_rss_kib"] = json!({
        "before": before.server_rss_kib(),
        "after_open": opened_snap.server_rss_kib(),
        "after_hold": held_snap.server_rss_kib(),
        "peak": peak.peak_kib(),
        "peak_sampled": peak.sampled_kib,
        "peak_sampled_after_s": peak.sampled_at.map(|t| round3(t.duration_since(start).as_secs_f64())),
        "samples": peak.samples,
        "max_by_second": peak.by_second_kib,
        "vmhwm_at_start": peak.hwm_start_kib,
        "vmhwm_at_end": peak.hwm_end_kib,
        "after_close": closed_snap.server_rss_kib(),
    });
    r["silent"] = json!({
        "count": silent,
        "closed": silent_summary.closed,
        "closed_in_time": silent_summary.in_time,
        "closed_before_header_timeout": silent_summary.early,
        "still_open_at_the_end": silent_left,
        "connect_to_close_s": {
            "min": (silent_summary.closed > 0).then(|| round3(silent_summary.min_s)),
            "p50": round3(silent_summary.p50_s),
            "max": round3(silent_summary.max_s),
        },
        "ends": silent_summary.ends,
        "chatd_header_timeouts": delta(timeouts_after, timeouts_before),
    });
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn end(id: usize, secs: f64, how: &str) -> SilentEnd {
        SilentEnd {
            id,
            after_ns: (secs * 1e9) as u64,
            how: how.into(),
        }
    }

    #[test]
    fn silent_ends_against_the_header_timeout() {
        let ends = [
            end(0, 10.05, "eof"),
            end(1, 10.4, "eof"),
            end(2, 11.5, "reset"),
            end(3, 3.0, "eof"),
            end(4, 1.0, "read: Connection timed out"),
        ];
        let s = summarize_silent(&ends, 6, 10.0, 1.0);
        assert_eq!(s.closed, 4);
        assert_eq!(s.in_time, 3, "11.5 s is past 10 + 1");
        assert_eq!(s.early, 1);
        assert_eq!(s.min_s, 3.0);
        assert_eq!(s.max_s, 11.5);
        assert_eq!(s.ends["eof"], 3);
        assert_eq!(s.ends["reset"], 1);
        assert_eq!(s.ends["read: Connection timed out"], 1);
        assert_eq!(s.ends["not closed"], 1);
        let none = summarize_silent(&[], 2, 10.0, 1.0);
        assert_eq!((none.closed, none.in_time), (0, 0));
        assert_eq!(none.ends["not closed"], 2);
    }

    #[test]
    fn counter_deltas_and_tallies() {
        assert_eq!(delta(Some(7), Some(3)), Some(4));
        assert_eq!(delta(Some(1), Some(3)), Some(0));
        assert_eq!(delta(None, Some(3)), None);
        let t = tally(["a", "b", "a"].into_iter());
        assert_eq!((t["a"], t["b"]), (2, 1));
    }
}
