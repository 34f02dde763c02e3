//! The turn's transaction (group commit), and history reads.
//!
//! Message ids come from one in-memory counter, started above the largest stored id
//! and advanced as the transaction is written, so the sequence only increases, across
//! restarts too, and (chatd holding the file alone) follows the commit order. A flush
//! writes every write submitted in the turn in one transaction; nothing that depends on
//! them is answered before it commits. Reads run after it.

use rusqlite::{OptionalExtension, Row, params};

use super::{Result, SqliteStore, users};
use crate::chat::protocol::{Conversation, Item, ItemKind, Page};
use crate::chat::{UserId, UserRef};
use crate::store::{Answer, NewKind, Op, Ticket};

/// Whose history: a room's, or the direct conversation of two users.
#[derive(Debug, Clone, Copy)]
pub(super) enum Scope<'a> {
    Room(&'a str),
    Pair(UserId, UserId),
}

const KIND_ROOM: i64 = 0;
const KIND_DIRECT: i64 = 1;
const KIND_NOTIFICATION: i64 = 2;

impl SqliteStore {
    /// Writes `writes` in one transaction and returns their answers, in order. On
    /// failure nothing of it is stored (and the ids it took are not reused).
    pub(super) fn write_batch(&mut self, writes: &[(Ticket, Op)]) -> Result<Vec<Answer>> {
        let tx = self.conn.transaction()?;
        let mut answers = Vec::with_capacity(writes.len());
        {
            let mut insert_message = tx.prepare_cached(
                "INSERT INTO messages (id, kind, room, sender_id, recipient_id, user_lo, user_hi, text, ts)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )?;
            // Ids increase within a batch and across batches, so the newest message of a
            // conversation always wins; the WHERE only guards that.
            let mut touch_conversation = tx.prepare_cached(
                "INSERT INTO conversations (user_id, other_id, last_id, ts) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (user_id, other_id) DO UPDATE SET last_id = excluded.last_id, ts = excluded.ts
                 WHERE excluded.last_id > conversations.last_id",
            )?;
            let mut subscribe = tx.prepare_cached(
                "INSERT OR IGNORE INTO subscriptions (subscriber_id, target_id)
                 SELECT ?1, ?2 WHERE (SELECT count(*) FROM subscriptions WHERE subscriber_id = ?1) < ?3",
            )?;
            let mut is_subscribed = tx.prepare_cached(
                "SELECT EXISTS (SELECT 1 FROM subscriptions WHERE subscriber_id = ?1 AND target_id = ?2)",
            )?;
            let mut unsubscribe = tx.prepare_cached(
                "DELETE FROM subscriptions WHERE subscriber_id = ?1 AND target_id = ?2",
            )?;
            for (_, write) in writes {
                let answer = match write {
                    Op::Post(message) => {
                        let (kind, room, recipient) = match &message.kind {
                            NewKind::Room(room) => (KIND_ROOM, Some(room.as_str()), None),
                            NewKind::Direct { to } => match user_ref(&tx, to)? {
                                Some(to) => (KIND_DIRECT, None, Some(to)),
                                None => {
                                    answers.push(Answer::NoSuchUser);
                                    continue;
                                }
                            },
                            NewKind::Notification => (KIND_NOTIFICATION, None, None),
                        };
                        let id = self.next_message_id;
                        self.next_message_id += 1;
                        let sender = message.from;
                        let recipient_id = recipient.as_ref().map(|r| r.id);
                        let pair = recipient_id.map(|r| (r.min(sender), r.max(sender)));
                        insert_message.execute(params![
                            id,
                            kind,
                            room,
                            sender,
                            recipient_id,
                            pair.map(|p| p.0),
                            pair.map(|p| p.1),
                            message.text,
                            message.ts
                        ])?;
                        if let Some(recipient) = recipient_id {
                            touch_conversation
                                .execute(params![sender, recipient, id, message.ts])?;
                            if recipient != sender {
                                touch_conversation
                                    .execute(params![recipient, sender, id, message.ts])?;
                            }
                        }
                        Answer::Posted { id, to: recipient }
                    }
                    Op::Subscribe {
                        subscriber,
                        target,
                        subscribed,
                        max,
                    } => {
                        let Some(target) = user_ref(&tx, target)? else {
                            answers.push(Answer::NoSuchUser);
                            continue;
                        };
                        if *subscribed {
                            // The cap is counted here, in the transaction, so it holds
                            // for every subscribe of the batch.
                            let max = i64::try_from(*max).unwrap_or(i64::MAX);
                            subscribe.execute(params![subscriber, target.id, max])?;
                        } else {
                            unsubscribe.execute(params![subscriber, target.id])?;
                        }
                        let subscribed = is_subscribed
                            .query_row(params![subscriber, target.id], |r| r.get(0))?;
                        Answer::Subscription { target, subscribed }
                    }
                    Op::CreateUser {
                        username,
                        password_hash,
                        created_at,
                    } => Answer::Created(users::create_user(
                        &tx,
                        username,
                        password_hash,
                        *created_at,
                    )?),
                    Op::SetPassword {
                        user,
                        password_hash,
                    } => Answer::PasswordVersion(users::set_password(&tx, *user, password_hash)?),
                    Op::SetDisplayName { user, display_name } => {
                        users::set_display_name(&tx, *user, display_name)?;
                        Answer::Done
                    }
                    // Reads are not written (flush partitions them out).
                    Op::UserById(_)
                    | Op::UserByName(_)
                    | Op::History { .. }
                    | Op::SubscriptionsOf(_)
                    | Op::Conversations { .. } => Answer::Done,
                };
                answers.push(answer);
            }
        }
        tx.commit()?;
        Ok(answers)
    }

    /// Every stored subscription as (subscriber, target).
    pub fn subscriptions(&self) -> Result<Vec<(UserId, UserId)>> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT subscriber_id, target_id FROM subscriptions")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    /// The usernames `subscriber` is subscribed to, in byte order (as the chat sorts
    /// user lists).
    pub fn subscriptions_of(&self, subscriber: UserId) -> Result<Vec<String>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT u.username FROM subscriptions s JOIN users u ON u.id = s.target_id
             WHERE s.subscriber_id = ?1 ORDER BY u.username COLLATE BINARY",
        )?;
        let rows = stmt.query_map([subscriber], |r| r.get(0))?;
        Ok(rows.collect::<rusqlite::Result<Vec<String>>>()?)
    }

    /// Up to `limit` direct conversations of `user`, the most recent first (one index
    /// range of `conversations_by_recent`).
    pub fn conversations(&self, user: UserId, limit: usize) -> Result<Vec<Conversation>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT u.username, c.last_id, c.ts FROM conversations c
             JOIN users u ON u.id = c.other_id
             WHERE c.user_id = ?1 ORDER BY c.last_id DESC LIMIT ?2",
        )?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = stmt.query_map(params![user, limit], |r| {
            Ok(Conversation {
                with: r.get(0)?,
                last_id: r.get(1)?,
                ts: r.get(2)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<Vec<Conversation>>>()?)
    }

    /// A page of history, oldest first, and whether more exist beyond it.
    pub(super) fn history(
        &self,
        scope: Scope<'_>,
        page: Page,
        limit: usize,
    ) -> Result<(Vec<Item>, bool)> {
        let mut args: Vec<rusqlite::types::Value> = Vec::with_capacity(4);
        let filter = match scope {
            Scope::Room(room) => {
                args.push(room.to_string().into());
                "m.room = ?"
            }
            Scope::Pair(a, b) => {
                args.push(a.min(b).into());
                args.push(a.max(b).into());
                "m.user_lo = ? AND m.user_hi = ?"
            }
        };
        let (bound, newest_first) = match page {
            Page::Latest => ("", true),
            Page::Before(id) => {
                args.push(id.into());
                ("AND m.id < ?", true)
            }
            Page::After(id) => {
                args.push(id.into());
                ("AND m.id > ?", false)
            }
        };
        // One row more than asked tells whether another page exists.
        args.push(
            i64::try_from(limit)
                .unwrap_or(i64::MAX)
                .saturating_add(1)
                .into(),
        );
        let sql = format!(
            "SELECT m.id, m.kind, m.room, s.username, r.username, m.text, m.ts
             FROM messages m
             JOIN users s ON s.id = m.sender_id
             LEFT JOIN users r ON r.id = m.recipient_id
             WHERE {filter} {bound}
             ORDER BY m.id {} LIMIT ?",
            if newest_first { "DESC" } else { "ASC" }
        );
        let mut stmt = self.conn.prepare_cached(&sql)?;
        let mut items = stmt
            .query_map(rusqlite::params_from_iter(args), item_from_row)?
            .collect::<rusqlite::Result<Vec<Item>>>()?;
        let more = items.len() > limit;
        items.truncate(limit);
        if newest_first {
            items.reverse();
        }
        Ok((items, more))
    }
}

/// The account of a name (any letter case), as the chat names it.
pub(super) fn user_ref(conn: &rusqlite::Connection, name: &str) -> Result<Option<UserRef>> {
    let mut stmt = conn.prepare_cached("SELECT id, username FROM users WHERE username = ?1")?;
    Ok(stmt
        .query_row([name], |r| {
            Ok(UserRef {
                id: r.get(0)?,
                username: r.get(1)?,
            })
        })
        .optional()?)
}

fn item_from_row(row: &Row<'_>) -> rusqlite::Result<Item> {
    let kind: i64 = row.get(1)?;
    let kind = match kind {
        KIND_ROOM => ItemKind::Room(row.get::<_, Option<String>>(2)?.unwrap_or_default()),
        KIND_DIRECT => ItemKind::Direct {
            to: row.get::<_, Option<String>>(4)?.unwrap_or_default(),
        },
        _ => ItemKind::Notification,
    };
    Ok(Item {
        id: row.get(0)?,
        kind,
        from: row.get(3)?,
        text: row.get(5)?,
        ts: row.get(6)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Failure, HistoryScope, NewMessage, Outcome, Storage};

    /// A store and the tickets of what the test submits.
    struct T {
        s: SqliteStore,
        next: u64,
        /// The usernames of the accounts made, by id.
        names: std::collections::HashMap<i64, String>,
    }

    impl T {
        fn new() -> (T, i64, i64) {
            let mut t = T {
                s: SqliteStore::open_in_memory().unwrap(),
                next: 0,
                names: Default::default(),
            };
            let a = t.user("alice");
            let b = t.user("bob");
            (t, a, b)
        }

        fn user(&mut self, name: &str) -> i64 {
            self.submit(Op::CreateUser {
                username: name.into(),
                password_hash: "h".into(),
                created_at: 0,
            });
            match self.flush().pop().unwrap() {
                Ok(Answer::Created(Some(u))) => {
                    self.names.insert(u.id, u.username);
                    u.id
                }
                other => panic!("{other:?}"),
            }
        }

        fn submit(&mut self, op: Op) -> Ticket {
            self.next += 1;
            self.s.submit(Ticket(self.next), op);
            Ticket(self.next)
        }

        /// Ends the turn; the outcomes in submission order of writes, then reads.
        fn flush(&mut self) -> Vec<Outcome> {
            self.s.flush_now();
            let mut answers = Vec::new();
            self.s.take_answers(&mut answers);
            answers.into_iter().map(|(_, o)| o).collect()
        }

        fn post(&mut self, from: i64, kind: NewKind, text: &str, ts: i64) {
            self.submit(Op::Post(NewMessage {
                from,
                kind,
                text: text.into(),
                ts,
            }));
        }

        fn room(&mut self, from: i64, room: &str, text: &str) {
            self.post(from, NewKind::Room(room.into()), text, 7);
        }

        fn direct(&mut self, from: i64, to: i64, ts: i64) {
            let to = self.names[&to].clone();
            self.post(from, NewKind::Direct { to }, "dm", ts);
        }

        fn subscribe(&mut self, subscriber: i64, target: i64, subscribed: bool) {
            let target = self.names[&target].clone();
            self.submit(Op::Subscribe {
                subscriber,
                target,
                subscribed,
                max: 100,
            });
        }

        /// The ids the last flush gave the posts in it.
        fn ids(outcomes: &[Outcome]) -> Vec<i64> {
            outcomes
                .iter()
                .filter_map(|o| match o {
                    Ok(Answer::Posted { id, .. }) => Some(*id),
                    _ => None,
                })
                .collect()
        }

        fn history(&mut self, scope: HistoryScope, page: Page, limit: usize) -> (Vec<Item>, bool) {
            self.submit(Op::History { scope, page, limit });
            match self.flush().pop().unwrap() {
                Ok(Answer::History { items, more }) => (items, more),
                other => panic!("{other:?}"),
            }
        }
    }

    fn texts(items: &[Item]) -> Vec<&str> {
        items.iter().map(|i| i.text.as_str()).collect()
    }

    fn room(name: &str) -> HistoryScope {
        HistoryScope::Room(name.into())
    }

    #[test]
    fn ids_increase_and_commit_in_one_batch() {
        let (mut t, a, b) = T::new();
        t.room(a, "r", "one");
        t.direct(a, b, 8);
        t.post(b, NewKind::Notification, "note", 9);
        let commits = t.s.stats().commits;
        let ids = T::ids(&t.flush());
        assert_eq!(ids.len(), 3);
        assert!(ids[0] < ids[1] && ids[1] < ids[2]);
        assert_eq!(t.s.stats().commits, commits + 1, "one transaction");
        let (items, more) = t.history(room("r"), Page::Latest, 10);
        assert_eq!(
            items,
            vec![Item {
                id: ids[0],
                kind: ItemKind::Room("r".into()),
                from: "alice".into(),
                text: "one".into(),
                ts: 7
            }]
        );
        assert!(!more);
        let scope = HistoryScope::Direct {
            user: b,
            with: "ALICE".into(),
        };
        let (items, _) = t.history(scope, Page::Latest, 10);
        assert_eq!(items[0].kind, ItemKind::Direct { to: "bob".into() });
        assert_eq!(items[0].from, "alice");
    }

    #[test]
    fn reads_in_the_same_turn_see_its_writes() {
        let (mut t, a, b) = T::new();
        // Submitted before the writes, answered after the transaction.
        t.submit(Op::History {
            scope: room("r"),
            page: Page::Latest,
            limit: 10,
        });
        t.room(a, "r", "queued");
        t.direct(a, b, 1);
        t.subscribe(a, b, true);
        t.submit(Op::SubscriptionsOf(a));
        t.submit(Op::Conversations { user: a, limit: 10 });
        assert!(t.s.has_submitted());
        let outcomes = t.flush();
        assert!(!t.s.has_submitted());
        let Ok(Answer::History { items, .. }) = &outcomes[3] else {
            panic!("{outcomes:?}");
        };
        assert_eq!(texts(items), ["queued"]);
        assert_eq!(outcomes[4], Ok(Answer::Usernames(vec!["bob".into()])));
        let Ok(Answer::Conversations(c)) = &outcomes[5] else {
            panic!("{outcomes:?}");
        };
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn paging_before_and_after() {
        let (mut t, a, _) = T::new();
        for i in 0..7 {
            t.room(a, "r", &format!("m{i}"));
        }
        t.room(a, "other", "x");
        let ids = T::ids(&t.flush());
        let (items, more) = t.history(room("r"), Page::Latest, 3);
        assert_eq!(texts(&items), ["m4", "m5", "m6"]);
        assert!(more);
        let (items, more) = t.history(room("r"), Page::Before(ids[4]), 3);
        assert_eq!(texts(&items), ["m1", "m2", "m3"]);
        assert!(more);
        let (items, more) = t.history(room("r"), Page::Before(ids[1]), 3);
        assert_eq!(texts(&items), ["m0"]);
        assert!(!more);
        let (items, more) = t.history(room("r"), Page::After(ids[2]), 3);
        assert_eq!(texts(&items), ["m3", "m4", "m5"]);
        assert!(more);
        let (items, more) = t.history(room("r"), Page::After(ids[4]), 3);
        assert_eq!(texts(&items), ["m5", "m6"]);
        assert!(!more);
    }

    #[test]
    fn a_failed_transaction_stores_nothing_of_the_batch_and_fails_only_it() {
        let (mut t, a, _) = T::new();
        t.room(a, "r", "ok");
        // No such user: the foreign key fails the whole batch.
        t.room(999, "r", "bad");
        t.submit(Op::UserById(a));
        let outcomes = t.flush();
        assert_eq!(outcomes[..2], [Err(Failure::Failed), Err(Failure::Failed)]);
        assert!(
            matches!(outcomes[2], Ok(Answer::User(Some(_)))),
            "a read of the same turn is not part of the failed transaction"
        );
        assert_eq!(t.s.stats().commit_failures, 1);
        assert!(t.flush().is_empty(), "the failed batch is gone");
        let (items, _) = t.history(room("r"), Page::Latest, 10);
        assert!(items.is_empty());
        t.room(a, "r", "next");
        assert_eq!(T::ids(&t.flush()).len(), 1, "the next turn commits");
    }

    #[test]
    fn conversations_newest_first_for_both_sides() {
        let (mut t, a, b) = T::new();
        let c = t.user("carol");
        t.direct(a, b, 10);
        t.direct(c, a, 20);
        t.room(a, "r", "not a conversation");
        t.direct(a, a, 30);
        let first = T::ids(&t.flush());
        let (ab, ca, aa) = (first[0], first[1], first[3]);
        t.direct(b, a, 40);
        let ba = T::ids(&t.flush())[0];
        let conv = |with: &str, last_id, ts| Conversation {
            with: with.into(),
            last_id,
            ts,
        };
        assert_eq!(
            t.s.conversations(a, 10).unwrap(),
            [
                conv("bob", ba, 40),
                conv("alice", aa, 30),
                conv("carol", ca, 20)
            ],
            "a later message moves a conversation up; one's own is one's own name"
        );
        assert_eq!(t.s.conversations(a, 2).unwrap().len(), 2);
        assert_eq!(t.s.conversations(b, 10).unwrap(), [conv("alice", ba, 40)]);
        assert_eq!(t.s.conversations(c, 10).unwrap(), [conv("alice", ca, 20)]);
        assert!(ab < ba);
    }

    #[test]
    fn conversations_use_their_index() {
        let (t, a, _) = T::new();
        let plan: Vec<String> =
            t.s.conn
                .prepare(
                    "EXPLAIN QUERY PLAN SELECT u.username, c.last_id, c.ts FROM conversations c
                 JOIN users u ON u.id = c.other_id
                 WHERE c.user_id = ?1 ORDER BY c.last_id DESC LIMIT ?2",
                )
                .unwrap()
                .query_map(params![a, 5], |r| r.get::<_, String>(3))
                .unwrap()
                .collect::<rusqlite::Result<_>>()
                .unwrap();
        let plan = plan.join("\n");
        assert!(plan.contains("conversations_by_recent"), "{plan}");
        assert!(!plan.contains("TEMP B-TREE"), "no sort: {plan}");
    }

    #[test]
    fn subscriptions_of_one_user_sorted() {
        let (mut t, a, b) = T::new();
        let c = t.user("Carol");
        let d = t.user("dave");
        t.subscribe(a, d, true);
        t.subscribe(a, c, true);
        t.subscribe(a, b, true);
        t.subscribe(b, a, true);
        t.subscribe(a, b, false);
        t.flush();
        assert_eq!(t.s.subscriptions_of(a).unwrap(), ["Carol", "dave"]);
        assert_eq!(t.s.subscriptions_of(b).unwrap(), ["alice"]);
        assert!(t.s.subscriptions_of(c).unwrap().is_empty());
    }

    #[test]
    fn subscriptions_and_ids_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.db");
        let mut t = T {
            s: SqliteStore::open(&path).unwrap(),
            next: 0,
            names: Default::default(),
        };
        let a = t.user("alice");
        let b = t.user("bob");
        t.subscribe(a, b, true);
        t.subscribe(b, a, true);
        t.subscribe(b, a, false);
        t.room(a, "r", "x");
        let last = T::ids(&t.flush())[0];
        t.s.close().unwrap();
        drop(t);
        let mut t = T {
            s: SqliteStore::open(&path).unwrap(),
            next: 0,
            names: Default::default(),
        };
        assert_eq!(t.s.subscriptions().unwrap(), vec![(a, b)]);
        t.room(a, "r", "y");
        assert!(T::ids(&t.flush())[0] > last);
    }
}
