//! Before/after snapshots of what a phase cost: wall time, the server's CPU and memory,
//! our own CPU, and the rest of the machine's CPU (other load skews every figure).
//!
//! Per-operation server CPU (µs per handshake, per delivery, per request) is the figure
//! that stays comparable when the client, not the server, is what limits a run.

use std::time::Instant;

use serde_json::{Value, json};

use crate::procstat::{self, ProcSample};

/// Counters at one moment.
#[derive(Debug, Clone)]
pub struct Snapshot {
    at: Instant,
    /// The server's processes (summed), if their PIDs were given and readable.
    server: Option<ProcSample>,
    client_cpu_us: u64,
    machine: procstat::MachineSample,
    listen_overflows: u64,
}

/// Reads every counter now. The server's PIDs are summed (nginx: master and worker).
pub fn snapshot(pids: &[u32]) -> Snapshot {
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
    pub client_cpu_ms: f64,
    /// Busy CPU of the machine that was neither the server nor this client (other
    /// processes; softirq and steal excluded).
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
    let machine_ms = delta(after.machine.busy_us, before.machine.busy_us);
    let other_cpu_ms = server_cpu_ms.map(|server| (machine_ms - server - client_cpu_ms).max(0.0));
    Costs {
        wall_s,
        server_cpu_ms,
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
        let c = costs_with(500.0, 0.0, 0.0);
        assert_eq!(c.server_us_per(1000), Some(500.0));
        assert_eq!(c.server_us_per(0), None);
    }
}
