//! The HTTP side: the listening socket, the worker loop and `route`, one
//! function from a request to a response over the cache. Run by the pool of
//! `http-N` worker threads.
//!
//! Invariant: workers read the cache, the health record and the counters;
//! they never touch PostgreSQL or NATS, so a slow server never slows a GET.

use crate::cache::OrderCache;
use crate::connections;
use crate::health::Health;
use crate::metrics::{Metrics, Route};
use crate::order::OrderUid;
use serde_json::json;
use socket2::{Domain, Socket, Type};
use std::io::{Cursor, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tiny_http::{Header, Method, Request, Response, Server, StatusCode};

/// A response may block on a client that does not read for this long.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);

pub const DEFAULT_PAGE: usize = 100;
pub const MAX_PAGE: usize = 1000;

/// The page and its assets, compiled into the binary: no file-system paths
/// at run time.
const ASSETS: &[(&str, &str, &[u8])] = &[
    (
        "/",
        "text/html; charset=utf-8",
        include_bytes!("../static/index.html"),
    ),
    (
        "/index.html",
        "text/html; charset=utf-8",
        include_bytes!("../static/index.html"),
    ),
    (
        "/assets/app.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../static/dist/app.js"),
    ),
    (
        "/assets/style.css",
        "text/css; charset=utf-8",
        include_bytes!("../static/style.css"),
    ),
    (
        "/favicon.svg",
        "image/svg+xml",
        include_bytes!("../static/favicon.svg"),
    ),
];

const OPENAPI: &[u8] = include_bytes!("../static/openapi.json");

const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'self'; \
     frame-ancestors 'none'";

/// What the workers share.
pub struct HttpState {
    pub cache: Arc<OrderCache>,
    pub health: Arc<Health>,
    pub metrics: Arc<Metrics>,
}

/// A response body without copies: cached orders are shared, assets static.
pub enum Body {
    Static(&'static [u8]),
    Shared(Arc<[u8]>),
    Owned(Vec<u8>),
}

impl AsRef<[u8]> for Body {
    fn as_ref(&self) -> &[u8] {
        match self {
            Body::Static(bytes) => bytes,
            Body::Shared(bytes) => bytes,
            Body::Owned(bytes) => bytes,
        }
    }
}

/// A routed answer, before it becomes a `tiny_http::Response`.
pub struct Reply {
    pub route: Route,
    pub status: u16,
    pub content_type: &'static str,
    pub body: Body,
    pub headers: Vec<(&'static str, String)>,
}

impl Reply {
    fn new(route: Route, status: u16, content_type: &'static str, body: Body) -> Reply {
        Reply {
            route,
            status,
            content_type,
            body,
            headers: Vec::new(),
        }
    }

    fn json(route: Route, status: u16, value: serde_json::Value) -> Reply {
        let mut body = serde_json::to_vec(&value).unwrap_or_default();
        body.push(b'\n');
        Reply::new(route, status, "application/json", Body::Owned(body))
    }

    fn error(route: Route, status: u16, value: serde_json::Value) -> Reply {
        Reply::json(route, status, value)
    }

    fn header(mut self, name: &'static str, value: impl Into<String>) -> Reply {
        self.headers.push((name, value.into()));
        self
    }
}

/// Binds the listener with `TCP_NODELAY` (without it every response waits
/// ~40 ms for a delayed ACK) and a send timeout, both inherited by accepted
/// sockets, and hands it to tiny_http. (Not a receive timeout: on the
/// listener it would time out `accept`, which ends tiny_http's accept
/// thread; `connections::tend` closes silent connections instead.)
pub fn bind(addr: SocketAddr) -> std::io::Result<(Server, SocketAddr)> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_tcp_nodelay(true)?;
    socket.set_write_timeout(Some(SEND_TIMEOUT))?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    let listener: TcpListener = socket.into();
    let local = listener.local_addr()?;
    let server = Server::from_listener(listener, None).map_err(std::io::Error::other)?;
    Ok((server, local))
}

/// One worker: answer requests until `stopping` is set and the server
/// unblocks it.
pub fn run_worker(server: &Server, state: &HttpState, stopping: &AtomicBool) {
    loop {
        match server.recv() {
            Ok(request) => respond(request, state),
            Err(_) if stopping.load(Ordering::Acquire) => return,
            Err(err) => log::debug!("http: {err}"),
        }
    }
}

fn respond(request: Request, state: &HttpState) {
    if body_left_on_socket(&request) {
        refuse_body(request, state);
        return;
    }
    let reply = route(state, request.method(), request.url(), |name| {
        request
            .headers()
            .iter()
            .find(|h| h.field.as_str().as_str().eq_ignore_ascii_case(name))
            .map(|h| h.value.as_str().to_owned())
    });
    state.metrics.http_request(reply.route, reply.status);
    // A client that went away mid-response is its own problem.
    let _ = request.respond(into_response(reply));
}

/// tiny_http 0.12 reads a body of up to this size itself, unless the client
/// sent `Expect: 100-continue`; any other body is left on the socket behind
/// a reader that drains it when the request is dropped.
const BUFFERED_BODY: usize = 1024;

/// The largest announced body whose reader may be dropped. The drain
/// allocates the *declared* `Content-Length` at once (untouched zero pages
/// until read); a request claiming 100 TB would abort the process.
const DROPPABLE_BODY: usize = 1 << 30;

fn body_left_on_socket(request: &Request) -> bool {
    let announced = request.body_length().unwrap_or(0);
    announced > BUFFERED_BODY
        || (announced > 0 && request.headers().iter().any(|h| h.field.equiv("Expect")))
}

/// Answers 413 to a request whose body tiny_http left on the socket: this
/// API takes no bodies, and the drain must not hold a worker for as long as
/// the client takes (or never sends what it announced).
///
/// The socket, found by its peer address, is shut for reading first, so the
/// drain ends at once; the 413 goes out with `Connection: close` and the
/// connection ends. A body announced above `DROPPABLE_BODY` is never
/// dropped: `upgrade` hands its reader over with the stream, both are
/// forgotten and the connection's descriptors closed, which leaves one idle
/// connection thread behind per such request.
fn refuse_body(request: Request, state: &HttpState) {
    let reply = Reply::error(
        Route::NotFound,
        413,
        json!({"error": "request bodies are not accepted", "limit_bytes": BUFFERED_BODY}),
    );
    state.metrics.http_request(reply.route, reply.status);
    state.metrics.bodies_refused.fetch_add(1, Ordering::Relaxed);
    let Some(peer) = request.remote_addr().copied() else {
        return; // Not TCP: nothing to shut, so nothing safe to do.
    };
    if request.body_length().unwrap_or(0) <= DROPPABLE_BODY {
        for connection in connections::from(peer) {
            connection.shutdown(std::net::Shutdown::Read);
        }
        let _ = request.respond(into_response(reply.header("Connection", "close")));
        return;
    }
    let body = reply.body.as_ref().to_vec();
    let head = Reply {
        body: Body::Static(b""),
        ..reply
    };
    let mut stream = request.upgrade("close", into_response(head));
    let _ = stream.write_all(&body).and_then(|()| stream.flush());
    std::mem::forget(stream);
    for connection in connections::from(peer) {
        // SAFETY: the forgotten stream and reader never use or close these
        // descriptors again: the connection thread waits for that reader.
        unsafe { libc::close(connection.fd) };
    }
}

pub fn into_response(reply: Reply) -> Response<Cursor<Body>> {
    let length = reply.body.as_ref().len();
    let mut headers = Vec::with_capacity(reply.headers.len() + 2);
    headers.push(header("Content-Type", reply.content_type));
    headers.push(header("X-Content-Type-Options", "nosniff"));
    headers.extend(
        reply
            .headers
            .iter()
            .map(|(name, value)| header(name, value)),
    );
    Response::new(
        StatusCode(reply.status),
        headers,
        Cursor::new(reply.body),
        Some(length),
        None,
    )
}

fn header(name: &str, value: &str) -> Header {
    Header::from_bytes(name.as_bytes(), value.as_bytes()).unwrap_or_else(|()| {
        Header::from_bytes(&b"X-Invalid-Header"[..], &b"1"[..]).expect("a valid header")
    })
}

/// Every route, in one place. `request_header` looks up a request header.
pub fn route(
    state: &HttpState,
    method: &Method,
    url: &str,
    request_header: impl Fn(&str) -> Option<String>,
) -> Reply {
    let (path, query) = url.split_once('?').unwrap_or((url, ""));
    let route = route_of(path);
    if !matches!(method, Method::Get | Method::Head) {
        return Reply::error(
            route,
            405,
            json!({"error": "method not allowed", "allow": ["GET", "HEAD"]}),
        )
        .header("Allow", "GET, HEAD");
    }
    match route {
        Route::Order => order(&state.cache, &path["/orders/".len()..]),
        Route::Orders => orders(&state.cache, query),
        Route::RandomOrder => match state.cache.random() {
            Some(uid) => Reply::json(route, 200, json!({ "order_uid": &*uid })),
            None => Reply::error(route, 404, json!({"error": "no orders stored yet"})),
        },
        Route::Healthz => Reply::json(route, 200, json!({"status": "ok"})),
        Route::Readyz => readyz(state),
        Route::Metrics => Reply::new(
            route,
            200,
            "text/plain; version=0.0.4; charset=utf-8",
            Body::Owned(state.metrics.render(&state.cache).into_bytes()),
        ),
        Route::OpenApi => Reply::new(route, 200, "application/json", Body::Static(OPENAPI)),
        Route::Page => asset(path, request_header("If-None-Match")),
        Route::NotFound => Reply::error(
            route,
            404,
            json!({"error": "not found", "path": echo(path)}),
        ),
    }
}

fn route_of(path: &str) -> Route {
    match path {
        "/orders" | "/orders/" => Route::Orders,
        _ if path.starts_with("/orders/") => Route::Order,
        "/random-order" => Route::RandomOrder,
        "/healthz" => Route::Healthz,
        "/readyz" => Route::Readyz,
        "/metrics" => Route::Metrics,
        "/openapi.json" => Route::OpenApi,
        _ if ASSETS.iter().any(|(p, _, _)| *p == path) => Route::Page,
        _ => Route::NotFound,
    }
}

fn order(cache: &OrderCache, raw_uid: &str) -> Reply {
    let uid = match OrderUid::parse(raw_uid) {
        Ok(uid) => uid,
        Err(why) => {
            return Reply::error(
                Route::Order,
                400,
                json!({"error": format!("malformed order_uid: {why}"), "order_uid": echo(raw_uid)}),
            )
        }
    };
    match cache.get(uid.as_str()) {
        Some(body) => Reply::new(Route::Order, 200, "application/json", Body::Shared(body)),
        None => Reply::error(
            Route::Order,
            404,
            json!({"error": "order not found", "order_uid": uid.as_str()}),
        ),
    }
}

/// Digits only: `str::parse` would also take a leading `+`, which the
/// OpenAPI document's patterns do not allow.
fn unsigned(value: &str) -> Option<&str> {
    (!value.is_empty() && value.bytes().all(|b| b.is_ascii_digit())).then_some(value)
}

/// Client text quoted back in an error, cut to a readable length.
fn echo(text: &str) -> String {
    const LONGEST: usize = 128;
    match text.char_indices().nth(LONGEST) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}

fn orders(cache: &OrderCache, query: &str) -> Reply {
    let bad = |why: String| Reply::error(Route::Orders, 400, json!({ "error": why }));
    let mut limit = DEFAULT_PAGE;
    let mut cursor = None;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "limit" => match unsigned(value).and_then(|v| v.parse::<usize>().ok()) {
                Some(n) if (1..=MAX_PAGE).contains(&n) => limit = n,
                _ => return bad(format!("limit must be a whole number from 1 to {MAX_PAGE}")),
            },
            "cursor" => {
                match unsigned(value.strip_prefix('-').unwrap_or(value)).and(value.parse().ok()) {
                    Some(c) => cursor = Some(c),
                    None => return bad("cursor must be a next_cursor from an earlier page".into()),
                }
            }
            _ => return bad(format!("unknown query parameter {key:?}")),
        }
    }
    let page = cache.page(cursor, limit);
    let uids: Vec<&str> = page.uids.iter().map(|u| &**u).collect();
    Reply::json(
        Route::Orders,
        200,
        json!({"orders": uids, "next_cursor": page.next_cursor.map(|c| c.to_string())}),
    )
}

fn readyz(state: &HttpState) -> Reply {
    let readiness = state.health.readiness();
    let loaded = state.cache.is_loaded();
    if loaded && readiness.postgres.is_none() && readiness.nats.is_none() {
        return Reply::json(Route::Readyz, 200, json!({"status": "ready"}));
    }
    Reply::error(
        Route::Readyz,
        503,
        json!({
            "error": "not ready",
            "cache": if loaded { "loaded" } else { "loading" },
            "postgres": readiness.postgres.as_deref().unwrap_or("ok"),
            "nats": readiness.nats.as_deref().unwrap_or("ok"),
        }),
    )
}

fn asset(path: &str, if_none_match: Option<String>) -> Reply {
    let Some((_, content_type, bytes)) = ASSETS.iter().find(|(p, _, _)| *p == path) else {
        return Reply::error(
            Route::NotFound,
            404,
            json!({"error": "not found", "path": echo(path)}),
        );
    };
    let etag = format!("\"{:016x}\"", xxhash_rust::xxh3::xxh3_64(bytes));
    let reply = if if_none_match.as_deref() == Some(etag.as_str()) {
        Reply::new(Route::Page, 304, content_type, Body::Static(b""))
    } else {
        Reply::new(Route::Page, 200, content_type, Body::Static(bytes))
    };
    reply
        .header("ETag", etag)
        .header("Cache-Control", "no-cache")
        .header("Content-Security-Policy", CONTENT_SECURITY_POLICY)
        .header("Referrer-Policy", "no-referrer")
}

/// Proves the listener still accepts and answers: connects to it like a
/// client and reads the status line of `/healthz`.
pub fn self_check(addr: SocketAddr) -> std::io::Result<()> {
    let mut stream = TcpStream::connect_timeout(&reachable(addr), Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: self-check\r\nConnection: close\r\n\r\n")?;
    let mut status = [0u8; 12];
    stream.read_exact(&mut status)?;
    if &status[9..12] == b"200" {
        Ok(())
    } else {
        Err(std::io::Error::other(format!(
            "unexpected answer {:?}",
            String::from_utf8_lossy(&status)
        )))
    }
}

/// Opens a connection to this server and closes it without a request.
pub fn connect_and_hang_up(addr: SocketAddr) -> std::io::Result<()> {
    TcpStream::connect_timeout(&reachable(addr), Duration::from_secs(2)).map(drop)
}

/// The address to connect to for a listener bound to `addr`.
fn reachable(addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        SocketAddr::from(([127, 0, 0, 1], addr.port()))
    } else {
        addr
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::StoredOrder;
    use crate::health::Part;
    use serde_json::Value;

    fn state_with(uids: &[&str]) -> HttpState {
        let cache = OrderCache::new();
        cache.insert(
            uids.iter()
                .enumerate()
                .map(|(i, uid)| StoredOrder {
                    id: i as i64 + 1,
                    uid: (*uid).into(),
                    body: format!("{{\"order_uid\": \"{uid}\"}}").into_bytes().into(),
                })
                .collect(),
        );
        HttpState {
            cache: Arc::new(cache),
            health: Arc::new(Health::new()),
            metrics: Arc::new(Metrics::new()),
        }
    }

    fn get(state: &HttpState, url: &str) -> (u16, Value) {
        let reply = route(state, &Method::Get, url, |_| None);
        let body = serde_json::from_slice(reply.body.as_ref()).unwrap_or(Value::Null);
        (reply.status, body)
    }

    #[test]
    fn order_by_uid() {
        let state = state_with(&["abc"]);
        let reply = route(&state, &Method::Get, "/orders/abc", |_| None);
        assert_eq!(reply.status, 200);
        assert_eq!(reply.content_type, "application/json");
        assert_eq!(reply.body.as_ref(), br#"{"order_uid": "abc"}"#);
        let (status, body) = get(&state, "/orders/nope");
        assert_eq!(
            (status, body["error"].as_str()),
            (404, Some("order not found"))
        );
        let (status, body) = get(&state, "/orders/a%20b");
        assert_eq!(status, 400);
        assert!(body["error"]
            .as_str()
            .unwrap()
            .starts_with("malformed order_uid"));
        let (status, body) = get(&state, &format!("/orders/{}", "x".repeat(10_000)));
        assert_eq!(status, 400);
        assert_eq!(body["order_uid"], format!("{}…", "x".repeat(128)));
    }

    #[test]
    fn pages_newest_first_with_a_cursor() {
        let state = state_with(&["a", "b", "c"]);
        let (status, body) = get(&state, "/orders?limit=2");
        assert_eq!(status, 200);
        assert_eq!(body["orders"], json!(["c", "b"]));
        let cursor = body["next_cursor"].as_str().unwrap().to_owned();
        let (_, body) = get(&state, &format!("/orders?limit=2&cursor={cursor}"));
        assert_eq!(body["orders"], json!(["a"]));
        assert_eq!(body["next_cursor"], Value::Null);
        for bad in [
            "/orders?limit=0",
            "/orders?limit=1001",
            "/orders?cursor=x",
            "/orders?cursor=+5",
            "/orders?cursor=-",
            "/orders?limit=+5",
            "/orders?x=1",
        ] {
            assert_eq!(get(&state, bad).0, 400, "{bad}");
        }
    }

    #[test]
    fn random_order() {
        assert_eq!(get(&state_with(&[]), "/random-order").0, 404);
        let (status, body) = get(&state_with(&["only"]), "/random-order");
        assert_eq!((status, body["order_uid"].as_str()), (200, Some("only")));
    }

    #[test]
    fn readiness_names_what_is_missing() {
        let state = state_with(&[]);
        let (status, body) = get(&state, "/readyz");
        assert_eq!((status, body["cache"].as_str()), (503, Some("loading")));
        state.cache.mark_loaded();
        state.health.set(Part::Writer, Ok(()));
        state.health.set(Part::Listener, Ok(()));
        let (status, body) = get(&state, "/readyz");
        assert_eq!(
            (status, body["postgres"].as_str(), body["nats"].as_str()),
            (503, Some("ok"), Some("connecting"))
        );
        state.health.set(Part::Nats, Ok(()));
        assert_eq!(get(&state, "/readyz").0, 200);
        assert_eq!(get(&state, "/healthz").0, 200);
    }

    #[test]
    fn other_methods_get_405_with_allow() {
        let state = state_with(&[]);
        let reply = route(&state, &Method::Post, "/orders/abc", |_| None);
        assert_eq!(reply.status, 405);
        assert!(reply.headers.contains(&("Allow", "GET, HEAD".to_owned())));
    }

    #[test]
    fn page_has_security_headers_and_etag() {
        let state = state_with(&[]);
        let reply = route(&state, &Method::Get, "/", |_| None);
        assert_eq!(reply.status, 200);
        assert!(reply.content_type.starts_with("text/html"));
        let header = |name| {
            reply
                .headers
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.clone())
        };
        assert!(header("Content-Security-Policy")
            .unwrap()
            .contains("script-src 'self'"));
        let etag = header("ETag").unwrap();
        let again = route(&state, &Method::Get, "/assets/app.js", |_| None);
        assert_eq!(again.status, 200);
        let cached = route(&state, &Method::Get, "/", |name| {
            (name == "If-None-Match").then(|| etag.clone())
        });
        assert_eq!(cached.status, 304);
        assert_eq!(get(&state, "/nothing-here").0, 404);
    }

    #[test]
    fn test_request_goes_through_tiny_http() {
        let state = state_with(&["abc"]);
        let request: Request = tiny_http::TestRequest::new()
            .with_method(Method::Get)
            .with_path("/orders/abc")
            .into();
        let reply = route(&state, request.method(), request.url(), |_| None);
        assert_eq!(reply.status, 200);
        let response = into_response(reply);
        assert_eq!(response.status_code(), StatusCode(200));
        assert_eq!(
            response.data_length(),
            Some(br#"{"order_uid": "abc"}"#.len())
        );
    }

    #[test]
    fn openapi_document_parses() {
        let doc: Value = serde_json::from_slice(OPENAPI).unwrap();
        assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
        for path in [
            "/orders/{order_uid}",
            "/orders",
            "/random-order",
            "/healthz",
            "/readyz",
            "/metrics",
        ] {
            assert!(
                doc["paths"][path].is_object(),
                "{path} missing from openapi.json"
            );
        }
    }
}
