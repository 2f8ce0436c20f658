//! Hostile messages: one per rejection kind of the service, each made from a
//! generated order by breaking exactly one thing, so the service must reject
//! it with exactly that kind. The kind names are the service's labels.

use crate::order::{Order, StreetAddress};
use fake::{Fake, RngExt};
use order_service::order::RejectionKind;
use serde_json::{json, Value};

/// The service's nesting limit.
pub use order_service::order::MAX_DEPTH as SERVICE_MAX_DEPTH;

/// Every kind `invalid_message` makes: the service's rejection kinds that a
/// message earns by its content (`RejectionKind::of_content`), in its order.
pub fn invalid_kinds() -> Vec<RejectionKind> {
    RejectionKind::ALL
        .iter()
        .copied()
        .filter(|kind| kind.of_content())
        .collect()
}

/// A kind for `--invalid-kind`: a rejection kind's label, one a message can
/// earn by its content.
pub fn parse_invalid_kind(text: &str) -> Result<RejectionKind, String> {
    let kind: RejectionKind = text.parse()?;
    if kind.of_content() {
        Ok(kind)
    } else {
        let labels: Vec<&str> = invalid_kinds().iter().map(|k| k.label()).collect();
        Err(format!(
            "{text:?} is given by the service (PostgreSQL or JetStream), not by a message's \
             content: expected one of {}",
            labels.join(", ")
        ))
    }
}

/// The bytes of a message the service must reject with `kind`, made from
/// `order` (which the caller generated). `max_bytes` is the service's
/// MAX_MESSAGE_BYTES: a `too_large` message is one byte over it.
///
/// `conflicting_duplicate` is the exception: its body is a valid order under
/// `order`'s `order_uid` with a different delivery address, which the service
/// rejects only if it already stored `order` (so publish `order` first), and
/// it must be published under another Nats-Msg-Id or NATS drops it as a
/// duplicate.
///
/// Panics for a kind no content earns (`database_rejected`,
/// `redelivery_limit`): `invalid_kinds` and `parse_invalid_kind` never give one.
pub fn invalid_message<R: RngExt + ?Sized>(
    kind: RejectionKind,
    order: &Order,
    max_bytes: usize,
    rng: &mut R,
) -> Vec<u8> {
    let mut value = serde_json::to_value(order).expect("an order serialises");
    let n_items = order.items.len();
    match kind {
        RejectionKind::NotUtf8 => {
            const MARKER: &str = "\u{1}not-utf8\u{1}";
            let field = pick(rng, &string_fields(n_items));
            *value.pointer_mut(&field).expect("a model field") = json!(MARKER);
            let text = value.to_string();
            let at = text.find("\\u0001not-utf8\\u0001").expect("the marker");
            let latin1: &[&[u8]] = &[
                b"M\xfcller",
                b"Stra\xdfe",
                b"\xff\xfe",
                b"caf\xe9",
                b"\xc3\x28",
            ];
            let mut bytes = text.as_bytes()[..at].to_vec();
            bytes.extend_from_slice(pick(rng, latin1));
            bytes.extend_from_slice(&text.as_bytes()[at + "\\u0001not-utf8\\u0001".len()..]);
            return bytes;
        }
        RejectionKind::NotJson => {
            let text = value.to_string();
            let variants = [0, 1, 2, 3];
            return match pick(rng, &variants) {
                // Cut anywhere (on a character boundary, or it is not_utf8).
                0 => {
                    let mut cut = rng.random_range(1..text.len());
                    while !text.is_char_boundary(cut) {
                        cut -= 1;
                    }
                    text.as_bytes()[..cut].to_vec()
                }
                1 => format!("{text},").into_bytes(),
                2 => text.replacen('"', "'", 2).into_bytes(),
                _ => b"order_uid=b563feb7b2b84b6test&amount=1817".to_vec(),
            };
        }
        RejectionKind::NotObject => {
            let variants = [
                json!([value]),
                json!(order.order_uid),
                json!(1817),
                Value::Null,
                json!(true),
            ];
            return pick(rng, &variants).to_string().into_bytes();
        }
        RejectionKind::MissingField => {
            let mut fields = string_fields(n_items);
            fields.extend(integer_fields(n_items));
            fields.extend(["/delivery", "/payment", "/items"].map(String::from));
            let field = pick(rng, &fields);
            remove(&mut value, &field);
        }
        RejectionKind::WrongType => {
            let field = match rng.random_range(0..4) {
                0 => pick(rng, &string_fields(n_items)),
                1 => pick(rng, &integer_fields(n_items)),
                2 => pick(rng, &["/delivery", "/payment", "/items"].map(String::from)),
                _ => format!("/items/{}", rng.random_range(0..n_items)),
            };
            let target = value.pointer_mut(&field).expect("a model field");
            *target = match target {
                Value::String(_) => {
                    pick(rng, &[json!(42), Value::Null, json!(false), json!(["a"])])
                }
                Value::Number(n) => pick(rng, &[json!(n.to_string()), json!(18.5), Value::Null]),
                Value::Array(_) => pick(rng, &[json!({}), json!("items")]),
                _ => pick(rng, &[json!("nowhere"), json!([1, 2]), json!(7)]),
            };
        }
        RejectionKind::NegativeAmount => {
            let field = pick(rng, &integer_fields(n_items));
            let amount: i64 = rng.random_range(1..=100_000);
            *value.pointer_mut(&field).expect("a model field") = json!(-amount);
        }
        RejectionKind::SaleOutOfRange => {
            let item = rng.random_range(0..n_items);
            value["items"][item]["sale"] = json!(rng.random_range(101..=1000));
        }
        RejectionKind::EmptyItems => value["items"] = json!([]),
        RejectionKind::BadOrderUid => {
            let uid = match rng.random_range(0..6) {
                0 => String::new(),
                1 => "x".repeat(rng.random_range(65..=200)),
                2 => format!("{} {}", &order.order_uid[..10], &order.order_uid[10..]),
                3 => format!("{}'; DROP TABLE orders; --", order.order_uid),
                4 => format!("{}/../../etc/passwd", order.order_uid),
                _ => format!("заказ-{}", order.order_uid),
            };
            value["order_uid"] = json!(uid);
        }
        RejectionKind::BadDate => {
            let dates = [
                "2021-11-26",
                "yesterday",
                "26.11.2021 06:22",
                "2021-11-26T06:22:19",
                "2021-13-26T06:22:19Z",
                "2021-11-26 06:22:19 +0300",
                "",
            ];
            value["date_created"] = json!(pick(rng, &dates));
        }
        RejectionKind::TooLarge => {
            value["padding"] = json!("");
            let base = value.to_string().len();
            let missing = (max_bytes + 1).saturating_sub(base);
            value["padding"] = json!(".".repeat(missing));
        }
        RejectionKind::TooDeep => {
            // The order object is one level, so this makes 33 to 40.
            let depth = SERVICE_MAX_DEPTH + rng.random_range(0..8);
            let mut nested = json!([]);
            for _ in 1..depth {
                nested = json!([nested]);
            }
            value["attachments"] = nested;
        }
        RejectionKind::NulCharacter => {
            let field = pick(rng, &string_fields(n_items));
            let target = value.pointer_mut(&field).expect("a model field");
            let old = target.as_str().unwrap_or_default().to_owned();
            let at = old
                .char_indices()
                .map(|(i, _)| i)
                .nth(old.chars().count() / 2)
                .unwrap_or(0);
            *target = json!(format!("{}\u{0}{}", &old[..at], &old[at..]));
        }
        RejectionKind::ConflictingDuplicate => {
            let street: String = StreetAddress.fake_with_rng(rng);
            let apartment = rng.random_range(1..=400);
            value["delivery"]["address"] = json!(format!("{street}, apt. {apartment}"));
        }
        RejectionKind::DatabaseRejected | RejectionKind::RedeliveryLimit => {
            panic!("{kind} is given by the service, not earned by a message's content")
        }
    }
    value.to_string().into_bytes()
}

fn pick<T: Clone, R: RngExt + ?Sized>(rng: &mut R, choices: &[T]) -> T {
    choices[rng.random_range(0..choices.len())].clone()
}

/// JSON pointers to every string field of the model.
fn string_fields(n_items: usize) -> Vec<String> {
    let mut fields: Vec<String> = [
        "order_uid",
        "track_number",
        "entry",
        "locale",
        "internal_signature",
        "customer_id",
        "delivery_service",
        "shardkey",
        "date_created",
        "oof_shard",
    ]
    .iter()
    .map(|f| format!("/{f}"))
    .collect();
    for f in ["name", "phone", "zip", "city", "address", "region", "email"] {
        fields.push(format!("/delivery/{f}"));
    }
    for f in ["transaction", "request_id", "currency", "provider", "bank"] {
        fields.push(format!("/payment/{f}"));
    }
    for i in 0..n_items {
        for f in ["track_number", "rid", "name", "size", "brand"] {
            fields.push(format!("/items/{i}/{f}"));
        }
    }
    fields
}

/// JSON pointers to every integer field of the model.
fn integer_fields(n_items: usize) -> Vec<String> {
    let mut fields = vec!["/sm_id".to_owned()];
    for f in [
        "amount",
        "payment_dt",
        "delivery_cost",
        "goods_total",
        "custom_fee",
    ] {
        fields.push(format!("/payment/{f}"));
    }
    for i in 0..n_items {
        for f in ["chrt_id", "price", "sale", "total_price", "nm_id", "status"] {
            fields.push(format!("/items/{i}/{f}"));
        }
    }
    fields
}

fn remove(value: &mut Value, pointer: &str) {
    let (parent, key) = pointer.rsplit_once('/').expect("a pointer");
    match value.pointer_mut(parent).expect("a model field") {
        Value::Object(map) => {
            map.remove(key);
        }
        Value::Array(items) => {
            items.remove(key.parse::<usize>().expect("an index"));
        }
        _ => unreachable!("fields live in objects and arrays"),
    }
}
