//! The tiny_http server loop: the bound socket and the `http-N` workers,
//! each `loop { recv; respond }`. What tiny_http lacks is made up for in
//! `workarounds`; what a request gets is decided in `routes`.

use super::encoding::{self, GzipCache};
use super::routes::{self, Body, HttpState, Reply, Routed, Served};
use super::{wire, workarounds};
use crate::lifecycle::ThreadResult;
use socket2::{Domain, Socket, Type};
use std::io::Cursor;
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tiny_http::{Header, Request, Response, StatusCode};

/// A response may block on a client that does not read for this long.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// The bound socket in tiny_http's hands, the routes it serves, and the
/// flag that tells its workers a wake-up means stop.
pub struct Server {
    tiny: Arc<tiny_http::Server>,
    local: SocketAddr,
    served: Served,
    stopping: Arc<AtomicBool>,
    workers: usize,
}

impl Server {
    /// Binds the socket with `TCP_NODELAY` (without it every response waits
    /// for a delayed ACK) and a send timeout, both inherited by accepted
    /// sockets, and hands it to tiny_http. (Not a receive timeout: on the
    /// listening socket it would time out `accept`, which ends tiny_http's
    /// accept thread; `workarounds::keep_connections` closes silent
    /// connections instead.)
    pub fn bind(addr: SocketAddr, served: Served) -> std::io::Result<Server> {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
        socket.set_reuse_address(true)?;
        socket.set_tcp_nodelay(true)?;
        socket.set_write_timeout(Some(SEND_TIMEOUT))?;
        socket.bind(&addr.into())?;
        socket.listen(1024)?;
        let listening: TcpListener = socket.into();
        let local = listening.local_addr()?;
        let tiny =
            tiny_http::Server::from_listener(listening, None).map_err(std::io::Error::other)?;
        Ok(Server {
            tiny: Arc::new(tiny),
            local,
            served,
            stopping: Arc::new(AtomicBool::new(false)),
            workers: 0,
        })
    }

    /// The address bound (with the port picked when it was 0).
    pub fn local(&self) -> SocketAddr {
        self.local
    }

    /// The body of one more `http-N` worker: answers requests until `stop`.
    pub fn worker(&mut self, state: Arc<HttpState>) -> impl FnOnce() -> ThreadResult + Send {
        self.workers += 1;
        let (tiny, stopping, served) = (self.tiny.clone(), self.stopping.clone(), self.served);
        move || loop {
            match tiny.recv() {
                Ok(request) => respond(request, served, &state),
                Err(_) if stopping.load(Ordering::Acquire) => return Ok(()),
                Err(err) => log::debug!("http: {err}"),
            }
        }
    }

    /// Ends every worker: one `unblock` wakes one blocked `recv`.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::Release);
        for _ in 0..self.workers {
            self.tiny.unblock();
        }
    }
}

fn respond(request: Request, served: Served, state: &Arc<HttpState>) {
    let started = Instant::now();
    if workarounds::body_left_on_socket(&request) {
        workarounds::refuse_body(request, state);
        return;
    }
    let routed = routes::route_on(served, state, request.method(), request.url(), |name| {
        request_header(&request, name).map(str::to_owned)
    });
    match routed {
        Routed::Reply(reply) => answer(request, reply, state, started),
        // Parked: a loader (or, at the deadline, `loader-deadlines`)
        // answers it, and this worker takes the next request.
        Routed::Load(uid) => {
            let key = uid.as_str().to_owned();
            let parked = state.clone();
            state.cache.load_then(&key, move |lookup| {
                answer(request, routes::order_reply(&uid, lookup), &parked, started);
            });
        }
    }
}

/// Settles the reply's validators and coding for this request, counts it,
/// and writes it.
fn answer(request: Request, reply: Reply, state: &HttpState, started: Instant) {
    let reply = encoding::finish(
        reply,
        request_header(&request, "Accept-Encoding"),
        request_header(&request, "If-None-Match"),
        GzipCache::shared(),
    );
    state
        .metrics
        .http_answered(reply.route.label(), reply.status, started.elapsed());
    wire::send(request, &reply);
}

fn request_header<'a>(request: &'a Request, name: &str) -> Option<&'a str> {
    request
        .headers()
        .iter()
        .find(|h| h.field.as_str().as_str().eq_ignore_ascii_case(name))
        .map(|h| h.value.as_str())
}

pub(super) fn into_response(reply: Reply) -> Response<Cursor<Body>> {
    let length = reply.body.as_ref().len();
    let mut headers = Vec::with_capacity(reply.headers.len() + 2);
    if !reply.content_type.is_empty() {
        headers.push(header("Content-Type", reply.content_type));
    }
    headers.push(header("X-Content-Type-Options", "nosniff"));
    headers.extend(
        reply
            .headers
            .iter()
            .map(|(name, value)| header(name, value)),
    );
    // Every body is in memory with a known length: always Content-Length
    // (tiny_http would switch to chunked above 32 KiB, and put
    // `Transfer-Encoding` on a 304 of such a body).
    Response::new(
        StatusCode(reply.status),
        headers,
        Cursor::new(reply.body),
        Some(length),
        None,
    )
    .with_chunked_threshold(usize::MAX)
}

fn header(name: &str, value: &str) -> Header {
    Header::from_bytes(name.as_bytes(), value.as_bytes()).unwrap_or_else(|()| {
        Header::from_bytes(&b"X-Invalid-Header"[..], &b"1"[..]).expect("a valid header")
    })
}
