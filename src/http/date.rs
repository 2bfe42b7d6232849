//! The `Date` header line, rendered at most once a second per thread.
//!
//! Every response carries `Date` (RFC 9110 §6.6.1), but formatting an IMF
//! date costs far more than copying one. As in hyper's `common/date.rs`, each
//! thread keeps the rendered line and re-renders it only when the wall-clock
//! second changes; a check is one `clock_gettime` through the vDSO.

use std::cell::RefCell;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// `Date: Sun, 06 Nov 1994 08:49:37 GMT\r\n`
pub const DATE_LINE_BYTES: usize = 37;

pub type DateLine = [u8; DATE_LINE_BYTES];

struct CachedDate {
    second: u64,
    line: DateLine,
}

thread_local! {
    static CACHED: RefCell<CachedDate> = const {
        RefCell::new(CachedDate { second: u64::MAX, line: [0; DATE_LINE_BYTES] })
    };
}

/// The current `Date:` line, CRLF included.
pub fn date_line() -> DateLine {
    date_line_at(SystemTime::now())
}

/// The `Date:` line for `now`, from the thread's cache when the second matches.
pub fn date_line_at(now: SystemTime) -> DateLine {
    let second = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    CACHED.with(|cell| {
        let mut cached = cell.borrow_mut();
        if cached.second != second {
            cached.line = render(UNIX_EPOCH + Duration::from_secs(second));
            cached.second = second;
        }
        cached.line
    })
}

fn render(at: SystemTime) -> DateLine {
    let mut line = [0u8; DATE_LINE_BYTES];
    let text = httpdate::fmt_http_date(at);
    line[..6].copy_from_slice(b"Date: ");
    line[6..35].copy_from_slice(text.as_bytes());
    line[35..].copy_from_slice(b"\r\n");
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_an_imf_fixdate_line() {
        let at = UNIX_EPOCH + Duration::from_secs(784_111_777);
        assert_eq!(&date_line_at(at), b"Date: Sun, 06 Nov 1994 08:49:37 GMT\r\n");
    }

    #[test]
    fn cache_follows_the_second() {
        let t0 = UNIX_EPOCH + Duration::from_secs(1_000_000_000);
        let a = date_line_at(t0);
        let same_second = date_line_at(t0 + Duration::from_millis(999));
        let next = date_line_at(t0 + Duration::from_secs(1));
        assert_eq!(a, same_second);
        assert_ne!(a, next);
        assert_eq!(&next, b"Date: Sun, 09 Sep 2001 01:46:41 GMT\r\n");
    }
}
