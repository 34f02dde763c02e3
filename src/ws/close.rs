//! The close codes chatd sends, typed, with the reason text that goes with each.

/// Why the server closes a WebSocket. The numbers are part of the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Close {
    /// 1000: answer to the client's own close.
    Normal,
    /// 1001: the server is shutting down.
    GoingAway,
    /// 1002: the client broke RFC 6455 framing.
    ProtocolError,
    /// 1003: a binary frame (chatd speaks JSON text only).
    Unsupported,
    /// 1007: a text message that is not UTF-8.
    InvalidData,
    /// 1008: the client kept flooding past its rate limit.
    Policy,
    /// 1009: a frame or message over max_message_bytes.
    TooBig,
    /// 1011: an internal error.
    InternalError,
    /// 1013: the client did not read and its queue passed max_outbound_bytes.
    SlowConsumer,
    /// 4000: nothing received for ws_idle_timeout_secs.
    IdleTimeout,
    /// 4001: another connection of the same user replaced this one.
    Replaced,
    /// 4002: the token expired and no `auth` request renewed it.
    TokenExpired,
    /// 4003: the user's password changed.
    CredentialsChanged,
    /// The answer to a client's close frame: its own code echoed (1000 if it had none).
    Echo(u16),
}

impl Close {
    pub fn code(self) -> u16 {
        match self {
            Close::Normal => 1000,
            Close::GoingAway => 1001,
            Close::ProtocolError => 1002,
            Close::Unsupported => 1003,
            Close::InvalidData => 1007,
            Close::Policy => 1008,
            Close::TooBig => 1009,
            Close::InternalError => 1011,
            Close::SlowConsumer => 1013,
            Close::IdleTimeout => 4000,
            Close::Replaced => 4001,
            Close::TokenExpired => 4002,
            Close::CredentialsChanged => 4003,
            Close::Echo(code) => code,
        }
    }

    pub fn reason(self) -> &'static str {
        match self {
            Close::Normal => "bye",
            Close::GoingAway => "going away",
            Close::ProtocolError => "protocol error",
            Close::Unsupported => "binary frames are not supported",
            Close::InvalidData => "invalid UTF-8",
            Close::Policy => "too many messages",
            Close::TooBig => "message too big",
            Close::InternalError => "internal error",
            Close::SlowConsumer => "too slow to read",
            Close::IdleTimeout => "idle timeout",
            Close::Replaced => "replaced",
            Close::TokenExpired => "token expired",
            Close::CredentialsChanged => "credentials changed",
            Close::Echo(_) => "",
        }
    }
}
