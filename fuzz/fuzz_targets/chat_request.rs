//! libFuzzer entry of the `chat_request` target; the checks are in chatd-fuzz-checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| chatd_fuzz_checks::chat::check(data));
