//! chatd's own counters, read from `GET /metrics` (served to loopback by default): how
//! many slow consumers it closed, how many connections timed out before their request
//! or while idle, how many are open.
//!
//! Each read is one short HTTPS connection in a loop of its own, so it is done between
//! phases, never while a load runs.

use std::time::{Duration, Instant};

use crate::net::{Handler, Kind, Net, Out, Target};

/// WebSockets chatd closed with 1013 because their queue passed `max_outbound_bytes`.
pub const SLOW_CONSUMERS: &str = r#"chatd_ws_closed_total{reason="slow_consumer"}"#;
/// Connections chatd closed because nothing usable came or went for `idle_timeout_secs`.
pub const IDLE_TIMEOUTS: &str = r#"chatd_connection_errors_total{reason="idle_timeout"}"#;
/// Connections open now (the one reading `/metrics` included).
pub const OPEN_CONNECTIONS: &str = "chatd_open_connections";
/// Connections chatd closed because the TLS handshake or a request did not complete
/// within `header_timeout_secs`.
pub const HEADER_TIMEOUTS: &str = r#"chatd_connection_errors_total{reason="header_timeout"}"#;

struct OneResponse {
    status: Option<u16>,
    body: Vec<u8>,
    error: Option<String>,
}

impl Handler for OneResponse {
    fn on_open(&mut self, _: usize, _: u64, _: u64, _: &mut Out<'_>) {}
    fn on_text(&mut self, _: usize, _: &[u8], _: u64, _: &mut Out<'_>) {}

    fn on_response(&mut self, _: usize, status: u16, body: &[u8], _: u64, _: &mut Out<'_>) {
        self.status = Some(status);
        self.body = body.to_vec();
    }

    fn on_closed(&mut self, _: usize, reason: &str) {
        self.error = Some(reason.to_string());
    }
}

/// Fetches `/metrics` once (within 5 s) and returns its text.
pub fn fetch(target: &Target, base: Instant) -> Result<String, String> {
    let mut net = Net::new(target.clone(), base).map_err(|e| e.to_string())?;
    let request = crate::http::get("/metrics", &target.host, None);
    let id = net
        .connect(Kind::Http, &request)
        .map_err(|e| format!("metrics: connect: {e}"))?;
    let mut one = OneResponse {
        status: None,
        body: Vec::new(),
        error: None,
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while one.status.is_none() && one.error.is_none() && Instant::now() < deadline {
        net.turn(&mut one, Duration::from_millis(10))
            .map_err(|e| e.to_string())?;
    }
    net.close(id);
    match (one.status, one.error) {
        (Some(200), _) => String::from_utf8(one.body).map_err(|e| format!("metrics: {e}")),
        (Some(status), _) => Err(format!("GET /metrics answered {status}")),
        (None, Some(e)) => Err(format!("GET /metrics: {e}")),
        (None, None) => Err("GET /metrics: no answer in 5 s".into()),
    }
}

/// The value of one sample (`name{labels}` exactly as exposed) in Prometheus text.
pub fn sample(text: &str, series: &str) -> Option<u64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// One sample, read now; None (and a note on stderr) if chatd cannot be asked.
pub fn read(target: &Target, base: Instant, series: &str) -> Option<u64> {
    match fetch(target, base) {
        Ok(text) => {
            let value = sample(&text, series);
            if value.is_none() {
                eprintln!("chatbench: /metrics has no {series}");
            }
            value
        }
        Err(e) => {
            eprintln!("chatbench: {e}");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_by_exact_series() {
        let text = "# HELP chatd_ws_closed_total WebSockets closed by the server, by reason.\n\
                    # TYPE chatd_ws_closed_total counter\n\
                    chatd_ws_closed_total{reason=\"slow_consumer\"} 17\n\
                    chatd_ws_closed_total{reason=\"idle\"} 3\n\
                    chatd_connection_errors_total{reason=\"header_timeout\"} 200\n\
                    chatd_rooms 4\n";
        assert_eq!(sample(text, SLOW_CONSUMERS), Some(17));
        assert_eq!(sample(text, HEADER_TIMEOUTS), Some(200));
        assert_eq!(sample(text, "chatd_rooms"), Some(4));
        assert_eq!(sample(text, "chatd_room"), None, "a prefix is not a series");
        assert_eq!(
            sample(text, r#"chatd_ws_closed_total{reason="flood"}"#),
            None
        );
        assert_eq!(sample("chatd_rooms x\n", "chatd_rooms"), None);
    }
}
