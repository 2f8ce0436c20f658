//! Start and stop: the shutdown channel every thread watches, the signals
//! that fire it, retry backoff, the bounded wait for a server at start-up,
//! and the `Supervisor` that owns every named thread, notices one that ends
//! on its own and stops them all in one declared order. Used by `main` and
//! by every long-running thread.

use crossbeam_channel::{select, Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

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

/// With a memory budget (`CACHE_MAX_BYTES`), glibc's malloc keeps two
/// arenas instead of up to eight per core: evicted bodies freed by one
/// thread and new ones allocated by another left freed pages in every
/// arena. A million orders, a 125 MiB budget, a minute of Zipf reads and
/// 10 s more (`make bench`'s bounded block, by hand): VmRSS 246 MiB with
/// the default, 219 MiB with two arenas, 181 MiB once `malloc_trim` ran
/// (`return_freed_memory`). Called before the service's threads start.
pub fn hold_allocator_arenas() {
    // SAFETY: mallopt only sets an allocator parameter.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// Hands the pages of freed memory in the middle of malloc's heaps back to
/// the kernel (`malloc_trim`): with a memory budget, evictions free bodies
/// all over the heap. The listener calls it every 5 s; it takes a few
/// milliseconds, holding each arena's lock in turn.
pub fn return_freed_memory() {
    // SAFETY: malloc_trim only releases memory malloc holds free.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Exponential backoff from 100 ms to 5 s, reset after a success.
///
/// The delay spaces the *starts* of attempts. An attempt that itself took
/// the whole delay (a connect to a partitioned server waits 3 s for ARP, or
/// its 5 s timeout) is followed at once by the next, not by a further sleep:
/// a healed partition is found within one delay, not an attempt plus one.
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

    fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(Backoff::MAX);
        delay
    }

    /// When to start the next attempt, the one that started at
    /// `failed_attempt_started` having failed.
    pub fn retry_at(&mut self, failed_attempt_started: Instant) -> Instant {
        failed_attempt_started + self.next_delay()
    }

    /// How long to sleep before the next attempt; see `retry_at`.
    pub fn wait_after(&mut self, failed_attempt_started: Instant) -> Duration {
        self.retry_at(failed_attempt_started)
            .saturating_duration_since(Instant::now())
    }

    pub fn reset(&mut self) {
        self.next = Backoff::FIRST;
    }
}

/// How a named thread ended: `Err` carries why it should not have.
pub type ThreadResult = Result<(), String>;

/// Owns the named threads: spawns them, hears when one ends (returns or
/// panics), and joins them in the stop order `main` declares.
pub struct Supervisor {
    running: Vec<(String, JoinHandle<()>)>,
    ended_sender: Sender<(String, ThreadResult)>,
    ended: Receiver<(String, ThreadResult)>,
}

/// One step of the stop order.
pub enum Stop<'a> {
    /// Join these threads; a name ending in `*` stands for every running
    /// thread it begins.
    Join(&'a [&'a str]),
    /// Run this, named for the log.
    Run(&'a str, Box<dyn FnOnce() + 'a>),
}

impl Default for Supervisor {
    fn default() -> Supervisor {
        let (ended_sender, ended) = crossbeam_channel::unbounded();
        Supervisor {
            running: Vec::new(),
            ended_sender,
            ended,
        }
    }
}

impl Supervisor {
    pub fn new() -> Supervisor {
        Supervisor::default()
    }

    /// Spawns a named thread whose end, return or panic, is reported.
    pub fn spawn(
        &mut self,
        name: impl Into<String>,
        body: impl FnOnce() -> ThreadResult + Send + 'static,
    ) {
        let name = name.into();
        let handle = spawn(name.clone(), &self.ended_sender, body);
        self.running.push((name, handle));
    }

    /// Blocks until shutdown begins, or until a thread ends on its own; then
    /// begins shutdown itself and returns that thread's name and result.
    pub fn wait(
        &self,
        shutdown: &Shutdown,
        trigger: &ShutdownTrigger,
    ) -> Option<(String, ThreadResult)> {
        let failure = select! {
            recv(shutdown.receiver()) -> _ => None,
            recv(self.ended) -> ended => ended.ok(),
        };
        if let Some((name, result)) = &failure {
            log::error!("thread {name} ended on its own ({result:?}); shutting down");
            trigger.fire();
        }
        failure
    }

    /// Takes the steps of `order` in turn, then joins any thread it did not
    /// name, and logs every thread that ended with an error. `Err` says
    /// which thread ended on its own, if `failure` holds one.
    pub fn stop(
        mut self,
        order: Vec<Stop<'_>>,
        failure: Option<(String, ThreadResult)>,
    ) -> Result<(), String> {
        log::info!("shutting down");
        for step in order {
            match step {
                Stop::Join(names) => self.join(|name| {
                    names.iter().any(|pattern| match pattern.strip_suffix('*') {
                        Some(prefix) => name.starts_with(prefix),
                        None => name == *pattern,
                    })
                }),
                Stop::Run(what, run) => {
                    log::debug!("stopping: {what}");
                    run();
                }
            }
        }
        self.join(|_| true);
        for (name, result) in self.ended.try_iter() {
            if let Err(why) = result {
                log::error!("thread {name}: {why}");
            }
        }
        log::info!("stopped");
        match failure {
            Some((name, result)) => Err(format!("thread {name} ended unexpectedly: {result:?}")),
            None => Ok(()),
        }
    }

    fn join(&mut self, chosen: impl Fn(&str) -> bool) {
        let (now, later) = std::mem::take(&mut self.running)
            .into_iter()
            .partition(|(name, _)| chosen(name));
        self.running = later;
        for (_, handle) in now {
            let _ = handle.join();
        }
    }
}

/// Spawns a named thread whose end (return or panic) is reported on
/// `ended`.
fn spawn(
    name: String,
    ended: &Sender<(String, ThreadResult)>,
    body: impl FnOnce() -> ThreadResult + Send + 'static,
) -> JoinHandle<()> {
    let ended = ended.clone();
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

/// SIGTERM or SIGINT begins a graceful shutdown; a second one exits at once.
pub fn stop_on_signals(trigger: ShutdownTrigger) -> Result<(), String> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT])
        .map_err(|e| format!("cannot install signal handlers: {e}"))?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let mut received = 0;
            for signal in signals.forever() {
                received += 1;
                if received > 1 {
                    log::warn!("signal {signal} again: exiting now");
                    std::process::exit(1);
                }
                log::info!("signal {signal}: draining and stopping");
                trigger.fire();
            }
        })
        .map_err(|e| format!("cannot start the signal thread: {e}"))?;
    Ok(())
}

/// Why one attempt to reach a server failed.
#[derive(Debug)]
pub enum Retry {
    /// It may answer later (not up yet, restarting, unreachable).
    Later(String),
    /// Waiting cannot help (bad password, missing database): the whole
    /// message for the person starting the service.
    Never(String),
}

/// How often a server that is not up yet is tried again.
const RETRY_EVERY: Duration = Duration::from_millis(500);

/// Tries `attempt` until the server answers, fails for good, the `deadline`
/// passes or shutdown begins, logging the first `Later` once. `what` names
/// the server ("PostgreSQL at host:5432/orders") and `hint` says what to do
/// when it never answered ("is it running? …").
pub fn wait_for_server<T>(
    what: &str,
    hint: &str,
    deadline: Instant,
    shutdown: &Shutdown,
    mut attempt: impl FnMut() -> Result<T, Retry>,
) -> Result<T, String> {
    let mut waiting = false;
    loop {
        let why = match attempt() {
            Ok(answer) => return Ok(answer),
            Err(Retry::Never(message)) => return Err(message),
            Err(Retry::Later(why)) => why,
        };
        if Instant::now() >= deadline {
            return Err(format!("cannot connect to {what} ({why}): {hint}"));
        }
        if !waiting {
            log::warn!("waiting for {what} ({why})");
            waiting = true;
        }
        if shutdown.sleep(RETRY_EVERY) {
            return Err(format!("interrupted while waiting for {what}"));
        }
    }
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
    fn backoff_spaces_the_starts_of_attempts() {
        let mut backoff = Backoff::default();
        let started = Instant::now();
        assert_eq!(
            backoff.retry_at(started),
            started + Duration::from_millis(100)
        );
        for _ in 0..5 {
            backoff.next_delay();
        }
        // An attempt that took longer than the delay is retried at once.
        let long_ago = Instant::now() - Duration::from_secs(6);
        assert_eq!(backoff.wait_after(long_ago), Duration::ZERO);
        // One that failed at once waits nearly the whole delay.
        let wait = backoff.wait_after(Instant::now());
        assert!(
            wait > Duration::from_millis(4900) && wait <= Backoff::MAX,
            "{wait:?}"
        );
    }

    #[test]
    fn the_supervisor_hears_a_panic_and_stops_in_the_declared_order() {
        let (trigger, shutdown) = shutdown_channel();
        let mut supervisor = Supervisor::new();
        let order = Arc::new(Mutex::new(Vec::new()));
        supervisor.spawn("a", {
            let (shutdown, order) = (shutdown.clone(), order.clone());
            move || {
                while !shutdown.sleep(Duration::from_secs(60)) {}
                order.lock().unwrap().push("a");
                Ok(())
            }
        });
        // Like the HTTP workers, the b threads end only when a step wakes them.
        let (wake, woken) = crossbeam_channel::bounded::<()>(0);
        for name in ["b-1", "b-2"] {
            let (woken, order) = (woken.clone(), order.clone());
            supervisor.spawn(name, move || {
                let _ = woken.recv();
                order.lock().unwrap().push(name);
                Ok(())
            });
        }
        supervisor.spawn("test-panic", || panic!("boom"));
        let failure = supervisor.wait(&shutdown, &trigger);
        assert!(shutdown.is_requested());
        let (name, result) = failure.clone().unwrap();
        assert_eq!(name, "test-panic");
        assert_eq!(result.unwrap_err(), "panicked: boom");
        let ran = order.clone();
        let stopped = supervisor.stop(
            vec![
                Stop::Join(&["a"]),
                Stop::Run(
                    "wake b",
                    Box::new(move || {
                        ran.lock().unwrap().push("run");
                        drop(wake);
                    }),
                ),
                Stop::Join(&["b-*"]),
            ],
            failure,
        );
        assert!(stopped.unwrap_err().contains("test-panic"));
        let order = order.lock().unwrap();
        assert_eq!(order[0], "a");
        assert_eq!(order[1], "run");
        assert_eq!(order.len(), 4);
    }

    #[test]
    fn waiting_for_a_server_is_bounded() {
        let (trigger, shutdown) = shutdown_channel();
        let far = Instant::now() + Duration::from_secs(60);
        let mut tries = 0;
        let answer = wait_for_server("S", "hint", far, &shutdown, || {
            tries += 1;
            if tries < 3 {
                Err(Retry::Later("not yet".into()))
            } else {
                Ok(tries)
            }
        });
        assert_eq!(answer, Ok(3));
        let never: Result<(), _> = wait_for_server("S", "hint", far, &shutdown, || {
            Err(Retry::Never("no such database".into()))
        });
        assert_eq!(never, Err("no such database".into()));
        let past = Instant::now();
        let late: Result<(), _> =
            wait_for_server("S at x", "is it running?", past, &shutdown, || {
                Err(Retry::Later("refused".into()))
            });
        assert_eq!(
            late,
            Err("cannot connect to S at x (refused): is it running?".into())
        );
        trigger.fire();
        let stopped: Result<(), _> = wait_for_server("S", "hint", far, &shutdown, || {
            Err(Retry::Later("refused".into()))
        });
        assert_eq!(stopped, Err("interrupted while waiting for S".into()));
    }
}
