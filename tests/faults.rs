//! User story: "nothing is lost when something fails": the service killed
//! with SIGKILL mid-ingest, PostgreSQL stopped mid-ingest, NATS killed. The
//! tests that stop a server run a private one on a free port.

mod common;

use common::*;
use std::thread;
use std::time::Duration;

#[test]
fn kill9_during_ingest_then_restart_stores_exactly_2000() {
    const TOTAL: usize = 2000;
    // What the killed process had fetched comes back after the consumer's
    // ack wait (the service sets 30 s), hence the long waits below.
    let s = Setup::shared();
    let mut first = s.start_ready();
    let orders = many_orders("k9", TOTAL);
    let publishing = s.ingest_in_background(&orders, 100, Duration::from_millis(25), 300);
    first.kill9();
    let at_kill = s.db.order_count();
    eprintln!("{at_kill} orders stored when the service was killed");
    publishing.join().expect("publisher thread");
    assert!(
        at_kill < TOTAL as i64,
        "the kill came after ingest had finished"
    );

    let second = s.start_ready();
    s.wait_stored(TOTAL, Duration::from_secs(75));
    s.wait_drained(Duration::from_secs(30));
    wait_all_cached(&[&second], TOTAL as u64, Duration::from_secs(15));
    // A redelivered order is not a dead letter.
    s.assert_all_stored_once(&orders);
    for (uid, _) in &orders {
        assert_eq!(second.order_status(uid), 200, "{uid}");
    }
}

#[test]
fn postgres_stopped_during_ingest_loses_nothing_and_needs_no_restart() {
    const TOTAL: usize = 1500;
    let pg = PrivatePostgres::start();
    let s = Setup::with_postgres(&pg.admin_url);
    let mut service = s.start_ready();
    let pid = service.pid();

    let orders = many_orders("pgdown", TOTAL);
    let publishing = s.ingest_in_background(&orders, 50, Duration::from_millis(60), 100);
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
    s.wait_stored(TOTAL, Duration::from_secs(60));
    s.wait_drained(Duration::from_secs(30));
    wait_all_cached(&[&service], TOTAL as u64, Duration::from_secs(15));
    s.assert_all_stored_once(&orders);
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
    let s = Setup::with_postgres(&pg.admin_url);
    let mut service = s.start_ready();

    let orders = many_orders("pgcrash", TOTAL);
    let publishing = s.ingest_in_background(&orders, 50, Duration::from_millis(40), 100);
    pg.stop_immediate();
    service.wait_readyz(503, Duration::from_secs(20));
    thread::sleep(Duration::from_millis(500));
    pg.restart();
    publishing.join().expect("publisher thread");
    service.wait_ready(Duration::from_secs(60));
    s.wait_stored(TOTAL, Duration::from_secs(60));
    wait_all_cached(&[&service], TOTAL as u64, Duration::from_secs(15));
    s.assert_all_stored_once(&orders);
    assert!(
        service.is_running(),
        "the service exited:\n{}",
        service.log_tail()
    );
}

#[test]
fn nats_killed_and_restarted_is_survived() {
    let mut nats = PrivateNats::start();
    let s = Setup::with_nats(&nats.url);
    let mut service = s.start_ready();

    let before = many_orders("natsbefore", 200);
    s.publisher().publish_many(&s.names.subject, &before);
    wait_all_cached(&[&service], 200, Duration::from_secs(20));

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
    s.publisher().publish_many(&s.names.subject, &after);
    s.wait_stored(400, Duration::from_secs(45));
    wait_all_cached(&[&service], 400, Duration::from_secs(15));
    for (uid, _) in &after {
        assert_eq!(service.order_status(uid), 200, "{uid}");
    }
}
