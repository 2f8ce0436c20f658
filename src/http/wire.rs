//! A reply as the bytes that go on the socket: status line, headers and
//! body rendered into one buffer and written with one `write`, through the
//! request's raw writer (`Request::into_writer`).
//!
//! tiny_http's own `Response` path costs about half of a request's
//! instructions (callgrind, one 1.1 KB order): it allocates every header,
//! formats a `Date` per response, and writes each header line in four
//! pieces, each through its per-connection mutex. Here a response is one
//! allocation, one copy of the body and one locked write; the `Date` value
//! is formatted once a second per worker.
//!
//! What tiny_http's path decided that this one must too: a `Content-Length`
//! on every answer (304: 0, see `encoding::finish`), no body for HEAD, 304
//! and 1xx/204. Keep-alive needs nothing: tiny_http's connection thread
//! reads the next request, or closes after `Connection: close` or an
//! HTTP/1.0 request without keep-alive, as before.

use super::routes::Reply;
use std::cell::RefCell;
use std::io::Write;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tiny_http::{Method, Request, StatusCode};

/// Writes `reply` to `request`'s connection. A client that went away is
/// its own problem: errors are dropped, as tiny_http's `respond` did.
pub fn send(request: Request, reply: &Reply) {
    let head_only = *request.method() == Method::Head;
    let bytes = render(reply, head_only, SystemTime::now());
    let mut writer = request.into_writer();
    let _ = writer.write_all(&bytes).and_then(|()| writer.flush());
}

/// The whole response: status line, `Date`, the reply's headers,
/// `Content-Length`, and the body unless there is none to send.
pub fn render(reply: &Reply, head_only: bool, now: SystemTime) -> Vec<u8> {
    let body = reply.body.as_ref();
    let status = reply.status;
    let no_body = matches!(status, 100..=199 | 204 | 304);
    let mut out = Vec::with_capacity(320 + body.len());
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(itoa::Buffer::new().format(status).as_bytes());
    out.push(b' ');
    out.extend_from_slice(StatusCode(status).default_reason_phrase().as_bytes());
    out.extend_from_slice(b"\r\n");
    with_date(now, |date| line(&mut out, "Date", date));
    if !reply.content_type.is_empty() {
        line(&mut out, "Content-Type", reply.content_type);
    }
    line(&mut out, "X-Content-Type-Options", "nosniff");
    for (name, value) in &reply.headers {
        line(&mut out, name, value);
    }
    if !matches!(status, 100..=199 | 204) {
        let length = if no_body { 0 } else { body.len() };
        line(
            &mut out,
            "Content-Length",
            itoa::Buffer::new().format(length),
        );
    }
    out.extend_from_slice(b"\r\n");
    if !head_only && !no_body {
        out.extend_from_slice(body);
    }
    out
}

/// One header line. Names are the service's own constants; so are the
/// values, but a control character in one (which could split the head)
/// sends a harmless line instead. (Checked without an early exit, so the
/// loop is vectorized: it runs for every header of every response.)
fn line(out: &mut Vec<u8>, name: &'static str, value: &str) {
    let control = value.bytes().fold(false, |seen, b| {
        seen | ((b < 0x20) & (b != b'\t')) | (b == 0x7f)
    });
    let (name, value) = if control {
        ("X-Invalid-Header", "1")
    } else {
        (name, value)
    };
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// The IMF-fixdate of `now`, formatted once per second per thread.
fn with_date<T>(now: SystemTime, use_it: impl FnOnce(&str) -> T) -> T {
    thread_local! {
        static DATE: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
    }
    let second = now
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs();
    DATE.with_borrow_mut(|(cached, text)| {
        if *cached != second {
            *cached = second;
            *text = httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(second));
        }
        use_it(text)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::encoding::Caching;
    use crate::http::routes::{Body, Route};

    fn reply(status: u16, body: &'static [u8]) -> Reply {
        Reply {
            route: Route::Order,
            status,
            content_type: "application/json",
            body: Body::Static(body),
            headers: vec![("ETag", "\"abc\"".into())],
            caching: Caching::Immutable,
        }
    }

    fn text(bytes: Vec<u8>) -> String {
        String::from_utf8(bytes).unwrap()
    }

    const NOW: u64 = 784_111_777; // Sun, 06 Nov 1994 08:49:37 GMT

    #[test]
    fn a_200_is_head_then_body_with_its_length() {
        let out = text(render(
            &reply(200, b"{}"),
            false,
            UNIX_EPOCH + Duration::from_secs(NOW),
        ));
        assert_eq!(
            out,
            "HTTP/1.1 200 OK\r\nDate: Sun, 06 Nov 1994 08:49:37 GMT\r\n\
             Content-Type: application/json\r\nX-Content-Type-Options: nosniff\r\n\
             ETag: \"abc\"\r\nContent-Length: 2\r\n\r\n{}"
        );
    }

    #[test]
    fn head_keeps_the_length_and_drops_the_body() {
        let out = text(render(&reply(200, b"{}"), true, SystemTime::now()));
        assert!(out.ends_with("Content-Length: 2\r\n\r\n"), "{out}");
    }

    #[test]
    fn a_304_has_no_body_and_length_0() {
        let out = text(render(&reply(304, b"{}"), false, SystemTime::now()));
        assert!(out.starts_with("HTTP/1.1 304 Not Modified\r\n"), "{out}");
        assert!(out.ends_with("Content-Length: 0\r\n\r\n"), "{out}");
    }

    #[test]
    fn a_value_with_a_line_break_cannot_split_the_head() {
        let mut bad = reply(200, b"{}");
        bad.headers
            .push(("Retry-After", "1\r\nSet-Cookie: x".into()));
        let out = text(render(&bad, false, SystemTime::now()));
        assert!(!out.contains("Set-Cookie"), "{out}");
        assert!(out.contains("X-Invalid-Header: 1\r\n"), "{out}");
    }

    #[test]
    fn the_date_changes_with_the_second() {
        let at = |s| with_date(UNIX_EPOCH + Duration::from_secs(s), str::to_owned);
        assert_eq!(at(NOW), "Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(at(NOW + 1), "Sun, 06 Nov 1994 08:49:38 GMT");
    }
}
