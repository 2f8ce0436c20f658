//! User story: "three replicas share the work, every one holds every order,
//! and killing them all at once loses nothing". Real PostgreSQL and NATS.

mod common;

use common::*;
use std::time::{Duration, Instant};

fn digest(service: &Service) -> String {
    let metrics = service.metrics();
    let line = metrics
        .lines()
        .find(|l| l.starts_with("order_service_cache_digest_info{"))
        .expect("digest metric");
    line.split('"').nth(1).unwrap().to_owned()
}

fn cached(service: &Service) -> f64 {
    service
        .metric("order_service_cache_orders", &[])
        .unwrap_or(0.0)
}

fn wait_all_cached(services: &[Service], n: usize, timeout: Duration) {
    wait_until(timeout, &format!("every replica caches {n} orders"), || {
        services.iter().all(|s| cached(s) as usize == n)
    });
}

#[test]
fn three_replicas_store_each_order_once_and_hold_identical_caches() {
    let db = TestDb::create();
    let names = NatsNames::unique();
    let _stream = names.guard(SHARED_NATS);
    let cfg = ServiceConfig::new(&db, SHARED_NATS, &names).env("NATS_ACK_WAIT", "5");
    let mut replicas: Vec<Service> = (0..3).map(|_| Service::start_ready(&cfg)).collect();
    let publisher = Publisher::connect(SHARED_NATS);

    let first = many_orders("three", 20_000);
    let started = Instant::now();
    publisher.publish_many(&names.subject, &first);
    wait_all_cached(&replicas, 20_000, Duration::from_secs(120));
    let elapsed = started.elapsed();
    assert_eq!(db.order_count(), 20_000);
    let digests: Vec<String> = replicas.iter().map(digest).collect();
    assert!(
        digests.iter().all(|d| *d == digests[0]),
        "caches differ: {digests:?}"
    );
    let shares: Vec<f64> = replicas
        .iter()
        .map(|s| {
            s.metric("order_service_orders_stored_total", &[])
                .unwrap_or(0.0)
        })
        .collect();
    assert_eq!(shares.iter().sum::<f64>() as usize, 20_000, "{shares:?}");
    eprintln!(
        "three replicas: 20000 orders stored once and in all three caches in {:.1} s; \
         stored by each replica: {shares:?}",
        elapsed.as_secs_f64()
    );

    // kill -9 all three while 5,000 more are being ingested, then restart.
    let second = many_orders("killall", 5_000);
    let publishing = {
        let subject = names.subject.clone();
        std::thread::spawn(move || Publisher::connect(SHARED_NATS).publish_many(&subject, &second))
    };
    wait_until(
        Duration::from_secs(60),
        "ingest of the second wave under way",
        || db.order_count() > 20_000,
    );
    for replica in &mut replicas {
        replica.kill9();
    }
    let at_kill = db.order_count();
    publishing.join().unwrap();
    let started = Instant::now();
    let replicas: Vec<Service> = (0..3).map(|_| Service::start_ready(&cfg)).collect();
    wait_all_cached(&replicas, 25_000, Duration::from_secs(120));
    assert_eq!(db.order_count(), 25_000, "lost or duplicated rows");
    let digests: Vec<String> = replicas.iter().map(digest).collect();
    assert!(
        digests.iter().all(|d| *d == digests[0]),
        "caches differ: {digests:?}"
    );
    eprintln!(
        "kill -9 of all three replicas with {at_kill} of 25000 stored: 0 lost, 0 duplicated, \
         all caches complete {:.1} s after the restart",
        started.elapsed().as_secs_f64()
    );
}
