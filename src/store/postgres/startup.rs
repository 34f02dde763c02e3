//! Getting a PostgreSQL database ready before chatd serves: the schema migrated (under
//! an advisory lock, so processes starting together migrate once) and the stored
//! subscriptions loaded. Runs before the event loop exists, on a poller of its own,
//! bounded by the database timeout at every step; nothing else is served meanwhile, so
//! waiting here holds nobody up.

use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::{Events, Poll, Token};

use super::{PgConfig, schema, sql};
use crate::chat::UserId;
use crate::pg::{Event, PgConn, PgError, Rows, Statement, Unit};

/// One connection driven to completion of each unit in turn.
struct Session {
    poll: Poll,
    conn: PgConn,
    timeout: Duration,
}

impl Session {
    fn open(config: &PgConfig, catalogue: Arc<[Statement]>) -> Result<Session, String> {
        let poll = Poll::new().map_err(|e| format!("cannot make a poller: {e}"))?;
        let conn = PgConn::connect(&config.params, catalogue, poll.registry(), Token(0))
            .map_err(|e| e.to_string())?;
        let mut session = Session {
            poll,
            conn,
            timeout: config.timeout,
        };
        session.wait(None)?;
        Ok(session)
    }

    /// Polls until the connection is ready (`unit` None) or the unit is answered.
    fn wait(&mut self, unit: Option<crate::pg::UnitId>) -> Result<Option<Vec<Rows>>, String> {
        let deadline = Instant::now() + self.timeout;
        let mut events = Events::with_capacity(8);
        let mut first = true;
        loop {
            let happened = if first {
                first = false;
                self.conn.flush(self.poll.registry())
            } else {
                self.conn.on_ready(self.poll.registry())
            };
            for event in happened {
                match event {
                    Event::Ready if unit.is_none() => return Ok(None),
                    Event::Unit { id, outcome } if Some(id) == unit => {
                        return outcome.map(Some).map_err(|e| e.to_string());
                    }
                    Event::Closed(e) => return Err(e.to_string()),
                    _ => {}
                }
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(format!(
                    "no answer within database_timeout_ms ({} ms)",
                    self.timeout.as_millis()
                ));
            }
            match self.poll.poll(&mut events, Some(deadline - now)) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("polling the database connection: {e}")),
            }
        }
    }

    fn run(&mut self, unit: Unit) -> Result<Vec<Rows>, String> {
        let id = self.conn.send(unit, Instant::now());
        Ok(self.wait(Some(id))?.unwrap_or_default())
    }

    fn simple(&mut self, sql: &str) -> Result<Vec<Rows>, String> {
        self.run(Unit::simple(sql))
    }

    fn close(mut self) {
        let _ = self.conn.close(self.poll.registry());
    }
}

/// Migrates the schema and returns the stored subscriptions as (subscriber, target).
pub fn prepare(config: &PgConfig) -> Result<Vec<(UserId, UserId)>, String> {
    let mut session = Session::open(config, Arc::from(Vec::new()))?;
    session.simple(schema::LOCK)?;
    let migrated = migrate(&mut session);
    let unlocked = session.simple(schema::UNLOCK);
    session.close();
    migrated?;
    unlocked?;
    let catalogue: Arc<[Statement]> = Arc::from(sql::CATALOGUE.to_vec());
    let mut session = Session::open(config, catalogue)?;
    let rows = session.run(Unit {
        queries: vec![crate::pg::Query {
            statement: sql::ALL_SUBSCRIPTIONS,
            params: Vec::new(),
        }],
        ..Unit::default()
    })?;
    session.close();
    let mut subscriptions = Vec::new();
    for row in rows.into_iter().flat_map(|r| r.rows) {
        let pair = (row.get(0), row.get(1));
        match pair {
            (Ok(subscriber), Ok(target)) => subscriptions.push((subscriber, target)),
            (Err(e), _) | (_, Err(e)) => return Err(format!("reading subscriptions: {e}")),
        }
    }
    Ok(subscriptions)
}

/// Applies the migrations the database lacks; refuses a newer schema.
fn migrate(session: &mut Session) -> Result<(), String> {
    let rows = session.simple(schema::READ_VERSION)?;
    let found = rows
        .iter()
        .flat_map(|r| &r.rows)
        .next_back()
        .map(|row| row.text(0))
        .transpose()
        .map_err(|e: PgError| e.to_string())?
        .flatten()
        .and_then(|text| text.parse::<i64>().ok())
        .ok_or("the database's schema_version cannot be read")?;
    if found > schema::CURRENT {
        return Err(format!(
            "database schema version {found} is newer than this chatd knows ({})",
            schema::CURRENT
        ));
    }
    for (index, migration) in schema::MIGRATIONS.iter().enumerate().skip(found as usize) {
        let version = index as i64 + 1;
        // One simple query: one implicit transaction, all of it or nothing.
        session.simple(&format!("{migration};\n{}", schema::record(version)))?;
        log::info!("database schema migrated to version {version}");
    }
    Ok(())
}
