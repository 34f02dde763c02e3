//! Logins at a fixed rate over a small pool of keep-alive HTTPS connections, sharing
//! the loop with a chat load (the login-storm scenario). Each login costs the server one
//! argon2id hash on its only thread: the point is to see what that does to chat latency.

use std::collections::BTreeMap;

use crate::net::{Kind, Net, Out};
use crate::setup;
use crate::stats::Latencies;

pub struct Storm {
    host: String,
    users: usize,
    /// Pool connections: id -> send time of the login in flight (None when idle).
    conns: BTreeMap<usize, Option<u64>>,
    max_conns: usize,
    interval_ns: u64,
    next_due_ns: u64,
    next_user: usize,
    pub latency: Latencies,
    pub statuses: BTreeMap<u16, u64>,
    pub closed: BTreeMap<String, u64>,
    pub sent: u64,
    /// Logins due while every pool connection was busy (the pool is full).
    pub skipped: u64,
}

impl Storm {
    pub fn new(host: &str, users: usize, rate: f64, max_conns: usize, start_ns: u64) -> Storm {
        Storm {
            host: host.to_string(),
            users: users.max(1),
            conns: BTreeMap::new(),
            max_conns: max_conns.max(1),
            interval_ns: (1e9 / rate.max(1e-3)) as u64,
            next_due_ns: start_ns,
            next_user: 0,
            latency: Latencies::default(),
            statuses: BTreeMap::new(),
            closed: BTreeMap::new(),
            sent: 0,
            skipped: 0,
        }
    }

    pub fn owns(&self, id: usize) -> bool {
        self.conns.contains_key(&id)
    }

    /// Sends the logins due by `now_ns`; returns when the next one is due.
    pub fn tick(&mut self, net: &mut Net, now_ns: u64) -> u64 {
        while self.next_due_ns <= now_ns {
            self.next_due_ns += self.interval_ns;
            let request = setup::login_request(&self.host, self.next_user % self.users);
            self.next_user += 1;
            let idle = self
                .conns
                .iter()
                .find(|(_, busy)| busy.is_none())
                .map(|(&id, _)| id);
            match idle {
                Some(id) => {
                    net.send_raw(id, &request);
                    self.conns.insert(id, Some(now_ns));
                }
                None if self.conns.len() < self.max_conns => {
                    match net.connect(Kind::Http, &request) {
                        Ok(id) => {
                            self.conns.insert(id, Some(now_ns));
                        }
                        Err(e) => {
                            *self.closed.entry(format!("connect: {e}")).or_default() += 1;
                            continue;
                        }
                    }
                }
                None => {
                    self.skipped += 1;
                    continue;
                }
            }
            self.sent += 1;
        }
        self.next_due_ns
    }

    pub fn on_response(&mut self, id: usize, status: u16, now_ns: u64, _out: &mut Out<'_>) {
        if let Some(Some(sent)) = self.conns.insert(id, None) {
            self.latency.record_ns(now_ns.saturating_sub(sent));
        }
        *self.statuses.entry(status).or_default() += 1;
    }

    pub fn on_closed(&mut self, id: usize, reason: &str) {
        self.conns.remove(&id);
        *self.closed.entry(reason.to_string()).or_default() += 1;
    }

    /// Closes the pool.
    pub fn close_all(&mut self, net: &mut Net) {
        for id in std::mem::take(&mut self.conns).into_keys() {
            net.close(id);
        }
    }
}
