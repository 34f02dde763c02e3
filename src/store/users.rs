//! Accounts: create, look up by id or name (case-insensitive), update.

use rusqlite::{OptionalExtension, Row, params};

use super::{Result, Store, StoreError};

/// An account as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub id: i64,
    pub username: String,
    pub display_name: String,
    /// PHC string; never leaves the server.
    pub password_hash: String,
    /// Bumped by every password change; tokens carry it.
    pub password_version: i64,
    /// Unix seconds.
    pub created_at: i64,
}

const COLUMNS: &str = "id, username, display_name, password_hash, password_version, created_at";

fn from_row(row: &Row<'_>) -> rusqlite::Result<User> {
    Ok(User {
        id: row.get(0)?,
        username: row.get(1)?,
        display_name: row.get(2)?,
        password_hash: row.get(3)?,
        password_version: row.get(4)?,
        created_at: row.get(5)?,
    })
}

impl Store {
    /// Creates an account; `UsernameTaken` if the name exists in any letter case.
    pub fn create_user(
        &self,
        username: &str,
        password_hash: &str,
        created_at: i64,
    ) -> Result<User> {
        let mut stmt = self.conn.prepare_cached(
            "INSERT INTO users (username, display_name, password_hash, password_version, created_at)
             VALUES (?1, ?1, ?2, 0, ?3)",
        )?;
        match stmt.execute(params![username, password_hash, created_at]) {
            Ok(_) => {}
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::ConstraintViolation =>
            {
                return Err(StoreError::UsernameTaken);
            }
            Err(e) => return Err(e.into()),
        }
        Ok(User {
            id: self.conn.last_insert_rowid(),
            username: username.to_string(),
            display_name: username.to_string(),
            password_hash: password_hash.to_string(),
            password_version: 0,
            created_at,
        })
    }

    pub fn user_by_id(&self, id: i64) -> Result<Option<User>> {
        let mut stmt = self
            .conn
            .prepare_cached(&format!("SELECT {COLUMNS} FROM users WHERE id = ?1"))?;
        Ok(stmt.query_row([id], from_row).optional()?)
    }

    /// Looks a username up ignoring letter case.
    pub fn user_by_name(&self, username: &str) -> Result<Option<User>> {
        let mut stmt = self
            .conn
            .prepare_cached(&format!("SELECT {COLUMNS} FROM users WHERE username = ?1"))?;
        Ok(stmt.query_row([username], from_row).optional()?)
    }

    pub fn set_display_name(&self, id: i64, display_name: &str) -> Result<()> {
        let mut stmt = self
            .conn
            .prepare_cached("UPDATE users SET display_name = ?2 WHERE id = ?1")?;
        stmt.execute(params![id, display_name])?;
        Ok(())
    }

    /// Stores a new password hash and returns the new password version.
    pub fn set_password(&self, id: i64, password_hash: &str) -> Result<i64> {
        let mut stmt = self.conn.prepare_cached(
            "UPDATE users SET password_hash = ?2, password_version = password_version + 1
             WHERE id = ?1 RETURNING password_version",
        )?;
        Ok(stmt.query_row(params![id, password_hash], |r| r.get(0))?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_lookup_update() {
        let s = Store::open_in_memory().unwrap();
        let u = s.create_user("Alice", "h1", 100).unwrap();
        assert_eq!(u.display_name, "Alice");
        assert!(matches!(
            s.create_user("alice", "h2", 101),
            Err(StoreError::UsernameTaken)
        ));
        assert_eq!(s.user_by_name("ALICE").unwrap().unwrap().id, u.id);
        assert_eq!(s.user_by_id(u.id).unwrap().unwrap().username, "Alice");
        assert!(s.user_by_id(999).unwrap().is_none());
        s.set_display_name(u.id, "Al").unwrap();
        assert_eq!(s.set_password(u.id, "h3").unwrap(), 1);
        assert_eq!(s.set_password(u.id, "h4").unwrap(), 2);
        let u2 = s.user_by_id(u.id).unwrap().unwrap();
        assert_eq!(
            (u2.display_name.as_str(), u2.password_hash.as_str()),
            ("Al", "h4")
        );
    }

    #[test]
    fn survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/chat.db");
        let s = Store::open(&path).unwrap();
        s.create_user("bob", "h", 1).unwrap();
        s.close().unwrap();
        let s = Store::open(&path).unwrap();
        assert!(s.user_by_name("bob").unwrap().is_some());
    }
}
