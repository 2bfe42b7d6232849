//! Path normalisation: never panics, never yields a key with `..`, `.`, empty
//! segments, NUL or backslash. See `ringserve::fuzzing::check_normalize`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ringserve::fuzzing::check_normalize(data));
