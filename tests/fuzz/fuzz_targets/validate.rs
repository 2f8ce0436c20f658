//! libFuzzer over `order::validate`: any bytes get a verdict, never a panic;
//! an accepted order is the input unchanged, JSON, with its uid; a rejection
//! always says why. The same checks as the proptests in
//! tests/validation_fuzz.rs, driven by coverage instead of strategies.

#![no_main]

use libfuzzer_sys::fuzz_target;
use order_service::order::{validate, RejectionKind};

/// Small enough that the fuzzer also crosses the size limit.
const MAX_BYTES: usize = 4096;

fuzz_target!(|input: &[u8]| {
    match validate(input, MAX_BYTES) {
        Ok(order) => {
            assert!(input.len() <= MAX_BYTES);
            assert_eq!(order.json.as_bytes(), input, "the text was changed");
            let value: serde_json::Value =
                serde_json::from_slice(input).expect("an accepted order is JSON");
            assert_eq!(value["order_uid"].as_str(), Some(order.uid.as_str()));
            assert!(!order.json.contains('\0'));
        }
        Err(rejection) => {
            assert!(!rejection.reason.trim().is_empty(), "{rejection:?}");
            assert!(!matches!(
                rejection.kind,
                RejectionKind::ConflictingDuplicate
                    | RejectionKind::DatabaseRejected
                    | RejectionKind::RedeliveryLimit
            ));
            if input.len() > MAX_BYTES {
                assert_eq!(rejection.kind, RejectionKind::TooLarge);
            }
        }
    }
});
