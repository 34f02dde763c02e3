//! Counters for `GET /metrics`, rendered in the Prometheus text format.
//!
//! Plain integers: the server has one thread, so no atomics are needed. Gauges that
//! other parts already know (open connections) are passed in at render time rather than
//! mirrored here.

use std::fmt::Write;

use crate::store::{ROUND_TRIP_BUCKETS, StoreStats};

/// Monotonic counters, bumped where the events happen.
#[derive(Debug, Default, Clone)]
pub struct Metrics {
    pub connections_accepted: u64,
    pub refused_max_connections: u64,
    pub refused_per_ip: u64,
    pub refused_conn_rate: u64,
    pub tls_errors: u64,
    pub plaintext_rejected: u64,
    pub header_timeouts: u64,
    pub idle_timeouts: u64,
    /// Responses by status class: index 0 = 1xx ... 4 = 5xx.
    pub responses_by_class: [u64; 5],
    pub rate_limited_http: u64,
    pub rate_limited_login: u64,
    pub rate_limited_password_hashes: u64,
    pub logins_ok: u64,
    pub logins_failed: u64,
    pub registrations: u64,
    pub ws_opened: u64,
    /// Text messages received from WebSocket clients.
    pub ws_messages_in: u64,
    /// Frames queued to WebSocket clients (one per recipient).
    pub ws_messages_out: u64,
    pub ws_rate_limited: u64,
    pub ws_slow_consumers: u64,
    pub ws_idle_closed: u64,
    /// A gauge, not a counter: entries in the event loop's timer heap, which the server
    /// owns and stores here at the start of each loop turn.
    pub timer_entries: usize,
    /// A gauge set like `timer_entries`: HTTP requests parked until storage answers.
    pub http_waiting: usize,
}

/// Values that are read from elsewhere when rendering.
#[derive(Debug, Default, Clone, Copy)]
pub struct Gauges {
    pub open_connections: usize,
    pub open_websockets: usize,
    pub online_users: usize,
    pub rooms: usize,
    /// Keys (client addresses) held by the per-address rate limiters.
    pub rate_limiter_keys: usize,
    /// A counter, kept by `auth::Passwords` because it computes every hash.
    pub password_hashes: u64,
    /// Requests (HTTP and chat) waiting for a storage answer.
    pub storage_waiting: usize,
}

impl Metrics {
    pub fn count_response(&mut self, status: u16) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.responses_by_class[class] += 1;
    }

    /// The Prometheus text exposition.
    pub fn render(&self, gauges: Gauges, store: &StoreStats) -> String {
        let mut out = String::with_capacity(2048);
        let mut metric = |name: &str, kind: &str, help: &str, samples: &[(&str, u64)]| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, value) in samples {
                if labels.is_empty() {
                    let _ = writeln!(out, "{name} {value}");
                } else {
                    let _ = writeln!(out, "{name}{{{labels}}} {value}");
                }
            }
        };
        metric(
            "chatd_open_connections",
            "gauge",
            "Open client connections (TLS, HTTP or WebSocket).",
            &[("", gauges.open_connections as u64)],
        );
        metric(
            "chatd_rate_limiter_keys",
            "gauge",
            "Client addresses held by the per-address rate limiters (idle ones are pruned every minute).",
            &[("", gauges.rate_limiter_keys as u64)],
        );
        metric(
            "chatd_timer_entries",
            "gauge",
            "Entries in the event loop's timer heap, stale ones included.",
            &[("", self.timer_entries as u64)],
        );
        metric(
            "chatd_connections_accepted_total",
            "counter",
            "Connections accepted.",
            &[("", self.connections_accepted)],
        );
        metric(
            "chatd_connections_refused_total",
            "counter",
            "Connections closed at accept, before TLS, because of a connection limit.",
            &[
                ("reason=\"max_connections\"", self.refused_max_connections),
                ("reason=\"max_connections_per_ip\"", self.refused_per_ip),
                ("reason=\"conn_rate_per_ip\"", self.refused_conn_rate),
            ],
        );
        metric(
            "chatd_connection_errors_total",
            "counter",
            "Connections closed for a transport problem.",
            &[
                ("reason=\"tls\"", self.tls_errors),
                ("reason=\"plaintext_http\"", self.plaintext_rejected),
                ("reason=\"header_timeout\"", self.header_timeouts),
                ("reason=\"idle_timeout\"", self.idle_timeouts),
            ],
        );
        let classes = ["1xx", "2xx", "3xx", "4xx", "5xx"];
        let labels: Vec<String> = classes.iter().map(|c| format!("class=\"{c}\"")).collect();
        let samples: Vec<(&str, u64)> = labels
            .iter()
            .map(String::as_str)
            .zip(self.responses_by_class)
            .collect();
        metric(
            "chatd_http_responses_total",
            "counter",
            "HTTP responses by status class.",
            &samples,
        );
        metric(
            "chatd_rate_limited_total",
            "counter",
            "Requests refused with 429, by limit.",
            &[
                ("limit=\"http_rate_per_ip\"", self.rate_limited_http),
                ("limit=\"login_rate_per_ip\"", self.rate_limited_login),
                (
                    "limit=\"password_hashes_per_sec\"",
                    self.rate_limited_password_hashes,
                ),
            ],
        );
        metric(
            "chatd_logins_total",
            "counter",
            "Login attempts by result.",
            &[
                ("result=\"ok\"", self.logins_ok),
                ("result=\"failed\"", self.logins_failed),
            ],
        );
        metric(
            "chatd_password_hashes_total",
            "counter",
            "argon2id computations: hashes and verifications, the dummy one for unknown users included.",
            &[("", gauges.password_hashes)],
        );
        metric(
            "chatd_registrations_total",
            "counter",
            "Accounts created.",
            &[("", self.registrations)],
        );
        metric(
            "chatd_open_websockets",
            "gauge",
            "Open WebSocket connections.",
            &[("", gauges.open_websockets as u64)],
        );
        metric(
            "chatd_online_users",
            "gauge",
            "Users with at least one open WebSocket.",
            &[("", gauges.online_users as u64)],
        );
        metric(
            "chatd_rooms",
            "gauge",
            "Rooms with at least one member.",
            &[("", gauges.rooms as u64)],
        );
        metric(
            "chatd_websockets_opened_total",
            "counter",
            "WebSocket upgrades accepted.",
            &[("", self.ws_opened)],
        );
        metric(
            "chatd_ws_messages_total",
            "counter",
            "WebSocket text messages: in = received requests, out = frames queued to clients.",
            &[
                ("direction=\"in\"", self.ws_messages_in),
                ("direction=\"out\"", self.ws_messages_out),
            ],
        );
        metric(
            "chatd_ws_rate_limited_total",
            "counter",
            "WebSocket requests refused by ws_rate.",
            &[("", self.ws_rate_limited)],
        );
        metric(
            "chatd_ws_closed_total",
            "counter",
            "WebSockets closed by the server, by reason.",
            &[
                ("reason=\"slow_consumer\"", self.ws_slow_consumers),
                ("reason=\"idle\"", self.ws_idle_closed),
            ],
        );
        metric(
            "chatd_db_commits_total",
            "counter",
            "Transactions that stored writes: at most one per event-loop turn (group commit).",
            &[("", store.commits)],
        );
        metric(
            "chatd_db_commit_failures_total",
            "counter",
            "Write transactions that failed (their requests were answered with an error).",
            &[("", store.commit_failures)],
        );
        metric(
            "chatd_db_batched_writes_total",
            "counter",
            "Writes in committed transactions; divided by chatd_db_commits_total, the mean batch.",
            &[("", store.batched_writes)],
        );
        metric(
            "chatd_db_reconnects_total",
            "counter",
            "Database connections made again after one was lost.",
            &[("", store.reconnects)],
        );
        metric(
            "chatd_db_errors_total",
            "counter",
            "Storage requests answered with an error (failures and timeouts).",
            &[("", store.errors)],
        );
        metric(
            "chatd_storage_waiting",
            "gauge",
            "Requests (HTTP and chat) waiting for a storage answer.",
            &[("", gauges.storage_waiting as u64)],
        );
        let name = "chatd_db_round_trip_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} Time from sending database requests to their answer.\n# TYPE {name} histogram"
        );
        let mut cumulative = 0;
        for (i, count) in store.round_trips.iter().enumerate() {
            cumulative += count;
            let le = ROUND_TRIP_BUCKETS
                .get(i)
                .map_or_else(|| "+Inf".to_string(), f64::to_string);
            let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {cumulative}");
        }
        let _ = writeln!(out, "{name}_sum {}", store.round_trip_sum_secs);
        let _ = writeln!(out, "{name}_count {cumulative}");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let mut m = Metrics::default();
        m.count_response(200);
        m.count_response(404);
        m.count_response(429);
        m.logins_failed = 2;
        m.timer_entries = 5;
        let mut store = StoreStats {
            commits: 3,
            ..StoreStats::default()
        };
        store.observe_round_trip(0.0007);
        store.observe_round_trip(0.003);
        store.observe_round_trip(9.0);
        let text = m.render(
            Gauges {
                open_connections: 3,
                rate_limiter_keys: 4,
                password_hashes: 7,
                ..Gauges::default()
            },
            &store,
        );
        assert!(text.contains("chatd_db_commits_total 3\n"));
        assert!(text.contains("chatd_db_round_trip_seconds_bucket{le=\"0.0005\"} 0\n"));
        assert!(text.contains("chatd_db_round_trip_seconds_bucket{le=\"0.001\"} 1\n"));
        assert!(text.contains("chatd_db_round_trip_seconds_bucket{le=\"0.005\"} 2\n"));
        assert!(text.contains("chatd_db_round_trip_seconds_bucket{le=\"+Inf\"} 3\n"));
        assert!(text.contains("chatd_db_round_trip_seconds_count 3\n"));
        assert!(text.contains("# TYPE chatd_open_connections gauge\nchatd_open_connections 3\n"));
        assert!(text.contains("# TYPE chatd_rate_limiter_keys gauge\nchatd_rate_limiter_keys 4\n"));
        assert!(text.contains("# TYPE chatd_timer_entries gauge\nchatd_timer_entries 5\n"));
        assert!(text.contains("chatd_http_responses_total{class=\"4xx\"} 2\n"));
        assert!(text.contains("chatd_http_responses_total{class=\"2xx\"} 1\n"));
        assert!(text.contains("chatd_logins_total{result=\"failed\"} 2\n"));
        assert!(text.contains(
            "# TYPE chatd_password_hashes_total counter\nchatd_password_hashes_total 7\n"
        ));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (_, value) = line.rsplit_once(' ').unwrap();
            value.parse::<f64>().unwrap();
        }
    }
}
