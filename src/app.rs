//! Everything request handlers need besides the request: configuration, database,
//! credentials, limits, counters and static files. Owned by the event loop and lent to
//! handlers; holds no sockets.

use crate::auth::{Passwords, Tokens};
use crate::config::Config;
use crate::http::static_files::StaticFiles;
use crate::limits::Limits;
use crate::metrics::Metrics;
use crate::store::Store;

/// Application state shared by every connection (one thread: plain fields, no locks).
#[derive(Debug)]
pub struct App {
    pub config: Config,
    pub store: Store,
    pub passwords: Passwords,
    pub tokens: Tokens,
    pub limits: Limits,
    pub metrics: Metrics,
    pub static_files: StaticFiles,
}

impl App {
    pub fn new(config: Config, store: Store, secret: &[u8]) -> Result<App, String> {
        let passwords = Passwords::new(
            config.argon2_memory_kib,
            config.argon2_iterations,
            config.argon2_parallelism,
        )
        .map_err(|e| e.to_string())?;
        let ttl = i64::try_from(config.jwt_ttl.as_secs()).unwrap_or(i64::MAX);
        Ok(App {
            tokens: Tokens::new(secret, ttl),
            limits: Limits::new(&config),
            metrics: Metrics::default(),
            static_files: StaticFiles::new(&config.public_dir),
            passwords,
            store,
            config,
        })
    }
}
