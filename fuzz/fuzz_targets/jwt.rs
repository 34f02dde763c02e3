//! libFuzzer entry of the `jwt` target; the checks are in chatd-fuzz-checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| chatd_fuzz_checks::jwt::check(data));
