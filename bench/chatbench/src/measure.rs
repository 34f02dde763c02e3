//! Before/after snapshots of what a phase cost: wall time, the server's CPU and memory,
//! its database server's CPU (PostgreSQL's processes, when it has one), our own CPU, and
//! the rest of the machine's CPU (other load skews every figure).
//!
//! Per-operation server CPU (µs per handshake, per delivery, per request) is the figure
//! that stays comparable when the client, not the server, is what limits a run.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::procstat::{self, ProcSample};

/// Counters at one moment.
#[derive(Debug, Clone)]
pub struct Snapshot {
    at: Instant,
    /// The server's processes (summed), if their PIDs were given and readable.
    server: Option<ProcSample>,
    /// CPU of the database server's process tree, if its root PID was given.
    db_cpu_us: Option<u64>,
    client_cpu_us: u64,
    machine: procstat::MachineSample,
    listen_overflows: u64,
}

/// Reads every counter now. The server's PIDs are summed (nginx: master and worker);
/// `db_root` is a database server's first process, measured with all its children.
pub fn snapshot(pids: &[u32], db_root: Option<u32>) -> Snapshot {
    let mut server: Option<ProcSample> = None;
    for &pid in pids {
        if let Ok(sample) = procstat::sample_process(pid) {
            let sum = server.get_or_insert_with(ProcSample::default);
            sum.rss_kib += sample.rss_kib;
            sum.cpu_us += sample.cpu_us;
        }
    }
    Snapshot {
        at: Instant::now(),
        server,
        db_cpu_us: db_root.and_then(procstat::tree_cpu_us),
        client_cpu_us: procstat::self_cpu_us(),
        machine: procstat::machine(),
        listen_overflows: procstat::listen_overflows(),
    }
}

impl Snapshot {
    pub fn server_rss_kib(&self) -> Option<u64> {
        self.server.map(|s| s.rss_kib)
    }
}

/// What happened between two snapshots.
#[derive(Debug, Clone, Copy, Default)]
pub struct Costs {
    pub wall_s: f64,
    pub server_cpu_ms: Option<f64>,
    /// The database server's CPU (every PostgreSQL process), when measured.
    pub db_cpu_ms: Option<f64>,
    pub client_cpu_ms: f64,
    /// Busy CPU of the machine that was neither the server, its database nor this
    /// client (other processes; softirq and steal excluded).
    pub other_cpu_ms: Option<f64>,
    /// Kernel softirq time (on loopback mostly the network stack carrying our traffic).
    pub softirq_ms: f64,
    /// Time the hypervisor gave elsewhere.
    pub steal_ms: f64,
    /// Connections dropped because an accept queue was full (machine-wide).
    pub listen_overflows: u64,
    pub server_rss_before_kib: Option<u64>,
    pub server_rss_after_kib: Option<u64>,
}

pub fn costs(before: &Snapshot, after: &Snapshot) -> Costs {
    let wall_s = after.at.duration_since(before.at).as_secs_f64();
    let server_cpu_ms = match (before.server, after.server) {
        (Some(b), Some(a)) => Some(a.cpu_us.saturating_sub(b.cpu_us) as f64 / 1000.0),
        _ => None,
    };
    let client_cpu_ms = after.client_cpu_us.saturating_sub(before.client_cpu_us) as f64 / 1000.0;
    let delta = |a: u64, b: u64| a.saturating_sub(b) as f64 / 1000.0;
    let db_cpu_ms = match (before.db_cpu_us, after.db_cpu_us) {
        (Some(b), Some(a)) => Some(delta(a, b)),
        _ => None,
    };
    let machine_ms = delta(after.machine.busy_us, before.machine.busy_us);
    let other_cpu_ms = server_cpu_ms
        .map(|server| (machine_ms - server - db_cpu_ms.unwrap_or(0.0) - client_cpu_ms).max(0.0));
    Costs {
        wall_s,
        server_cpu_ms,
        db_cpu_ms,
        client_cpu_ms,
        other_cpu_ms,
        softirq_ms: delta(after.machine.softirq_us, before.machine.softirq_us),
        steal_ms: delta(after.machine.steal_us, before.machine.steal_us),
        listen_overflows: after
            .listen_overflows
            .saturating_sub(before.listen_overflows),
        server_rss_before_kib: before.server_rss_kib(),
        server_rss_after_kib: after.server_rss_kib(),
    }
}

/// Cores kept busy on average (CPU time / wall time).
fn cores(cpu_ms: f64, wall_s: f64) -> f64 {
    crate::stats::ratio(cpu_ms / 1000.0, wall_s)
}

impl Costs {
    pub fn server_cores(&self) -> Option<f64> {
        self.server_cpu_ms.map(|ms| cores(ms, self.wall_s))
    }

    pub fn client_cores(&self) -> f64 {
        cores(self.client_cpu_ms, self.wall_s)
    }

    pub fn db_cores(&self) -> Option<f64> {
        self.db_cpu_ms.map(|ms| cores(ms, self.wall_s))
    }

    /// The database server's CPU per operation, in microseconds.
    pub fn db_us_per(&self, ops: u64) -> Option<f64> {
        self.db_cpu_ms
            .filter(|_| ops > 0)
            .map(|ms| ms * 1000.0 / ops as f64)
    }

    /// Server CPU per operation, in microseconds.
    pub fn server_us_per(&self, ops: u64) -> Option<f64> {
        self.server_cpu_ms
            .filter(|_| ops > 0)
            .map(|ms| ms * 1000.0 / ops as f64)
    }

    /// Which process's CPU bounded the figure. chatd and this client are each one
    /// thread: a process busy for 90% of the wall time or more was the limit. When
    /// neither was, the figure is simply what was offered (a paced load), unless the
    /// two cores were saturated by everything together (other processes, the kernel's
    /// softirq work and hypervisor steal included).
    pub fn limited_by(&self, server_threads: f64) -> &'static str {
        let server = self.server_cores().unwrap_or(0.0);
        let client = self.client_cores();
        let other = self.other_cpu_ms.map_or(0.0, |ms| cores(ms, self.wall_s))
            + self.db_cores().unwrap_or(0.0)
            + cores(self.softirq_ms + self.steal_ms, self.wall_s);
        if server >= 0.9 * server_threads && server / server_threads >= client {
            "server CPU"
        } else if client >= 0.9 {
            "client CPU"
        } else if server + client + other >= 1.7 {
            "machine CPU (2 cores shared)"
        } else {
            "offered load"
        }
    }

    pub fn to_json(self) -> Value {
        json!({
            "wall_s": round3(self.wall_s),
            "server_cpu_ms": self.server_cpu_ms.map(round3),
            "server_cores": self.server_cores().map(round3),
            "db_cpu_ms": self.db_cpu_ms.map(round3),
            "db_cores": self.db_cores().map(round3),
            "client_cpu_ms": round3(self.client_cpu_ms),
            "client_cores": round3(self.client_cores()),
            "other_cpu_ms": self.other_cpu_ms.map(round3),
            "softirq_ms": round3(self.softirq_ms),
            "steal_ms": round3(self.steal_ms),
            "listen_overflows": self.listen_overflows,
            "server_rss_before_kib": self.server_rss_before_kib,
            "server_rss_after_kib": self.server_rss_after_kib,
        })
    }
}

/// The server's peak VmRSS during a phase, sampled every `every` by the loops that run
/// it (`poll` is cheap between samples). A spike shorter than the interval can fall
/// between samples; the kernel's high-water mark (`VmHWM`) cannot miss it but covers
/// the whole life of the process, so it is read at the start and at `finish`: if it rose
/// in between, the phase set a new lifetime peak and that exact value is the peak.
#[derive(Debug, Clone)]
pub struct PeakRss {
    pids: Vec<u32>,
    every: Duration,
    next: Instant,
    /// Highest summed VmRSS sampled, in KiB.
    pub sampled_kib: Option<u64>,
    /// When the highest sample was taken.
    pub sampled_at: Option<Instant>,
    pub samples: u64,
    /// Highest sample in each second since the start, in KiB.
    pub by_second_kib: Vec<u64>,
    start: Instant,
    /// `VmHWM` at the start and at `finish`.
    pub hwm_start_kib: Option<u64>,
    pub hwm_end_kib: Option<u64>,
}

impl PeakRss {
    pub fn new(pids: &[u32], every: Duration) -> PeakRss {
        PeakRss {
            pids: pids.to_vec(),
            every,
            next: Instant::now(),
            sampled_kib: None,
            sampled_at: None,
            samples: 0,
            by_second_kib: Vec::new(),
            start: Instant::now(),
            hwm_start_kib: lifetime_peak_rss_kib(pids),
            hwm_end_kib: None,
        }
    }

    /// Samples if the interval has passed.
    pub fn poll(&mut self) {
        let now = Instant::now();
        if now < self.next || self.pids.is_empty() {
            return;
        }
        self.next = now + self.every;
        let rss: Option<u64> = self.pids.iter().map(|&p| procstat::rss_kib(p)).sum();
        if let Some(kib) = rss {
            self.samples += 1;
            let second = now.duration_since(self.start).as_secs() as usize;
            if self.by_second_kib.len() <= second {
                self.by_second_kib.resize(second + 1, 0);
            }
            self.by_second_kib[second] = self.by_second_kib[second].max(kib);
            if self.sampled_kib.is_none_or(|p| kib > p) {
                self.sampled_kib = Some(kib);
                self.sampled_at = Some(now);
            }
        }
    }

    /// Ends the phase: one last sample and the closing high-water mark.
    pub fn finish(&mut self) {
        self.next = Instant::now();
        self.poll();
        self.hwm_end_kib = lifetime_peak_rss_kib(&self.pids);
    }

    /// The phase's peak: the highest sample, or the high-water mark if the phase raised
    /// it (only meaningful for one process: a sum of peaks is not a peak of the sum).
    pub fn peak_kib(&self) -> Option<u64> {
        match (self.hwm_start_kib, self.hwm_end_kib) {
            (Some(start), Some(end)) if end > start && self.pids.len() == 1 => {
                Some(self.sampled_kib.map_or(end, |s| s.max(end)))
            }
            _ => self.sampled_kib,
        }
    }
}

/// The servers' `VmHWM` (peak RSS over their whole life), summed, in KiB.
pub fn lifetime_peak_rss_kib(pids: &[u32]) -> Option<u64> {
    if pids.is_empty() {
        return None;
    }
    pids.iter().map(|&p| procstat::peak_rss_kib(p)).sum()
}

/// Rounds to 3 decimals for readable JSON.
pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn costs_with(server_ms: f64, client_ms: f64, other_ms: f64) -> Costs {
        Costs {
            wall_s: 1.0,
            server_cpu_ms: Some(server_ms),
            client_cpu_ms: client_ms,
            other_cpu_ms: Some(other_ms),
            ..Costs::default()
        }
    }

    #[test]
    fn the_database_is_not_other_load() {
        let at = Instant::now();
        let snap = |secs: u64, server_ms: u64, db_ms: Option<u64>, busy_ms: u64| Snapshot {
            at: at + Duration::from_secs(secs),
            server: Some(ProcSample {
                rss_kib: 1,
                cpu_us: server_ms * 1000,
            }),
            db_cpu_us: db_ms.map(|ms| ms * 1000),
            client_cpu_us: 0,
            machine: procstat::MachineSample {
                busy_us: busy_ms * 1000,
                ..Default::default()
            },
            listen_overflows: 0,
        };
        let c = costs(&snap(0, 0, Some(100), 0), &snap(2, 400, Some(700), 1500));
        assert_eq!(c.db_cpu_ms, Some(600.0));
        assert_eq!(c.db_cores(), Some(0.3));
        assert_eq!(
            c.other_cpu_ms,
            Some(500.0),
            "machine - server - database - client"
        );
        let c = costs(&snap(0, 0, None, 0), &snap(2, 400, None, 1500));
        assert_eq!(c.db_cpu_ms, None);
        assert_eq!(c.other_cpu_ms, Some(1100.0));
        let json = c.to_json();
        assert!(json["db_cores"].is_null());
    }

    #[test]
    fn what_limited() {
        assert_eq!(costs_with(950.0, 500.0, 0.0).limited_by(1.0), "server CPU");
        assert_eq!(costs_with(600.0, 990.0, 0.0).limited_by(1.0), "client CPU");
        assert_eq!(costs_with(950.0, 990.0, 0.0).limited_by(1.0), "client CPU");
        assert_eq!(
            costs_with(300.0, 200.0, 0.0).limited_by(1.0),
            "offered load"
        );
        assert_eq!(
            costs_with(700.0, 700.0, 500.0).limited_by(1.0),
            "machine CPU (2 cores shared)"
        );
        assert_eq!(costs_with(2000.0, 500.0, 0.0).limited_by(2.0), "server CPU");
        let mut peak = PeakRss::new(&[std::process::id()], Duration::from_secs(3600));
        peak.poll();
        peak.poll();
        assert_eq!(peak.samples, 1, "one sample per interval");
        peak.finish();
        assert_eq!(peak.samples, 2, "finish samples once more");
        assert!(peak.peak_kib().is_some_and(|k| k > 0));
        peak.sampled_kib = Some(100);
        peak.hwm_start_kib = Some(500);
        peak.hwm_end_kib = Some(500);
        assert_eq!(
            peak.peak_kib(),
            Some(100),
            "an older lifetime peak is not this phase's"
        );
        peak.hwm_end_kib = Some(700);
        assert_eq!(
            peak.peak_kib(),
            Some(700),
            "the phase raised the high-water mark"
        );
        assert!(lifetime_peak_rss_kib(&[std::process::id()]).is_some());
        assert_eq!(lifetime_peak_rss_kib(&[]), None);
        let c = costs_with(500.0, 0.0, 0.0);
        assert_eq!(c.server_us_per(1000), Some(500.0));
        assert_eq!(c.server_us_per(0), None);
        assert_eq!(c.db_us_per(1000), None, "no database measured");
        let mut with_db = costs_with(600.0, 500.0, 0.0);
        with_db.db_cpu_ms = Some(700.0);
        assert_eq!(with_db.db_us_per(1000), Some(700.0));
        assert_eq!(with_db.db_cores(), Some(0.7));
        assert_eq!(
            with_db.limited_by(1.0),
            "machine CPU (2 cores shared)",
            "the database's CPU counts towards the machine's"
        );
    }
}
