//! Rate limits (governor) and connection counters, keyed by client address.
//!
//! Clients are keyed by [`client_key`]: an IPv4 address, or the /64 prefix of an IPv6
//! one, because a single IPv6 host usually controls a whole /64 and could otherwise
//! multiply its budget by changing addresses. Keyed limiters keep one small entry per
//! key; [`Limits::prune`] runs from a timer to drop entries that are full again.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::HashMapStateStore;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};

use crate::config::{Config, Rate};

type KeyedLimiter<C> =
    RateLimiter<IpAddr, HashMapStateStore<IpAddr>, C, NoOpMiddleware<<C as Clock>::Instant>>;
type DirectLimiter<C> =
    RateLimiter<NotKeyed, InMemoryState, C, NoOpMiddleware<<C as Clock>::Instant>>;

/// The address a client is counted under: IPv4 as is (IPv4-mapped IPv6 included), IPv6
/// reduced to its /64 network.
pub fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// A governor quota for a configured rate.
pub fn quota(rate: Rate) -> Quota {
    let burst = NonZeroU32::new(rate.burst).unwrap_or(NonZeroU32::MIN);
    let interval = rate.interval().max(Duration::from_nanos(1));
    Quota::with_period(interval)
        .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
        .allow_burst(burst)
}

/// Whole seconds to wait, rounded up, at least 1: the value of Retry-After.
pub fn retry_after_secs(wait: Duration) -> u64 {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    secs.max(1)
}

/// Refusal reasons at accept time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `max_connections` are open.
    TooManyConnections,
    /// `max_connections_per_ip` are open from this address.
    TooManyFromAddress,
    /// This address opens connections faster than `conn_rate_per_ip`.
    TooFastFromAddress,
}

/// All per-client and server-wide limits of the HTTP side.
pub struct Limits<C: Clock = DefaultClock> {
    clock: C,
    http: KeyedLimiter<C>,
    login: KeyedLimiter<C>,
    /// New connections per address: opening and closing connections in a loop would
    /// otherwise cost a full TLS handshake each time.
    connection_rate: KeyedLimiter<C>,
    password_hashes: DirectLimiter<C>,
    connections: HashMap<IpAddr, usize>,
    open: usize,
    max_connections: usize,
    max_per_ip: usize,
}

impl<C: Clock> std::fmt::Debug for Limits<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limits")
            .field("open", &self.open)
            .field("addresses", &self.connections.len())
            .finish_non_exhaustive()
    }
}

impl Limits<DefaultClock> {
    pub fn new(config: &Config) -> Self {
        Limits::with_clock(config, DefaultClock::default())
    }
}

impl<C: Clock + Clone> Limits<C> {
    pub fn with_clock(config: &Config, clock: C) -> Self {
        let hashes = Rate {
            count: config.password_hashes_per_sec,
            per: Duration::from_secs(1),
            burst: config.password_hashes_per_sec,
        };
        Limits {
            http: RateLimiter::hashmap_with_clock(quota(config.http_rate_per_ip), clock.clone()),
            login: RateLimiter::hashmap_with_clock(quota(config.login_rate_per_ip), clock.clone()),
            connection_rate: RateLimiter::hashmap_with_clock(
                quota(config.conn_rate_per_ip),
                clock.clone(),
            ),
            password_hashes: RateLimiter::direct_with_clock(quota(hashes), clock.clone()),
            clock,
            connections: HashMap::new(),
            open: 0,
            max_connections: config.max_connections,
            max_per_ip: config.max_connections_per_ip,
        }
    }
}

impl<C: Clock> Limits<C> {
    /// Counts a new connection from `ip`, or says why it must be refused. The rate is
    /// checked last, so a connection refused for another reason costs no rate budget.
    pub fn open_connection(&mut self, ip: IpAddr) -> Result<(), Refusal> {
        if self.open >= self.max_connections {
            return Err(Refusal::TooManyConnections);
        }
        let key = client_key(ip);
        if self.connections.get(&key).copied().unwrap_or(0) >= self.max_per_ip {
            return Err(Refusal::TooManyFromAddress);
        }
        if self.connection_rate.check_key(&key).is_err() {
            return Err(Refusal::TooFastFromAddress);
        }
        *self.connections.entry(key).or_insert(0) += 1;
        self.open += 1;
        Ok(())
    }

    /// Forgets a connection counted by `open_connection`.
    pub fn close_connection(&mut self, ip: IpAddr) {
        let key = client_key(ip);
        if let Some(count) = self.connections.get_mut(&key) {
            *count -= 1;
            if *count == 0 {
                self.connections.remove(&key);
            }
            self.open -= 1;
        }
    }

    pub fn open_connections(&self) -> usize {
        self.open
    }

    /// One HTTP request from `ip`; Err holds the wait before the next is allowed.
    pub fn check_http(&self, ip: IpAddr) -> Result<(), Duration> {
        self.check_keyed(&self.http, ip)
    }

    /// One /login or /register attempt from `ip`.
    pub fn check_login(&self, ip: IpAddr) -> Result<(), Duration> {
        self.check_keyed(&self.login, ip)
    }

    /// `n` argon2id hashes from the server-wide budget.
    pub fn check_password_hashes(&self, n: u32) -> Result<(), Duration> {
        let n = NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN);
        match self.password_hashes.check_n(n) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(not_until)) => Err(not_until.wait_time_from(self.clock.now())),
            // More than the whole burst at once: never possible, wait a full second.
            Err(_) => Err(Duration::from_secs(1)),
        }
    }

    fn check_keyed(&self, limiter: &KeyedLimiter<C>, ip: IpAddr) -> Result<(), Duration> {
        limiter
            .check_key(&client_key(ip))
            .map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }

    /// Drops limiter entries whose budget is full again, and returns their memory.
    pub fn prune(&self) {
        for limiter in [&self.http, &self.login, &self.connection_rate] {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }

    /// Returns the memory of the per-address connection counts after a load.
    pub fn shrink(&mut self) {
        if self.connections.len() * 4 < self.connections.capacity() {
            self.connections.shrink_to_fit();
        }
    }

    /// Entries held by the keyed limiters (for tests and metrics).
    pub fn tracked_keys(&self) -> usize {
        self.http.len() + self.login.len() + self.connection_rate.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;

    fn config(text: &str) -> Config {
        Config::parse(text, "t".as_ref(), "/".as_ref(), Vec::new()).unwrap()
    }

    #[test]
    fn ipv6_is_keyed_by_slash_64() {
        let a: IpAddr = "2001:db8:1:2:3:4:5:6".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::1".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(client_key(a), client_key(b));
        assert_ne!(client_key(a), client_key(c));
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(client_key(mapped), "10.0.0.1".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn connection_limits() {
        let mut l = Limits::new(&config("max_connections = 3\nmax_connections_per_ip = 2\n"));
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        assert!(l.open_connection(a).is_ok());
        assert!(l.open_connection(a).is_ok());
        assert_eq!(l.open_connection(a), Err(Refusal::TooManyFromAddress));
        assert!(l.open_connection(b).is_ok());
        assert_eq!(l.open_connection(b), Err(Refusal::TooManyConnections));
        l.close_connection(a);
        assert!(l.open_connection(a).is_ok());
        assert_eq!(l.open_connections(), 3);
        for ip in [a, a, b] {
            l.close_connection(ip);
        }
        assert_eq!(l.open_connections(), 0);
        assert!(l.connections.is_empty());
    }

    #[test]
    fn connection_rate_per_address() {
        let clock = FakeRelativeClock::default();
        let mut l = Limits::with_clock(
            &config("conn_rate_per_ip = 2/s burst 3\nmax_connections_per_ip = 3\n"),
            clock.clone(),
        );
        let a: IpAddr = "2001:db8::1".parse().unwrap();
        let a_same_64: IpAddr = "2001:db8::ffff:2".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        // Opened and closed at once: the open count never stops them, the rate does.
        for ip in [a, a_same_64, a] {
            assert_eq!(l.open_connection(ip), Ok(()));
            l.close_connection(ip);
        }
        assert_eq!(
            l.open_connection(a_same_64),
            Err(Refusal::TooFastFromAddress)
        );
        assert_eq!(l.open_connection(b), Ok(()), "other addresses unaffected");
        assert_eq!(
            l.open_connections(),
            1,
            "a refused connection is not counted"
        );
        clock.advance(Duration::from_millis(500));
        assert_eq!(l.open_connection(a), Ok(()));
        assert_eq!(l.open_connection(a), Err(Refusal::TooFastFromAddress));
        // A connection refused by the open count spends none of the rate.
        clock.advance(Duration::from_secs(2));
        assert_eq!(l.open_connection(a), Ok(()));
        assert_eq!(l.open_connection(a), Ok(()));
        assert_eq!(l.open_connection(a), Err(Refusal::TooManyFromAddress));
        l.close_connection(a);
        assert_eq!(l.open_connection(a), Ok(()), "one left in the burst");
    }

    #[test]
    fn the_connection_rate_refills_at_the_exact_interval() {
        let clock = FakeRelativeClock::default();
        let mut l = Limits::with_clock(
            &config("conn_rate_per_ip = 5/s burst 5\nmax_connections_per_ip = 100\n"),
            clock.clone(),
        );
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        for _ in 0..5 {
            assert_eq!(l.open_connection(a), Ok(()));
        }
        for _ in 0..5 {
            assert_eq!(l.open_connection(a), Err(Refusal::TooFastFromAddress));
        }
        // One connection every 200 ms: not a nanosecond sooner.
        clock.advance(Duration::from_millis(200) - Duration::from_nanos(1));
        assert_eq!(l.open_connection(a), Err(Refusal::TooFastFromAddress));
        clock.advance(Duration::from_nanos(1));
        assert_eq!(l.open_connection(a), Ok(()));
        assert_eq!(l.open_connection(a), Err(Refusal::TooFastFromAddress));
        // A full refill takes five intervals and gives a whole burst, no more.
        clock.advance(Duration::from_secs(5));
        for _ in 0..5 {
            assert_eq!(l.open_connection(a), Ok(()));
        }
        assert_eq!(l.open_connection(a), Err(Refusal::TooFastFromAddress));
        assert_eq!(l.open_connections(), 11);
    }

    #[test]
    fn the_password_hash_budget_refills_at_the_exact_interval() {
        let clock = FakeRelativeClock::default();
        let l = Limits::with_clock(&config("password_hashes_per_sec = 2\n"), clock.clone());
        // Two at once, then one per 500 ms; a password change asks for two at once.
        assert!(l.check_password_hashes(2).is_ok());
        let wait = l.check_password_hashes(1).unwrap_err();
        assert_eq!(wait, Duration::from_millis(500));
        assert_eq!(retry_after_secs(wait), 1);
        clock.advance(Duration::from_millis(499));
        assert!(l.check_password_hashes(1).is_err());
        clock.advance(Duration::from_millis(1));
        assert!(l.check_password_hashes(1).is_ok());
        clock.advance(Duration::from_millis(500));
        assert!(
            l.check_password_hashes(2).is_err(),
            "one hash back, not the two a password change needs"
        );
        assert!(l.check_password_hashes(1).is_ok());
        clock.advance(Duration::from_secs(1));
        assert!(
            l.check_password_hashes(2).is_ok(),
            "full again after a second"
        );
    }

    #[test]
    fn http_rate_and_retry_after() {
        let clock = FakeRelativeClock::default();
        let l = Limits::with_clock(&config("http_rate_per_ip = 1/s burst 2\n"), clock.clone());
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        assert!(l.check_http(ip).is_ok());
        assert!(l.check_http(ip).is_ok());
        let wait = l.check_http(ip).unwrap_err();
        assert_eq!(retry_after_secs(wait), 1);
        assert!(
            l.check_http("10.0.0.9".parse().unwrap()).is_ok(),
            "other IPs unaffected"
        );
        clock.advance(Duration::from_secs(1));
        assert!(l.check_http(ip).is_ok());
    }

    #[test]
    fn login_budget_and_hash_budget() {
        let clock = FakeRelativeClock::default();
        let l = Limits::with_clock(
            &config("login_rate_per_ip = 1/min burst 1\npassword_hashes_per_sec = 2\n"),
            clock.clone(),
        );
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        assert!(l.check_login(ip).is_ok());
        let wait = l.check_login(ip).unwrap_err();
        assert_eq!(retry_after_secs(wait), 60);
        assert!(l.check_password_hashes(1).is_ok());
        assert!(l.check_password_hashes(1).is_ok());
        assert!(l.check_password_hashes(1).is_err());
        clock.advance(Duration::from_millis(500));
        assert!(l.check_password_hashes(1).is_ok());
        clock.advance(Duration::from_secs(1));
        assert!(l.check_password_hashes(2).is_ok());
        assert!(l.check_password_hashes(3).is_err(), "more than the burst");
    }

    #[test]
    fn prune_forgets_idle_clients() {
        let clock = FakeRelativeClock::default();
        let l = Limits::with_clock(&config(""), clock.clone());
        for i in 0..10u8 {
            let _ = l.check_http(IpAddr::from([10, 0, 0, i]));
        }
        assert_eq!(l.tracked_keys(), 10);
        clock.advance(Duration::from_secs(10));
        l.prune();
        assert_eq!(l.tracked_keys(), 0);
    }

    #[test]
    fn retry_after_rounds_up() {
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1001)), 2);
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
    }
}
