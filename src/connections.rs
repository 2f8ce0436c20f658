//! The HTTP connections as this process's socket descriptors: what tiny_http
//! 0.12 does not let its user reach. Used by `http` to end a connection whose
//! body it refuses, and by the `http-keeper` thread to close connections that
//! have been silent for `HTTP_IDLE_TIMEOUT` (tiny_http has no read timeout,
//! and a receive timeout on the listening socket would time out `accept`,
//! which ends tiny_http's accept thread) and to find connections that
//! tiny_http's pool left without a thread.
//!
//! A descriptor is found by scanning `/proc/self/fd`; tiny_http keeps two per
//! connection (the stream and its clone for writing), both on one socket.

use socket2::SockRef;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::os::fd::{BorrowedFd, RawFd};
use std::time::Duration;

/// One connected TCP socket of this process.
pub struct Connection {
    pub fd: RawFd,
    pub local: SocketAddr,
    pub peer: SocketAddr,
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
    pub fn shutdown(&self, how: std::net::Shutdown) {
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
pub fn all() -> Vec<Connection> {
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
pub fn from(peer: SocketAddr) -> Vec<Connection> {
    all().into_iter().filter(|c| c.peer == peer).collect()
}

/// What one look at the connections accepted on a port found and did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Tended {
    /// Silent for the idle timeout: shut down both ways.
    pub closed: usize,
    /// Request bytes unread for `STALLED_AFTER`: no thread reads them.
    pub stalled: usize,
}

/// Bytes that arrived this long ago and are still unread mean that no
/// thread reads the connection: tiny_http's pool queued it.
const STALLED_AFTER: Duration = Duration::from_millis(200);

/// Looks at every connection accepted on `port`. One that has neither
/// received nor sent data for `idle` is shut down both ways (tiny_http then
/// sees the end of the stream and lets it go). One whose request has sat
/// unread for `STALLED_AFTER` is counted as stalled: tiny_http 0.12's pool
/// queues a connection when it counts an idle thread that another new
/// connection is about to take, and a queued connection waits until some
/// connection ends (ARCHITECTURE.md, known limits).
pub fn tend(port: u16, idle: Duration) -> Tended {
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
