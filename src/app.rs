//! Everything request handlers need besides the request: configuration, storage,
//! credentials, limits, counters, static files and the chat state. Owned by the event
//! loop and lent to handlers; holds no sockets (a networked store keeps its own, which
//! the loop drives).

use serde_json::json;

use crate::auth::{Passwords, TokenError, Tokens};
use crate::chat::outbox::Outbox;
use crate::chat::protocol::{ChatError, ErrorCode};
use crate::chat::{Backend, Chat, ChatConfig, TokenClaims, UserId};
use crate::config::Config;
use crate::http::static_files::StaticFiles;
use crate::limits::Limits;
use crate::metrics::Metrics;
use crate::store::{Op, Storage, Ticket};

/// Something a handler asks the event loop to do once the response is queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// The user's password changed: close their WebSockets (4003).
    CredentialsChanged(UserId),
}

/// Application state shared by every connection (one thread: plain fields, no locks).
#[derive(Debug)]
pub struct App {
    pub config: Config,
    pub store: Box<dyn Storage>,
    /// The next storage ticket.
    next_ticket: u64,
    pub passwords: Passwords,
    pub tokens: Tokens,
    pub limits: Limits,
    pub metrics: Metrics,
    pub static_files: StaticFiles,
    pub chat: Chat,
    /// The chat's outputs on their way out, in order per connection.
    pub outbox: Outbox,
    /// Effects queued by handlers, drained by the event loop after each request.
    pub effects: Vec<Effect>,
}

impl App {
    /// The application over `store`, whose stored subscriptions (as (subscriber,
    /// target) pairs) the chat starts with.
    pub fn new(
        config: Config,
        store: Box<dyn Storage>,
        subscriptions: Vec<(UserId, UserId)>,
        secret: &[u8],
    ) -> Result<App, String> {
        let passwords = Passwords::new(
            config.argon2_memory_kib,
            config.argon2_iterations,
            config.argon2_parallelism,
        )
        .map_err(|e| e.to_string())?;
        let ttl = i64::try_from(config.jwt_ttl.as_secs()).unwrap_or(i64::MAX);
        let chat = Chat::new(chat_config(&config), subscriptions);
        Ok(App {
            tokens: Tokens::new(secret, ttl),
            limits: Limits::new(&config),
            metrics: Metrics::default(),
            static_files: StaticFiles::new(&config.public_dir),
            chat,
            outbox: Outbox::default(),
            effects: Vec::new(),
            passwords,
            store,
            next_ticket: 0,
            config,
        })
    }

    /// Submits a storage operation under a new ticket.
    pub fn submit(&mut self, op: Op) -> Ticket {
        submit(&mut *self.store, &mut self.next_ticket, op)
    }

    /// The chat core's view of storage and tokens, borrowing the store.
    pub fn backend(&mut self) -> (&mut Chat, ChatBackend<'_>) {
        (
            &mut self.chat,
            ChatBackend {
                store: &mut *self.store,
                next_ticket: &mut self.next_ticket,
                tokens: &self.tokens,
            },
        )
    }
}

fn submit(store: &mut dyn Storage, next_ticket: &mut u64, op: Op) -> Ticket {
    *next_ticket += 1;
    let ticket = Ticket(*next_ticket);
    store.submit(ticket, op);
    ticket
}

/// The limits clients learn in the welcome frame.
fn chat_config(config: &Config) -> ChatConfig {
    let rate = config.ws_rate;
    let per_second = f64::from(rate.count) / rate.per.as_secs_f64();
    // Whole numbers as JSON integers (10, not 10.0).
    let per_second = if per_second.fract() == 0.0 {
        json!(per_second as u64)
    } else {
        json!(per_second)
    };
    ChatConfig {
        max_text_chars: config.max_text_chars,
        history_max: config.history_max,
        max_rooms_per_connection: config.max_rooms_per_connection,
        max_rooms: config.max_rooms,
        max_subscriptions: config.max_subscriptions,
        welcome_limits: json!({
            "max_message_bytes": config.max_message_bytes,
            "max_text_chars": config.max_text_chars,
            "ws_rate": per_second,
            "ws_burst": rate.burst,
            "ws_ping_secs": config.ws_ping_interval.as_secs(),
            "history_max": config.history_max,
            "max_rooms_per_connection": config.max_rooms_per_connection,
            "max_subscriptions": config.max_subscriptions,
        }),
    }
}

/// [`Backend`] over the store and the token keys.
pub struct ChatBackend<'a> {
    store: &'a mut dyn Storage,
    next_ticket: &'a mut u64,
    tokens: &'a Tokens,
}

impl Backend for ChatBackend<'_> {
    fn submit(&mut self, op: Op) -> Ticket {
        submit(self.store, self.next_ticket, op)
    }

    fn check_token(&mut self, token: &str, now_ms: i64) -> Result<TokenClaims, ChatError> {
        let now_secs = now_ms.div_euclid(1000);
        let claims = self.tokens.verify(token, now_secs).map_err(|e| match e {
            TokenError::Expired => ChatError::new(ErrorCode::TokenExpired, "the token has expired"),
            TokenError::Invalid => ChatError::new(ErrorCode::Unauthorized, "invalid token"),
        })?;
        let user_id = claims
            .user_id()
            .ok_or_else(|| ChatError::new(ErrorCode::Unauthorized, "invalid token"))?;
        Ok(TokenClaims {
            user_id,
            expires_at: claims.exp,
            version: claims.ver,
        })
    }
}

/// Why a token was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenCheck {
    Expired,
    Invalid,
    /// The account is gone or its password changed since the token was issued.
    Revoked,
}

impl From<TokenError> for TokenCheck {
    fn from(e: TokenError) -> Self {
        match e {
            TokenError::Expired => TokenCheck::Expired,
            TokenError::Invalid => TokenCheck::Invalid,
        }
    }
}
