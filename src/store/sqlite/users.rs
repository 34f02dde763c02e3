//! Accounts: create, look up by id or name (case-insensitive), update.

use rusqlite::{OptionalExtension, Row, Transaction, params};

use super::{Result, SqliteStore};
use crate::store::User;

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

/// Creates an account inside the turn's transaction; None if the name exists in any
/// letter case (the unique index decides, not a lookup before).
pub(super) fn create_user(
    tx: &Transaction<'_>,
    username: &str,
    password_hash: &str,
    created_at: i64,
) -> Result<Option<User>> {
    let mut stmt = tx.prepare_cached(
        "INSERT INTO users (username, display_name, password_hash, password_version, created_at)
         VALUES (?1, ?1, ?2, 0, ?3) ON CONFLICT DO NOTHING RETURNING id",
    )?;
    let id: Option<i64> = stmt
        .query_row(params![username, password_hash, created_at], |r| r.get(0))
        .optional()?;
    Ok(id.map(|id| User {
        id,
        username: username.to_string(),
        display_name: username.to_string(),
        password_hash: password_hash.to_string(),
        password_version: 0,
        created_at,
    }))
}

/// Stores a new password hash; the new password version, None if no such account.
pub(super) fn set_password(
    tx: &Transaction<'_>,
    id: i64,
    password_hash: &str,
) -> Result<Option<i64>> {
    let mut stmt = tx.prepare_cached(
        "UPDATE users SET password_hash = ?2, password_version = password_version + 1
         WHERE id = ?1 RETURNING password_version",
    )?;
    Ok(stmt
        .query_row(params![id, password_hash], |r| r.get(0))
        .optional()?)
}

pub(super) fn set_display_name(tx: &Transaction<'_>, id: i64, display_name: &str) -> Result<()> {
    let mut stmt = tx.prepare_cached("UPDATE users SET display_name = ?2 WHERE id = ?1")?;
    stmt.execute(params![id, display_name])?;
    Ok(())
}

impl SqliteStore {
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Answer, Op, Storage, Ticket};

    fn run(s: &mut SqliteStore, op: Op) -> Answer {
        s.submit(Ticket(1), op);
        s.flush_now();
        let mut answers = Vec::new();
        s.take_answers(&mut answers);
        answers.pop().unwrap().1.unwrap()
    }

    fn create(s: &mut SqliteStore, name: &str) -> Option<User> {
        match run(
            s,
            Op::CreateUser {
                username: name.into(),
                password_hash: "h1".into(),
                created_at: 100,
            },
        ) {
            Answer::Created(user) => user,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn create_lookup_update() {
        let mut s = SqliteStore::open_in_memory().unwrap();
        let u = create(&mut s, "Alice").unwrap();
        assert_eq!(u.display_name, "Alice");
        assert!(create(&mut s, "alice").is_none(), "taken ignoring case");
        assert_eq!(s.user_by_name("ALICE").unwrap().unwrap().id, u.id);
        assert_eq!(s.user_by_id(u.id).unwrap().unwrap().username, "Alice");
        assert!(s.user_by_id(999).unwrap().is_none());
        let rename = Op::SetDisplayName {
            user: u.id,
            display_name: "Al".into(),
        };
        assert_eq!(run(&mut s, rename), Answer::Done);
        let password = |hash: &str| Op::SetPassword {
            user: u.id,
            password_hash: hash.into(),
        };
        assert_eq!(
            run(&mut s, password("h3")),
            Answer::PasswordVersion(Some(1))
        );
        assert_eq!(
            run(&mut s, password("h4")),
            Answer::PasswordVersion(Some(2))
        );
        let nobody = Op::SetPassword {
            user: 999,
            password_hash: "h".into(),
        };
        assert_eq!(run(&mut s, nobody), Answer::PasswordVersion(None));
        let u2 = s.user_by_id(u.id).unwrap().unwrap();
        assert_eq!(
            (u2.display_name.as_str(), u2.password_hash.as_str()),
            ("Al", "h4")
        );
    }

    #[test]
    fn two_registrations_of_one_name_in_one_batch() {
        let mut s = SqliteStore::open_in_memory().unwrap();
        for (ticket, name) in [(1, "carol"), (2, "CAROL")] {
            s.submit(
                Ticket(ticket),
                Op::CreateUser {
                    username: name.into(),
                    password_hash: "h".into(),
                    created_at: 0,
                },
            );
        }
        s.flush_now();
        let mut answers = Vec::new();
        s.take_answers(&mut answers);
        assert!(matches!(answers[0].1, Ok(Answer::Created(Some(_)))));
        assert_eq!(answers[1].1, Ok(Answer::Created(None)));
    }

    #[test]
    fn survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/chat.db");
        let mut s = SqliteStore::open(&path).unwrap();
        create(&mut s, "bob").unwrap();
        s.close().unwrap();
        drop(s);
        let s = SqliteStore::open(&path).unwrap();
        assert!(s.user_by_name("bob").unwrap().is_some());
    }
}
