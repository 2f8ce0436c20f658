//! Issue 11, a cache bounded in bytes (`CACHE_MAX_BYTES`), against the real
//! service over real PostgreSQL and NATS: every order served byte-identical
//! to an unbounded replica's with the cached bytes under the budget; a hot
//! set that survives a scan; pages and random picks over every stored order;
//! a storm of unknown ids that PostgreSQL connections and 503s bound, with
//! hits beside it within 2x of hits beside as many reads of cached orders;
//! no stale 404; a restart; an outage of a private PostgreSQL.

pub mod common;

use common::*;
use std::collections::HashSet;
use std::time::{Duration, Instant};

const ORDERS: usize = 20_000;

fn metric(service: &Service, name: &str) -> f64 {
    service
        .metric(name, &[])
        .unwrap_or_else(|| panic!("no {name} in /metrics"))
}

fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort();
    samples[((samples.len() - 1) as f64 * p) as usize]
}

/// Latencies of `GET /orders/{uid}` for each uid, all expected 200.
fn timed_hits(service: &Service, uids: &[String]) -> Vec<Duration> {
    uids.iter()
        .map(|uid| {
            let started = Instant::now();
            assert_eq!(service.order_status(uid), 200, "{uid}");
            started.elapsed()
        })
        .collect()
}

/// The PostgreSQL sessions of the service(s) on this test's database, by
/// application name.
fn sessions(db: &TestDb) -> Vec<String> {
    let mut client = db.client();
    client
        .query(
            "SELECT application_name FROM pg_stat_activity WHERE datname = $1 \
             AND application_name LIKE 'order-service-%' \
             AND application_name <> 'order-service-tests' ORDER BY 1",
            &[&db.name],
        )
        .expect("pg_stat_activity")
        .iter()
        .map(|row| row.get(0))
        .collect()
}

/// What 32 background connections, each asking for `background(t, i)` (its
/// index, its request), saw for `BESIDE`, beside `READERS` clients reading
/// `hot` (all expected 200).
struct Beside {
    statuses: Vec<u16>,
    hits: Vec<Duration>,
    /// The most PostgreSQL sessions seen at once meanwhile.
    most_sessions: Vec<String>,
}

impl Beside {
    fn hits_p99(&self) -> Duration {
        percentile(&mut self.hits.clone(), 0.99)
    }
}

/// How long each run of `beside` lasts, and how many clients read the hot
/// orders meanwhile. In a debug build one reader for 3 s timed about 150
/// hits, so its p99 was the second-slowest, and storm / quiet ranged from
/// 0.65 to 1.57 in three runs; four for 6 s time about 1,000.
const BESIDE: Duration = Duration::from_secs(6);
const READERS: usize = 4;

fn beside(
    service: &Service,
    db: &TestDb,
    hot: &[String],
    background: impl Fn(usize, usize) -> String + Sync,
) -> Beside {
    let until = Instant::now() + BESIDE;
    std::thread::scope(|scope| {
        let background = &background;
        let clients: Vec<_> = (0..32)
            .map(|t| {
                scope.spawn(move || {
                    let mut statuses = Vec::new();
                    while Instant::now() < until {
                        statuses.push(service.order_status(&background(t, statuses.len())));
                    }
                    statuses
                })
            })
            .collect();
        let readers: Vec<_> = (0..READERS)
            .map(|_| {
                scope.spawn(|| {
                    let mut hits = Vec::new();
                    while Instant::now() < until {
                        hits.extend(timed_hits(service, hot));
                    }
                    hits
                })
            })
            .collect();
        let mut most_sessions = Vec::new();
        while Instant::now() < until {
            let now = sessions(db);
            if now.len() > most_sessions.len() {
                most_sessions = now;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Beside {
            statuses: clients
                .into_iter()
                .flat_map(|c| c.join().unwrap())
                .collect(),
            hits: readers
                .into_iter()
                .flat_map(|r| r.join().unwrap())
                .collect(),
            most_sessions,
        }
    })
}

#[test]
fn a_bounded_cache_serves_every_order_within_its_budget() {
    let test_started = Instant::now();
    let setup = Setup::shared();
    let unbounded = setup.start_ready();
    let orders = many_orders("bd", ORDERS);
    setup
        .publisher()
        .publish_orders(&setup.names.subject, &orders);
    setup.wait_stored(ORDERS, Duration::from_secs(180));
    wait_all_cached(&[&unbounded], ORDERS as u64, Duration::from_secs(60));
    let all_bytes = metric(&unbounded, "order_service_cache_bytes") as u64;
    let budget = all_bytes / 10;
    eprintln!(
        "{ORDERS} orders, {all_bytes} bytes of JSON stored in {:.1} s; budget {budget}",
        test_started.elapsed().as_secs_f64()
    );

    // The default workers: a miss is parked with a loader, never waited for.
    let bounded_cfg = setup
        .cfg
        .clone()
        .env("CACHE_MAX_BYTES", &budget.to_string());
    let started = Instant::now();
    let mut bounded = Service::start_ready(&bounded_cfg);
    let first_ready = started.elapsed();
    let cached_at_start = metric(&bounded, "order_service_cache_orders") as usize;
    assert_eq!(
        metric(&bounded, "order_service_cache_budget_bytes") as u64,
        budget
    );
    assert!(metric(&bounded, "order_service_cache_bytes") as u64 <= budget);
    assert!(
        cached_at_start > 0 && cached_at_start < ORDERS / 5,
        "{cached_at_start} cached at start"
    );
    // The start-up load took the newest orders.
    let newest = &orders[ORDERS - 1].0;
    let hits_before = metric(&bounded, "order_service_cache_hits_total");
    assert_eq!(bounded.order_status(newest), 200);
    assert_eq!(
        metric(&bounded, "order_service_cache_hits_total"),
        hits_before + 1.0,
        "the newest order was not loaded at start"
    );

    // Scan resistance: a hot set among the older orders, read three times,
    // then one pass over all 20,000 (each body compared with the unbounded
    // replica's), then the hot set again.
    let hot: Vec<String> = orders[..1000].iter().map(|(uid, _)| uid.clone()).collect();
    for _ in 0..3 {
        timed_hits(&bounded, &hot);
    }
    for (uid, _) in &orders {
        let path = format!("/orders/{uid}");
        let ours = bounded.get_full(&path);
        let theirs = unbounded.get_full(&path);
        assert_eq!((ours.status, theirs.status), (200, 200), "{uid}");
        assert!(ours.body == theirs.body, "{uid}: bodies differ");
    }
    let cached_bytes = metric(&bounded, "order_service_cache_bytes") as u64;
    assert!(cached_bytes <= budget, "{cached_bytes} > {budget}");
    assert!(metric(&bounded, "order_service_cache_evictions_total") > 0.0);
    let (hits, misses) = (
        metric(&bounded, "order_service_cache_hits_total"),
        metric(&bounded, "order_service_cache_misses_total"),
    );
    timed_hits(&bounded, &hot);
    let hot_hits = metric(&bounded, "order_service_cache_hits_total") - hits;
    let hot_misses = metric(&bounded, "order_service_cache_misses_total") - misses;
    let ratio = hot_hits / (hot_hits + hot_misses);
    eprintln!("hot set hit ratio after a pass over all {ORDERS}: {ratio:.3}");
    assert!(ratio >= 0.9, "hot hit ratio {ratio}");

    // Memory: well under the replica that holds everything.
    let (ours, theirs) = (bounded.proc_stats().rss_kib, unbounded.proc_stats().rss_kib);
    eprintln!("VmRSS: bounded {ours} KiB, unbounded {theirs} KiB");
    assert!(
        ours * 1024 + all_bytes / 2 < theirs * 1024,
        "bounded {ours} KiB is not well under unbounded {theirs} KiB"
    );

    // Pages and random picks cover every stored order, not only cached ones.
    let mut paged = HashSet::new();
    let mut cursor = String::new();
    loop {
        let (status, body) = bounded.get_json(&format!("/orders?limit=1000{cursor}"));
        assert_eq!(status, 200, "{body}");
        for uid in body["orders"].as_array().unwrap() {
            assert!(
                paged.insert(uid.as_str().unwrap().to_owned()),
                "{uid} twice"
            );
        }
        match body["next_cursor"].as_str() {
            Some(next) => cursor = format!("&cursor={next}"),
            None => break,
        }
    }
    let stored: HashSet<String> = orders.iter().map(|(uid, _)| uid.clone()).collect();
    assert!(paged == stored, "pages do not list every stored order");
    let mut picked = HashSet::new();
    for _ in 0..50 {
        let (status, body) = bounded.get_json("/random-order");
        assert_eq!(status, 200, "{body}");
        let uid = body["order_uid"].as_str().unwrap().to_owned();
        assert!(stored.contains(&uid), "{uid}");
        picked.insert(uid);
    }
    assert!(picked.len() > 40, "50 picks, {} distinct", picked.len());

    // No stale 404: asked for before it exists, served once it is stored.
    let late = many_orders("late", 1).remove(0);
    assert_eq!(bounded.order_status(&late.0), 404);
    setup
        .publisher()
        .publish(&setup.names.subject, None, &late.1);
    wait_until(Duration::from_secs(20), "the late order stored", || {
        setup.db.query_i64(&format!(
            "SELECT count(*) FROM orders WHERE order_uid = '{}'",
            late.0
        )) == 1
    });
    assert_eq!(bounded.order_status(&late.0), 200, "a stale 404");

    // Miss storm: 32 connections of unknown ids for 6 s beside 4 clients
    // reading 50 hot orders, with the unbounded replica gone so that every
    // session counted is the bounded one's. The quiet run is the same 32
    // connections reading cached orders: the runs differ only in that the
    // storm's ids are looked up in PostgreSQL. Against an idle service the
    // ratio would measure 36 clients sharing this test's 2 cores with the
    // service, not the misses (`make bench` reports that one in release).
    drop(unbounded);
    let quiet = beside(&bounded, &setup.db, &hot[..50], |t, i| {
        hot[50 + (t * 31 + i) % 950].clone()
    });
    let storm = beside(&bounded, &setup.db, &hot[..50], |t, i| {
        format!("storm_{t}_{i}")
    });
    let (quiet_p99, storm_p99) = (quiet.hits_p99(), storm.hits_p99());
    let not_found = storm.statuses.iter().filter(|s| **s == 404).count();
    let unavailable = storm.statuses.iter().filter(|s| **s == 503).count();
    eprintln!(
        "miss storm: {} requests ({not_found} 404, {unavailable} 503); {} hits, p99 {:.2} ms \
         ({} hits, p99 {:.2} ms beside {} reads of cached orders); at most these PostgreSQL \
         sessions: {:?}",
        storm.statuses.len(),
        storm.hits.len(),
        storm_p99.as_secs_f64() * 1e3,
        quiet.hits.len(),
        quiet_p99.as_secs_f64() * 1e3,
        quiet.statuses.len(),
        storm.most_sessions
    );
    assert!(quiet.statuses.iter().all(|s| *s == 200), "quiet run");
    assert_eq!(
        not_found + unavailable,
        storm.statuses.len(),
        "only 404 or 503"
    );
    // Loaders (2), writers (2) and listener.
    assert!(storm.most_sessions.len() <= 5, "{:?}", storm.most_sessions);
    // Misses parked with a loader hold no worker. When workers waited for
    // loaders, hits queued behind the misses (p99 about 240 ms).
    assert!(
        storm_p99 <= 2 * quiet_p99,
        "hits p99 {storm_p99:?} beside the storm, {quiet_p99:?} beside cached reads"
    );

    // Restart: ready again with a budget, everything served.
    bounded.terminate();
    let started = Instant::now();
    let bounded = Service::start_ready(&bounded_cfg);
    let ready_again = started.elapsed();
    eprintln!(
        "ready in {:.2} s at first, {:.2} s after a restart",
        first_ready.as_secs_f64(),
        ready_again.as_secs_f64()
    );
    for (uid, body) in orders.iter().step_by(20) {
        let answer = bounded.get_full(&format!("/orders/{uid}"));
        assert_eq!(answer.status, 200, "{uid}");
        assert!(&answer.body == body, "{uid}: not the published bytes");
    }
    assert!(metric(&bounded, "order_service_cache_bytes") as u64 <= budget);
    eprintln!("in {:.1} s", test_started.elapsed().as_secs_f64());
}

#[test]
fn a_postgres_outage_answers_cached_orders_and_503_never_404() {
    let pg = PrivatePostgres::start();
    let setup = Setup::with_postgres(&pg.admin_url).env("CACHE_MAX_BYTES", "256KiB");
    let service = setup.start_ready();
    let orders = many_orders("out", 2_000);
    setup
        .publisher()
        .publish_orders(&setup.names.subject, &orders);
    setup.wait_stored(orders.len(), Duration::from_secs(60));
    let newest: Vec<String> = orders[1_900..].iter().map(|(u, _)| u.clone()).collect();
    // The newest were notified and inserted. About 210 orders fit the
    // budget, so most of the older 1,000 are not cached; which ones stay is
    // S3-FIFO's choice (the first inserted fill its hot queue, which later
    // ones do not displace unless they are read again).
    let older: Vec<String> = orders[..1_000].iter().map(|(u, _)| u.clone()).collect();
    // Read until one whole pass is answered from memory.
    wait_until(Duration::from_secs(20), "the newest cached", || {
        let hits = metric(&service, "order_service_cache_hits_total");
        newest.iter().all(|uid| service.order_status(uid) == 200)
            && metric(&service, "order_service_cache_hits_total") - hits == newest.len() as f64
    });

    pg.stop_fast();
    for uid in &newest {
        assert_eq!(service.order_status(uid), 200, "cached {uid}");
    }
    // Each older order is a 200 from memory or a 503.
    let mut uncached = Vec::new();
    for uid in &older {
        let hits = metric(&service, "order_service_cache_hits_total");
        let answer = service.get_full(&format!("/orders/{uid}"));
        match answer.status {
            200 => assert_eq!(
                metric(&service, "order_service_cache_hits_total"),
                hits + 1.0,
                "{uid}: a 200 not from memory while PostgreSQL is down"
            ),
            503 => {
                assert_eq!(answer.header("Retry-After"), Some("1"));
                uncached.push(uid.clone());
            }
            other => panic!("{uid}: {other} {}", answer.text()),
        }
    }
    assert!(
        uncached.len() >= 700,
        "only {} of 1,000 older orders were uncached",
        uncached.len()
    );
    uncached.truncate(100);
    assert_eq!(service.order_status("never_stored_anywhere"), 503);
    assert_eq!(service.get_full("/orders?limit=5").status, 503);
    assert_eq!(service.get_full("/rejections").status, 503);
    assert!(metric(&service, "order_service_loader_errors_total") > 0.0);

    pg.restart();
    let back = Instant::now();
    // Recovered = every loader answers again: each reconnects on its own, so
    // one answer proves only one of them. Never a 404 for a stored order.
    wait_until(
        Duration::from_secs(10),
        "uncached orders served again",
        || {
            service.order_status("never_stored_anywhere") == 404
                && uncached.iter().all(|uid| match service.order_status(uid) {
                    404 => panic!("{uid}: 404 for a stored order"),
                    status => status == 200,
                })
        },
    );
    let recovery = back.elapsed();
    eprintln!(
        "served again {:.2} s after PostgreSQL was back",
        recovery.as_secs_f64()
    );
    assert!(recovery <= Duration::from_secs(2), "{recovery:?}");
}

/// p99 of hits on `hot`, read round after round until `until` holds, and
/// how many were timed.
fn hits_p99(service: &Service, hot: &[String], until: impl Fn() -> bool) -> (Duration, usize) {
    let mut samples = Vec::new();
    loop {
        samples.extend(timed_hits(service, hot));
        if until() {
            break;
        }
    }
    let n = samples.len();
    (percentile(&mut samples, 0.99), n)
}

/// Issue 11: hits never wait for the listener. Hot orders are read while
/// 10,000 more are ingested, with and without a budget (one that the new
/// orders overflow, so the listener's inserts evict), on a private
/// PostgreSQL; the bounded p99 under ingest stays near the unbounded one.
#[test]
fn hits_keep_their_latency_under_ingest_with_a_budget() {
    let pg = PrivatePostgres::start();
    let mut results = Vec::new();
    for budget in [None, Some("4MiB")] {
        let setup = match budget {
            Some(bytes) => Setup::with_postgres(&pg.admin_url).env("CACHE_MAX_BYTES", bytes),
            None => Setup::with_postgres(&pg.admin_url),
        }
        .env("HTTP_WORKERS", "4");
        let service = setup.start_ready();
        let hot_orders = many_orders("hot", 500);
        setup
            .publisher()
            .publish_orders(&setup.names.subject, &hot_orders);
        setup.wait_stored(500, Duration::from_secs(60));
        let hot: Vec<String> = hot_orders.into_iter().map(|(uid, _)| uid).collect();
        timed_hits(&service, &hot);
        let (quiet, _) = hits_p99(&service, &hot, || true);
        let more = many_orders("more", 10_000);
        let ingest = setup.ingest_in_background(&more, 500, Duration::ZERO, 1_000);
        let (busy, samples) = hits_p99(&service, &hot, || setup.db.order_count() >= 10_500);
        ingest.join().unwrap();
        eprintln!(
            "budget {budget:?}: hits p99 {:.2} ms quiet, {:.2} ms over {samples} hits under ingest",
            quiet.as_secs_f64() * 1e3,
            busy.as_secs_f64() * 1e3
        );
        results.push(busy);
    }
    // Twice the unbounded figure, with a floor for a noisy shared machine.
    let bound = (results[0] * 2).max(Duration::from_millis(30));
    assert!(
        results[1] <= bound,
        "bounded p99 under ingest {:?}, unbounded {:?}",
        results[1],
        results[0]
    );
}
