//! User story: "nothing is lost when something fails": the service killed
//! with SIGKILL mid-ingest, PostgreSQL stopped mid-ingest, NATS killed. The
//! tests that stop a server run a private one on a free port.

mod common;

use common::*;
use std::thread;
use std::time::Duration;

/// Publishes `orders` in chunks from another thread, so that ingest is
/// still going on when the test breaks something.
fn publish_slowly(
    nats_url: &str,
    subject: &str,
    orders: &[(String, Vec<u8>)],
    chunk: usize,
    pause: Duration,
) -> thread::JoinHandle<()> {
    let (nats_url, subject, orders) = (nats_url.to_owned(), subject.to_owned(), orders.to_vec());
    thread::spawn(move || {
        let publisher = Publisher::connect(&nats_url);
        for part in orders.chunks(chunk) {
            publisher.publish_many(&subject, part);
            thread::sleep(pause);
        }
    })
}

fn wait_all_cached(service: &Service, n: usize, timeout: Duration) {
    wait_until(timeout, &format!("{n} orders cached"), || {
        service.metric("order_service_cache_orders", &[]) == Some(n as f64)
    });
}

#[test]
fn kill9_during_ingest_then_restart_stores_exactly_2000() {
    const TOTAL: usize = 2000;
    let db = TestDb::create();
    let names = NatsNames::unique();
    let _stream = names.guard(SHARED_NATS);
    // What the killed process had fetched comes back after the consumer's
    // ack wait (the service sets 30 s), hence the long waits below.
    let cfg = ServiceConfig::new(&db, SHARED_NATS, &names);

    let mut first = Service::start_ready(&cfg);
    let orders = many_orders("k9", TOTAL);
    let publishing = publish_slowly(
        SHARED_NATS,
        &names.subject,
        &orders,
        100,
        Duration::from_millis(25),
    );
    wait_until(Duration::from_secs(30), "ingest has begun", || {
        db.order_count() >= 300
    });
    first.kill9();
    let at_kill = db.order_count();
    eprintln!("{at_kill} orders stored when the service was killed");
    publishing.join().expect("publisher thread");
    assert!(
        at_kill < TOTAL as i64,
        "the kill came after ingest had finished"
    );

    let second = Service::start_ready(&cfg);
    wait_until(Duration::from_secs(75), "2000 orders stored", || {
        db.order_count() == TOTAL as i64
    });
    wait_consumer_drained(SHARED_NATS, &names, Duration::from_secs(30));
    wait_all_cached(&second, TOTAL, Duration::from_secs(15));
    assert_eq!(db.query_i64("SELECT count(*) FROM orders"), TOTAL as i64);
    assert_eq!(
        db.query_i64("SELECT count(*) FROM rejected_messages"),
        0,
        "a redelivered order is not a dead letter"
    );
    for (uid, _) in &orders {
        assert_eq!(second.order_status(uid), 200, "{uid}");
    }
}

#[test]
fn postgres_stopped_during_ingest_loses_nothing_and_needs_no_restart() {
    const TOTAL: usize = 1500;
    let pg = PrivatePostgres::start();
    let db = TestDb::create_on(&pg.admin_url);
    let names = NatsNames::unique();
    let _stream = names.guard(SHARED_NATS);
    let cfg = ServiceConfig::new(&db, SHARED_NATS, &names);
    let mut service = Service::start_ready(&cfg);
    let pid = service.pid();

    let orders = many_orders("pgdown", TOTAL);
    let publishing = publish_slowly(
        SHARED_NATS,
        &names.subject,
        &orders,
        50,
        Duration::from_millis(60),
    );
    wait_until(Duration::from_secs(30), "ingest has begun", || {
        db.order_count() >= 100
    });
    pg.stop_fast();

    service.wait_readyz(503, Duration::from_secs(20));
    let (status, readyz) = service.get_json("/readyz");
    assert_eq!(status, 503);
    assert_eq!(readyz["error"], "not ready", "{readyz}");
    assert_ne!(readyz["postgres"], "ok", "{readyz}");
    // The cache keeps serving while PostgreSQL is away.
    assert_eq!(service.get("/healthz").0, 200);
    assert_eq!(service.order_status(&orders[0].0), 200);
    thread::sleep(Duration::from_secs(2));
    assert!(
        service.is_running(),
        "the service exited:\n{}",
        service.log_tail()
    );

    pg.restart();
    service.wait_ready(Duration::from_secs(60));
    publishing.join().expect("publisher thread");
    wait_until(Duration::from_secs(60), "every order stored", || {
        db.order_count() == TOTAL as i64
    });
    wait_consumer_drained(SHARED_NATS, &names, Duration::from_secs(30));
    wait_all_cached(&service, TOTAL, Duration::from_secs(15));
    assert_eq!(db.query_i64("SELECT count(*) FROM rejected_messages"), 0);
    assert!(service.is_running());
    assert_eq!(service.pid(), pid);
    for (uid, _) in orders.iter().step_by(13) {
        assert_eq!(service.order_status(uid), 200, "{uid}");
    }
}

#[test]
fn postgres_crash_during_ingest_loses_nothing() {
    const TOTAL: usize = 1000;
    let pg = PrivatePostgres::start();
    let db = TestDb::create_on(&pg.admin_url);
    let names = NatsNames::unique();
    let _stream = names.guard(SHARED_NATS);
    let cfg = ServiceConfig::new(&db, SHARED_NATS, &names);
    let mut service = Service::start_ready(&cfg);

    let orders = many_orders("pgcrash", TOTAL);
    let publishing = publish_slowly(
        SHARED_NATS,
        &names.subject,
        &orders,
        50,
        Duration::from_millis(40),
    );
    wait_until(Duration::from_secs(30), "ingest has begun", || {
        db.order_count() >= 100
    });
    pg.stop_immediate();
    service.wait_readyz(503, Duration::from_secs(20));
    thread::sleep(Duration::from_millis(500));
    pg.restart();
    publishing.join().expect("publisher thread");
    service.wait_ready(Duration::from_secs(60));
    wait_until(Duration::from_secs(60), "every order stored", || {
        db.order_count() == TOTAL as i64
    });
    wait_all_cached(&service, TOTAL, Duration::from_secs(15));
    assert!(
        service.is_running(),
        "the service exited:\n{}",
        service.log_tail()
    );
}

#[test]
fn nats_killed_and_restarted_is_survived() {
    let mut nats = PrivateNats::start();
    let db = TestDb::create();
    let names = NatsNames::unique();
    let cfg = ServiceConfig::new(&db, &nats.url, &names);
    let mut service = Service::start_ready(&cfg);

    let before = many_orders("natsbefore", 200);
    Publisher::connect(&nats.url).publish_many(&names.subject, &before);
    wait_all_cached(&service, 200, Duration::from_secs(20));

    nats.kill9();
    service.wait_readyz(503, Duration::from_secs(20));
    let (_, readyz) = service.get_json("/readyz");
    assert_ne!(readyz["nats"], "ok", "{readyz}");
    assert_eq!(
        service.order_status(&before[0].0),
        200,
        "served from the cache"
    );
    thread::sleep(Duration::from_secs(1));
    assert!(
        service.is_running(),
        "the service exited:\n{}",
        service.log_tail()
    );

    nats.restart();
    service.wait_ready(Duration::from_secs(60));
    let after = many_orders("natsafter", 200);
    Publisher::connect(&nats.url).publish_many(&names.subject, &after);
    wait_until(Duration::from_secs(45), "400 orders stored", || {
        db.order_count() == 400
    });
    wait_all_cached(&service, 400, Duration::from_secs(15));
    for (uid, _) in &after {
        assert_eq!(service.order_status(uid), 200, "{uid}");
    }
}
