//! chatd: a secure chat server on one thread.
//!
//! One mio event loop, edge-triggered, drives every non-blocking rustls connection on a
//! single port: an HTTPS accounts API (register, login, profile), static files, and
//! (WebSocket) chat. The protocol code takes values and returns values; only
//! [`server`] touches sockets, the poller, signals and the clock.
//!
//! # Layout
//! - [`config`]: `server.conf` plus `CHATD_*` overrides, validated.
//! - [`server`]: the event loop, connections, output queues, deadlines.
//! - [`session`]: the per-connection protocol, sans-IO (plaintext and `now` in,
//!   decisions out).
//! - [`http`]: request parsing, responses, the error contract, static files.
//! - [`api`]: routing and the account endpoints.
//! - [`ws`]: the WebSocket upgrade, frame codec and close codes.
//! - [`chat`]: rooms, presence, messages, subscriptions (no I/O).
//! - [`auth`]: argon2id password hashes and HS256 JWTs.
//! - [`store`]: SQLite storage and migrations.
//! - [`pg`]: the PostgreSQL client (sans-IO protocol, non-blocking connection).
//! - [`limits`]: rate limits and connection counters.
//! - [`metrics`]: counters in the Prometheus text format.
//! - [`tls`]: certificates, keys, the JWT secret.
//! - [`app`]: the state handlers share; [`time`]: the clock as a value.

pub mod api;
pub mod app;
pub mod auth;
pub mod chat;
pub mod config;
pub mod http;
pub mod limits;
pub mod metrics;
pub mod pg;
pub mod server;
pub mod session;
pub mod store;
pub mod time;
pub mod tls;
pub mod ws;

use std::io::Write;

use config::Config;

/// Starts chatd with a loaded configuration and serves until SIGINT/SIGTERM.
///
/// Prints the certificate fingerprint and then `listening on https://HOST:PORT` on
/// stdout (tests and scripts read the real port from it).
pub fn run(config: Config) -> Result<(), String> {
    for warning in &config.warnings {
        log::warn!("configuration: {warning}");
    }
    raise_fd_limit();
    let now_secs = time::Now::read().unix_secs();
    let setup = tls::ensure_certificate(&config.cert_file, &config.key_file, now_secs)
        .map_err(|e| e.to_string())?;
    let (cert, key) = (config.cert_file.display(), config.key_file.display());
    match setup {
        tls::CertificateSetup::Existing => {}
        tls::CertificateSetup::Generated => log::info!(
            "generated a self-signed certificate for localhost, 127.0.0.1 and ::1: {cert} \
             (key {key})"
        ),
        tls::CertificateSetup::Regenerated { expired_at } => log::warn!(
            "the self-signed certificate chatd generated expired on {}: generated a new \
             one, {cert} (key {key}); clients that pinned the old fingerprint must take \
             the new one",
            http::response::http_date(expired_at)
        ),
    }
    warn_if_exposed(&config.key_file, "private key")?;
    let (tls_config, fingerprint) =
        tls::load_server_config(&config.cert_file, &config.key_file).map_err(|e| e.to_string())?;
    tls::log_expiry(&config.cert_file, now_secs);
    // var_os: var() would treat a SECRET_KEY that is not UTF-8 as unset and silently
    // fall back to the secret file.
    let env_secret = std::env::var_os("SECRET_KEY")
        .map(|value| {
            value
                .into_string()
                .map_err(|_| "SECRET_KEY is not valid UTF-8 (it is used as UTF-8 bytes)")
        })
        .transpose()?;
    let (secret, source) =
        tls::load_secret(env_secret, &config.secret_file).map_err(|e| e.to_string())?;
    if source != tls::SecretSource::Environment {
        warn_if_exposed(&config.secret_file, "JWT secret")?;
    }
    match source {
        tls::SecretSource::Environment => log::info!("JWT secret from SECRET_KEY"),
        tls::SecretSource::ExistingFile | tls::SecretSource::CreatedFile => log::warn!(
            "JWT secret from {}{}; production must set SECRET_KEY",
            config.secret_file.display(),
            if source == tls::SecretSource::CreatedFile {
                " (just created)"
            } else {
                ""
            }
        ),
    }
    let (store, subscriptions) = open_store(&config)?;
    let app = app::App::new(config, store, subscriptions, &secret)?;
    let server =
        server::Server::bind(app, tls_config).map_err(|e| format!("cannot listen: {e}"))?;
    let addr = server.local_addr();
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "certificate SHA-256 fingerprint {fingerprint}");
    let _ = writeln!(stdout, "listening on https://{addr}");
    let _ = stdout.flush();
    drop(stdout);
    log::info!("listening on https://{addr} (certificate SHA-256 {fingerprint})");
    server.run().map_err(|e| format!("event loop failed: {e}"))
}

/// The opened store and the stored subscriptions, as (subscriber, target).
type OpenedStore = (Box<dyn store::Storage>, Vec<(i64, i64)>);

/// Opens the configured database (migrated, its subscriptions loaded for the chat).
fn open_store(config: &Config) -> Result<OpenedStore, String> {
    match &config.database {
        config::Database::Sqlite => {
            let db_error = |e: store::StoreError| {
                format!("cannot open database {}: {e}", config.db_path.display())
            };
            let store = store::SqliteStore::open_with(&config.db_path, config.db_synchronous)
                .map_err(db_error)?;
            log::info!(
                "database {} opened (WAL, synchronous = {})",
                config.db_path.display(),
                store.synchronous().map_err(db_error)?
            );
            warn_if_exposed(&config.db_path, "database")?;
            let subscriptions = store
                .subscriptions()
                .map_err(|e| format!("cannot load subscriptions: {e}"))?;
            Ok((Box::new(store), subscriptions))
        }
        config::Database::Postgres(params) => {
            let pg = postgres_config(config, params)?;
            let described = describe_database(&pg.params);
            let subscriptions = store::postgres::prepare(&pg)
                .map_err(|e| format!("cannot open database {described}: {e}"))?;
            log::info!(
                "database {described} ready ({} connections, timeout {} ms)",
                pg.connections,
                pg.timeout.as_millis()
            );
            Ok((Box::new(store::postgres::PgStore::new(pg)), subscriptions))
        }
    }
}

/// The PostgreSQL settings: the URL's, the password from the environment or its file,
/// the TLS mode (by default by where the connection goes) and its trust anchors.
fn postgres_config(
    config: &Config,
    params: &pg::ConnectParams,
) -> Result<store::postgres::PgConfig, String> {
    let mut params = params.clone();
    params.password = database_password(config)?;
    params.tls = config
        .database_tls
        .unwrap_or_else(|| config::default_tls(&params));
    if let Some(path) = &config.database_ca_file {
        let pem =
            std::fs::read(path).map_err(|e| format!("database_ca_file {}: {e}", path.display()))?;
        params.ca_roots =
            Some(std::sync::Arc::new(tls::root_store(&pem).map_err(|e| {
                format!("database_ca_file {}: {e}", path.display())
            })?));
    }
    Ok(store::postgres::PgConfig {
        params,
        connections: config.database_connections,
        timeout: config.database_timeout,
    })
}

/// The PostgreSQL password: `CHATD_DATABASE_PASSWORD`, else the first line of
/// `database_password_file`, else none (trust authentication).
fn database_password(config: &Config) -> Result<Option<String>, String> {
    if let Some(value) = std::env::var_os(config::DATABASE_PASSWORD_VAR) {
        let value = value
            .into_string()
            .map_err(|_| format!("{} is not valid UTF-8", config::DATABASE_PASSWORD_VAR))?;
        // Set but empty is a password that went missing on the way (an unset variable
        // expanded, say), not a choice: unset it for trust authentication.
        if value.is_empty() {
            return Err(format!(
                "{} is empty (unset it when the database needs no password)",
                config::DATABASE_PASSWORD_VAR
            ));
        }
        return Ok(Some(value));
    }
    let Some(path) = &config.database_password_file else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("database_password_file {}: {e}", path.display()))?;
    warn_if_exposed(path, "database password")?;
    let password = text.lines().next().unwrap_or("").to_string();
    if password.is_empty() {
        return Err(format!(
            "database_password_file {} is empty",
            path.display()
        ));
    }
    Ok(Some(password))
}

/// `postgres://user@host:port/db` for logs: never a password.
fn describe_database(params: &pg::ConnectParams) -> String {
    match &params.target {
        pg::Target::Tcp { host, port } => {
            format!("postgres://{}@{host}:{port}/{}", params.user, params.dbname)
        }
        pg::Target::Unix { path } => format!(
            "postgres://{}@/{} (socket {})",
            params.user,
            params.dbname,
            path.display()
        ),
    }
}

/// Warns when a file holding key material or private data is open to other local users.
fn warn_if_exposed(path: &std::path::Path, what: &str) -> Result<(), String> {
    if let Some(mode) = tls::exposed_mode(path).map_err(|e| e.to_string())? {
        log::warn!(
            "the {what} file {} is accessible to group or others (mode {mode:04o}); \
             `chmod 600` it",
            path.display()
        );
    }
    Ok(())
}

/// Raises the soft open-files limit to the hard limit: every connection is a descriptor.
fn raise_fd_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => log::debug!("open files limit: {limit}"),
        Err(e) => log::warn!("cannot raise the open files limit: {e}"),
    }
}
