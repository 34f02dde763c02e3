//! The SQLite backend: one file, held exclusively by one chatd process.
//!
//! The database runs in WAL mode; migrations are applied in order at open and recorded
//! in `schema_version`, so an old database is upgraded in place and a newer one refused.
//! Every statement is parameterised and prepared once (statement cache). SQLite answers
//! in microseconds from the loop's own thread, so a flush carries everything out at
//! once: the turn's writes in one transaction, then its reads; every answer is known
//! when `flush` returns.

mod messages;
mod migrations;
mod users;

use std::path::Path;
use std::time::Instant;

use rusqlite::Connection;

use super::{Answer, Failure, HistoryScope, Op, Outcome, Storage, StoreStats, Ticket};
use crate::config::DbSynchronous;

/// Why the SQLite database could not be opened or used.
#[derive(Debug)]
pub enum StoreError {
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
pub struct SqliteStore {
    conn: Connection,
    /// The id the next message gets: one sequence for every kind of message. chatd
    /// holds the file exclusively, so the ids it hands out at commit follow the commit
    /// order.
    next_message_id: i64,
    /// Operations submitted since the last flush, in order.
    submitted: Vec<(Ticket, Op)>,
    answers: Vec<(Ticket, Outcome)>,
    stats: StoreStats,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore").finish_non_exhaustive()
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

impl SqliteStore {
    /// Opens (creating if needed) the database with `synchronous = FULL` and brings its
    /// schema up to date.
    pub fn open(path: &Path) -> Result<SqliteStore> {
        SqliteStore::open_with(path, DbSynchronous::Full)
    }

    /// Opens with the given durability setting. A new database file is created 0600,
    /// whatever the umask: it holds password hashes and every direct message. SQLite
    /// gives the `-wal` and `-shm` files the database file's mode.
    pub fn open_with(path: &Path, synchronous: DbSynchronous) -> Result<SqliteStore> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(StoreError::Io)?;
        }
        create_private(path).map_err(StoreError::Io)?;
        let conn = Connection::open(path)?;
        SqliteStore::init(conn, synchronous)
    }

    /// A private in-memory database, for tests.
    pub fn open_in_memory() -> Result<SqliteStore> {
        SqliteStore::init(Connection::open_in_memory()?, DbSynchronous::Normal)
    }

    fn init(conn: Connection, synchronous: DbSynchronous) -> Result<SqliteStore> {
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
        Ok(SqliteStore {
            conn,
            next_message_id,
            submitted: Vec::new(),
            answers: Vec::new(),
            stats: StoreStats::default(),
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

    /// Checkpoints the WAL (what was submitted is flushed first), for a clean shutdown.
    pub fn checkpoint(&mut self) -> Result<()> {
        self.flush_now();
        self.conn
            .execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")?;
        Ok(())
    }

    /// Carries out what was submitted: the writes in one transaction (all answered with
    /// `Failed` if it fails), then the reads, in order.
    fn flush_now(&mut self) {
        if self.submitted.is_empty() {
            return;
        }
        let submitted = std::mem::take(&mut self.submitted);
        let (writes, reads): (Vec<_>, Vec<_>) =
            submitted.into_iter().partition(|(_, op)| op.is_write());
        if !writes.is_empty() {
            match self.write_batch(&writes) {
                Ok(answers) => {
                    self.stats.commits += 1;
                    self.stats.batched_writes += writes.len() as u64;
                    self.answers.extend(
                        writes
                            .iter()
                            .map(|(ticket, _)| *ticket)
                            .zip(answers.into_iter().map(Ok)),
                    );
                }
                Err(e) => {
                    log::error!("storing a batch of {} writes failed: {e}", writes.len());
                    // Ids handed to the failed batch are not reused: harmless gaps,
                    // and no id ever names two messages.
                    self.stats.commit_failures += 1;
                    self.stats.errors += writes.len() as u64;
                    self.answers.extend(
                        writes
                            .iter()
                            .map(|(ticket, _)| (*ticket, Err(Failure::Failed))),
                    );
                }
            }
        }
        for (ticket, op) in reads {
            let outcome = self.read(&op).map_err(|e| {
                log::error!("database read failed: {e}");
                self.stats.errors += 1;
                Failure::Failed
            });
            self.answers.push((ticket, outcome));
        }
    }

    fn read(&self, op: &Op) -> Result<Answer> {
        Ok(match op {
            Op::UserById(id) => Answer::User(self.user_by_id(*id)?),
            Op::UserByName(name) => Answer::User(self.user_by_name(name)?),
            Op::History { scope, page, limit } => {
                let scope = match scope {
                    HistoryScope::Room(room) => messages::Scope::Room(room),
                    HistoryScope::Direct { user, with } => {
                        match messages::user_ref(&self.conn, with)? {
                            Some(other) => messages::Scope::Pair(*user, other.id),
                            None => return Ok(Answer::NoSuchUser),
                        }
                    }
                };
                let (items, more) = self.history(scope, *page, *limit)?;
                Answer::History { items, more }
            }
            Op::SubscriptionsOf(user) => Answer::Usernames(self.subscriptions_of(*user)?),
            Op::Conversations { user, limit } => {
                Answer::Conversations(self.conversations(*user, *limit)?)
            }
            // Writes never reach here (flush_now partitions them out).
            Op::CreateUser { .. }
            | Op::SetPassword { .. }
            | Op::SetDisplayName { .. }
            | Op::Post(_)
            | Op::Subscribe { .. } => Answer::Done,
        })
    }
}

impl Storage for SqliteStore {
    fn submit(&mut self, ticket: Ticket, op: Op) {
        self.submitted.push((ticket, op));
    }

    fn has_submitted(&self) -> bool {
        !self.submitted.is_empty()
    }

    fn flush(&mut self, _now: Instant) {
        self.flush_now();
    }

    fn take_answers(&mut self, out: &mut Vec<(Ticket, Outcome)>) {
        out.append(&mut self.answers);
    }

    fn stats(&self) -> StoreStats {
        self.stats.clone()
    }

    fn close(&mut self) -> std::result::Result<(), String> {
        self.checkpoint().map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_database_held_by_another_store_is_reported_as_in_use() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("chatd.db");
        let mut first = SqliteStore::open_with(&path, DbSynchronous::Full).unwrap();
        let second = SqliteStore::open_with(&path, DbSynchronous::Full);
        assert!(
            matches!(second, Err(StoreError::InUse)),
            "{:?}",
            second.err().map(|e| e.to_string())
        );
        first.close().unwrap();
        drop(first);
        SqliteStore::open_with(&path, DbSynchronous::Full).expect("free once the first is closed");
    }

    #[test]
    fn the_configured_synchronous_level_is_applied() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("chatd.db");
        let mut full = SqliteStore::open_with(&path, DbSynchronous::Full).unwrap();
        assert_eq!(full.synchronous().unwrap(), "FULL");
        full.close().unwrap();
        drop(full);
        let normal = SqliteStore::open_with(&path, DbSynchronous::Normal).unwrap();
        assert_eq!(normal.synchronous().unwrap(), "NORMAL");
        let level: i64 = normal
            .conn
            .query_row("PRAGMA synchronous", [], |r| r.get(0))
            .unwrap();
        assert_eq!(level, 1, "NORMAL is 1 in SQLite's numbering");
    }
}
