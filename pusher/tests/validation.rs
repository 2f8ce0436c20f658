//! The generator against the service's own validation (`order_service::order`):
//! every generated order passes, and every hostile variant is rejected with
//! the kind it is named after. Pure: no NATS, no database.

use fake::Fake;
use order_service::order::validate;
use pusher::{invalid_kinds, invalid_message, parse_invalid_kind, Order, OrderSpec, RejectionKind};
use rand::rngs::StdRng;
use rand::SeedableRng;

const LIMIT: usize = 1 << 20;

#[test]
fn generated_orders_pass_validation_over_many_seeds() {
    for seed in 0..300u64 {
        let mut rng = StdRng::seed_from_u64(seed);
        let spec = OrderSpec {
            items: 1..=(1 + (seed % 8) as usize),
        };
        for _ in 0..20 {
            let order: Order = spec.fake_with_rng(&mut rng);
            let bytes = serde_json::to_vec(&order).unwrap();
            let valid = validate(&bytes, LIMIT).unwrap_or_else(|rejection| {
                panic!(
                    "seed {seed}: {rejection:?}\n{}",
                    String::from_utf8_lossy(&bytes)
                )
            });
            assert_eq!(valid.uid.as_str(), order.order_uid);
            order.check_consistency().unwrap();
        }
    }
}

#[test]
fn every_invalid_kind_is_rejected_with_that_kind() {
    let spec = OrderSpec::default();
    for kind in invalid_kinds() {
        if kind == RejectionKind::ConflictingDuplicate {
            continue;
        }
        for seed in 0..200u64 {
            let mut rng = StdRng::seed_from_u64(seed);
            let order: Order = spec.fake_with_rng(&mut rng);
            let limit = if kind == RejectionKind::TooLarge {
                4096
            } else {
                LIMIT
            };
            let bytes = invalid_message(kind, &order, limit, &mut rng);
            let rejection = match validate(&bytes, limit) {
                Ok(_) => panic!(
                    "{kind} seed {seed} was accepted: {}",
                    String::from_utf8_lossy(&bytes)
                ),
                Err(rejection) => rejection,
            };
            assert_eq!(
                rejection.kind.label(),
                kind.label(),
                "seed {seed}: {} for {}",
                rejection.reason,
                String::from_utf8_lossy(&bytes)
            );
        }
    }
}

#[test]
fn too_large_is_one_byte_over_the_limit() {
    let mut rng = StdRng::seed_from_u64(5);
    let order: Order = OrderSpec::default().fake_with_rng(&mut rng);
    for limit in [4096, 65_536, LIMIT] {
        let bytes = invalid_message(RejectionKind::TooLarge, &order, limit, &mut rng);
        assert_eq!(bytes.len(), limit + 1);
        // Under a higher limit it is a valid order (padding is an extra field).
        assert!(validate(&bytes, limit + 1).is_ok());
    }
}

#[test]
fn conflicting_duplicate_is_valid_same_uid_other_body() {
    for seed in 0..100u64 {
        let mut rng = StdRng::seed_from_u64(seed);
        let order: Order = OrderSpec::default().fake_with_rng(&mut rng);
        let original = serde_json::to_vec(&order).unwrap();
        let bytes = invalid_message(RejectionKind::ConflictingDuplicate, &order, LIMIT, &mut rng);
        let valid = validate(&bytes, LIMIT).expect("the conflicting body is itself valid");
        assert_eq!(valid.uid.as_str(), order.order_uid);
        assert_ne!(bytes, original);
    }
}

#[test]
fn invalid_kinds_are_the_services_kinds_a_message_earns_by_its_content() {
    let labels: Vec<&str> = invalid_kinds().iter().map(|k| k.label()).collect();
    assert_eq!(labels.len(), RejectionKind::ALL.len() - 2);
    assert!(!labels.contains(&"database_rejected") && !labels.contains(&"redelivery_limit"));
    for kind in invalid_kinds() {
        assert_eq!(parse_invalid_kind(kind.label()), Ok(kind));
    }
    for given_by_the_service in ["database_rejected", "redelivery_limit", "nonsense"] {
        assert!(parse_invalid_kind(given_by_the_service).is_err());
    }
}
