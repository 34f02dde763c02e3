//! The chat core: rooms, presence, direct messages, subscriptions. No sockets, no clock.
//!
//! Inputs are a connection arriving, a text message from a connection, a connection
//! leaving, and the answer to a storage request; time comes in as an argument. Outputs
//! are appended to a list: frames to deliver (each encoded once and shared by all its
//! recipients), connections to close, and requests waiting for storage
//! ([`Output::Await`]). Storage goes through the [`Backend`] trait, which only submits:
//! the answer arrives later (at the end of the turn with SQLite, after a round trip
//! with PostgreSQL) and is fed back by [`outbox::Outbox`], which keeps each
//! connection's outputs in order behind the request they wait for and turns them into
//! [`Action`]s once answered (with [`Chat::resolve`]). Durable frames (a message's
//! reply and event, a subscription's reply) are built from the answer, so nothing is
//! shown before its write committed; reads are answered from what is committed, after
//! the writes submitted before them.
//!
//! Lookups use indexes kept here: room -> connections, user -> connections, and the
//! subscribers of each user. Nothing scans all connections. The `rooms`, `users` and
//! `join` replies are kept serialised and rebuilt only after the membership they show
//! changed, so asking again costs a copy, not a sort of every room or user.

pub mod outbox;
pub mod protocol;

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use indexmap::IndexSet;
use serde_json::value::RawValue;
use serde_json::{Value, json};

use crate::store::{Answer, Failure, HistoryScope, NewKind, NewMessage, Op, Outcome, Ticket};
use crate::ws::Close;
use protocol::{CachedData, ChatError, ErrorCode, Frame, HistoryTarget, Item, ItemKind, Request};

pub type UserId = i64;

/// The room every connection starts in.
pub const LOBBY: &str = "lobby";

/// Identifies one WebSocket connection (assigned by the server, never reused).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

/// An account as the chat sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRef {
    pub id: UserId,
    pub username: String,
}

/// What a token says once its signature and expiry are checked; the account and its
/// password version are checked against storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenClaims {
    pub user_id: UserId,
    /// Unix seconds.
    pub expires_at: i64,
    /// The password version the token was issued for.
    pub version: i64,
}

/// Everything the core needs from outside: storage and token keys.
pub trait Backend {
    /// Submits a storage operation; its outcome comes back to [`Chat::resolve`] with
    /// the [`Output::Await`] that holds the ticket.
    fn submit(&mut self, op: Op) -> Ticket;
    /// Checks a token's signature and expiry at `now_ms`.
    fn check_token(&mut self, token: &str, now_ms: i64) -> Result<TokenClaims, ChatError>;
}

/// Who receives a frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recipients {
    One(ConnId),
    Many(Vec<ConnId>),
}

impl Recipients {
    pub fn as_slice(&self) -> &[ConnId] {
        match self {
            Recipients::One(c) => std::slice::from_ref(c),
            Recipients::Many(v) => v,
        }
    }
}

/// A frame for some connections.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub to: Recipients,
    pub frame: Frame,
}

/// An effect for the event loop to carry out, in order with the others of the same
/// connection.
#[derive(Debug, Clone)]
pub enum Output {
    Deliver(Delivery),
    /// Close this connection with this code (it has already left the chat).
    Close {
        conn: ConnId,
        close: Close,
    },
    /// A request waiting for the storage answer under its ticket; what follows it for
    /// the same connection waits too.
    Await(Pending),
}

/// A request of a connection waiting for storage.
#[derive(Debug, Clone)]
pub struct Pending {
    pub ticket: Ticket,
    pub conn: ConnId,
    reference: Value,
    /// The caller.
    user: UserId,
    /// The user the request names, for an `unknown_user` reply.
    named: Option<String>,
    step: Step,
}

/// What to do with the answer.
#[derive(Debug, Clone)]
enum Step {
    /// A message being stored: its reply and event are built from the id.
    Post {
        item: ItemKind,
        text: String,
        ts: i64,
        /// The room members or subscribers' connections when it was sent; None for a
        /// direct message (the two users' connections when it is stored).
        recipients: Option<Vec<ConnId>>,
        /// Publish reports how many connections it reached.
        report_delivered: bool,
    },
    Subscription {
        subscribed: bool,
    },
    /// History, subscriptions or conversations.
    Read(ReadKind),
    /// A token's account and password version being checked.
    Auth {
        claims: TokenClaims,
    },
}

#[derive(Debug, Clone, Copy)]
enum ReadKind {
    History,
    Subscriptions,
    Conversations,
}

/// What the event loop does for a settled output.
#[derive(Debug, Clone)]
pub enum Action {
    /// Queue this frame for these connections.
    Send {
        to: Recipients,
        frame: Frame,
    },
    Close {
        conn: ConnId,
        close: Close,
    },
    TokenRenewed {
        conn: ConnId,
        expires_at: i64,
    },
}

/// Limits and settings the core needs.
#[derive(Debug, Clone)]
pub struct ChatConfig {
    pub max_text_chars: usize,
    pub history_max: usize,
    /// Rooms one connection may be in at once, the lobby included.
    pub max_rooms_per_connection: usize,
    /// Rooms that exist at once; the lobby is never refused.
    pub max_rooms: usize,
    /// Users one account may be subscribed to.
    pub max_subscriptions: usize,
    /// The `limits` object of the welcome frame.
    pub welcome_limits: Value,
}

/// The user of a new connection.
#[derive(Debug, Clone)]
pub struct SessionUser {
    pub id: UserId,
    pub username: String,
    pub display_name: String,
}

#[derive(Debug)]
struct Session {
    user: UserId,
    rooms: Vec<Arc<str>>,
}

#[derive(Debug)]
struct OnlineUser {
    username: Arc<str>,
    conns: Vec<ConnId>,
}

#[derive(Debug, Default)]
struct Room {
    conns: IndexSet<ConnId>,
    /// Connections per user in this room: presence changes at 0 <-> 1.
    users: HashMap<UserId, u32>,
    /// The data of the `join` reply (the sorted members), built on the first join after
    /// a user came or left: joining again, or another connection of a member joining,
    /// would otherwise sort every member's name each time.
    joined: Option<CachedData>,
}

/// The data of the `rooms` and `users` replies, serialised once and kept until the
/// membership they show changes: asked for often and changing rarely, they would
/// otherwise cost a sort of every room or online user per request.
#[derive(Debug, Default)]
struct Listings {
    /// Gone once a room appeared, went away or changed its number of users.
    rooms: Option<CachedData>,
    /// Gone once a user came online or went offline.
    users: Option<CachedData>,
    rebuilds: Rebuilds,
}

/// How many times each kept reply was built: requests between two membership changes
/// build nothing.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Rebuilds {
    pub rooms: u64,
    pub users: u64,
    /// The `join` data of any room.
    pub members: u64,
}

/// The chat state of the whole server.
#[derive(Debug)]
pub struct Chat {
    config: ChatConfig,
    sessions: HashMap<ConnId, Session>,
    online: HashMap<UserId, OnlineUser>,
    rooms: HashMap<Arc<str>, Room>,
    /// target -> users subscribed to them (all accounts, loaded at start).
    subscribers: HashMap<UserId, HashSet<UserId>>,
    listings: Listings,
}

impl Chat {
    /// A chat with the stored subscriptions, as (subscriber, target) pairs.
    pub fn new(
        config: ChatConfig,
        subscriptions: impl IntoIterator<Item = (UserId, UserId)>,
    ) -> Self {
        let mut chat = Chat {
            config,
            sessions: HashMap::new(),
            online: HashMap::new(),
            rooms: HashMap::new(),
            subscribers: HashMap::new(),
            listings: Listings::default(),
        };
        for (subscriber, target) in subscriptions {
            chat.apply_subscription(subscriber, target, true);
        }
        chat
    }

    pub fn parse_limits(&self) -> protocol::ParseLimits {
        protocol::ParseLimits {
            max_text_chars: self.config.max_text_chars,
            history_max: self.config.history_max,
        }
    }

    pub fn is_online(&self, user: UserId) -> bool {
        self.online.contains_key(&user)
    }

    /// The open connections of a user.
    pub fn connections_of(&self, user: UserId) -> &[ConnId] {
        self.online.get(&user).map_or(&[], |u| &u.conns)
    }

    pub fn connection_count(&self) -> usize {
        self.sessions.len()
    }

    /// Returns the memory of indexes much larger than what they hold now (after many
    /// connections have left).
    pub fn shrink(&mut self) {
        if self.sessions.len() * 4 < self.sessions.capacity() {
            self.sessions.shrink_to_fit();
        }
        if self.online.len() * 4 < self.online.capacity() {
            self.online.shrink_to_fit();
        }
        if self.rooms.len() * 4 < self.rooms.capacity() {
            self.rooms.shrink_to_fit();
        }
        for room in self.rooms.values_mut() {
            if room.conns.len() * 4 < room.conns.capacity() {
                room.conns.shrink_to_fit();
            }
            if room.users.len() * 4 < room.users.capacity() {
                room.users.shrink_to_fit();
            }
        }
    }

    /// Users with at least one connection.
    pub fn online_count(&self) -> usize {
        self.online.len()
    }

    /// Rooms that have at least one member.
    pub fn room_count(&self) -> usize {
        self.rooms.len()
    }

    /// How many times the kept `rooms`, `users` and `join` replies were built.
    pub fn rebuilds(&self) -> Rebuilds {
        self.listings.rebuilds
    }

    /// A new connection: welcome frame, automatic lobby join (with presence), and with
    /// `replace_older`, the user's older connections closed with 4001.
    pub fn connect(
        &mut self,
        conn: ConnId,
        user: &SessionUser,
        replace_older: bool,
        out: &mut Vec<Output>,
    ) {
        let older: Vec<ConnId> = if replace_older {
            self.connections_of(user.id).to_vec()
        } else {
            Vec::new()
        };
        let online = match self.online.entry(user.id) {
            Entry::Occupied(online) => online.into_mut(),
            Entry::Vacant(slot) => {
                self.listings.users = None;
                slot.insert(OnlineUser {
                    username: Arc::from(user.username.as_str()),
                    conns: Vec::new(),
                })
            }
        };
        online.conns.push(conn);
        self.sessions.insert(
            conn,
            Session {
                user: user.id,
                rooms: Vec::new(),
            },
        );
        let welcome = protocol::welcome(
            json!({"id": user.id, "username": user.username, "display_name": user.display_name}),
            &[LOBBY],
            self.config.welcome_limits.clone(),
        );
        self.deliver(out, Recipients::One(conn), welcome);
        self.join_room(conn, LOBBY, out);
        // The new connection is in first, so replacing never makes the user appear to
        // leave and rejoin.
        for old in older {
            self.disconnect(old, out);
            out.push(Output::Close {
                conn: old,
                close: Close::Replaced,
            });
        }
    }

    /// Closes every connection of a user with `close` (a password change, say).
    pub fn disconnect_user(&mut self, user: UserId, close: Close, out: &mut Vec<Output>) {
        for conn in self.connections_of(user).to_vec() {
            self.disconnect(conn, out);
            out.push(Output::Close { conn, close });
        }
    }

    /// A connection left: it leaves every room (presence) and is forgotten.
    pub fn disconnect(&mut self, conn: ConnId, out: &mut Vec<Output>) {
        let Some(session) = self.sessions.remove(&conn) else {
            return;
        };
        for room in &session.rooms {
            self.leave_room_index(conn, session.user, room, out);
        }
        if let Some(online) = self.online.get_mut(&session.user) {
            online.conns.retain(|c| *c != conn);
            if online.conns.is_empty() {
                self.online.remove(&session.user);
                self.listings.users = None;
            }
        }
    }

    /// The reply to a request refused by the connection's rate limit.
    pub fn reject_rate_limited(&mut self, conn: ConnId, text: &str, out: &mut Vec<Output>) {
        let (reference, _) = protocol::parse_request(text, self.parse_limits());
        let error = ChatError::new(ErrorCode::RateLimited, "too many requests; slow down");
        self.deliver(
            out,
            Recipients::One(conn),
            protocol::reply_error(&reference, &error),
        );
    }

    /// Handles one text message from a connection; exactly one reply goes back to it,
    /// now or once storage answered.
    pub fn handle(
        &mut self,
        conn: ConnId,
        text: &str,
        backend: &mut dyn Backend,
        now_ms: i64,
        out: &mut Vec<Output>,
    ) {
        let Some(user) = self.sessions.get(&conn).map(|s| s.user) else {
            return;
        };
        let (reference, request) = protocol::parse_request(text, self.parse_limits());
        let named = request.as_ref().ok().and_then(Request::named_user);
        let result = request.and_then(|request| {
            self.dispatch(conn, user, request, &reference, backend, now_ms, out)
        });
        match result {
            Ok(Reply::Now(data)) => {
                self.deliver(
                    out,
                    Recipients::One(conn),
                    protocol::reply_ok(&reference, data),
                );
            }
            Ok(Reply::Ready(frame)) => self.deliver(out, Recipients::One(conn), frame),
            Ok(Reply::Wait(ticket, step)) => out.push(Output::Await(Pending {
                ticket,
                conn,
                reference,
                user,
                named,
                step,
            })),
            Err(error) => {
                self.deliver(
                    out,
                    Recipients::One(conn),
                    protocol::reply_error(&reference, &error),
                );
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn dispatch(
        &mut self,
        conn: ConnId,
        user: UserId,
        request: Request,
        reference: &Value,
        backend: &mut dyn Backend,
        now_ms: i64,
        out: &mut Vec<Output>,
    ) -> Result<Reply, ChatError> {
        match request {
            Request::Ping => Ok(Reply::Now(json!({}))),
            Request::Join { room } => {
                self.check_room_limits(conn, &room)?;
                self.join_room(conn, &room, out);
                let data = self.joined_data(&room)?;
                Ok(Reply::Ready(protocol::reply_ok(reference, data)))
            }
            Request::Leave { room } => {
                let in_room = self
                    .sessions
                    .get(&conn)
                    .is_some_and(|s| s.rooms.iter().any(|r| **r == *room));
                if !in_room {
                    return Err(not_member(&room));
                }
                self.leave_room(conn, &room, out);
                Ok(Reply::Now(json!({"room": room})))
            }
            Request::Send { room, text } => {
                let Some(members) = self
                    .rooms
                    .get(room.as_str())
                    .filter(|r| r.conns.contains(&conn))
                else {
                    return Err(not_member(&room));
                };
                let recipients: Vec<ConnId> = members.conns.iter().copied().collect();
                let ticket = backend.submit(Op::Post(NewMessage {
                    from: user,
                    kind: NewKind::Room(room.clone()),
                    text: text.clone(),
                    ts: now_ms,
                }));
                Ok(Reply::Wait(
                    ticket,
                    Step::Post {
                        item: ItemKind::Room(room),
                        text,
                        ts: now_ms,
                        recipients: Some(recipients),
                        report_delivered: false,
                    },
                ))
            }
            Request::Direct { to, text } => {
                let ticket = backend.submit(Op::Post(NewMessage {
                    from: user,
                    kind: NewKind::Direct { to },
                    text: text.clone(),
                    ts: now_ms,
                }));
                Ok(Reply::Wait(
                    ticket,
                    Step::Post {
                        // The recipient's name as stored comes with the answer.
                        item: ItemKind::Direct { to: String::new() },
                        text,
                        ts: now_ms,
                        recipients: None,
                        report_delivered: false,
                    },
                ))
            }
            Request::Publish { text } => {
                let recipients: Vec<ConnId> = self
                    .subscribers
                    .get(&user)
                    .into_iter()
                    .flatten()
                    .flat_map(|s| self.connections_of(*s))
                    .copied()
                    .collect();
                let ticket = backend.submit(Op::Post(NewMessage {
                    from: user,
                    kind: NewKind::Notification,
                    text: text.clone(),
                    ts: now_ms,
                }));
                Ok(Reply::Wait(
                    ticket,
                    Step::Post {
                        item: ItemKind::Notification,
                        text,
                        ts: now_ms,
                        recipients: Some(recipients),
                        report_delivered: true,
                    },
                ))
            }
            Request::Subscribe { user: name } | Request::Unsubscribe { user: name }
                if self.is_self(user, &name) =>
            {
                Err(ChatError::bad_request("you cannot subscribe to yourself"))
            }
            Request::Subscribe { user: name } => Ok(self.subscribe(user, name, true, backend)),
            Request::Unsubscribe { user: name } => Ok(self.subscribe(user, name, false, backend)),
            Request::Rooms => {
                let data = self.rooms_data()?;
                Ok(Reply::Ready(protocol::reply_ok(reference, data)))
            }
            Request::Users => {
                let data = self.users_data()?;
                Ok(Reply::Ready(protocol::reply_ok(reference, data)))
            }
            Request::History {
                target,
                page,
                limit,
            } => {
                let scope = match target {
                    HistoryTarget::Room(room) => HistoryScope::Room(room),
                    HistoryTarget::With(with) => HistoryScope::Direct { user, with },
                };
                let ticket = backend.submit(Op::History { scope, page, limit });
                Ok(Reply::Wait(ticket, Step::Read(ReadKind::History)))
            }
            Request::Subscriptions => {
                let ticket = backend.submit(Op::SubscriptionsOf(user));
                Ok(Reply::Wait(ticket, Step::Read(ReadKind::Subscriptions)))
            }
            Request::Conversations { limit } => {
                let ticket = backend.submit(Op::Conversations { user, limit });
                Ok(Reply::Wait(ticket, Step::Read(ReadKind::Conversations)))
            }
            Request::Auth { token } => {
                let claims = backend.check_token(&token, now_ms)?;
                if claims.user_id != user {
                    return Err(ChatError::new(
                        ErrorCode::Unauthorized,
                        "the token belongs to another user",
                    ));
                }
                let ticket = backend.submit(Op::UserById(claims.user_id));
                Ok(Reply::Wait(ticket, Step::Auth { claims }))
            }
        }
    }

    /// A subscribe or unsubscribe; the database checks the name and the cap.
    fn subscribe(
        &mut self,
        user: UserId,
        target: String,
        subscribed: bool,
        backend: &mut dyn Backend,
    ) -> Reply {
        let ticket = backend.submit(Op::Subscribe {
            subscriber: user,
            target,
            subscribed,
            max: self.config.max_subscriptions,
        });
        Reply::Wait(ticket, Step::Subscription { subscribed })
    }

    /// Feeds back the storage answer a request waited for: what the loop sends (its
    /// reply, and a message's event) in order.
    pub fn resolve(&mut self, pending: Pending, outcome: Outcome) -> Vec<Action> {
        let Pending {
            conn,
            reference,
            user,
            named,
            step,
            ..
        } = pending;
        let mut actions = Vec::new();
        let reply = match outcome {
            Err(failure) => Err(storage_error(failure)),
            Ok(Answer::NoSuchUser) => Err(ChatError::new(
                ErrorCode::UnknownUser,
                format!("no user named {}", named.unwrap_or_default()),
            )),
            Ok(answer) => self.answered(conn, user, step, answer, &mut actions),
        };
        let frame = match reply {
            Ok(data) => protocol::reply_ok(&reference, data),
            Err(error) => protocol::reply_error(&reference, &error),
        };
        // The sender's reply goes before the event of the same message.
        actions.insert(
            0,
            Action::Send {
                to: Recipients::One(conn),
                frame,
            },
        );
        actions
    }

    /// The data of the ok reply to an answered request; events and token renewals go
    /// to `actions`.
    fn answered(
        &mut self,
        conn: ConnId,
        user: UserId,
        step: Step,
        answer: Answer,
        actions: &mut Vec<Action>,
    ) -> Result<Value, ChatError> {
        match (step, answer) {
            (
                Step::Post {
                    item,
                    text,
                    ts,
                    recipients,
                    report_delivered,
                },
                Answer::Posted { id, to },
            ) => {
                let (item, recipients) = match (item, to) {
                    (ItemKind::Direct { .. }, Some(to)) => {
                        let mut conns = self.connections_of(to.id).to_vec();
                        if to.id != user {
                            conns.extend_from_slice(self.connections_of(user));
                        }
                        (ItemKind::Direct { to: to.username }, conns)
                    }
                    (ItemKind::Room(room), _) => {
                        // The members when it was sent who are still in the room: one
                        // that left meanwhile was told its leave went through, and is
                        // sent nothing of the room after it. The sender's own
                        // connection gets its event whatever it did since (it is
                        // ordered before anything the connection did later).
                        let mut conns = recipients.unwrap_or_default();
                        let current = self.rooms.get(room.as_str());
                        conns
                            .retain(|c| *c == conn || current.is_some_and(|r| r.conns.contains(c)));
                        (ItemKind::Room(room), conns)
                    }
                    (item, _) => (item, recipients.unwrap_or_default()),
                };
                let delivered = report_delivered.then_some(recipients.len());
                if !recipients.is_empty() {
                    let event = Item {
                        id,
                        kind: item,
                        from: self.username(user),
                        text,
                        ts,
                    };
                    actions.push(Action::Send {
                        to: Recipients::Many(recipients),
                        frame: event.frame(),
                    });
                }
                serde_json::to_value(protocol::Posted { id, ts, delivered })
                    .map_err(|_| ChatError::internal())
            }
            (
                Step::Subscription { subscribed: wanted },
                Answer::Subscription { target, subscribed },
            ) => {
                self.apply_subscription(user, target.id, subscribed);
                if wanted && !subscribed {
                    let cap = self.config.max_subscriptions;
                    return Err(ChatError::new(
                        ErrorCode::TooManySubscriptions,
                        format!(
                            "an account may be subscribed to at most {cap} users; unsubscribe from one first"
                        ),
                    ));
                }
                Ok(json!({"user": target.username}))
            }
            (Step::Read(kind), answer) => read_data(kind, answer),
            (Step::Auth { claims }, Answer::User(Some(account)))
                if account.password_version == claims.version =>
            {
                // The token's expiry is bounded when it is checked; checked again here
                // so that no token can make this overflow.
                let ms = claims.expires_at.checked_mul(1000).ok_or_else(|| {
                    ChatError::new(
                        ErrorCode::Unauthorized,
                        "the token's expiry is out of range",
                    )
                })?;
                actions.push(Action::TokenRenewed {
                    conn,
                    expires_at: claims.expires_at,
                });
                Ok(json!({ "expires_at": ms }))
            }
            (Step::Auth { .. }, _) => Err(ChatError::new(ErrorCode::Unauthorized, "invalid token")),
            _ => Err(ChatError::internal()),
        }
    }

    fn apply_subscription(&mut self, subscriber: UserId, target: UserId, subscribed: bool) {
        if subscribed {
            self.subscribers
                .entry(target)
                .or_default()
                .insert(subscriber);
        } else if let Some(set) = self.subscribers.get_mut(&target) {
            set.remove(&subscriber);
            if set.is_empty() {
                self.subscribers.remove(&target);
            }
        }
    }

    fn deliver(&mut self, out: &mut Vec<Output>, to: Recipients, frame: Frame) {
        out.push(Output::Deliver(Delivery { to, frame }));
    }

    fn username(&self, user: UserId) -> String {
        self.online
            .get(&user)
            .map(|u| u.username.to_string())
            .unwrap_or_default()
    }

    fn is_self(&self, user: UserId, name: &str) -> bool {
        self.online
            .get(&user)
            .is_some_and(|u| u.username.eq_ignore_ascii_case(name))
    }

    /// The data of the `join` reply for a room that exists: its distinct users, sorted.
    fn joined_data(&mut self, room: &str) -> Result<&RawValue, ChatError> {
        let entry = self.rooms.get_mut(room).ok_or_else(ChatError::internal)?;
        if entry.joined.is_none() {
            let mut members: Vec<&str> = entry
                .users
                .keys()
                .filter_map(|u| self.online.get(u))
                .map(|u| &*u.username)
                .collect();
            members.sort_unstable();
            entry.joined = Some(protocol::cache_data(&protocol::Joined { room, members })?);
            self.listings.rebuilds.members += 1;
        }
        entry.joined.as_deref().ok_or_else(ChatError::internal)
    }

    /// The data of the `rooms` reply: every room with its number of users, by name.
    fn rooms_data(&mut self) -> Result<&RawValue, ChatError> {
        if self.listings.rooms.is_none() {
            let mut rooms: Vec<protocol::RoomSummary<'_>> = self
                .rooms
                .iter()
                .map(|(name, room)| protocol::RoomSummary {
                    name,
                    members: room.users.len(),
                })
                .collect();
            rooms.sort_unstable_by(|a, b| a.name.cmp(b.name));
            self.listings.rooms = Some(protocol::cache_data(&protocol::RoomList { rooms })?);
            self.listings.rebuilds.rooms += 1;
        }
        self.listings
            .rooms
            .as_deref()
            .ok_or_else(ChatError::internal)
    }

    /// The data of the `users` reply: the online usernames, sorted.
    fn users_data(&mut self) -> Result<&RawValue, ChatError> {
        if self.listings.users.is_none() {
            let mut users: Vec<&str> = self.online.values().map(|u| &*u.username).collect();
            users.sort_unstable();
            self.listings.users = Some(protocol::cache_data(&protocol::UserList { users })?);
            self.listings.rebuilds.users += 1;
        }
        self.listings
            .users
            .as_deref()
            .ok_or_else(ChatError::internal)
    }

    /// Refuses a join that would put the connection in more rooms than it may be in, or
    /// create a room when the server holds as many as it may. A room the connection is
    /// already in is always fine (joining again changes nothing), and so is any room
    /// that exists. The lobby may always be created: every connection starts there.
    fn check_room_limits(&self, conn: ConnId, room: &str) -> Result<(), ChatError> {
        let Some(session) = self.sessions.get(&conn) else {
            return Ok(());
        };
        if session.rooms.iter().any(|r| **r == *room) {
            return Ok(());
        }
        let cap = self.config.max_rooms_per_connection;
        if session.rooms.len() >= cap {
            return Err(ChatError::new(
                ErrorCode::TooManyRooms,
                format!("a connection may be in at most {cap} rooms; leave one first"),
            ));
        }
        let max_rooms = self.config.max_rooms;
        if room != LOBBY && !self.rooms.contains_key(room) && self.rooms.len() >= max_rooms {
            return Err(ChatError::new(
                ErrorCode::TooManyRooms,
                format!("the server holds at most {max_rooms} rooms at once; join one that exists"),
            ));
        }
        Ok(())
    }

    /// Puts the connection in the room (creating it), with presence; the limits are the
    /// caller's business, so the automatic lobby join never fails.
    fn join_room(&mut self, conn: ConnId, room: &str, out: &mut Vec<Output>) {
        let Some(session) = self.sessions.get_mut(&conn) else {
            return;
        };
        if session.rooms.iter().any(|r| **r == *room) {
            return;
        }
        let user = session.user;
        let name: Arc<str> = match self.rooms.get_key_value(room) {
            Some((name, _)) => name.clone(),
            None => Arc::from(room),
        };
        session.rooms.push(name.clone());
        let entry = self.rooms.entry(name).or_default();
        entry.conns.insert(conn);
        let count = entry.users.entry(user).or_insert(0);
        *count += 1;
        if *count == 1 {
            // A new user in the room (a new room too): both listings show it.
            entry.joined = None;
            self.listings.rooms = None;
            self.announce(room, user, true, out);
        }
    }

    fn leave_room(&mut self, conn: ConnId, room: &str, out: &mut Vec<Output>) {
        let Some(session) = self.sessions.get_mut(&conn) else {
            return;
        };
        let Some(pos) = session.rooms.iter().position(|r| **r == *room) else {
            return;
        };
        let name = session.rooms.swap_remove(pos);
        let user = session.user;
        self.leave_room_index(conn, user, &name, out);
    }

    /// Removes the connection from the room's indexes (the session's own list is the
    /// caller's business) and announces the user's departure if it was their last.
    fn leave_room_index(&mut self, conn: ConnId, user: UserId, room: &str, out: &mut Vec<Output>) {
        let Some(entry) = self.rooms.get_mut(room) else {
            return;
        };
        entry.conns.swap_remove(&conn);
        let last = match entry.users.get_mut(&user) {
            Some(count) if *count > 1 => {
                *count -= 1;
                false
            }
            Some(_) => {
                entry.users.remove(&user);
                entry.joined = None;
                true
            }
            None => false,
        };
        if entry.conns.is_empty() {
            self.rooms.remove(room);
        }
        if last {
            self.listings.rooms = None;
            self.announce(room, user, false, out);
        }
    }

    /// Presence to the room's other users' connections.
    fn announce(&mut self, room: &str, user: UserId, joined: bool, out: &mut Vec<Output>) {
        let Some(entry) = self.rooms.get(room) else {
            return;
        };
        let recipients: Vec<ConnId> = entry
            .conns
            .iter()
            .copied()
            .filter(|c| self.sessions.get(c).is_some_and(|s| s.user != user))
            .collect();
        if recipients.is_empty() {
            return;
        }
        let username = self.username(user);
        let frame = protocol::presence(room, &username, joined);
        self.deliver(out, Recipients::Many(recipients), frame);
    }
}

/// How a handled request is answered.
enum Reply {
    /// An ok reply that depends on nothing stored.
    Now(Value),
    /// The complete ok reply, built from kept data.
    Ready(Frame),
    /// Answered once storage answers this ticket.
    Wait(Ticket, Step),
}

/// The data of a read's ok reply.
fn read_data(kind: ReadKind, answer: Answer) -> Result<Value, ChatError> {
    Ok(match (kind, answer) {
        (ReadKind::History, Answer::History { items, more }) => {
            json!({"messages": items, "more": more})
        }
        (ReadKind::Subscriptions, Answer::Usernames(users)) => json!({ "users": users }),
        (ReadKind::Conversations, Answer::Conversations(conversations)) => {
            json!({ "conversations": conversations })
        }
        _ => return Err(ChatError::internal()),
    })
}

/// The reply to a request storage could not answer.
fn storage_error(failure: Failure) -> ChatError {
    match failure {
        Failure::Unavailable => ChatError::new(
            ErrorCode::Unavailable,
            "the database did not answer in time; try again",
        ),
        Failure::Failed => ChatError::internal(),
    }
}

fn not_member(room: &str) -> ChatError {
    ChatError::new(ErrorCode::NotMember, format!("you are not in room {room}"))
}

#[cfg(test)]
mod tests;
