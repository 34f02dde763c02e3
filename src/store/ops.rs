//! What the loop asks of storage, and what comes back: plain values, so that every
//! backend answers the same questions and the callers never see a connection.

use crate::chat::protocol::{Conversation, Item, Page};
use crate::chat::{UserId, UserRef};

/// Names one submitted operation; its outcome comes back under it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ticket(pub u64);

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

/// A message to store; the backend gives it its id when the transaction holding it
/// commits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewMessage {
    pub from: UserId,
    pub kind: NewKind,
    pub text: String,
    /// Unix milliseconds.
    pub ts: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NewKind {
    Room(String),
    /// To the user of this name (any letter case); nothing is stored if there is none.
    Direct {
        to: String,
    },
    Notification,
}

/// Whose history: a room's, or the direct conversation of a user with the user of a
/// name (any letter case).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HistoryScope {
    Room(String),
    Direct { user: UserId, with: String },
}

/// One request to storage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    // Reads: they see every write submitted before them.
    UserById(UserId),
    /// Ignoring letter case.
    UserByName(String),
    /// Up to `limit` items of the scope in the page, oldest first, and whether more
    /// exist beyond the page in its direction; [`Answer::NoSuchUser`] for a direct
    /// conversation with a name nobody has.
    History {
        scope: HistoryScope,
        page: Page,
        limit: usize,
    },
    /// The usernames a user is subscribed to, in byte order.
    SubscriptionsOf(UserId),
    /// Up to `limit` of the user's direct conversations, the most recent first.
    Conversations {
        user: UserId,
        limit: usize,
    },
    // Writes: in the turn's transaction.
    /// Answered [`Answer::Created`]`(None)` when the name is taken in any letter case.
    CreateUser {
        username: String,
        password_hash: String,
        created_at: i64,
    },
    /// Answered with the new password version (None: no such account).
    SetPassword {
        user: UserId,
        password_hash: String,
    },
    SetDisplayName {
        user: UserId,
        display_name: String,
    },
    /// Answered [`Answer::Posted`], or [`Answer::NoSuchUser`] for a direct message to
    /// a name nobody has (nothing stored).
    Post(NewMessage),
    /// Subscribes `subscriber` to the user named `target` (any letter case), unless the
    /// subscriber already has `max` subscriptions and this would be one more; or
    /// unsubscribes. Answered [`Answer::Subscription`] with the state afterwards, or
    /// [`Answer::NoSuchUser`]. The database counts, so the cap holds whatever process
    /// the subscriber uses.
    Subscribe {
        subscriber: UserId,
        target: String,
        subscribed: bool,
        max: usize,
    },
}

impl Op {
    /// Whether the operation changes stored state (and so belongs in the turn's
    /// transaction).
    pub fn is_write(&self) -> bool {
        matches!(
            self,
            Op::CreateUser { .. }
                | Op::SetPassword { .. }
                | Op::SetDisplayName { .. }
                | Op::Post(_)
                | Op::Subscribe { .. }
        )
    }
}

/// The result of a successful operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    User(Option<User>),
    /// The new account, or None if the name is taken.
    Created(Option<User>),
    PasswordVersion(Option<i64>),
    Done,
    /// A message's id, and for a direct message the recipient as stored.
    Posted {
        id: i64,
        to: Option<UserRef>,
    },
    /// Whether `subscriber` is subscribed to `target` now (a subscribe over the cap
    /// leaves it false).
    Subscription {
        target: UserRef,
        subscribed: bool,
    },
    /// The request named a user nobody is.
    NoSuchUser,
    History {
        items: Vec<Item>,
        more: bool,
    },
    Usernames(Vec<String>),
    Conversations(Vec<Conversation>),
}

/// Why an operation has no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The database did not answer within the database timeout, or cannot be
    /// reached (503 `unavailable`). A write answered so may still commit later, when a
    /// frozen database resumes: its outcome is unknown, and no other answer follows.
    Unavailable,
    /// The database refused or failed the request, or the transaction holding it: the
    /// write is not stored (500 `internal_error`).
    Failed,
}

pub type Outcome = Result<Answer, Failure>;
