//! Storage in vectors, for the chat core's tests: the same answers as the databases,
//! the same group commit (writes wait for the flush and go in together or not at
//! all; reads run after them), and failures on demand.

use std::collections::HashMap;
use std::time::Instant;

use super::{
    Answer, Failure, HistoryScope, NewKind, NotReady, Op, Outcome, Storage, StoreStats, Ticket,
    User,
};
use crate::chat::protocol::{Conversation, Item, ItemKind, Page};
use crate::chat::{UserId, UserRef};

/// A stored message.
#[derive(Debug, Clone)]
struct Row {
    id: i64,
    from: UserId,
    text: String,
    room: Option<String>,
    to: Option<UserId>,
    ts: i64,
}

#[derive(Debug, Default)]
pub struct MemoryStore {
    users: Vec<User>,
    messages: Vec<Row>,
    /// Current subscriptions, as (subscriber, target).
    subscriptions: Vec<(UserId, UserId)>,
    submitted: Vec<(Ticket, Op)>,
    answers: Vec<(Ticket, Outcome)>,
    last_id: i64,
    stats: StoreStats,
    /// Every transaction fails with this until cleared (the writes are not stored).
    pub fail_writes: Option<Failure>,
    /// Every read fails with this until cleared.
    pub fail_reads: Option<Failure>,
    /// Flushes keep what is submitted instead of answering it: a database that does
    /// not answer yet.
    pub stalled: bool,
    /// What `/readyz` is told.
    pub not_ready: Option<NotReady>,
}

impl MemoryStore {
    /// A store with these accounts, ids from 1 in order.
    pub fn with_users(names: &[&str]) -> Self {
        let mut store = MemoryStore::default();
        for name in names {
            store.create(name, "");
        }
        store
    }

    fn create(&mut self, username: &str, password_hash: &str) -> Option<User> {
        if self.by_name(username).is_some() {
            return None;
        }
        let user = User {
            id: self.users.len() as i64 + 1,
            username: username.to_string(),
            display_name: username.to_string(),
            password_hash: password_hash.to_string(),
            password_version: 0,
            created_at: 0,
        };
        self.users.push(user.clone());
        Some(user)
    }

    fn by_name(&self, name: &str) -> Option<&User> {
        self.users
            .iter()
            .find(|u| u.username.eq_ignore_ascii_case(name))
    }

    fn name(&self, id: UserId) -> String {
        self.users
            .iter()
            .find(|u| u.id == id)
            .map(|u| u.username.clone())
            .unwrap_or_default()
    }

    /// Every stored subscription as (subscriber, target).
    pub fn subscriptions(&self) -> Vec<(UserId, UserId)> {
        self.subscriptions.clone()
    }

    /// How many messages are stored.
    pub fn message_count(&self) -> usize {
        self.messages.len()
    }

    fn user_ref(&self, name: &str) -> Option<UserRef> {
        self.by_name(name).map(|u| UserRef {
            id: u.id,
            username: u.username.clone(),
        })
    }

    fn write(&mut self, op: Op) -> Answer {
        match op {
            Op::Post(message) => {
                let (room, to) = match message.kind {
                    NewKind::Room(room) => (Some(room), None),
                    NewKind::Direct { to } => match self.user_ref(&to) {
                        Some(user) => (None, Some(user)),
                        None => return Answer::NoSuchUser,
                    },
                    NewKind::Notification => (None, None),
                };
                self.last_id += 1;
                self.messages.push(Row {
                    id: self.last_id,
                    from: message.from,
                    text: message.text,
                    room,
                    to: to.as_ref().map(|u| u.id),
                    ts: message.ts,
                });
                Answer::Posted {
                    id: self.last_id,
                    to,
                }
            }
            Op::Subscribe {
                subscriber,
                target,
                subscribed,
                max,
            } => {
                let Some(target) = self.user_ref(&target) else {
                    return Answer::NoSuchUser;
                };
                let pair = (subscriber, target.id);
                let held = self
                    .subscriptions
                    .iter()
                    .filter(|(s, _)| *s == subscriber)
                    .count();
                let has = self.subscriptions.contains(&pair);
                if !subscribed {
                    self.subscriptions.retain(|p| *p != pair);
                } else if !has && held < max {
                    self.subscriptions.push(pair);
                }
                let subscribed = self.subscriptions.contains(&pair);
                Answer::Subscription { target, subscribed }
            }
            Op::CreateUser {
                username,
                password_hash,
                ..
            } => Answer::Created(self.create(&username, &password_hash)),
            Op::SetPassword {
                user,
                password_hash,
            } => Answer::PasswordVersion(self.users.iter_mut().find(|u| u.id == user).map(|u| {
                u.password_hash = password_hash;
                u.password_version += 1;
                u.password_version
            })),
            Op::SetDisplayName { user, display_name } => {
                if let Some(u) = self.users.iter_mut().find(|u| u.id == user) {
                    u.display_name = display_name;
                }
                Answer::Done
            }
            read => self.read(&read),
        }
    }

    fn read(&self, op: &Op) -> Answer {
        match op {
            Op::UserById(id) => Answer::User(self.users.iter().find(|u| u.id == *id).cloned()),
            Op::UserByName(name) => Answer::User(self.by_name(name).cloned()),
            Op::History { scope, page, limit } => {
                let pair = match scope {
                    HistoryScope::Room(_) => None,
                    HistoryScope::Direct { user, with } => match self.by_name(with) {
                        Some(other) => Some((*user, other.id)),
                        None => return Answer::NoSuchUser,
                    },
                };
                let (items, more) = self.history(scope, pair, *page, *limit);
                Answer::History { items, more }
            }
            Op::SubscriptionsOf(user) => {
                let mut names: Vec<String> = self
                    .subscriptions
                    .iter()
                    .filter(|(s, _)| s == user)
                    .map(|(_, t)| self.name(*t))
                    .collect();
                names.sort_unstable();
                Answer::Usernames(names)
            }
            Op::Conversations { user, limit } => {
                Answer::Conversations(self.conversations(*user, *limit))
            }
            _ => Answer::Done,
        }
    }

    /// `pair`: the two users of a direct conversation.
    fn history(
        &self,
        scope: &HistoryScope,
        pair: Option<(UserId, UserId)>,
        page: Page,
        limit: usize,
    ) -> (Vec<Item>, bool) {
        let matching: Vec<Item> = self
            .messages
            .iter()
            .filter(|m| match (scope, pair) {
                (HistoryScope::Room(r), _) => m.room.as_deref() == Some(r.as_str()),
                (_, Some((a, b))) => {
                    m.to.is_some_and(|to| (m.from == a && to == b) || (m.from == b && to == a))
                }
                _ => false,
            })
            .map(|m| Item {
                id: m.id,
                kind: match (&m.room, m.to) {
                    (Some(r), _) => ItemKind::Room(r.clone()),
                    (None, Some(to)) => ItemKind::Direct { to: self.name(to) },
                    _ => ItemKind::Notification,
                },
                from: self.name(m.from),
                text: m.text.clone(),
                ts: m.ts,
            })
            .collect();
        match page {
            Page::Latest => {
                let n = matching.len();
                (matching[n.saturating_sub(limit)..].to_vec(), n > limit)
            }
            Page::Before(id) => {
                let older: Vec<Item> = matching.into_iter().filter(|i| i.id < id).collect();
                let n = older.len();
                (older[n.saturating_sub(limit)..].to_vec(), n > limit)
            }
            Page::After(id) => {
                let newer: Vec<Item> = matching.into_iter().filter(|i| i.id > id).collect();
                let more = newer.len() > limit;
                (newer.into_iter().take(limit).collect(), more)
            }
        }
    }

    fn conversations(&self, user: UserId, limit: usize) -> Vec<Conversation> {
        let mut latest: HashMap<UserId, &Row> = HashMap::new();
        for m in &self.messages {
            let Some(to) = m.to else { continue };
            let other = match (m.from == user, to == user) {
                (true, _) => to,
                (false, true) => m.from,
                _ => continue,
            };
            latest.insert(other, m);
        }
        let mut rows: Vec<(UserId, &Row)> = latest.into_iter().collect();
        rows.sort_by_key(|(_, m)| std::cmp::Reverse(m.id));
        rows.into_iter()
            .take(limit)
            .map(|(other, m)| Conversation {
                with: self.name(other),
                last_id: m.id,
                ts: m.ts,
            })
            .collect()
    }
}

impl Storage for MemoryStore {
    fn submit(&mut self, ticket: Ticket, op: Op) {
        self.submitted.push((ticket, op));
    }

    fn has_submitted(&self) -> bool {
        !self.stalled && !self.submitted.is_empty()
    }

    fn flush(&mut self, _now: Instant) {
        if self.stalled {
            return;
        }
        let submitted = std::mem::take(&mut self.submitted);
        let (writes, reads): (Vec<_>, Vec<_>) =
            submitted.into_iter().partition(|(_, op)| op.is_write());
        if !writes.is_empty() {
            if let Some(failure) = self.fail_writes {
                self.stats.commit_failures += 1;
                self.answers
                    .extend(writes.into_iter().map(|(t, _)| (t, Err(failure))));
            } else {
                self.stats.commits += 1;
                self.stats.batched_writes += writes.len() as u64;
                for (ticket, op) in writes {
                    let answer = self.write(op);
                    self.answers.push((ticket, Ok(answer)));
                }
            }
        }
        for (ticket, op) in reads {
            let outcome = match self.fail_reads {
                Some(failure) => Err(failure),
                None => Ok(self.read(&op)),
            };
            self.answers.push((ticket, outcome));
        }
    }

    fn take_answers(&mut self, out: &mut Vec<(Ticket, Outcome)>) {
        out.append(&mut self.answers);
    }

    fn readiness(&self, _now: Instant) -> Result<(), NotReady> {
        self.not_ready.clone().map_or(Ok(()), Err)
    }

    fn stats(&self) -> StoreStats {
        self.stats.clone()
    }

    fn close(&mut self) -> Result<(), String> {
        Ok(())
    }
}
