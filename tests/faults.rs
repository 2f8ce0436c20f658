//! User story: "nothing is lost when something fails": the service killed
//! with SIGKILL mid-ingest, PostgreSQL stopped mid-ingest, NATS killed. The
//! tests that stop a server run a private one on a free port. Each test
//! prints one `[figures]` line for the README's Reliability table; run with
//! `--nocapture` to see it.

pub mod common;

use common::*;
use std::thread;
use std::time::{Duration, Instant};

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
    publishing.join().expect("publisher thread");
    assert!(
        at_kill < TOTAL as i64,
        "the kill came after ingest had finished"
    );

    let restarted = Instant::now();
    let second = s.start_ready();
    s.wait_stored(TOTAL, Duration::from_secs(75));
    let stored_after = restarted.elapsed();
    s.wait_drained(Duration::from_secs(30));
    wait_all_cached(&[&second], TOTAL as u64, Duration::from_secs(15));
    // A redelivered order is not a dead letter.
    s.assert_all_stored_once(&orders);
    for (uid, _) in &orders {
        assert_eq!(second.order_status(uid), 200, "{uid}");
    }
    eprintln!(
        "[figures] service killed (kill -9) with {at_kill} of {TOTAL} stored: exactly {TOTAL} \
         rows, all served; every order stored {:.1} s after the restart (up to the 30 s ack \
         wait when the killed process held fetched messages)",
        stored_after.as_secs_f64()
    );
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
    let at_stop = s.db.order_count();
    let stopped = Instant::now();
    pg.stop_fast();

    let readyz = service.wait_dependency("postgres", "unavailable", Duration::from_secs(20));
    let noticed_after = stopped.elapsed();
    assert!(readyz["postgres_error"].is_string(), "{readyz}");
    assert_eq!(readyz["status"], "ready", "{readyz}");
    assert_eq!(
        service.metric("order_service_dependency_up", &[("dependency", "postgres")]),
        Some(0.0)
    );
    assert_eq!(service.metric("order_service_ready", &[]), Some(1.0));
    // The cache keeps serving while PostgreSQL is away.
    assert_eq!(service.get("/healthz").0, 200);
    assert_eq!(service.order_status(&orders[0].0), 200);
    thread::sleep(Duration::from_secs(2));
    service.assert_running();

    pg.restart();
    let restarted = Instant::now();
    service.wait_dependency("postgres", "ok", Duration::from_secs(60));
    let ready_after = restarted.elapsed();
    publishing.join().expect("publisher thread");
    s.wait_stored(TOTAL, Duration::from_secs(60));
    let stored_after = restarted.elapsed();
    s.wait_drained(Duration::from_secs(30));
    wait_all_cached(&[&service], TOTAL as u64, Duration::from_secs(15));
    s.assert_all_stored_once(&orders);
    service.assert_running();
    assert_eq!(service.pid(), pid);
    for (uid, _) in orders.iter().step_by(13) {
        assert_eq!(service.order_status(uid), 200, "{uid}");
    }
    eprintln!(
        "[figures] PostgreSQL stopped (pg_ctl stop -m fast) for {:.1} s with {at_stop} of \
         {TOTAL} stored: lost 0, duplicated rows 0, service not restarted; /readyz 200 throughout, \
         naming PostgreSQL unavailable {:.2} s after the stop and ok {:.2} s after it was back, every order stored {:.1} s after",
        (restarted - stopped).as_secs_f64(),
        noticed_after.as_secs_f64(),
        ready_after.as_secs_f64(),
        stored_after.as_secs_f64(),
    );
}

#[test]
fn postgres_crash_during_ingest_loses_nothing() {
    const TOTAL: usize = 1000;
    let pg = PrivatePostgres::start();
    let s = Setup::with_postgres(&pg.admin_url);
    let mut service = s.start_ready();

    let orders = many_orders("pgcrash", TOTAL);
    let publishing = s.ingest_in_background(&orders, 50, Duration::from_millis(40), 100);
    let at_crash = s.db.order_count();
    pg.stop_immediate();
    service.wait_dependency("postgres", "unavailable", Duration::from_secs(20));
    thread::sleep(Duration::from_millis(500));
    pg.restart();
    let restarted = Instant::now();
    publishing.join().expect("publisher thread");
    service.wait_dependency("postgres", "ok", Duration::from_secs(60));
    s.wait_stored(TOTAL, Duration::from_secs(60));
    let stored_after = restarted.elapsed();
    wait_all_cached(&[&service], TOTAL as u64, Duration::from_secs(15));
    s.assert_all_stored_once(&orders);
    service.assert_running();
    eprintln!(
        "[figures] PostgreSQL crashed (pg_ctl stop -m immediate) with {at_crash} of {TOTAL} \
         stored: lost 0, duplicated rows 0, service not restarted; every order stored {:.1} s \
         after PostgreSQL was back",
        stored_after.as_secs_f64()
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
    let killed = Instant::now();
    let readyz = service.wait_dependency("nats", "unavailable", Duration::from_secs(20));
    let noticed_after = killed.elapsed();
    assert_eq!(readyz["postgres"], "ok", "{readyz}");
    assert_eq!(
        service.order_status(&before[0].0),
        200,
        "served from the cache"
    );
    thread::sleep(Duration::from_secs(1));
    service.assert_running();

    nats.restart();
    let restarted = Instant::now();
    service.wait_dependency("nats", "ok", Duration::from_secs(60));
    let ready_after = restarted.elapsed();
    let after = many_orders("natsafter", 200);
    s.publisher().publish_many(&s.names.subject, &after);
    s.wait_stored(400, Duration::from_secs(45));
    let stored_after = restarted.elapsed();
    wait_all_cached(&[&service], 400, Duration::from_secs(15));
    for (uid, _) in &after {
        assert_eq!(service.order_status(uid), 200, "{uid}");
    }
    eprintln!(
        "[figures] NATS killed (kill -9) and restarted between two waves of 200: /readyz 200 \
         throughout, naming NATS unavailable {:.2} s after the kill and ok {:.2} s after it was back, the consumer resumed by \
         itself and all 400 were stored {:.1} s after NATS was back",
        noticed_after.as_secs_f64(),
        ready_after.as_secs_f64(),
        stored_after.as_secs_f64(),
    );
}

/// Issue 14 item 4: the durable consumer deleted under a running service.
/// Its pull requests then go unanswered; it must name NATS in `/readyz`,
/// re-create the consumer and fetch what was published
/// meanwhile, without a restart.
#[test]
fn the_consumer_deleted_under_a_running_service_is_recreated_and_fetching_resumes() {
    let pg = PrivatePostgres::start();
    let s = Setup::with_postgres(&pg.admin_url);
    let mut service = s.start_ready();
    let pid = service.pid();
    let orders = many_orders("consumergone", 200);
    let publisher = s.publisher();
    publisher.publish_many(&s.names.subject, &orders[..100]);
    s.wait_stored(100, Duration::from_secs(20));

    #[allow(deprecated)]
    jetstream(&s.nats_url)
        .delete_consumer(&s.names.stream, &s.names.consumer)
        .expect("delete the consumer");
    let deleted = Instant::now();
    publisher.publish_many(&s.names.subject, &orders[100..]);
    let mut named = None;
    while named.is_none() && deleted.elapsed() < Duration::from_secs(30) {
        let (_, body) = service.get_json("/readyz");
        if body["nats"].as_str().is_some_and(|state| state != "ok") {
            named = Some(deleted.elapsed());
        }
        thread::sleep(Duration::from_millis(100));
    }
    s.wait_stored(200, Duration::from_secs(60));
    let stored_after = deleted.elapsed();
    service.wait_ready(Duration::from_secs(10));
    s.wait_drained(Duration::from_secs(20));
    s.assert_all_stored_once(&orders);
    assert_eq!(service.pid(), pid, "no restart");
    service.assert_running();
    eprintln!(
        "[figures] consumer deleted under the service: NATS named in /readyz after {named:?}; \
         the 100 published meanwhile all stored {:.1} s after the delete",
        stored_after.as_secs_f64()
    );
    assert!(named.is_some(), "/readyz never named NATS");
}
