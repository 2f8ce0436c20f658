//! Order payloads: the canonical order from `testdata/model.json` with a
//! chosen uid, batches of them, and oversized ones.

use std::fs;
use std::path::Path;

use serde_json::Value;

use super::unique;

/// `testdata/model.json`, the canonical order.
pub fn canonical_order() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/model.json");
    let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).expect("testdata/model.json is JSON")
}

/// The canonical order with `order_uid` and `payment.transaction` set to `uid`.
pub fn order_value(uid: &str) -> Value {
    let mut order = canonical_order();
    order["order_uid"] = Value::from(uid);
    order["payment"]["transaction"] = Value::from(uid);
    order
}

/// `order_value(uid)` serialised.
pub fn order_with_uid(uid: &str) -> Vec<u8> {
    serde_json::to_vec(&order_value(uid)).expect("serialise order")
}

/// `n` orders with fresh uids `<prefix>_<random>_<i>`, as `(uid, body)`
/// ready for `Publisher::publish_many`.
pub fn many_orders(prefix: &str, n: usize) -> Vec<(String, Vec<u8>)> {
    let tag = unique(prefix);
    (0..n)
        .map(|i| {
            let uid = format!("{tag}_{i}");
            let body = order_with_uid(&uid);
            (uid, body)
        })
        .collect()
}

/// An order whose JSON is well over `min_bytes` (many items).
pub fn big_order(uid: &str, min_bytes: usize) -> Vec<u8> {
    let mut order = order_value(uid);
    let item = order["items"][0].clone();
    let mut items = Vec::new();
    let mut i = 0u64;
    while serde_json::to_vec(&items).unwrap().len() < min_bytes {
        let mut it = item.clone();
        it["chrt_id"] = Value::from(1_000_000 + i);
        it["rid"] = Value::from(format!("rid-{uid}-{i}"));
        items.push(it);
        i += 1;
    }
    order["items"] = Value::Array(items);
    serde_json::to_vec(&order).unwrap()
}
