//! Durable state in SQLite: accounts now, messages and subscriptions later.
//!
//! The database runs in WAL mode; migrations are applied in order at open and recorded
//! in `schema_version`, so an old database is upgraded in place and a newer one refused.
//! Every statement is parameterised and prepared once (statement cache).

mod migrations;
mod users;

use std::path::Path;

use rusqlite::Connection;

pub use users::User;

/// Storage failures, with the one domain conflict callers act on.
#[derive(Debug)]
pub enum StoreError {
    /// The username (ignoring case) belongs to another account.
    UsernameTaken,
    /// The database was written by a newer chatd.
    SchemaTooNew {
        found: i64,
        known: i64,
    },
    Io(std::io::Error),
    Sqlite(rusqlite::Error),
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::UsernameTaken => f.write_str("username taken"),
            StoreError::SchemaTooNew { found, known } => write!(
                f,
                "database schema version {found} is newer than this chatd knows ({known})"
            ),
            StoreError::Io(e) => write!(f, "database directory: {e}"),
            StoreError::Sqlite(e) => write!(f, "sqlite: {e}"),
        }
    }
}

impl std::error::Error for StoreError {}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Sqlite(e)
    }
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// The open database.
pub struct Store {
    conn: Connection,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").finish_non_exhaustive()
    }
}

impl Store {
    /// Opens (creating if needed) the database and brings its schema up to date.
    pub fn open(path: &Path) -> Result<Store> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(StoreError::Io)?;
        }
        let conn = Connection::open(path)?;
        Store::init(conn)
    }

    /// A private in-memory database, for tests.
    pub fn open_in_memory() -> Result<Store> {
        Store::init(Connection::open_in_memory()?)
    }

    fn init(conn: Connection) -> Result<Store> {
        conn.pragma_update(None, "journal_mode", "WAL")?;
        // NORMAL in WAL mode: a commit survives a crash of chatd (kill -9); only an OS
        // crash or power cut can lose the last commits.
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(2))?;
        conn.set_prepared_statement_cache_capacity(64);
        migrations::apply(&conn)?;
        Ok(Store { conn })
    }

    /// Checkpoints the WAL and closes, for a clean shutdown.
    pub fn close(self) -> Result<()> {
        self.conn
            .execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")?;
        self.conn.close().map_err(|(_, e)| StoreError::Sqlite(e))
    }
}
