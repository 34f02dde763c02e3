//! The chat core: rooms, presence, direct messages, subscriptions. No sockets, no clock.
//!
//! Inputs are a connection arriving, a text message from a connection, and a
//! connection leaving; time comes in as an argument. Outputs are appended to a list:
//! frames to deliver (each encoded once and shared by all its recipients), connections
//! to close, token expiries to track, reads and subscription changes that wait for the
//! turn's commit. Storage goes through the [`Backend`] trait, so the core is tested with
//! an in-memory backend and could later sit behind a cross-server backplane.
//!
//! A turn's writes are committed once, after all its requests; then [`Chat::settle`]
//! turns each output, in order, into an [`Action`]: durable frames go out only if the
//! commit succeeded, reads run against what is committed (so a reply never misses a
//! write acknowledged before it), subscription changes reach the in-memory index.
//!
//! Lookups use indexes kept here: room -> connections, user -> connections, and the
//! subscribers of each user. Nothing scans all connections. The `rooms`, `users` and
//! `join` replies are kept serialised and rebuilt only after the membership they show
//! changed, so asking again costs a copy, not a sort of every room or user.

pub mod protocol;

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use indexmap::IndexSet;
use serde_json::value::RawValue;
use serde_json::{Value, json};

use crate::ws::Close;
use protocol::{
    CachedData, ChatError, Conversation, ErrorCode, Frame, HistoryTarget, Item, ItemKind, Page,
    Request,
};

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

/// A message to store; the backend assigns its id from the one increasing sequence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewMessage<'a> {
    pub from: UserId,
    pub kind: NewKind<'a>,
    pub text: &'a str,
    pub ts: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NewKind<'a> {
    Room(&'a str),
    Direct { to: UserId },
    Notification,
}

/// A history request resolved to ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HistoryScope<'a> {
    Room(&'a str),
    Direct { a: UserId, b: UserId },
}

/// What a valid token says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenInfo {
    pub user_id: UserId,
    /// Unix seconds.
    pub expires_at: i64,
}

/// A storage failure; the request gets an internal_error reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendError(pub String);

/// Everything the core needs from outside: accounts, durable writes, history, tokens.
///
/// Writes (`store_message`, `set_subscription`) may be batched by the implementation:
/// outputs marked durable are released only once the batch has committed. Reads
/// (`history`, `subscriptions_of`, `conversations`) are made by [`Chat::settle`], after
/// the commit, and need not see writes still queued.
pub trait Backend {
    fn find_user(&mut self, username: &str) -> Result<Option<UserRef>, BackendError>;
    /// Queues the message and returns its id.
    fn store_message(&mut self, message: &NewMessage<'_>) -> Result<i64, BackendError>;
    fn set_subscription(
        &mut self,
        subscriber: UserId,
        target: UserId,
        subscribed: bool,
    ) -> Result<(), BackendError>;
    /// Up to `limit` items of the scope in the page, oldest first, and whether more
    /// exist beyond the page in its direction.
    fn history(
        &mut self,
        scope: &HistoryScope<'_>,
        page: Page,
        limit: usize,
    ) -> Result<(Vec<Item>, bool), BackendError>;
    /// The usernames `user` is subscribed to, sorted.
    fn subscriptions_of(&mut self, user: UserId) -> Result<Vec<String>, BackendError>;
    /// Up to `limit` of the direct conversations `user` takes part in, the one with the
    /// newest message first.
    fn conversations(
        &mut self,
        user: UserId,
        limit: usize,
    ) -> Result<Vec<Conversation>, BackendError>;
    /// Checks a token (signature, expiry at `now_ms`, account, password version).
    fn verify_token(&mut self, token: &str, now_ms: i64) -> Result<TokenInfo, ChatError>;
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
    /// Depends on this turn's writes: sent only if they commit.
    pub durable: bool,
    /// When a durable delivery's writes fail, the sender gets an internal_error reply
    /// with this `ref` instead (built only then).
    pub fallback: Option<Value>,
}

/// An effect for the event loop to carry out.
#[derive(Debug, Clone)]
pub enum Output {
    Deliver(Delivery),
    /// Close this connection with this code (it has already left the chat).
    Close {
        conn: ConnId,
        close: Close,
    },
    /// The connection's token now expires at this Unix second.
    TokenRenewed {
        conn: ConnId,
        expires_at: i64,
    },
    /// A read answered after the turn's commit.
    Read(Read),
    /// A subscription change, applied to the in-memory index once its write commits.
    Subscription {
        subscriber: UserId,
        target: UserId,
        subscribed: bool,
        /// The subscribe holds one of the subscriber's `max_subscriptions` until it
        /// settles (a new subscription, not yet committed).
        reserved: bool,
    },
}

/// A read request waiting for the turn's commit; its reply takes its place among the
/// connection's replies.
#[derive(Debug, Clone)]
pub struct Read {
    conn: ConnId,
    reference: Value,
    /// The caller.
    user: UserId,
    query: Query,
}

#[derive(Debug, Clone)]
enum Query {
    RoomHistory {
        room: String,
        page: Page,
        limit: usize,
    },
    /// The conversation between the caller and this user.
    DirectHistory {
        with: UserId,
        page: Page,
        limit: usize,
    },
    Subscriptions,
    Conversations {
        limit: usize,
    },
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
    /// subscriber -> how many users they are subscribed to (committed): what
    /// `max_subscriptions` is checked against, without a second set per account.
    following: HashMap<UserId, usize>,
    /// subscriber -> new subscriptions requested but not yet settled, so that several
    /// in one turn cannot pass the cap together.
    reserved: HashMap<UserId, usize>,
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
            following: HashMap::new(),
            reserved: HashMap::new(),
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

    /// Handles one text message from a connection; exactly one reply goes back to it.
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
            Ok(Reply::Durable(data)) => out.push(Output::Deliver(Delivery {
                to: Recipients::One(conn),
                frame: protocol::reply_ok(&reference, data),
                durable: true,
                fallback: Some(reference),
            })),
            Ok(Reply::Later(query)) => out.push(Output::Read(Read {
                conn,
                reference,
                user,
                query,
            })),
            Ok(Reply::Ready(frame)) => self.deliver(out, Recipients::One(conn), frame),
            Ok(Reply::Sent) => {}
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
                let post = Post {
                    kind: NewKind::Room(&room),
                    item: ItemKind::Room(room.clone()),
                    text,
                    recipients,
                    report_delivered: false,
                };
                self.post(conn, user, reference, post, backend, now_ms, out)
            }
            Request::Direct { to, text } => {
                let target = self.resolve_user(&to, backend)?;
                let mut recipients: Vec<ConnId> = self.connections_of(target.id).to_vec();
                if target.id != user {
                    recipients.extend_from_slice(self.connections_of(user));
                }
                let post = Post {
                    kind: NewKind::Direct { to: target.id },
                    item: ItemKind::Direct {
                        to: target.username,
                    },
                    text,
                    recipients,
                    report_delivered: false,
                };
                self.post(conn, user, reference, post, backend, now_ms, out)
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
                let post = Post {
                    kind: NewKind::Notification,
                    item: ItemKind::Notification,
                    text,
                    recipients,
                    report_delivered: true,
                };
                self.post(conn, user, reference, post, backend, now_ms, out)
            }
            Request::Subscribe { user: name } | Request::Unsubscribe { user: name }
                if self.is_self(user, &name) =>
            {
                Err(ChatError::bad_request("you cannot subscribe to yourself"))
            }
            Request::Subscribe { user: name } => {
                let target = self.resolve_user(&name, backend)?;
                let reserved = !self.is_subscribed(user, target.id);
                if reserved {
                    self.check_subscription_limit(user)?;
                }
                backend
                    .set_subscription(user, target.id, true)
                    .map_err(internal)?;
                if reserved {
                    *self.reserved.entry(user).or_default() += 1;
                }
                out.push(Output::Subscription {
                    subscriber: user,
                    target: target.id,
                    subscribed: true,
                    reserved,
                });
                Ok(Reply::Durable(json!({"user": target.username})))
            }
            Request::Unsubscribe { user: name } => {
                let target = self.resolve_user(&name, backend)?;
                backend
                    .set_subscription(user, target.id, false)
                    .map_err(internal)?;
                out.push(Output::Subscription {
                    subscriber: user,
                    target: target.id,
                    subscribed: false,
                    reserved: false,
                });
                Ok(Reply::Durable(json!({"user": target.username})))
            }
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
            } => Ok(Reply::Later(match target {
                HistoryTarget::Room(room) => Query::RoomHistory { room, page, limit },
                HistoryTarget::With(name) => Query::DirectHistory {
                    with: self.resolve_user(&name, backend)?.id,
                    page,
                    limit,
                },
            })),
            Request::Subscriptions => Ok(Reply::Later(Query::Subscriptions)),
            Request::Conversations { limit } => Ok(Reply::Later(Query::Conversations { limit })),
            Request::Auth { token } => {
                let info = backend.verify_token(&token, now_ms)?;
                if info.user_id != user {
                    return Err(ChatError::new(
                        ErrorCode::Unauthorized,
                        "the token belongs to another user",
                    ));
                }
                // The backend bounds `exp`; checked again here so that no token can
                // make this overflow whatever backend verified it.
                let expires_at_ms = info.expires_at.checked_mul(1000).ok_or_else(|| {
                    ChatError::new(
                        ErrorCode::Unauthorized,
                        "the token's expiry is out of range",
                    )
                })?;
                out.push(Output::TokenRenewed {
                    conn,
                    expires_at: info.expires_at,
                });
                Ok(Reply::Now(json!({ "expires_at": expires_at_ms })))
            }
        }
    }

    /// Turns one output of the turn into what the event loop does, once the turn's
    /// writes have been committed (`committed`) or have failed. Outputs must be settled
    /// in the order they were produced: a read then sees the subscription changes
    /// before it, and replies keep the order of the requests.
    pub fn settle(
        &mut self,
        output: Output,
        committed: bool,
        backend: &mut dyn Backend,
    ) -> Option<Action> {
        match output {
            Output::Deliver(delivery) if delivery.durable && !committed => {
                // Nobody sees what was not stored; the sender learns it failed.
                let reference = delivery.fallback?;
                Some(Action::Send {
                    to: delivery.to,
                    frame: protocol::reply_error(&reference, &ChatError::internal()),
                })
            }
            Output::Deliver(delivery) => Some(Action::Send {
                to: delivery.to,
                frame: delivery.frame,
            }),
            Output::Close { conn, close } => Some(Action::Close { conn, close }),
            Output::TokenRenewed { conn, expires_at } => {
                Some(Action::TokenRenewed { conn, expires_at })
            }
            Output::Subscription {
                subscriber,
                target,
                subscribed,
                reserved,
            } => {
                if reserved {
                    self.release_reservation(subscriber);
                }
                if committed {
                    self.apply_subscription(subscriber, target, subscribed);
                }
                None
            }
            Output::Read(read) => {
                let frame = match answer(&read, backend) {
                    Ok(data) => protocol::reply_ok(&read.reference, data),
                    Err(e) => protocol::reply_error(&read.reference, &internal(e)),
                };
                Some(Action::Send {
                    to: Recipients::One(read.conn),
                    frame,
                })
            }
        }
    }

    fn apply_subscription(&mut self, subscriber: UserId, target: UserId, subscribed: bool) {
        if subscribed {
            let added = self
                .subscribers
                .entry(target)
                .or_default()
                .insert(subscriber);
            if added {
                *self.following.entry(subscriber).or_default() += 1;
            }
        } else if let Some(set) = self.subscribers.get_mut(&target) {
            let removed = set.remove(&subscriber);
            if set.is_empty() {
                self.subscribers.remove(&target);
            }
            if removed {
                count_down(&mut self.following, subscriber);
            }
        }
    }

    fn is_subscribed(&self, subscriber: UserId, target: UserId) -> bool {
        self.subscribers
            .get(&target)
            .is_some_and(|set| set.contains(&subscriber))
    }

    /// A new subscription is refused once the account has `max_subscriptions`,
    /// counting those requested earlier and not yet committed; an unsubscribe frees its
    /// place once committed. Subscribing again to someone is never refused.
    fn check_subscription_limit(&self, subscriber: UserId) -> Result<(), ChatError> {
        let held = self.following.get(&subscriber).copied().unwrap_or(0)
            + self.reserved.get(&subscriber).copied().unwrap_or(0);
        let cap = self.config.max_subscriptions;
        if held >= cap {
            return Err(ChatError::new(
                ErrorCode::TooManySubscriptions,
                format!(
                    "an account may be subscribed to at most {cap} users; unsubscribe from one first"
                ),
            ));
        }
        Ok(())
    }

    fn release_reservation(&mut self, subscriber: UserId) {
        count_down(&mut self.reserved, subscriber);
    }

    /// Stores a message, then queues the ok reply to the sender and the event to its
    /// recipients, both durable: they go out only once the message is committed.
    #[allow(clippy::too_many_arguments)]
    fn post(
        &mut self,
        conn: ConnId,
        user: UserId,
        reference: &Value,
        post: Post<'_>,
        backend: &mut dyn Backend,
        now_ms: i64,
        out: &mut Vec<Output>,
    ) -> Result<Reply, ChatError> {
        let message = NewMessage {
            from: user,
            kind: post.kind,
            text: &post.text,
            ts: now_ms,
        };
        let id = backend.store_message(&message).map_err(internal)?;
        let data = protocol::Posted {
            id,
            ts: now_ms,
            delivered: post.report_delivered.then_some(post.recipients.len()),
        };
        out.push(Output::Deliver(Delivery {
            to: Recipients::One(conn),
            frame: protocol::reply_ok(reference, data),
            durable: true,
            fallback: Some(reference.clone()),
        }));
        if !post.recipients.is_empty() {
            let item = Item {
                id,
                kind: post.item,
                from: self.username(user),
                text: post.text,
                ts: now_ms,
            };
            out.push(Output::Deliver(Delivery {
                to: Recipients::Many(post.recipients),
                frame: item.frame(),
                durable: true,
                fallback: None,
            }));
        }
        Ok(Reply::Sent)
    }

    fn deliver(&mut self, out: &mut Vec<Output>, to: Recipients, frame: Frame) {
        out.push(Output::Deliver(Delivery {
            to,
            frame,
            durable: false,
            fallback: None,
        }));
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

    fn resolve_user(&self, name: &str, backend: &mut dyn Backend) -> Result<UserRef, ChatError> {
        backend
            .find_user(name)
            .map_err(internal)?
            .ok_or_else(|| ChatError::new(ErrorCode::UnknownUser, format!("no user named {name}")))
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

/// A message about to be stored and delivered.
struct Post<'a> {
    kind: NewKind<'a>,
    /// The same kind, as it appears in the event.
    item: ItemKind,
    text: String,
    recipients: Vec<ConnId>,
    /// Publish reports how many connections it reached.
    report_delivered: bool,
}

/// How a handled request is answered.
enum Reply {
    /// An ok reply that depends on nothing pending.
    Now(Value),
    /// An ok reply that depends on this turn's writes.
    Durable(Value),
    /// A read, answered after the turn's commit.
    Later(Query),
    /// The complete ok reply, built from kept data.
    Ready(Frame),
    /// The reply has been queued already (with its fan-out).
    Sent,
}

/// The data of a read's ok reply, from committed storage.
fn answer(read: &Read, backend: &mut dyn Backend) -> Result<Value, BackendError> {
    Ok(match &read.query {
        Query::RoomHistory { room, page, limit } => {
            let (items, more) = backend.history(&HistoryScope::Room(room), *page, *limit)?;
            json!({"messages": items, "more": more})
        }
        Query::DirectHistory { with, page, limit } => {
            let scope = HistoryScope::Direct {
                a: read.user,
                b: *with,
            };
            let (items, more) = backend.history(&scope, *page, *limit)?;
            json!({"messages": items, "more": more})
        }
        Query::Subscriptions => json!({"users": backend.subscriptions_of(read.user)?}),
        Query::Conversations { limit } => {
            json!({"conversations": backend.conversations(read.user, *limit)?})
        }
    })
}

fn not_member(room: &str) -> ChatError {
    ChatError::new(ErrorCode::NotMember, format!("you are not in room {room}"))
}

fn internal(e: BackendError) -> ChatError {
    log::error!("chat storage: {}", e.0);
    ChatError::internal()
}

/// One less for `key`; a count that reaches zero leaves the map, so accounts that
/// follow nobody cost nothing.
fn count_down(counts: &mut HashMap<UserId, usize>, key: UserId) {
    if let Some(count) = counts.get_mut(&key) {
        *count -= 1;
        if *count == 0 {
            counts.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests;
