//! User story: "three replicas share the work, every one holds every order,
//! and killing them all at once loses nothing". Real PostgreSQL and NATS.

pub mod common;

use common::*;
use std::time::{Duration, Instant};

#[test]
fn three_replicas_store_each_order_once_and_hold_identical_caches() {
    let s = Setup::shared().env("NATS_ACK_WAIT", "5");
    let mut replicas: Vec<Service> = (0..3).map(|_| s.start_ready()).collect();

    let first = many_orders("three", 20_000);
    let started = Instant::now();
    s.publisher().publish_many(&s.names.subject, &first);
    let all: Vec<&Service> = replicas.iter().collect();
    wait_all_cached(&all, 20_000, Duration::from_secs(120));
    let elapsed = started.elapsed();
    assert_eq!(s.db.order_count(), 20_000);
    assert_identical_caches(&all);
    let shares: Vec<u64> = replicas.iter().map(Service::stored_total).collect();
    assert_eq!(shares.iter().sum::<u64>(), 20_000, "{shares:?}");
    eprintln!(
        "three replicas: 20000 orders stored once and in all three caches in {:.1} s; \
         stored by each replica: {shares:?}",
        elapsed.as_secs_f64()
    );

    // kill -9 all three while 5,000 more are being ingested, then restart.
    let second = many_orders("killall", 5_000);
    let publishing = publish_in_background(
        &s.nats_url,
        &s.names.subject,
        &second,
        second.len(),
        Duration::ZERO,
    );
    wait_until(
        Duration::from_secs(60),
        "ingest of the second wave under way",
        || s.db.order_count() > 20_000,
    );
    for replica in &mut replicas {
        replica.kill9();
    }
    let at_kill = s.db.order_count();
    publishing.join().unwrap();
    let started = Instant::now();
    let replicas: Vec<Service> = (0..3).map(|_| s.start_ready()).collect();
    let all: Vec<&Service> = replicas.iter().collect();
    wait_all_cached(&all, 25_000, Duration::from_secs(120));
    assert_eq!(s.db.order_count(), 25_000, "lost or duplicated rows");
    assert_identical_caches(&all);
    eprintln!(
        "kill -9 of all three replicas with {at_kill} of 25000 stored: 0 lost, 0 duplicated, \
         all caches complete {:.1} s after the restart",
        started.elapsed().as_secs_f64()
    );
}
