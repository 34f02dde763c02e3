//! WebSocket (RFC 6455) as values: the upgrade check, frame decoding and encoding, and
//! the close codes chatd uses.
//!
//! tungstenite supplies the frame header codec and the accept-key derivation; message
//! assembly, control frames and limits are here, over in-memory buffers, so the event
//! loop owns every byte and a broadcast frame is encoded once for all recipients.

pub mod close;
pub mod frame;
pub mod handshake;

pub use close::Close;
pub use frame::{Decoder, WsEvent};
