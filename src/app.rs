//! Everything request handlers need besides the request: configuration, database,
//! credentials, limits, counters, static files and the chat state. Owned by the event
//! loop and lent to handlers; holds no sockets.

use serde_json::json;

use crate::auth::{Passwords, TokenError, Tokens};
use crate::chat::protocol::{ChatError, Conversation, ErrorCode, Item, Page};
use crate::chat::{
    Backend, BackendError, Chat, ChatConfig, HistoryScope, NewMessage, TokenInfo, UserId, UserRef,
};
use crate::config::Config;
use crate::http::static_files::StaticFiles;
use crate::limits::Limits;
use crate::metrics::Metrics;
use crate::store::Store;

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
    pub store: Store,
    pub passwords: Passwords,
    pub tokens: Tokens,
    pub limits: Limits,
    pub metrics: Metrics,
    pub static_files: StaticFiles,
    pub chat: Chat,
    /// Effects queued by handlers, drained by the event loop after each request.
    pub effects: Vec<Effect>,
}

impl App {
    pub fn new(config: Config, store: Store, secret: &[u8]) -> Result<App, String> {
        let passwords = Passwords::new(
            config.argon2_memory_kib,
            config.argon2_iterations,
            config.argon2_parallelism,
        )
        .map_err(|e| e.to_string())?;
        let ttl = i64::try_from(config.jwt_ttl.as_secs()).unwrap_or(i64::MAX);
        let subscriptions = store
            .subscriptions()
            .map_err(|e| format!("cannot load subscriptions: {e}"))?;
        let chat = Chat::new(chat_config(&config), subscriptions);
        Ok(App {
            tokens: Tokens::new(secret, ttl),
            limits: Limits::new(&config),
            metrics: Metrics::default(),
            static_files: StaticFiles::new(&config.public_dir),
            chat,
            effects: Vec::new(),
            passwords,
            store,
            config,
        })
    }

    /// The chat core's view of storage and tokens, borrowing the store.
    pub fn backend(&mut self) -> (&mut Chat, ChatBackend<'_>) {
        (
            &mut self.chat,
            ChatBackend {
                store: &mut self.store,
                tokens: &self.tokens,
            },
        )
    }
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

/// [`Backend`] over the SQLite store and the token keys.
pub struct ChatBackend<'a> {
    store: &'a mut Store,
    tokens: &'a Tokens,
}

fn backend_error(e: crate::store::StoreError) -> BackendError {
    BackendError(e.to_string())
}

impl Backend for ChatBackend<'_> {
    fn find_user(&mut self, username: &str) -> Result<Option<UserRef>, BackendError> {
        if !crate::api::valid_username(username) {
            return Ok(None);
        }
        Ok(self
            .store
            .user_by_name(username)
            .map_err(backend_error)?
            .map(|u| UserRef {
                id: u.id,
                username: u.username,
            }))
    }

    fn store_message(&mut self, message: &NewMessage<'_>) -> Result<i64, BackendError> {
        Ok(self.store.queue_message(message))
    }

    fn set_subscription(
        &mut self,
        subscriber: UserId,
        target: UserId,
        subscribed: bool,
    ) -> Result<(), BackendError> {
        self.store
            .queue_subscription(subscriber, target, subscribed);
        Ok(())
    }

    fn history(
        &mut self,
        scope: &HistoryScope<'_>,
        page: Page,
        limit: usize,
    ) -> Result<(Vec<Item>, bool), BackendError> {
        self.store
            .history(scope, page, limit)
            .map_err(backend_error)
    }

    fn subscriptions_of(&mut self, user: UserId) -> Result<Vec<String>, BackendError> {
        self.store.subscriptions_of(user).map_err(backend_error)
    }

    fn conversations(
        &mut self,
        user: UserId,
        limit: usize,
    ) -> Result<Vec<Conversation>, BackendError> {
        self.store.conversations(user, limit).map_err(backend_error)
    }

    fn verify_token(&mut self, token: &str, now_ms: i64) -> Result<TokenInfo, ChatError> {
        let now_secs = now_ms.div_euclid(1000);
        match crate::api::user_for_token(self.tokens, self.store, token, now_secs) {
            Ok((user, claims)) => Ok(TokenInfo {
                user_id: user.id,
                expires_at: claims.exp,
            }),
            Err(TokenCheck::Expired) => Err(ChatError::new(
                ErrorCode::TokenExpired,
                "the token has expired",
            )),
            Err(TokenCheck::Invalid | TokenCheck::Revoked) => {
                Err(ChatError::new(ErrorCode::Unauthorized, "invalid token"))
            }
            Err(TokenCheck::Storage) => Err(ChatError::internal()),
        }
    }
}

/// Why a token was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenCheck {
    Expired,
    Invalid,
    /// The account is gone or its password changed since the token was issued.
    Revoked,
    Storage,
}

impl From<TokenError> for TokenCheck {
    fn from(e: TokenError) -> Self {
        match e {
            TokenError::Expired => TokenCheck::Expired,
            TokenError::Invalid => TokenCheck::Invalid,
        }
    }
}
