//! The listener thread: fills the cache from PostgreSQL and keeps it
//! current. It LISTENs on its own connection *before* loading, so a row
//! committed during the load is notified; then it loads each notified key.
//!
//! With a budget (`CACHE_MAX_BYTES`) the start-up load reads the newest
//! orders until the budget is full, and notified orders are inserted (the
//! likeliest to be read next); the rest is read on a miss by the loaders.
//!
//! Commit order is not id order, so it never asks "what is newer than the
//! last id I saw". After a lost connection, and every 30 s, it compares the
//! table's row count with the cache's and, when they differ, loads every key
//! it lacks. Orders are never deleted, so equal counts mean nothing is missing.

use crate::cache::OrderCache;
use crate::health::{Health, Part};
use crate::lifecycle::{self, Backoff, Shutdown, ThreadResult};
use crate::metrics::Metrics;
use crate::store::{self, Database};
use postgres::fallible_iterator::FallibleIterator;
use postgres::Client;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::time::{Duration, Instant};

pub const CHANNEL: &str = "orders_inserted";

/// How long one wait for notifications lasts, which bounds how late the
/// thread notices shutdown.
const TICK: Duration = Duration::from_millis(250);
/// How often a quiet connection is checked (a frozen network is silent).
const CHECK_EVERY: Duration = Duration::from_secs(5);
/// How often the row count is compared with the cache.
const RECONCILE_EVERY: Duration = Duration::from_secs(30);
/// Keys loaded per query.
const LOAD_CHUNK: usize = 1000;
/// How long the following listener may go without a step before it is
/// reported stalled. A frozen server (or a partition) answers nothing and
/// resets nothing, so a query in flight waits with no error; only a clock
/// outside the waiting thread notices (issue 14, "faults that hang").
const STALL_AFTER: Duration = Duration::from_secs(6);

/// The follow loop's pulse, read by the watchdog beside it.
#[derive(Default)]
struct Pulse {
    /// Milliseconds since `start` at the last step; 0 while not following
    /// (connecting and the start-up load have their own bounds).
    last_step_ms: AtomicU64,
    /// The watchdog reported a stall that the listener has not yet cleared.
    stalled: AtomicBool,
    finished: AtomicBool,
}

impl Pulse {
    fn step(&self, start: Instant, health: &Health) {
        let ms = start.elapsed().as_millis() as u64;
        self.last_step_ms.store(ms.max(1), Relaxed);
        if self.stalled.swap(false, Relaxed) && health.set(Part::Listener, Ok(())) {
            log::info!("listener: PostgreSQL answers again");
        }
    }

    fn idle(&self) {
        self.last_step_ms.store(0, Relaxed);
    }

    /// Reports the listener when its last step is older than `STALL_AFTER`.
    fn watch(&self, start: Instant, shutdown: &Shutdown, health: &Health) {
        while !self.finished.load(Relaxed) && !shutdown.sleep(Duration::from_millis(250)) {
            let last = self.last_step_ms.load(Relaxed);
            let now = start.elapsed().as_millis() as u64;
            if last == 0 || now.saturating_sub(last) < STALL_AFTER.as_millis() as u64 {
                continue;
            }
            let silent = (now - last) / 1000;
            let why = format!("PostgreSQL: no answer to the listener for {silent} s");
            if !self.stalled.swap(true, Relaxed) {
                log::warn!("listener: {why}");
            }
            health.set(Part::Listener, Err(why));
        }
    }
}

pub fn run(
    database: Database,
    cache: &OrderCache,
    shutdown: Shutdown,
    health: &Health,
    metrics: &Metrics,
) -> ThreadResult {
    let mut backoff = Backoff::default();
    let mut sessions = 0u64;
    let (pulse, start) = (Pulse::default(), Instant::now());
    std::thread::scope(|scope| {
        scope.spawn(|| pulse.watch(start, &shutdown, health));
        let beat = || pulse.step(start, health);
        while !shutdown.is_requested() {
            if sessions > 0 {
                metrics.listener_reconnects.fetch_add(1, Relaxed);
            }
            sessions += 1;
            let started = Instant::now();
            let result = session(&database, cache, &shutdown, health, &mut backoff, &beat);
            pulse.idle();
            match result {
                Ok(()) => break,
                Err(err) => {
                    let why = store::describe(&err);
                    if health.set(Part::Listener, Err(format!("PostgreSQL: {why}"))) {
                        log::warn!("listener: PostgreSQL unavailable ({why}); reconnecting");
                    }
                    shutdown.sleep(backoff.wait_after(started));
                }
            }
        }
        pulse.finished.store(true, Relaxed);
    });
    log::info!("listener stopped");
    Ok(())
}

/// One connection's life: LISTEN, catch up, then follow notifications until
/// shutdown (`Ok`) or a connection error (`Err`).
fn session(
    database: &Database,
    cache: &OrderCache,
    shutdown: &Shutdown,
    health: &Health,
    backoff: &mut Backoff,
    beat: &dyn Fn(),
) -> Result<(), postgres::Error> {
    let mut client = database.connect("order-service-listener")?;
    let result = follow(
        &mut client,
        database,
        cache,
        shutdown,
        health,
        backoff,
        beat,
    );
    if result.is_err() && !client.is_closed() {
        // Dropping a client waits until the server closes the connection,
        // forever when the server is frozen (after `is_valid` timed out):
        // the listener would hang in the drop instead of reconnecting. The
        // wait is left to a thread of its own, which ends when the server
        // answers or the TCP timeouts end the connection.
        let spawned = std::thread::Builder::new()
            .name("pg-close".into())
            .spawn(move || drop(client));
        if let Err(err) = spawned {
            log::warn!("listener: no thread to close the old connection: {err}");
        }
    }
    result
}

/// LISTEN, catch up, then follow notifications on `client`.
fn follow(
    client: &mut Client,
    database: &Database,
    cache: &OrderCache,
    shutdown: &Shutdown,
    health: &Health,
    backoff: &mut Backoff,
    beat: &dyn Fn(),
) -> Result<(), postgres::Error> {
    client.batch_execute(&format!("LISTEN {CHANNEL}"))?;
    if cache.is_loaded() {
        reconcile(client, cache, &|| {})?;
    } else if let Some(budget) = cache.budget() {
        load_newest(client, cache, budget)?;
    } else {
        let started = Instant::now();
        // Room for every row up front (with some for rows arriving
        // meanwhile): growing a map of a million entries step by step
        // rehashes each key again.
        cache.reserve(store::estimate_orders(client)? / 16 * 17);
        // Reading rows and filling the cache overlap: a scoped thread inserts
        // each chunk while the next one is read.
        std::thread::scope(|scope| {
            let (chunks, to_insert) = crossbeam_channel::bounded(2);
            scope.spawn(move || {
                for orders in to_insert {
                    cache.insert(orders);
                }
            });
            store::load_all(client, 10_000, move |orders| drop(chunks.send(orders)))
        })?;
        cache.mark_loaded();
        let (orders, bytes, _) = cache.stats();
        log::info!(
            "cache loaded: {orders} orders, {bytes} bytes of JSON in {:.2} s",
            started.elapsed().as_secs_f64()
        );
    }
    if health.set(Part::Listener, Ok(())) {
        log::info!("listener following {CHANNEL} on {}", database.display);
    }
    backoff.reset();
    let mut last_check = Instant::now();
    let mut last_reconcile = Instant::now();
    while !shutdown.is_requested() {
        beat();
        let uids = next_notified(client)?;
        if !uids.is_empty() {
            load(client, cache, uids, beat)?;
            continue;
        }
        if last_check.elapsed() >= CHECK_EVERY {
            client.is_valid(Duration::from_secs(2))?;
            if cache.budget().is_some() {
                lifecycle::return_freed_memory();
            }
            last_check = Instant::now();
        }
        if last_reconcile.elapsed() >= RECONCILE_EVERY {
            reconcile(client, cache, beat)?;
            last_reconcile = Instant::now();
        }
    }
    Ok(())
}

/// Waits up to one tick for a notification, then takes every one already
/// queued (up to a few thousand keys). Empty after a quiet tick.
fn next_notified(client: &mut Client) -> Result<Vec<String>, postgres::Error> {
    let mut notifications = client.notifications();
    let mut uids = Vec::new();
    let Some(first) = notifications.timeout_iter(TICK).next()? else {
        return Ok(uids);
    };
    uids.extend(first.payload().split(',').map(str::to_owned));
    let mut queued = notifications.iter();
    while uids.len() < 4 * LOAD_CHUNK {
        match queued.next()? {
            Some(note) => uids.extend(note.payload().split(',').map(str::to_owned)),
            None => break,
        }
    }
    Ok(uids)
}

/// Loads the given keys that the cache lacks.
fn load(
    client: &mut Client,
    cache: &OrderCache,
    mut uids: Vec<String>,
    beat: &dyn Fn(),
) -> Result<(), postgres::Error> {
    uids.retain(|uid| !uid.is_empty() && !cache.contains(uid));
    for chunk in uids.chunks(LOAD_CHUNK) {
        cache.insert(store::load_by_uids(client, chunk)?);
        beat();
    }
    Ok(())
}

/// The bounded start-up load: the newest orders first, the likeliest to be
/// read, until the next would not fit the budget. Its time grows with the
/// budget, not with the table.
fn load_newest(
    client: &mut Client,
    cache: &OrderCache,
    budget: u64,
) -> Result<(), postgres::Error> {
    let started = Instant::now();
    store::load_newest(client, 1000, |orders| {
        for order in orders {
            if !cache.has_room_for(&order.uid, &order.body) {
                return false;
            }
            // One at a time, so `has_room_for` sees each insert.
            cache.insert(vec![order]);
        }
        true
    })?;
    cache.mark_loaded();
    let (orders, bytes, _) = cache.stats();
    log::info!(
        "cache loaded: the newest {orders} orders, {bytes} of {budget} bytes, in {:.2} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Loads whatever the table holds and the cache does not. A bounded cache
/// holds only part of the table by design: its misses are read on demand,
/// so there is nothing to reconcile.
fn reconcile(
    client: &mut Client,
    cache: &OrderCache,
    beat: &dyn Fn(),
) -> Result<(), postgres::Error> {
    if cache.budget().is_some() {
        return Ok(());
    }
    let stored = store::count_orders(client)?;
    let cached = cache.len() as i64;
    if stored == cached {
        return Ok(());
    }
    let mut missing = Vec::new();
    store::for_each_uid_chunk(client, 50_000, |uids| {
        missing.extend(uids.into_iter().filter(|uid| !cache.contains(uid)));
        beat();
    })?;
    let found = missing.len();
    load(client, cache, missing, beat)?;
    log::info!("reconciled: {stored} stored, {cached} cached, {found} loaded");
    Ok(())
}
