//! Chat writes batched per event-loop turn (group commit), and history reads.
//!
//! Message ids come from one in-memory counter, started above the largest stored id,
//! so an id is known when the message is queued and the sequence only increases, across
//! restarts too. Queued writes are committed together by [`Store::commit_pending`] at
//! the end of a turn, once per turn; nothing that depends on them is sent before that
//! returns. Reads see committed data only: the chat makes them after the commit.

use rusqlite::{Row, params};

use super::{Result, Store};
use crate::chat::protocol::{Conversation, Item, ItemKind, Page};
use crate::chat::{HistoryScope, NewKind, NewMessage, UserId};

const KIND_ROOM: i64 = 0;
const KIND_DIRECT: i64 = 1;
const KIND_NOTIFICATION: i64 = 2;

/// A write waiting for the end of the turn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum PendingWrite {
    Message {
        id: i64,
        kind: i64,
        room: Option<String>,
        sender: UserId,
        recipient: Option<UserId>,
        text: String,
        ts: i64,
    },
    Subscription {
        subscriber: UserId,
        target: UserId,
        subscribed: bool,
    },
}

impl Store {
    /// Queues a message for the next commit and returns its id.
    pub fn queue_message(&mut self, message: &NewMessage<'_>) -> i64 {
        let id = self.next_message_id;
        self.next_message_id += 1;
        let (kind, room, recipient) = match message.kind {
            NewKind::Room(room) => (KIND_ROOM, Some(room.to_string()), None),
            NewKind::Direct { to } => (KIND_DIRECT, None, Some(to)),
            NewKind::Notification => (KIND_NOTIFICATION, None, None),
        };
        self.pending.push(PendingWrite::Message {
            id,
            kind,
            room,
            sender: message.from,
            recipient,
            text: message.text.to_string(),
            ts: message.ts,
        });
        id
    }

    /// Queues a subscription change for the next commit.
    pub fn queue_subscription(&mut self, subscriber: UserId, target: UserId, subscribed: bool) {
        self.pending.push(PendingWrite::Subscription {
            subscriber,
            target,
            subscribed,
        });
    }

    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Writes everything queued in one transaction. On failure nothing queued is
    /// stored and the queue is emptied: the caller must not acknowledge any of it.
    pub fn commit_pending(&mut self) -> Result<usize> {
        if self.pending.is_empty() {
            return Ok(0);
        }
        let pending = std::mem::take(&mut self.pending);
        self.write_batch(&pending).map(|()| pending.len())
    }

    fn write_batch(&mut self, pending: &[PendingWrite]) -> Result<()> {
        let tx = self.conn.transaction()?;
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
                "INSERT OR IGNORE INTO subscriptions (subscriber_id, target_id) VALUES (?1, ?2)",
            )?;
            let mut unsubscribe = tx.prepare_cached(
                "DELETE FROM subscriptions WHERE subscriber_id = ?1 AND target_id = ?2",
            )?;
            for write in pending {
                match write {
                    PendingWrite::Message {
                        id,
                        kind,
                        room,
                        sender,
                        recipient,
                        text,
                        ts,
                    } => {
                        let pair = recipient.map(|r| (r.min(*sender), r.max(*sender)));
                        insert_message.execute(params![
                            id,
                            kind,
                            room,
                            sender,
                            recipient,
                            pair.map(|p| p.0),
                            pair.map(|p| p.1),
                            text,
                            ts
                        ])?;
                        if let Some(recipient) = *recipient {
                            touch_conversation.execute(params![sender, recipient, id, ts])?;
                            if recipient != *sender {
                                touch_conversation.execute(params![recipient, sender, id, ts])?;
                            }
                        }
                    }
                    PendingWrite::Subscription {
                        subscriber,
                        target,
                        subscribed: true,
                    } => {
                        subscribe.execute(params![subscriber, target])?;
                    }
                    PendingWrite::Subscription {
                        subscriber,
                        target,
                        subscribed: false,
                    } => {
                        unsubscribe.execute(params![subscriber, target])?;
                    }
                }
            }
        }
        tx.commit()?;
        Ok(())
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
    pub fn history(
        &self,
        scope: &HistoryScope<'_>,
        page: Page,
        limit: usize,
    ) -> Result<(Vec<Item>, bool)> {
        let mut args: Vec<rusqlite::types::Value> = Vec::with_capacity(4);
        let filter = match scope {
            HistoryScope::Room(room) => {
                args.push(room.to_string().into());
                "m.room = ?"
            }
            HistoryScope::Direct { a, b } => {
                args.push((*a.min(b)).into());
                args.push((*a.max(b)).into());
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

    fn store_with_users() -> (Store, i64, i64) {
        let s = Store::open_in_memory().unwrap();
        let a = s.create_user("alice", "h", 0).unwrap().id;
        let b = s.create_user("bob", "h", 0).unwrap().id;
        (s, a, b)
    }

    fn room_message(s: &mut Store, from: i64, room: &str, text: &str) -> i64 {
        s.queue_message(&NewMessage {
            from,
            kind: NewKind::Room(room),
            text,
            ts: 7,
        })
    }

    fn texts(items: &[Item]) -> Vec<&str> {
        items.iter().map(|i| i.text.as_str()).collect()
    }

    #[test]
    fn ids_increase_and_commit_in_one_batch() {
        let (mut s, a, b) = store_with_users();
        let id1 = room_message(&mut s, a, "r", "one");
        let id2 = s.queue_message(&NewMessage {
            from: a,
            kind: NewKind::Direct { to: b },
            text: "dm",
            ts: 8,
        });
        let id3 = s.queue_message(&NewMessage {
            from: b,
            kind: NewKind::Notification,
            text: "note",
            ts: 9,
        });
        assert!(id1 < id2 && id2 < id3);
        assert!(s.has_pending());
        assert_eq!(s.commit_pending().unwrap(), 3);
        assert!(!s.has_pending());
        let (items, more) = s
            .history(&HistoryScope::Room("r"), Page::Latest, 10)
            .unwrap();
        assert_eq!(
            items,
            vec![Item {
                id: id1,
                kind: ItemKind::Room("r".into()),
                from: "alice".into(),
                text: "one".into(),
                ts: 7
            }]
        );
        assert!(!more);
        let (items, _) = s
            .history(&HistoryScope::Direct { a: b, b: a }, Page::Latest, 10)
            .unwrap();
        assert_eq!(items[0].kind, ItemKind::Direct { to: "bob".into() });
        assert_eq!(items[0].from, "alice");
    }

    #[test]
    fn reads_see_committed_writes_only_and_never_commit() {
        let (mut s, a, b) = store_with_users();
        room_message(&mut s, a, "r", "queued");
        direct(&mut s, a, b, 1);
        s.queue_subscription(a, b, true);
        let (items, _) = s
            .history(&HistoryScope::Room("r"), Page::Latest, 10)
            .unwrap();
        assert!(items.is_empty());
        assert!(s.conversations(a, 10).unwrap().is_empty());
        assert!(s.subscriptions_of(a).unwrap().is_empty());
        assert!(
            s.has_pending(),
            "one commit per turn, made by the event loop"
        );
        assert_eq!(s.commit_pending().unwrap(), 3);
        let (items, _) = s
            .history(&HistoryScope::Room("r"), Page::Latest, 10)
            .unwrap();
        assert_eq!(texts(&items), ["queued"]);
        assert_eq!(s.conversations(a, 10).unwrap().len(), 1);
        assert_eq!(s.subscriptions_of(a).unwrap(), ["bob"]);
    }

    #[test]
    fn paging_before_and_after() {
        let (mut s, a, _) = store_with_users();
        let ids: Vec<i64> = (0..7)
            .map(|i| room_message(&mut s, a, "r", &format!("m{i}")))
            .collect();
        room_message(&mut s, a, "other", "x");
        s.commit_pending().unwrap();
        let (items, more) = s
            .history(&HistoryScope::Room("r"), Page::Latest, 3)
            .unwrap();
        assert_eq!(texts(&items), ["m4", "m5", "m6"]);
        assert!(more);
        let (items, more) = s
            .history(&HistoryScope::Room("r"), Page::Before(ids[4]), 3)
            .unwrap();
        assert_eq!(texts(&items), ["m1", "m2", "m3"]);
        assert!(more);
        let (items, more) = s
            .history(&HistoryScope::Room("r"), Page::Before(ids[1]), 3)
            .unwrap();
        assert_eq!(texts(&items), ["m0"]);
        assert!(!more);
        let (items, more) = s
            .history(&HistoryScope::Room("r"), Page::After(ids[2]), 3)
            .unwrap();
        assert_eq!(texts(&items), ["m3", "m4", "m5"]);
        assert!(more);
        let (items, more) = s
            .history(&HistoryScope::Room("r"), Page::After(ids[4]), 3)
            .unwrap();
        assert_eq!(texts(&items), ["m5", "m6"]);
        assert!(!more);
    }

    #[test]
    fn a_failed_commit_stores_nothing_of_the_batch() {
        let (mut s, a, _) = store_with_users();
        room_message(&mut s, a, "r", "ok");
        s.queue_message(&NewMessage {
            from: 999, // no such user: the foreign key fails the whole batch
            kind: NewKind::Room("r"),
            text: "bad",
            ts: 0,
        });
        assert!(s.commit_pending().is_err());
        assert!(!s.has_pending());
        assert_eq!(s.commit_pending().unwrap(), 0, "the failed batch is gone");
        let (items, _) = s
            .history(&HistoryScope::Room("r"), Page::Latest, 10)
            .unwrap();
        assert!(items.is_empty());
    }

    fn direct(s: &mut Store, from: i64, to: i64, ts: i64) -> i64 {
        s.queue_message(&NewMessage {
            from,
            kind: NewKind::Direct { to },
            text: "dm",
            ts,
        })
    }

    #[test]
    fn conversations_newest_first_for_both_sides() {
        let (mut s, a, b) = store_with_users();
        let c = s.create_user("carol", "h", 0).unwrap().id;
        let ab = direct(&mut s, a, b, 10);
        let ca = direct(&mut s, c, a, 20);
        room_message(&mut s, a, "r", "not a conversation");
        let aa = direct(&mut s, a, a, 30);
        s.commit_pending().unwrap();
        let ba = direct(&mut s, b, a, 40);
        s.commit_pending().unwrap();
        let conv = |with: &str, last_id, ts| Conversation {
            with: with.into(),
            last_id,
            ts,
        };
        assert_eq!(
            s.conversations(a, 10).unwrap(),
            [
                conv("bob", ba, 40),
                conv("alice", aa, 30),
                conv("carol", ca, 20)
            ],
            "a later message moves a conversation up; one's own is one's own name"
        );
        assert_eq!(s.conversations(a, 2).unwrap().len(), 2);
        assert_eq!(s.conversations(b, 10).unwrap(), [conv("alice", ba, 40)]);
        assert_eq!(s.conversations(c, 10).unwrap(), [conv("alice", ca, 20)]);
        assert!(ab < ba);
    }

    #[test]
    fn conversations_use_their_index() {
        let (s, a, _) = store_with_users();
        let plan: Vec<String> = s
            .conn
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
        let (mut s, a, b) = store_with_users();
        let c = s.create_user("Carol", "h", 0).unwrap().id;
        let d = s.create_user("dave", "h", 0).unwrap().id;
        s.queue_subscription(a, d, true);
        s.queue_subscription(a, c, true);
        s.queue_subscription(a, b, true);
        s.queue_subscription(b, a, true);
        s.queue_subscription(a, b, false);
        s.commit_pending().unwrap();
        assert_eq!(s.subscriptions_of(a).unwrap(), ["Carol", "dave"]);
        assert_eq!(s.subscriptions_of(b).unwrap(), ["alice"]);
        assert!(s.subscriptions_of(c).unwrap().is_empty());
    }

    #[test]
    fn subscriptions_and_ids_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.db");
        let mut s = Store::open(&path).unwrap();
        let a = s.create_user("alice", "h", 0).unwrap().id;
        let b = s.create_user("bob", "h", 0).unwrap().id;
        s.queue_subscription(a, b, true);
        s.queue_subscription(b, a, true);
        s.queue_subscription(b, a, false);
        let last = room_message(&mut s, a, "r", "x");
        s.commit_pending().unwrap();
        s.close().unwrap();
        let mut s = Store::open(&path).unwrap();
        assert_eq!(s.subscriptions().unwrap(), vec![(a, b)]);
        assert!(room_message(&mut s, a, "r", "y") > last);
    }
}
