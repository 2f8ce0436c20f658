//! User story: "a restart loses nothing". The cache is rebuilt from
//! PostgreSQL before the service says it is ready; SIGTERM drains the batch
//! in flight, acks it and exits 0; what was published while no service ran
//! is picked up at the next start.

pub mod common;

use common::*;
use std::thread;
use std::time::{Duration, Instant};

#[test]
fn restart_restores_the_cache_before_ready_and_catches_up() {
    let s = Setup::shared();
    let publisher = s.publisher();

    let mut first = s.start_ready();
    let before = many_orders("before", 2000);
    publisher.publish_many(&s.names.subject, &before);
    wait_all_cached(&[&first], 2000, Duration::from_secs(30));
    let status = first.terminate();
    assert!(status.success(), "SIGTERM exit status {status}");

    // Published while no service runs: kept by the stream.
    let while_down = many_orders("down", 300);
    publisher.publish_many(&s.names.subject, &while_down);

    let started = Instant::now();
    let second = s.start();
    second.wait_ready(Duration::from_secs(60));
    let ready_after = started.elapsed();
    // Ready means the cache is loaded: every stored order answers at once.
    let cached = second
        .metric("order_service_cache_orders", &[])
        .expect("order_service_cache_orders");
    assert!(cached >= 2000.0, "ready with only {cached} orders cached");
    for (uid, body) in &before {
        let resp = second.get_full(&format!("/orders/{uid}"));
        assert_eq!(resp.status, 200, "{uid} right after ready: {}", resp.text());
        let published: serde_json::Value = serde_json::from_slice(body).unwrap();
        assert_eq!(resp.json(), published, "{uid}");
    }
    // And what was published during the downtime arrives.
    wait_all_cached(&[&second], 2300, Duration::from_secs(30));
    let caught_up_after = started.elapsed();
    for (uid, _) in &while_down {
        assert_eq!(second.order_status(uid), 200, "{uid}");
    }
    assert_eq!(s.db.query_i64("SELECT count(*) FROM orders"), 2300);
    eprintln!(
        "restart: ready {:.2} s after the start with {cached} orders cached (2000 stored \
         before the stop); all 2300, with the 300 published while down, cached {:.2} s after \
         the start",
        ready_after.as_secs_f64(),
        caught_up_after.as_secs_f64()
    );
}

#[test]
fn sigterm_acks_the_batch_in_flight_and_exits_zero() {
    const TOTAL: usize = 4000;
    let s = Setup::shared();
    let mut service = s.start_ready();

    let orders = many_orders("term", TOTAL);
    // Terminate in the middle of ingest.
    let publishing = s.ingest_in_background(&orders, 200, Duration::from_millis(20), 200);
    let took = service.assert_clean_exit();
    publishing.join().expect("publisher thread");

    // Everything the consumer delivered was acked, and everything acked is
    // stored. Acks that never left the process would stay pending for the
    // whole ack wait (30 s), so 3 s is plenty to tell.
    let mut state = None;
    let settled = Instant::now() + Duration::from_secs(3);
    while Instant::now() < settled {
        state = consumer_info(&s.nats_url, &s.names);
        if state.is_some_and(|s| s.num_ack_pending == 0) {
            break;
        }
        thread::sleep(Duration::from_millis(50));
    }
    let state = state.expect("the consumer exists");
    assert_eq!(
        state.num_ack_pending,
        0,
        "messages left unacked 3 s after a clean exit: {state:?}; {} rows stored\nlog:\n{}",
        s.db.order_count(),
        service.log_tail()
    );
    let stored = s.db.query_i64("SELECT count(*) FROM orders");
    assert_eq!(
        stored as u64, state.ack_floor_stream_seq,
        "rows stored vs messages acked: {state:?}"
    );
    assert_eq!(s.db.query_i64("SELECT count(*) FROM rejected_messages"), 0);
    eprintln!(
        "SIGTERM mid-ingest: exit 0 in {:.2} s; stored {stored} of {TOTAL} before exit; consumer {state:?}",
        took.as_secs_f64()
    );

    // The next start takes the rest.
    let next = s.start_ready();
    s.wait_stored(TOTAL, Duration::from_secs(30));
    wait_all_cached(&[&next], TOTAL as u64, Duration::from_secs(10));
    for (uid, _) in orders.iter().step_by(97) {
        assert_eq!(next.order_status(uid), 200, "{uid}");
    }
}
