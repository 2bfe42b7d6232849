//! Request parser + session + router on a small in-memory site: any bytes,
//! whole or split (the first byte picks the split sizes), must give the same
//! output and never panic. See `ringserve::fuzzing::fuzz_session`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ringserve::fuzzing::fuzz_session(data));
