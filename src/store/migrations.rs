//! Schema migrations, applied in order and recorded in `schema_version`.
//!
//! A migration is never edited once released: changes go in a new one at the end.

use rusqlite::Connection;

use super::{Result, StoreError};

/// Each entry moves the schema from version `index` to `index + 1`.
const MIGRATIONS: &[&str] = &[
    // 1: accounts.
    "CREATE TABLE users (
        id INTEGER PRIMARY KEY,
        username TEXT NOT NULL UNIQUE COLLATE NOCASE,
        display_name TEXT NOT NULL,
        password_hash TEXT NOT NULL,
        password_version INTEGER NOT NULL DEFAULT 0,
        created_at INTEGER NOT NULL
    );",
    // 2: chat. Room messages, direct messages and notifications share one id sequence
    // (assigned by chatd, see messages.rs). A direct message also records its two
    // participants as (user_lo, user_hi) so a conversation is one index range.
    "CREATE TABLE messages (
        id INTEGER PRIMARY KEY,
        kind INTEGER NOT NULL,
        room TEXT,
        sender_id INTEGER NOT NULL REFERENCES users(id),
        recipient_id INTEGER REFERENCES users(id),
        user_lo INTEGER,
        user_hi INTEGER,
        text TEXT NOT NULL,
        ts INTEGER NOT NULL
    );
    CREATE INDEX messages_by_room ON messages(room, id) WHERE room IS NOT NULL;
    CREATE INDEX messages_by_pair ON messages(user_lo, user_hi, id) WHERE user_lo IS NOT NULL;
    CREATE TABLE subscriptions (
        subscriber_id INTEGER NOT NULL REFERENCES users(id),
        target_id INTEGER NOT NULL REFERENCES users(id),
        PRIMARY KEY (subscriber_id, target_id)
    ) WITHOUT ROWID;",
];

/// The schema version this build writes.
pub const CURRENT: i64 = MIGRATIONS.len() as i64;

pub fn apply(conn: &Connection) -> Result<()> {
    conn.execute_batch("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL);")?;
    let found: Option<i64> =
        conn.query_row("SELECT max(version) FROM schema_version", [], |row| {
            row.get(0)
        })?;
    let found = found.unwrap_or(0);
    if found > CURRENT {
        return Err(StoreError::SchemaTooNew {
            found,
            known: CURRENT,
        });
    }
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        let version = index as i64 + 1;
        let tx = conn.unchecked_transaction()?;
        tx.execute_batch(sql)?;
        tx.execute(
            "INSERT INTO schema_version (version) VALUES (?1)",
            [version],
        )?;
        tx.commit()?;
        log::info!("database schema migrated to version {version}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn applies_once_and_refuses_newer() {
        let conn = Connection::open_in_memory().unwrap();
        apply(&conn).unwrap();
        apply(&conn).unwrap();
        let n: i64 = conn
            .query_row("SELECT count(*) FROM schema_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, CURRENT);
        conn.execute("INSERT INTO schema_version VALUES (999)", [])
            .unwrap();
        assert!(matches!(
            apply(&conn),
            Err(StoreError::SchemaTooNew { found: 999, .. })
        ));
    }
}
