//! Everything that exists because tiny_http 0.12 has a gap, in one place;
//! each gap with the test that proves its workaround:
//!
//! - **A body it leaves on the socket is drained on the worker**, for as long
//!   as the client takes, into one allocation of the declared length.
//!   `refuse_body` answers 413 and ends the connection instead.
//!   Tests: `hostile_http::request_bodies_over_1_kib_get_413_and_the_connection_is_closed`,
//!   `hostile_http::expect_100_continue_clients_that_never_send_their_body_do_not_hold_the_workers`,
//!   `hostile_http::refused_bodies_leave_no_threads_or_descriptors_behind`,
//!   `hostile_http::requests_announcing_bodies_over_1_gib_are_counted_and_closed_at_once_past_the_cap`.
//! - **No read timeout**, and a receive timeout on the listening socket
//!   would time out `accept`, which ends tiny_http's accept thread. The
//!   `http-keeper` thread (`keep_connections`) shuts connections silent for
//!   `HTTP_IDLE_TIMEOUT`.
//!   Tests: `http::connections_that_send_nothing_are_closed_after_the_idle_timeout`,
//!   `hostile_http::idle_and_one_byte_per_second_clients_do_not_slow_other_readers`.
//! - **Its pool queues a new connection behind an idle thread that another
//!   connection is about to take**, until some connection ends. The same
//!   `http-keeper` finds requests that sit unread and, for each, connects
//!   and hangs up, so that the pool starts a thread that frees the queue.
//!   Test: `http::a_burst_of_new_connections_is_answered_in_full`.
//! - **Its accept thread dies for good on an error such as EMFILE**, and the
//!   server then never answers again. `lifecycle::raise_open_files_limit`
//!   makes EMFILE unlikely; the `watchdog` thread (`watch_socket`) ends the
//!   process when the socket stops answering, so that its supervisor
//!   restarts it. No test: exhausting descriptors would starve the host
//!   running the tests.
//! - **It does not let its user reach a connection's socket.** The means of
//!   the first three: this process's descriptors are found in
//!   `/proc/self/fd` (tiny_http keeps two per connection, the stream and its
//!   clone for writing, both on one socket).

use super::routes::{Body, HttpState, Reply, Route};
use super::server::into_response;
use crate::lifecycle::{Shutdown, ThreadResult};
use crate::metrics::Metrics;
use serde_json::json;
use socket2::SockRef;
use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{BorrowedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tiny_http::Request;

/// tiny_http 0.12 reads a body of up to this size itself, unless the client
/// sent `Expect: 100-continue`; any other body is left on the socket behind
/// a reader that drains it when the request is dropped.
const BUFFERED_BODY: usize = 1024;

/// The largest announced body whose reader may be dropped. The drain
/// allocates the *declared* `Content-Length` at once (untouched zero pages
/// until read); a request claiming 100 TB would abort the process.
const DROPPABLE_BODY: usize = 1 << 30;

/// Requests announcing a body above `DROPPABLE_BODY` answered 413 through
/// `upgrade`, each of which parks one tiny_http connection thread for good
/// (see `refuse_body`). Past this many, such a request is closed at once:
/// no answer is written, so no worker waits on a client that does not read,
/// and the count tells an operator that someone sends them.
pub const HUGE_BODIES_ANSWERED_CAP: u64 = 64;

/// Requests announcing a body above `DROPPABLE_BODY`: answered 413 (at
/// most `HUGE_BODIES_ANSWERED_CAP`) and closed at once past the cap. Each
/// parks one tiny_http connection thread (rendered with `/metrics`).
pub static HUGE_BODIES_ANSWERED: AtomicU64 = AtomicU64::new(0);
pub static HUGE_BODIES_CLOSED: AtomicU64 = AtomicU64::new(0);

pub(super) fn body_left_on_socket(request: &Request) -> bool {
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
/// connection thread behind per such request (tiny_http 0.12 offers no way
/// to end it: it waits for the forgotten reader). Those are counted, and
/// past `HUGE_BODIES_ANSWERED_CAP` the connection is closed at once, both
/// ways, without an answer.
pub(super) fn refuse_body(request: Request, state: &HttpState) {
    let reply = Reply::json(
        Route::BodyRefused,
        413,
        json!({"error": "request bodies are not accepted", "limit_bytes": BUFFERED_BODY}),
    );
    state
        .metrics
        .http_request(reply.route.label(), reply.status);
    state.metrics.bodies_refused.fetch_add(1, Ordering::Relaxed);
    let Some(peer) = request.remote_addr().copied() else {
        return; // Not TCP: nothing to shut, so nothing safe to do.
    };
    if request.body_length().unwrap_or(0) <= DROPPABLE_BODY {
        for connection in from(peer) {
            connection.shutdown(std::net::Shutdown::Read);
        }
        let _ = request.respond(into_response(reply.header("Connection", "close")));
        return;
    }
    let answered = HUGE_BODIES_ANSWERED.fetch_add(1, Ordering::Relaxed);
    if answered >= HUGE_BODIES_ANSWERED_CAP {
        HUGE_BODIES_ANSWERED.fetch_sub(1, Ordering::Relaxed);
        if HUGE_BODIES_CLOSED.fetch_add(1, Ordering::Relaxed) == 0 {
            log::warn!(
                "requests announcing bodies over 1 GiB: {HUGE_BODIES_ANSWERED_CAP} answered; \
                 from now on closed without an answer (order_service_http_huge_bodies_total)"
            );
        }
        for connection in from(peer) {
            connection.shutdown(std::net::Shutdown::Both);
            // SAFETY: as below; the request is forgotten, never dropped.
            unsafe { libc::close(connection.fd) };
        }
        std::mem::forget(request);
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
    for connection in from(peer) {
        // SAFETY: the forgotten stream and reader never use or close these
        // descriptors again: the connection thread waits for that reader.
        unsafe { libc::close(connection.fd) };
    }
}

/// The `watchdog` thread: every 10 s, proves the HTTP socket still accepts;
/// three failures in a row end the process (non-zero), so its supervisor
/// restarts it.
pub fn watch_socket(local: SocketAddr, shutdown: &Shutdown) -> ThreadResult {
    let mut failures = 0;
    while !shutdown.sleep(Duration::from_secs(10)) {
        match self_check(local) {
            Ok(()) => failures = 0,
            Err(err) => {
                failures += 1;
                log::warn!("HTTP self-check failed ({failures}/3): {err}");
                if failures >= 3 {
                    return Err(format!(
                        "the HTTP socket on {local} no longer answers: {err}"
                    ));
                }
            }
        }
    }
    Ok(())
}

/// The `http-keeper` thread, every `KEEPER_PAUSE`: closes the HTTP
/// connections silent for `idle`, and for each connection tiny_http's pool
/// left without a thread, connects to the socket and hangs up. The pool has
/// no idle thread then, so it starts one for that connection, which ends at
/// once; the new thread then takes the queued connection. With very many
/// connections a look takes longer, and the pause after it grows so that
/// looking stays under 5 % of a core.
pub fn keep_connections(
    local: SocketAddr,
    idle: Duration,
    shutdown: &Shutdown,
    metrics: &Metrics,
) -> ThreadResult {
    let mut pause = KEEPER_PAUSE;
    while !shutdown.sleep(pause) {
        let started = Instant::now();
        let tended = tend(local.port(), idle);
        pause = (started.elapsed() * 20).max(KEEPER_PAUSE);
        if tended != Tended::default() {
            log::debug!("HTTP connections: {tended:?}");
        }
        for _ in 0..tended.stalled {
            let _ = connect_and_hang_up(local);
        }
        metrics
            .idle_connections_closed
            .fetch_add(tended.closed as u64, Ordering::Relaxed);
        metrics
            .stalled_connections_freed
            .fetch_add(tended.stalled as u64, Ordering::Relaxed);
    }
    Ok(())
}

/// Proves the socket still accepts and answers: connects to it like a
/// client and reads the status line of `/healthz`.
fn self_check(addr: SocketAddr) -> std::io::Result<()> {
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
fn connect_and_hang_up(addr: SocketAddr) -> std::io::Result<()> {
    TcpStream::connect_timeout(&reachable(addr), Duration::from_secs(2)).map(drop)
}

/// The address to connect to for a socket bound to `addr`.
fn reachable(addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        SocketAddr::from(([127, 0, 0, 1], addr.port()))
    } else {
        addr
    }
}

/// One connected TCP socket of this process.
struct Connection {
    fd: RawFd,
    local: SocketAddr,
    peer: SocketAddr,
}

/// Runs `f` on the socket of `fd`.
fn on_socket<T>(fd: RawFd, f: impl FnOnce(SockRef<'_>) -> T) -> T {
    // SAFETY: the descriptor was open when listed; if another thread has
    // closed it since, the calls `f` makes fail (or, should the number have
    // been reused at once, act on another socket of this process): no memory
    // is touched either way, and neither wrapper closes the descriptor.
    let fd = unsafe { BorrowedFd::borrow_raw(fd) };
    f(SockRef::from(&fd))
}

impl Connection {
    fn shutdown(&self, how: std::net::Shutdown) {
        on_socket(self.fd, |socket| {
            let _ = socket.shutdown(how);
        });
    }

    /// Bytes received and not yet read by this process.
    fn unread_bytes(&self) -> usize {
        let mut unread: libc::c_int = 0;
        // SAFETY: FIONREAD writes one c_int.
        let done = unsafe { libc::ioctl(self.fd, libc::FIONREAD, &mut unread) };
        if done == 0 {
            usize::try_from(unread).unwrap_or(0)
        } else {
            0
        }
    }

    /// Milliseconds since data last arrived and since data was last sent.
    fn silence_ms(&self) -> Option<(u32, u32)> {
        // SAFETY: an all-zero tcp_info is valid; getsockopt writes at most
        // `len` bytes into it.
        let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
        let done = unsafe {
            libc::getsockopt(
                self.fd,
                libc::IPPROTO_TCP,
                libc::TCP_INFO,
                (&mut info as *mut libc::tcp_info).cast(),
                &mut len,
            )
        };
        (done == 0).then_some((info.tcpi_last_data_recv, info.tcpi_last_data_sent))
    }
}

/// Every connected TCP socket of this process: its descriptors, local and
/// peer addresses.
fn all() -> Vec<Connection> {
    let Ok(entries) = std::fs::read_dir("/proc/self/fd") else {
        return Vec::new();
    };
    let descriptors: Vec<RawFd> = entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    descriptors
        .into_iter()
        .filter_map(|fd| {
            let (local, peer) = on_socket(fd, |socket| (socket.local_addr(), socket.peer_addr()));
            Some(Connection {
                fd,
                local: local.ok()?.as_socket()?,
                peer: peer.ok()?.as_socket()?,
            })
        })
        .collect()
}

/// This process's descriptors of the connection from `peer`.
fn from(peer: SocketAddr) -> Vec<Connection> {
    all().into_iter().filter(|c| c.peer == peer).collect()
}

/// What one look at the connections accepted on a port found and did.
#[derive(Debug, Default, PartialEq, Eq)]
struct Tended {
    /// Silent for the idle timeout: shut down both ways.
    closed: usize,
    /// Request bytes unread for `STALLED_AFTER`: no thread reads them.
    stalled: usize,
}

/// Bytes that arrived this long ago and are still unread mean that no
/// thread reads the connection: tiny_http's pool queued it. Together with
/// `KEEPER_PAUSE`, the longest a stalled connection waits (about 0.1 s):
/// wrk, which corrects for coordinated omission, counted the 0.2 s and
/// 0.25 s these were as many slow requests, and every new set of
/// connections on a pool with idle threads has a few (issue 12's tail).
/// A false alarm (a thread that did not run for this long) costs one
/// connection that ends at once.
const STALLED_AFTER: Duration = Duration::from_millis(50);
/// The least pause between two looks at the connections (a look at 256
/// connections takes about 1 ms; the pause is at least 20 times a look).
const KEEPER_PAUSE: Duration = Duration::from_millis(50);

/// Looks at every connection accepted on `port`. One that has neither
/// received nor sent data for `idle` is shut down both ways (tiny_http then
/// sees the end of the stream and lets it go). One whose request has sat
/// unread for `STALLED_AFTER` is counted as stalled: tiny_http 0.12's pool
/// queues a connection when it counts an idle thread that another new
/// connection is about to take, and a queued connection waits until some
/// connection ends (ARCHITECTURE.md, known limits).
fn tend(port: u16, idle: Duration) -> Tended {
    let idle_ms = u32::try_from(idle.as_millis()).unwrap_or(u32::MAX);
    let stalled_ms = STALLED_AFTER.as_millis() as u32;
    let mut seen = HashSet::new();
    let mut tended = Tended::default();
    for connection in all() {
        if connection.local.port() != port || !seen.insert(connection.peer) {
            continue;
        }
        let Some((received, sent)) = connection.silence_ms() else {
            continue;
        };
        if received >= idle_ms && sent >= idle_ms {
            connection.shutdown(std::net::Shutdown::Both);
            tended.closed += 1;
        } else if received >= stalled_ms && connection.unread_bytes() > 0 {
            tended.stalled += 1;
        }
    }
    tended
}
