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
use crate::lifecycle::{Backoff, Shutdown, ThreadResult};
use crate::metrics::Metrics;
use crate::store::{self, Database};
use postgres::fallible_iterator::FallibleIterator;
use postgres::Client;
use std::sync::atomic::Ordering::Relaxed;
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

pub fn run(
    database: Database,
    cache: &OrderCache,
    shutdown: Shutdown,
    health: &Health,
    metrics: &Metrics,
) -> ThreadResult {
    let mut backoff = Backoff::default();
    let mut sessions = 0u64;
    while !shutdown.is_requested() {
        if sessions > 0 {
            metrics.listener_reconnects.fetch_add(1, Relaxed);
        }
        sessions += 1;
        match session(&database, cache, &shutdown, health, &mut backoff) {
            Ok(()) => break,
            Err(err) => {
                let why = store::describe(&err);
                if health.set(Part::Listener, Err(format!("PostgreSQL: {why}"))) {
                    log::warn!("listener: PostgreSQL unavailable ({why}); reconnecting");
                }
                shutdown.sleep(backoff.next_delay());
            }
        }
    }
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
) -> Result<(), postgres::Error> {
    let mut client = database.connect("order-service-listener")?;
    client.batch_execute(&format!("LISTEN {CHANNEL}"))?;
    if cache.is_loaded() {
        reconcile(&mut client, cache)?;
    } else if let Some(budget) = cache.budget() {
        load_newest(&mut client, cache, budget)?;
    } else {
        let started = Instant::now();
        // Room for every row up front (with some for rows arriving
        // meanwhile): growing a map of a million entries step by step
        // rehashes each key again.
        cache.reserve(store::estimate_orders(&mut client)? / 16 * 17);
        // Reading rows and filling the cache overlap: a scoped thread inserts
        // each chunk while the next one is read.
        std::thread::scope(|scope| {
            let (chunks, to_insert) = crossbeam_channel::bounded(2);
            scope.spawn(move || {
                for orders in to_insert {
                    cache.insert(orders);
                }
            });
            store::load_all(&mut client, 10_000, move |orders| drop(chunks.send(orders)))
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
        let uids = next_notified(&mut client)?;
        if !uids.is_empty() {
            load(&mut client, cache, uids)?;
            continue;
        }
        if last_check.elapsed() >= CHECK_EVERY {
            client.is_valid(Duration::from_secs(2))?;
            last_check = Instant::now();
        }
        if last_reconcile.elapsed() >= RECONCILE_EVERY {
            reconcile(&mut client, cache)?;
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
) -> Result<(), postgres::Error> {
    uids.retain(|uid| !uid.is_empty() && !cache.contains(uid));
    for chunk in uids.chunks(LOAD_CHUNK) {
        cache.insert(store::load_by_uids(client, chunk)?);
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
fn reconcile(client: &mut Client, cache: &OrderCache) -> Result<(), postgres::Error> {
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
    })?;
    let found = missing.len();
    load(client, cache, missing)?;
    log::info!("reconciled: {stored} stored, {cached} cached, {found} loaded");
    Ok(())
}
