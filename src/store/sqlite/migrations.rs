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
    // 3: direct conversations, one row per participant (one for messages to oneself),
    // kept at the conversation's last message, so a user's most recent conversations
    // are one short index range. Filled from the messages already stored; for a bare
    // column next to max(), SQLite takes the row holding the maximum.
    "CREATE TABLE conversations (
        user_id INTEGER NOT NULL REFERENCES users(id),
        other_id INTEGER NOT NULL REFERENCES users(id),
        last_id INTEGER NOT NULL,
        ts INTEGER NOT NULL,
        PRIMARY KEY (user_id, other_id)
    ) WITHOUT ROWID;
    CREATE INDEX conversations_by_recent ON conversations(user_id, last_id);
    INSERT INTO conversations (user_id, other_id, last_id, ts)
        SELECT user_lo, user_hi, max(id), ts FROM messages
        WHERE user_lo IS NOT NULL GROUP BY user_lo, user_hi;
    INSERT INTO conversations (user_id, other_id, last_id, ts)
        SELECT other_id, user_id, last_id, ts FROM conversations WHERE user_id <> other_id;",
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

    #[test]
    fn conversations_are_filled_from_stored_direct_messages() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE TABLE schema_version (version INTEGER NOT NULL);
             INSERT INTO schema_version VALUES (1), (2);",
        )
        .unwrap();
        conn.execute_batch(MIGRATIONS[0]).unwrap();
        conn.execute_batch(MIGRATIONS[1]).unwrap();
        conn.execute_batch(
            "INSERT INTO users VALUES (1, 'a', 'a', 'h', 0, 0), (2, 'b', 'b', 'h', 0, 0),
                                      (3, 'c', 'c', 'h', 0, 0);
             INSERT INTO messages VALUES
                 (10, 1, NULL, 1, 2, 1, 2, 'a to b', 100),
                 (11, 0, 'r', 3, NULL, NULL, NULL, 'room', 110),
                 (12, 1, NULL, 2, 1, 1, 2, 'b to a', 120),
                 (13, 1, NULL, 3, 3, 3, 3, 'c to c', 130),
                 (14, 1, NULL, 3, 1, 1, 3, 'c to a', 140);",
        )
        .unwrap();
        apply(&conn).unwrap();
        let mut stmt = conn
            .prepare("SELECT user_id, other_id, last_id, ts FROM conversations ORDER BY 1, 2")
            .unwrap();
        let rows: Vec<(i64, i64, i64, i64)> = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        assert_eq!(
            rows,
            [
                (1, 2, 12, 120),
                (1, 3, 14, 140),
                (2, 1, 12, 120),
                (3, 1, 14, 140),
                (3, 3, 13, 130)
            ]
        );
    }
}
