//! Start and stop: the shutdown channel every thread watches, retry backoff,
//! and named threads that report when they end. Used by `main` and by every
//! long-running thread.

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// The receiving side of shutdown: it never carries a value; it is closed
/// when shutdown begins, which wakes every `select!` and `sleep` at once.
#[derive(Clone)]
pub struct Shutdown {
    receiver: Receiver<()>,
}

/// Begins shutdown. Cloneable; the first `fire` wins.
#[derive(Clone)]
pub struct ShutdownTrigger {
    sender: Arc<Mutex<Option<Sender<()>>>>,
}

pub fn shutdown_channel() -> (ShutdownTrigger, Shutdown) {
    let (sender, receiver) = crossbeam_channel::bounded(0);
    (
        ShutdownTrigger {
            sender: Arc::new(Mutex::new(Some(sender))),
        },
        Shutdown { receiver },
    )
}

impl ShutdownTrigger {
    pub fn fire(&self) {
        self.sender.lock().unwrap_or_else(|e| e.into_inner()).take();
    }
}

impl Shutdown {
    pub fn is_requested(&self) -> bool {
        matches!(self.receiver.try_recv(), Err(TryRecvError::Disconnected))
    }

    /// Sleeps for `duration`, or less if shutdown begins; returns whether it
    /// has.
    pub fn sleep(&self, duration: Duration) -> bool {
        matches!(
            self.receiver.recv_timeout(duration),
            Err(RecvTimeoutError::Disconnected)
        )
    }

    /// For `select!` beside other channels.
    pub fn receiver(&self) -> &Receiver<()> {
        &self.receiver
    }
}

/// Exponential backoff from 100 ms to 5 s, reset after a success.
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Backoff {
        Backoff {
            next: Backoff::FIRST,
        }
    }
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(5);

    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(Backoff::MAX);
        delay
    }

    pub fn reset(&mut self) {
        self.next = Backoff::FIRST;
    }
}

/// How a named thread ended: `Err` carries why it should not have.
pub type ThreadResult = Result<(), String>;

/// Spawns a named thread whose end (return or panic) is reported on
/// `ended`, so `main` can notice a thread that stopped on its own.
pub fn spawn(
    name: impl Into<String>,
    ended: &Sender<(String, ThreadResult)>,
    body: impl FnOnce() -> ThreadResult + Send + 'static,
) -> JoinHandle<()> {
    let ended = ended.clone();
    let name = name.into();
    std::thread::Builder::new()
        .name(name.clone())
        .spawn(move || {
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(body))
                .unwrap_or_else(|panic| {
                    let message = panic
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "unknown panic".into());
                    Err(format!("panicked: {message}"))
                });
            let _ = ended.send((name, result));
        })
        .expect("the OS refused to start a thread")
}

/// Raises the soft open-files limit to the hard one: tiny_http's accept
/// thread dies for good on EMFILE.
pub fn raise_open_files_limit() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return None;
        }
        limit.rlim_cur = limit.rlim_max;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
            return None;
        }
    }
    Some(limit.rlim_cur)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shutdown_wakes_sleepers() {
        let (trigger, shutdown) = shutdown_channel();
        assert!(!shutdown.is_requested());
        assert!(!shutdown.sleep(Duration::from_millis(1)));
        let clone = shutdown.clone();
        let sleeper = std::thread::spawn(move || clone.sleep(Duration::from_secs(60)));
        trigger.clone().fire();
        assert!(sleeper.join().unwrap());
        assert!(shutdown.is_requested());
        trigger.fire();
    }

    #[test]
    fn backoff_doubles_up_to_a_cap() {
        let mut backoff = Backoff::default();
        let delays: Vec<_> = (0..8).map(|_| backoff.next_delay().as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 800, 1600, 3200, 5000, 5000]);
        backoff.reset();
        assert_eq!(backoff.next_delay().as_millis(), 100);
    }

    #[test]
    fn spawned_threads_report_panics() {
        let (sender, receiver) = crossbeam_channel::unbounded();
        spawn("test-panic", &sender, || panic!("boom"))
            .join()
            .unwrap();
        let (name, result) = receiver.recv().unwrap();
        assert_eq!(name, "test-panic");
        assert_eq!(result.unwrap_err(), "panicked: boom");
    }
}
