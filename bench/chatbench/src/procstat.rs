//! What the processes cost: a process's resident memory and CPU time from `/proc`, a
//! process tree's CPU time (a database server's postmaster and its children), our own
//! CPU time from `getrusage`, and the whole machine's CPU time from `/proc/stat` (to see
//! how much CPU neither the server nor the client used: other load).

use std::io;

/// A process's counters at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProcSample {
    /// VmRSS in KiB.
    pub rss_kib: u64,
    /// utime + stime of every thread, in microseconds.
    pub cpu_us: u64,
}

/// Reads `/proc/PID/status` and `/proc/PID/stat`.
pub fn sample_process(pid: u32) -> io::Result<ProcSample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_string());
    let rss_kib = parse_vm_rss_kib(&status).ok_or_else(|| bad("no VmRSS in status"))?;
    let ticks = parse_stat_cpu_ticks(&stat).ok_or_else(|| bad("malformed stat"))?;
    Ok(ProcSample {
        rss_kib,
        cpu_us: ticks_to_us(ticks, clock_ticks_per_sec()),
    })
}

/// The `VmRSS:` line of `/proc/PID/status`, in KiB.
pub fn parse_vm_rss_kib(status: &str) -> Option<u64> {
    parse_status_kib(status, "VmRSS:")
}

/// A `Key: <n> kB` line of `/proc/PID/status` (`VmRSS:`, `VmHWM:`), in KiB.
pub fn parse_status_kib(status: &str, key: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with(key))?;
    let mut words = line[key.len()..].split_whitespace();
    let value: u64 = words.next()?.parse().ok()?;
    match words.next() {
        Some("kB") | None => Some(value),
        Some(_) => None,
    }
}

/// A process's VmRSS alone (cheap enough to sample every 100 ms), in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_vm_rss_kib(&status)
}

/// A process's peak resident set since it started (`VmHWM`), in KiB.
pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_status_kib(&status, "VmHWM:")
}

/// A number from a sysctl file (`net/core/somaxconn`), if readable.
pub fn sysctl(name: &str) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/sys/{name}"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// utime + stime (fields 14 and 15) of `/proc/PID/stat`, in clock ticks. The command
/// name (field 2) is in parentheses and may itself hold spaces and parentheses, so the
/// fields are counted from the last `)`.
pub fn parse_stat_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    // `rest` starts at field 3 (state): utime is field 14, the 12th of `rest`.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// Fields of `/proc/PID/stat` that a process tree's CPU needs, in clock ticks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatTimes {
    pub ppid: u32,
    /// utime + stime.
    pub own: u64,
    /// cutime + cstime: the CPU of children it has waited for.
    pub reaped_children: u64,
}

/// ppid (field 4), utime + stime (14, 15) and cutime + cstime (16, 17), counted from
/// the last `)` like [`parse_stat_cpu_ticks`].
pub fn parse_stat_times(stat: &str) -> Option<StatTimes> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().take(15).collect();
    let field = |i: usize| fields.get(i)?.parse::<u64>().ok();
    Some(StatTimes {
        ppid: u32::try_from(field(1)?).ok()?,
        own: field(11)? + field(12)?,
        reaped_children: field(13)? + field(14)?,
    })
}

/// CPU time of a process tree rooted at `root` (a PostgreSQL postmaster), in
/// microseconds: the root's own time, what its exited children used (the kernel adds a
/// child's time to its parent's once reaped, so backends that came and went during a
/// run are counted), and the time of every live descendant. None when `root` is gone.
pub fn tree_cpu_us(root: u32) -> Option<u64> {
    let mut times = Vec::new();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if let Some(t) = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| parse_stat_times(&s))
        {
            times.push((pid, t));
        }
    }
    tree_ticks(root, &times).map(|ticks| ticks_to_us(ticks, clock_ticks_per_sec()))
}

/// The sum [`tree_cpu_us`] takes, over `(pid, times)` of every process, in ticks.
pub fn tree_ticks(root: u32, procs: &[(u32, StatTimes)]) -> Option<u64> {
    let (_, root_times) = procs.iter().find(|(pid, _)| *pid == root)?;
    let mut total = root_times.own + root_times.reaped_children;
    let mut frontier = vec![root];
    while let Some(parent) = frontier.pop() {
        for (pid, t) in procs.iter().filter(|(_, t)| t.ppid == parent) {
            // A child's reaped children are already in its own parent's cutime only
            // once it exits; while it lives, count them here.
            total += t.own + t.reaped_children;
            frontier.push(*pid);
        }
    }
    Some(total)
}

pub fn ticks_to_us(ticks: u64, ticks_per_sec: u64) -> u64 {
    ticks * 1_000_000 / ticks_per_sec.max(1)
}

pub fn clock_ticks_per_sec() -> u64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as u64 } else { 100 }
}

/// This process's user + system CPU time, in microseconds.
pub fn self_cpu_us() -> u64 {
    // SAFETY: getrusage writes into the zeroed struct we pass; RUSAGE_SELF is valid.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    if rc != 0 {
        return 0;
    }
    let us = |tv: libc::timeval| tv.tv_sec as u64 * 1_000_000 + tv.tv_usec as u64;
    us(usage.ru_utime) + us(usage.ru_stime)
}

/// The whole machine's CPU time (all cores), in microseconds, from `/proc/stat`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MachineSample {
    /// user + nice + system + irq: time spent by processes (and hard interrupts).
    pub busy_us: u64,
    /// softirq: on loopback, mostly the kernel's network stack moving our packets.
    pub softirq_us: u64,
    /// steal: time the hypervisor gave to other machines.
    pub steal_us: u64,
}

pub fn machine() -> MachineSample {
    let ticks = clock_ticks_per_sec();
    std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| parse_proc_stat(&s))
        .map_or_else(MachineSample::default, |[busy, softirq, steal]| {
            MachineSample {
                busy_us: ticks_to_us(busy, ticks),
                softirq_us: ticks_to_us(softirq, ticks),
                steal_us: ticks_to_us(steal, ticks),
            }
        })
}

/// [busy, softirq, steal] ticks from the aggregate `cpu` line: user nice system idle
/// iowait irq softirq steal (guest time is already inside user).
pub fn parse_proc_stat(stat: &str) -> Option<[u64; 3]> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(|v| v.parse().ok())
        .collect::<Option<_>>()?;
    if v.len() < 8 {
        return None;
    }
    Some([v[0] + v[1] + v[2] + v[5], v[6], v[7]])
}

/// `TcpExt: ListenOverflows` from `/proc/net/netstat`: connections the kernel dropped
/// because a listener's accept queue was full (machine-wide; on a loopback bench, the
/// server's listener). A dropped SYN costs the client a 1 s retransmission.
pub fn listen_overflows() -> u64 {
    std::fs::read_to_string("/proc/net/netstat")
        .ok()
        .and_then(|s| parse_netstat(&s, "TcpExt:", "ListenOverflows"))
        .unwrap_or(0)
}

/// One counter from the header/values line pairs of `/proc/net/netstat`.
pub fn parse_netstat(text: &str, section: &str, name: &str) -> Option<u64> {
    let mut lines = text.lines().filter(|l| l.starts_with(section));
    while let (Some(header), Some(values)) = (lines.next(), lines.next()) {
        let at = header.split_whitespace().position(|h| h == name);
        if let Some(at) = at {
            return values.split_whitespace().nth(at)?.parse().ok();
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_rss() {
        let status = "Name:\tchatd\nVmPeak:\t  200 kB\nVmRSS:\t   12345 kB\nThreads:\t1\n";
        assert_eq!(parse_vm_rss_kib(status), Some(12345));
        assert_eq!(
            parse_vm_rss_kib("Name:\tx\n"),
            None,
            "kernel threads have none"
        );
        assert_eq!(parse_vm_rss_kib("VmRSS:\t12 MB\n"), None);
        let status = "VmHWM:\t   99999 kB\nVmRSS:\t   12345 kB\n";
        assert_eq!(parse_status_kib(status, "VmHWM:"), Some(99999));
        assert_eq!(parse_status_kib(status, "VmRSS:"), Some(12345));
        assert_eq!(parse_status_kib(status, "VmSwap:"), None);
    }

    #[test]
    fn stat_cpu_ticks_with_a_hostile_command_name() {
        let stat = "4242 (my) prog (x)) S 1 4242 4242 0 -1 4194560 1150 0 0 0 \
                    250 75 0 0 20 0 1 0 123456 10000000 2000 18446744073709551615";
        assert_eq!(parse_stat_cpu_ticks(stat), Some(325));
        assert_eq!(parse_stat_cpu_ticks("4242 (x) S 1 2"), None);
        assert_eq!(ticks_to_us(325, 100), 3_250_000);
    }

    #[test]
    fn process_tree_cpu() {
        let stat = "77 (postgres: chatd chat 127.0.0.1(4242) idle) S 70 77 77 0 -1 4194560 \
                    1150 0 0 0 250 75 3 4 20 0 1 0 123456 10000000 2000";
        assert_eq!(
            parse_stat_times(stat),
            Some(StatTimes {
                ppid: 70,
                own: 325,
                reaped_children: 7
            })
        );
        assert_eq!(parse_stat_times("77 (x) S 70 77"), None);
        let t = |ppid, own, reaped_children| StatTimes {
            ppid,
            own,
            reaped_children,
        };
        let procs = [
            (1, t(0, 1000, 1000)),
            (70, t(1, 10, 5)),
            (71, t(70, 20, 0)),
            (72, t(70, 30, 0)),
            (73, t(72, 40, 0)),
            (80, t(1, 500, 0)),
        ];
        assert_eq!(
            tree_ticks(70, &procs),
            Some(105),
            "root, reaped, children, grandchild"
        );
        assert_eq!(tree_ticks(80, &procs), Some(500));
        assert_eq!(tree_ticks(99, &procs), None);
        let me = std::process::id();
        assert!(tree_cpu_us(me).is_some());
    }

    #[test]
    fn proc_stat_busy() {
        let stat = "cpu  100 5 50 1000 20 3 2 7 0 0\ncpu0 50 2 25 500 10 1 1 0 0 0\n";
        assert_eq!(parse_proc_stat(stat), Some([158, 2, 7]));
        assert_eq!(parse_proc_stat("cpu  1 2 3\n"), None);
    }

    #[test]
    fn netstat_counter() {
        let text = "TcpExt: SyncookiesSent ListenOverflows ListenDrops\nTcpExt: 0 316 320\n\
                    IpExt: InNoRoutes\nIpExt: 0\n";
        assert_eq!(parse_netstat(text, "TcpExt:", "ListenOverflows"), Some(316));
        assert_eq!(parse_netstat(text, "IpExt:", "InNoRoutes"), Some(0));
        assert_eq!(parse_netstat(text, "TcpExt:", "Nope"), None);
    }

    #[test]
    fn own_process() {
        let sample = sample_process(std::process::id()).unwrap();
        assert!(sample.rss_kib > 0);
        let me = std::process::id();
        assert!(peak_rss_kib(me).unwrap() >= rss_kib(me).unwrap() / 2);
        assert!(sysctl("net/core/somaxconn").is_some_and(|n| n > 0));
        assert_eq!(sysctl("net/core/no_such_knob"), None);
        let _ = self_cpu_us();
        assert!(clock_ticks_per_sec() > 0);
    }
}
