//! Durable state in SQLite: accounts now, messages and subscriptions later.
//!
//! The database runs in WAL mode; migrations are applied in order at open and recorded
//! in `schema_version`, so an old database is upgraded in place and a newer one refused.
//! Every statement is parameterised and prepared once (statement cache).

mod messages;
mod migrations;
mod users;

use std::path::Path;

use rusqlite::Connection;

use crate::config::DbSynchronous;

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
    /// Another process (another chatd, most likely) holds the database: chatd keeps it
    /// locked while it runs.
    InUse,
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
            StoreError::InUse => f.write_str(
                "the database is in use by another process (another chatd?); \
                 chatd holds it exclusively while it runs",
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
    /// The id the next message gets: one sequence for every kind of message.
    next_message_id: i64,
    /// Writes of the current turn, committed together.
    pending: Vec<messages::PendingWrite>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").finish_non_exhaustive()
    }
}

/// Creates `path` empty with mode 0600 unless it exists (SQLite takes an empty file as
/// a new database).
fn create_private(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        // The mode given at creation passes through the umask; set it exactly.
        Ok(file) => file.set_permissions(std::fs::Permissions::from_mode(0o600)),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

impl Store {
    /// Opens (creating if needed) the database with `synchronous = FULL` and brings its
    /// schema up to date.
    pub fn open(path: &Path) -> Result<Store> {
        Store::open_with(path, DbSynchronous::Full)
    }

    /// Opens with the given durability setting. A new database file is created 0600,
    /// whatever the umask: it holds password hashes and every direct message. SQLite
    /// gives the `-wal` and `-shm` files the database file's mode.
    pub fn open_with(path: &Path, synchronous: DbSynchronous) -> Result<Store> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(StoreError::Io)?;
        }
        create_private(path).map_err(StoreError::Io)?;
        let conn = Connection::open(path)?;
        Store::init(conn, synchronous)
    }

    /// A private in-memory database, for tests.
    pub fn open_in_memory() -> Result<Store> {
        Store::init(Connection::open_in_memory()?, DbSynchronous::Normal)
    }

    fn init(conn: Connection, synchronous: DbSynchronous) -> Result<Store> {
        // chatd is the database's only user: holding the lock for good keeps the WAL
        // index in private memory, so no file-lock system calls are made around every
        // statement. (Another process cannot open the database while chatd runs.)
        conn.pragma_update(None, "locking_mode", "EXCLUSIVE")?;
        // The first statement that takes the lock: busy means another process has it.
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(|e| match e.sqlite_error_code() {
                Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked) => {
                    StoreError::InUse
                }
                _ => StoreError::Sqlite(e),
            })?;
        // FULL: every commit is fsynced. NORMAL (WAL): a commit survives a crash of
        // chatd (kill -9); only an OS crash or power cut can lose the last commits.
        let level = match synchronous {
            DbSynchronous::Full => "FULL",
            DbSynchronous::Normal => "NORMAL",
        };
        conn.pragma_update(None, "synchronous", level)?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(2))?;
        conn.set_prepared_statement_cache_capacity(64);
        migrations::apply(&conn)?;
        let next_message_id: i64 =
            conn.query_row("SELECT COALESCE(MAX(id), 0) + 1 FROM messages", [], |r| {
                r.get(0)
            })?;
        Ok(Store {
            conn,
            next_message_id,
            pending: Vec::new(),
        })
    }

    /// The `synchronous` level SQLite reports for this connection (`OFF`, `NORMAL`,
    /// `FULL` or `EXTRA`): what is in effect, not what was asked for.
    pub fn synchronous(&self) -> Result<&'static str> {
        let level: i64 = self
            .conn
            .query_row("PRAGMA synchronous", [], |r| r.get(0))?;
        Ok(match level {
            0 => "OFF",
            1 => "NORMAL",
            2 => "FULL",
            _ => "EXTRA",
        })
    }

    /// Commits what is pending, checkpoints the WAL and closes, for a clean shutdown.
    pub fn close(mut self) -> Result<()> {
        self.commit_pending()?;
        self.conn
            .execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")?;
        self.conn.close().map_err(|(_, e)| StoreError::Sqlite(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_database_held_by_another_store_is_reported_as_in_use() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("chatd.db");
        let first = Store::open_with(&path, DbSynchronous::Full).unwrap();
        let second = Store::open_with(&path, DbSynchronous::Full);
        assert!(
            matches!(second, Err(StoreError::InUse)),
            "{:?}",
            second.err().map(|e| e.to_string())
        );
        first.close().unwrap();
        Store::open_with(&path, DbSynchronous::Full).expect("free once the first is closed");
    }

    #[test]
    fn the_configured_synchronous_level_is_applied() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("chatd.db");
        let full = Store::open_with(&path, DbSynchronous::Full).unwrap();
        assert_eq!(full.synchronous().unwrap(), "FULL");
        full.close().unwrap();
        let normal = Store::open_with(&path, DbSynchronous::Normal).unwrap();
        assert_eq!(normal.synchronous().unwrap(), "NORMAL");
        let level: i64 = normal
            .conn
            .query_row("PRAGMA synchronous", [], |r| r.get(0))
            .unwrap();
        assert_eq!(level, 1, "NORMAL is 1 in SQLite's numbering");
    }
}
