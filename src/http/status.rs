//! Status codes the server sends, and the error responses it sends with them.
//!
//! Error responses are rendered once per process (a small HTML body and the
//! head up to, but not including, `Date`), like the file responses in the
//! snapshot: answering a bad request is a copy, not a format.

use std::sync::LazyLock;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    Ok,
    PartialContent,
    MovedPermanently,
    NotModified,
    PermanentRedirect,
    BadRequest,
    Forbidden,
    NotFound,
    MethodNotAllowed,
    RequestTimeout,
    PreconditionFailed,
    PayloadTooLarge,
    UriTooLong,
    RangeNotSatisfiable,
    HeaderFieldsTooLarge,
    InternalServerError,
    NotImplemented,
    ServiceUnavailable,
    VersionNotSupported,
}

impl Status {
    pub const fn code(self) -> u16 {
        match self {
            Status::Ok => 200,
            Status::PartialContent => 206,
            Status::MovedPermanently => 301,
            Status::PermanentRedirect => 308,
            Status::NotModified => 304,
            Status::BadRequest => 400,
            Status::Forbidden => 403,
            Status::NotFound => 404,
            Status::MethodNotAllowed => 405,
            Status::RequestTimeout => 408,
            Status::PreconditionFailed => 412,
            Status::PayloadTooLarge => 413,
            Status::UriTooLong => 414,
            Status::RangeNotSatisfiable => 416,
            Status::HeaderFieldsTooLarge => 431,
            Status::InternalServerError => 500,
            Status::NotImplemented => 501,
            Status::ServiceUnavailable => 503,
            Status::VersionNotSupported => 505,
        }
    }

    pub const fn reason(self) -> &'static str {
        match self {
            Status::Ok => "OK",
            Status::PartialContent => "Partial Content",
            Status::MovedPermanently => "Moved Permanently",
            Status::PermanentRedirect => "Permanent Redirect",
            Status::NotModified => "Not Modified",
            Status::BadRequest => "Bad Request",
            Status::Forbidden => "Forbidden",
            Status::NotFound => "Not Found",
            Status::MethodNotAllowed => "Method Not Allowed",
            Status::RequestTimeout => "Request Timeout",
            Status::PreconditionFailed => "Precondition Failed",
            Status::PayloadTooLarge => "Content Too Large",
            Status::UriTooLong => "URI Too Long",
            Status::RangeNotSatisfiable => "Range Not Satisfiable",
            Status::HeaderFieldsTooLarge => "Request Header Fields Too Large",
            Status::InternalServerError => "Internal Server Error",
            Status::NotImplemented => "Not Implemented",
            Status::ServiceUnavailable => "Service Unavailable",
            Status::VersionNotSupported => "HTTP Version Not Supported",
        }
    }

    /// Whether the connection must close after this error: after a framing or
    /// size error we can no longer trust where the next request starts.
    pub const fn closes_connection(self) -> bool {
        !matches!(
            self,
            Status::Ok
                | Status::PartialContent
                | Status::MovedPermanently
                | Status::PermanentRedirect
                | Status::NotModified
                | Status::Forbidden
                | Status::NotFound
                | Status::MethodNotAllowed
                | Status::PreconditionFailed
                | Status::RangeNotSatisfiable
        )
    }
}

/// A pre-rendered error response: `head` stops before `Date` (see
/// [`crate::http::response`] for how a head is finished), `body` is HTML.
#[derive(Debug)]
pub struct ErrorPage {
    pub head: Box<[u8]>,
    pub body: Box<[u8]>,
}

const ERROR_STATUSES: [Status; 13] = [
    Status::BadRequest,
    Status::Forbidden,
    Status::NotFound,
    Status::MethodNotAllowed,
    Status::RequestTimeout,
    Status::PreconditionFailed,
    Status::PayloadTooLarge,
    Status::UriTooLong,
    Status::HeaderFieldsTooLarge,
    Status::InternalServerError,
    Status::NotImplemented,
    Status::ServiceUnavailable,
    Status::VersionNotSupported,
];

static ERROR_PAGES: LazyLock<Vec<(Status, ErrorPage)>> = LazyLock::new(|| {
    ERROR_STATUSES
        .iter()
        .map(|&status| (status, render_error_page(status)))
        .collect()
});

/// The pre-rendered page for an error status (any status that is not an error
/// gets the 500 page, which is a bug in the caller, not a panic).
pub fn error_page(status: Status) -> &'static ErrorPage {
    let pages = &*ERROR_PAGES;
    pages
        .iter()
        .find(|(s, _)| *s == status)
        .or_else(|| pages.iter().find(|(s, _)| *s == Status::InternalServerError))
        .map(|(_, page)| page)
        .expect("the 500 page is always rendered")
}

fn render_error_page(status: Status) -> ErrorPage {
    let title = format!("{} {}", status.code(), status.reason());
    let body = format!(
        "<!DOCTYPE html>\n<html><head><title>{title}</title></head>\
         <body><h1>{title}</h1><hr><p>ringserve</p></body></html>\n"
    );
    let mut head = format!(
        "HTTP/1.1 {title}\r\nServer: ringserve\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\n",
        body.len()
    );
    if status == Status::MethodNotAllowed {
        head.push_str("Allow: GET, HEAD\r\n");
    }
    ErrorPage {
        head: head.into_bytes().into_boxed_slice(),
        body: body.into_bytes().into_boxed_slice(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_status_has_its_own_page() {
        for status in ERROR_STATUSES {
            let page = error_page(status);
            let head = std::str::from_utf8(&page.head).unwrap();
            assert!(
                head.starts_with(&format!("HTTP/1.1 {} ", status.code())),
                "{head}"
            );
            assert!(head.contains(&format!("Content-Length: {}\r\n", page.body.len())));
        }
    }

    #[test]
    fn only_405_carries_allow() {
        let allow = |s| String::from_utf8_lossy(&error_page(s).head).contains("Allow: GET, HEAD");
        assert!(allow(Status::MethodNotAllowed));
        assert!(!allow(Status::NotFound));
    }
}
