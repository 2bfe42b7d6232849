//! The health check (`--health`): `GET` or `HEAD` on one fixed path answers
//! `200 ok` from bytes fixed at compile time, before the target is looked up
//! in the snapshot.
//!
//! Decided here, in the core, so every engine answers it the same way. It
//! answers only that the worker is up and has a snapshot to serve from: a
//! load balancer's liveness and readiness probe. It is reported to the
//! [`Observer`](crate::http::Observer) as a health check, not as a response:
//! it never reaches the access log (probes every few seconds would drown
//! it) and is counted apart in the metrics. The path shadows a file of the
//! same name in the root.

use crate::http::date::DateLine;
use crate::http::response::{ConnectionHeader, Output, finish_head};

/// The path answered when `--health` is given without `--health-path`.
pub const DEFAULT_HEALTH_PATH: &str = "/healthz";
/// The body of every health answer.
pub const HEALTH_BODY: &[u8] = b"ok\n";
/// The head up to (not including) `Date`, as for every precomputed head.
const HEALTH_HEAD: &[u8] = b"HTTP/1.1 200 OK\r\nServer: ringserve\r\n\
    Content-Type: text/plain; charset=utf-8\r\nContent-Length: 3\r\nCache-Control: no-store\r\n";

/// Whether `target` (as received) asks for the health path `path`: exactly
/// the path, or the path followed by a query.
pub fn is_health_target(target: &[u8], path: &[u8]) -> bool {
    match target.strip_prefix(path) {
        Some(rest) => rest.is_empty() || rest.first() == Some(&b'?'),
        None => false,
    }
}

/// Appends the health answer (its body unless this answers `HEAD`).
pub fn write_health(out: &mut Output, with_body: bool, date: &DateLine, connection: ConnectionHeader) {
    out.push(HEALTH_HEAD);
    finish_head(out, date, connection);
    if with_body {
        out.push(HEALTH_BODY);
    }
}

/// Checks a `--health-path` value: an absolute path without a query,
/// fragment, spaces or control bytes (it is compared with targets byte for
/// byte, as received).
pub fn check_health_path(path: &str) -> Result<(), String> {
    if !path.starts_with('/') {
        return Err(format!("health path {path:?} must start with /"));
    }
    if path
        .bytes()
        .any(|b| b <= b' ' || b == 0x7f || b == b'?' || b == b'#')
    {
        return Err(format!(
            "health path {path:?} must not contain spaces, control characters, ? or #"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const DATE: &DateLine = b"Date: Sun, 06 Nov 1994 08:49:37 GMT\r\n";

    #[test]
    fn matches_the_path_and_its_queries_only() {
        assert!(is_health_target(b"/healthz", b"/healthz"));
        assert!(is_health_target(b"/healthz?probe=1", b"/healthz"));
        assert!(!is_health_target(b"/healthz/", b"/healthz"));
        assert!(!is_health_target(b"/healthzz", b"/healthz"));
        assert!(!is_health_target(b"/", b"/healthz"));
    }

    #[test]
    fn the_answer_is_complete_and_not_cached() {
        let mut out = Output::new();
        write_health(&mut out, true, DATE, ConnectionHeader::Omit);
        let text = String::from_utf8(out.to_vec_blocking().unwrap()).unwrap();
        assert_eq!(
            text,
            "HTTP/1.1 200 OK\r\nServer: ringserve\r\nContent-Type: text/plain; charset=utf-8\r\n\
             Content-Length: 3\r\nCache-Control: no-store\r\nDate: Sun, 06 Nov 1994 08:49:37 GMT\r\n\r\nok\n"
        );
        assert_eq!(HEALTH_BODY.len(), 3, "Content-Length above");
        let mut head_only = Output::new();
        write_health(&mut head_only, false, DATE, ConnectionHeader::Close);
        let text = String::from_utf8(head_only.to_vec_blocking().unwrap()).unwrap();
        assert!(text.ends_with("Connection: close\r\n\r\n"), "{text}");
    }

    #[test]
    fn bad_paths_are_refused() {
        assert!(check_health_path("/healthz").is_ok());
        assert!(check_health_path("/-/ready").is_ok());
        assert!(check_health_path("healthz").is_err());
        assert!(check_health_path("/a b").is_err());
        assert!(check_health_path("/a?b").is_err());
    }
}
