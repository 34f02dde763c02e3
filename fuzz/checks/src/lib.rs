//! What each chatd fuzz target feeds in and checks, written once.
//!
//! The libFuzzer binaries in `fuzz/fuzz_targets/` are one line each, calling `check`
//! of a module here; `tests/corpus.rs` replays every file of `fuzz/corpus/<target>/`
//! through the same function on stable Rust, so `make test` keeps every input the
//! fuzzer ever found interesting (crashes included) checked. A separate crate rather
//! than a module of chatd: `arbitrary` and the test fixtures stay out of the server.
//!
//! A `check` panics when an invariant fails: libFuzzer reports that as a crash, the
//! replay as a failed test naming the file.

pub mod chat;
pub mod config;
pub mod http;
pub mod jwt;
pub mod session;
pub mod ws;

/// What a target runs on one input.
pub type Check = fn(&[u8]);

/// The targets, as named under `fuzz/corpus/` and `fuzz/fuzz_targets/`.
pub const TARGETS: &[(&str, Check)] = &[
    ("http_request", http::check),
    ("ws_frame", ws::check),
    ("chat_request", chat::check),
    ("config", config::check),
    ("jwt", jwt::check),
    ("session", session::check),
];
