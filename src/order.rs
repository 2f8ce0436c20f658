//! The order model and its validation: a pure function from the bytes of a
//! message to a validated [`Order`] or a [`Rejection`] with a precise reason.
//! No I/O, no clock: the ingest thread calls it, and so do the unit tests.

use serde_json::{Map, Value};
use std::fmt;

/// Messages nested deeper than this are rejected before they are parsed.
pub const MAX_DEPTH: usize = 32;

/// Longest accepted `order_uid`.
pub const MAX_UID_LEN: usize = 64;

/// An order that passed validation. `json` is the published text, unchanged:
/// PostgreSQL stores it as `jsonb`, so fields the model does not know are kept.
#[derive(Debug)]
pub struct Order<'a> {
    pub uid: OrderUid,
    pub json: &'a str,
}

/// A validated order id: 1 to 64 characters of `[A-Za-z0-9_-]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OrderUid(String);

impl OrderUid {
    pub fn parse(text: &str) -> Result<OrderUid, String> {
        if text.is_empty() {
            return Err("must not be empty".into());
        }
        if text.len() > MAX_UID_LEN {
            return Err(format!(
                "must be at most {MAX_UID_LEN} characters, found {}",
                text.len()
            ));
        }
        if let Some(bad) = text
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-'))
        {
            return Err(format!(
                "must contain only A-Z a-z 0-9 _ -, found {:?}",
                bad
            ));
        }
        Ok(OrderUid(text.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for OrderUid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why a message was not stored. `kind` is a stable label (the dead-letter
/// table's `kind` column and the metrics label); `reason` is for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub kind: RejectionKind,
    pub reason: String,
}

macro_rules! rejection_kinds {
    ($($variant:ident => $label:literal,)*) => {
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum RejectionKind { $($variant,)* }

        impl RejectionKind {
            pub const ALL: &'static [RejectionKind] = &[$(RejectionKind::$variant,)*];

            pub fn label(self) -> &'static str {
                match self { $(RejectionKind::$variant => $label,)* }
            }

            pub fn index(self) -> usize {
                self as usize
            }
        }
    };
}

rejection_kinds! {
    NotUtf8 => "not_utf8",
    NotJson => "not_json",
    NotObject => "not_object",
    MissingField => "missing_field",
    WrongType => "wrong_type",
    NegativeAmount => "negative_amount",
    SaleOutOfRange => "sale_out_of_range",
    EmptyItems => "empty_items",
    BadOrderUid => "bad_order_uid",
    BadDate => "bad_date",
    TooLarge => "too_large",
    TooDeep => "too_deep",
    NulCharacter => "nul_character",
    ConflictingDuplicate => "conflicting_duplicate",
    DatabaseRejected => "database_rejected",
    RedeliveryLimit => "redelivery_limit",
}

impl RejectionKind {
    /// True for the kinds a message earns by its content (validation, or a
    /// different body under a stored uid); false for those PostgreSQL or
    /// JetStream assign (`database_rejected`, `redelivery_limit`).
    pub fn of_content(self) -> bool {
        !matches!(
            self,
            RejectionKind::DatabaseRejected | RejectionKind::RedeliveryLimit
        )
    }
}

impl fmt::Display for RejectionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

impl std::str::FromStr for RejectionKind {
    type Err = String;

    /// A kind from its label.
    fn from_str(text: &str) -> Result<RejectionKind, String> {
        RejectionKind::ALL
            .iter()
            .copied()
            .find(|kind| kind.label() == text)
            .ok_or_else(|| {
                let labels: Vec<&str> = RejectionKind::ALL.iter().map(|k| k.label()).collect();
                format!(
                    "unknown kind {text:?}: expected one of {}",
                    labels.join(", ")
                )
            })
    }
}

impl Rejection {
    pub fn new(kind: RejectionKind, reason: impl Into<String>) -> Rejection {
        Rejection {
            kind,
            reason: reason.into(),
        }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.reason, self.kind.label())
    }
}

/// Validates one message. Checks run cheapest first: size, UTF-8, nesting
/// depth, JSON syntax, then the model field by field in the model's order.
pub fn validate(bytes: &[u8], max_bytes: usize) -> Result<Order<'_>, Rejection> {
    use RejectionKind::*;
    if bytes.len() > max_bytes {
        return Err(Rejection::new(
            TooLarge,
            format!(
                "message is {} bytes, over the limit of {max_bytes}",
                bytes.len()
            ),
        ));
    }
    let text = std::str::from_utf8(bytes).map_err(|e| {
        Rejection::new(
            NotUtf8,
            format!("not UTF-8: invalid byte at offset {}", e.valid_up_to()),
        )
    })?;
    if let Some(offset) = depth_exceeded(text.as_bytes(), MAX_DEPTH) {
        return Err(Rejection::new(
            TooDeep,
            format!("nested deeper than {MAX_DEPTH} levels (at byte {offset})"),
        ));
    }
    let value: Value = serde_json::from_str(text)
        .map_err(|e| Rejection::new(NotJson, format!("not JSON: {e}")))?;
    let root = match &value {
        Value::Object(map) => map,
        other => {
            return Err(Rejection::new(
                NotObject,
                format!("not a JSON object: found {}", type_name(other)),
            ))
        }
    };
    if has_nul(&value) {
        find_nul(&value, &mut String::new())?;
    }
    let uid = check_model(root)?;
    Ok(Order { uid, json: text })
}

/// The model, field by field. Strings may be empty; numbers are
/// non-negative integers.
fn check_model(root: &Map<String, Value>) -> Result<OrderUid, Rejection> {
    let uid_text = string(root, "", "order_uid")?;
    let uid = OrderUid::parse(uid_text)
        .map_err(|why| Rejection::new(RejectionKind::BadOrderUid, format!("order_uid: {why}")))?;
    strings(root, "", &["track_number", "entry"])?;

    let delivery = object(root, "", "delivery")?;
    strings(
        delivery,
        "delivery.",
        &["name", "phone", "zip", "city", "address", "region", "email"],
    )?;

    let payment = object(root, "", "payment")?;
    strings(
        payment,
        "payment.",
        &["transaction", "request_id", "currency", "provider"],
    )?;
    integers(payment, "payment.", &["amount", "payment_dt"])?;
    strings(payment, "payment.", &["bank"])?;
    integers(
        payment,
        "payment.",
        &["delivery_cost", "goods_total", "custom_fee"],
    )?;

    let items = array(root, "", "items")?;
    if items.is_empty() {
        return Err(Rejection::new(
            RejectionKind::EmptyItems,
            "items: must not be empty",
        ));
    }
    for (index, item) in items.iter().enumerate() {
        let prefix = format!("items[{index}].");
        let item = item.as_object().ok_or_else(|| {
            Rejection::new(
                RejectionKind::WrongType,
                format!(
                    "items[{index}]: expected an object, found {}",
                    type_name(item)
                ),
            )
        })?;
        integers(item, &prefix, &["chrt_id"])?;
        strings(item, &prefix, &["track_number"])?;
        integers(item, &prefix, &["price"])?;
        strings(item, &prefix, &["rid", "name"])?;
        let sale = integer(item, &prefix, "sale")?;
        if sale > 100 {
            return Err(Rejection::new(
                RejectionKind::SaleOutOfRange,
                format!("{prefix}sale: must be between 0 and 100, found {sale}"),
            ));
        }
        strings(item, &prefix, &["size"])?;
        integers(item, &prefix, &["total_price", "nm_id"])?;
        strings(item, &prefix, &["brand"])?;
        integers(item, &prefix, &["status"])?;
    }

    strings(
        root,
        "",
        &[
            "locale",
            "internal_signature",
            "customer_id",
            "delivery_service",
            "shardkey",
        ],
    )?;
    integers(root, "", &["sm_id"])?;
    let date = string(root, "", "date_created")?;
    if time::OffsetDateTime::parse(date, &time::format_description::well_known::Rfc3339).is_err() {
        return Err(Rejection::new(
            RejectionKind::BadDate,
            format!("date_created: not an RFC 3339 date-time: {date:?}"),
        ));
    }
    strings(root, "", &["oof_shard"])?;
    Ok(uid)
}

fn field<'v>(
    object: &'v Map<String, Value>,
    prefix: &str,
    name: &str,
) -> Result<&'v Value, Rejection> {
    object.get(name).ok_or_else(|| {
        Rejection::new(
            RejectionKind::MissingField,
            format!("{prefix}{name}: missing"),
        )
    })
}

fn wrong_type(prefix: &str, name: &str, expected: &str, found: &Value) -> Rejection {
    Rejection::new(
        RejectionKind::WrongType,
        format!(
            "{prefix}{name}: expected {expected}, found {}",
            type_name(found)
        ),
    )
}

fn string<'v>(
    object: &'v Map<String, Value>,
    prefix: &str,
    name: &str,
) -> Result<&'v str, Rejection> {
    match field(object, prefix, name)? {
        Value::String(s) => Ok(s),
        other => Err(wrong_type(prefix, name, "a string", other)),
    }
}

fn strings(object: &Map<String, Value>, prefix: &str, names: &[&str]) -> Result<(), Rejection> {
    names
        .iter()
        .try_for_each(|name| string(object, prefix, name).map(drop))
}

fn integer(object: &Map<String, Value>, prefix: &str, name: &str) -> Result<u64, Rejection> {
    let value = field(object, prefix, name)?;
    let Value::Number(number) = value else {
        return Err(wrong_type(prefix, name, "an integer", value));
    };
    if let Some(n) = number.as_u64() {
        return Ok(n);
    }
    if number.as_f64().is_some_and(|f| f < 0.0) {
        return Err(Rejection::new(
            RejectionKind::NegativeAmount,
            format!("{prefix}{name}: must not be negative, found {number}"),
        ));
    }
    Err(Rejection::new(
        RejectionKind::WrongType,
        format!("{prefix}{name}: expected an integer, found {number}"),
    ))
}

fn integers(object: &Map<String, Value>, prefix: &str, names: &[&str]) -> Result<(), Rejection> {
    names
        .iter()
        .try_for_each(|name| integer(object, prefix, name).map(drop))
}

fn object<'v>(
    object: &'v Map<String, Value>,
    prefix: &str,
    name: &str,
) -> Result<&'v Map<String, Value>, Rejection> {
    match field(object, prefix, name)? {
        Value::Object(map) => Ok(map),
        other => Err(wrong_type(prefix, name, "an object", other)),
    }
}

fn array<'v>(
    object: &'v Map<String, Value>,
    prefix: &str,
    name: &str,
) -> Result<&'v Vec<Value>, Rejection> {
    match field(object, prefix, name)? {
        Value::Array(items) => Ok(items),
        other => Err(wrong_type(prefix, name, "an array", other)),
    }
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Whether any string or key holds U+0000: the cheap walk, without paths.
fn has_nul(value: &Value) -> bool {
    match value {
        Value::String(s) => s.contains('\0'),
        Value::Array(items) => items.iter().any(has_nul),
        Value::Object(map) => map
            .iter()
            .any(|(key, item)| key.contains('\0') || has_nul(item)),
        _ => false,
    }
}

/// PostgreSQL's `jsonb` cannot hold U+0000, in values or in keys, so such a
/// message gets its own reason instead of failing its batch at insert time.
fn find_nul(value: &Value, path: &mut String) -> Result<(), Rejection> {
    let nul = |path: &str| {
        Rejection::new(
            RejectionKind::NulCharacter,
            format!(
                "{}: contains U+0000, which PostgreSQL cannot store",
                if path.is_empty() { "(root)" } else { path }
            ),
        )
    };
    match value {
        Value::String(s) if s.contains('\0') => Err(nul(path)),
        Value::Array(items) => items.iter().enumerate().try_for_each(|(index, item)| {
            let len = path.len();
            path.push_str(&format!("[{index}]"));
            find_nul(item, path)?;
            path.truncate(len);
            Ok(())
        }),
        Value::Object(map) => map.iter().try_for_each(|(key, item)| {
            let len = path.len();
            if !path.is_empty() {
                path.push('.');
            }
            path.push_str(&key.replace('\0', "\\u0000"));
            if key.contains('\0') {
                return Err(nul(path));
            }
            find_nul(item, path)?;
            path.truncate(len);
            Ok(())
        }),
        _ => Ok(()),
    }
}

/// Returns the byte offset where `[`/`{` nesting first exceeds `limit`,
/// skipping brackets inside strings. Runs before the parser, so a hostile
/// message of a million `[` costs one pass and no stack.
fn depth_exceeded(bytes: &[u8], limit: usize) -> Option<usize> {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for (offset, &byte) in bytes.iter().enumerate() {
        if in_string {
            match byte {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > limit {
                    return Some(offset);
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const MODEL: &str = include_str!("../testdata/model.json");
    const LIMIT: usize = 1 << 20;

    fn model() -> Value {
        serde_json::from_str(MODEL).unwrap()
    }

    fn reject(value: &Value) -> Rejection {
        let bytes = serde_json::to_vec(value).unwrap();
        validate(&bytes, LIMIT).expect_err("must be rejected")
    }

    fn with(edit: impl FnOnce(&mut Value)) -> Rejection {
        let mut order = model();
        edit(&mut order);
        reject(&order)
    }

    #[test]
    fn canonical_model_is_valid() {
        let order = validate(MODEL.as_bytes(), LIMIT).unwrap();
        assert_eq!(order.uid.as_str(), "b563feb7b2b84b6test");
        assert_eq!(order.json, MODEL);
    }

    #[test]
    fn unknown_fields_are_kept() {
        let mut order = model();
        order["gift_wrap"] = json!({"colour": "red"});
        let bytes = serde_json::to_vec(&order).unwrap();
        let valid = validate(&bytes, LIMIT).unwrap();
        assert!(valid.json.contains("gift_wrap"));
    }

    #[test]
    fn too_large() {
        let r = validate(MODEL.as_bytes(), 100).unwrap_err();
        assert_eq!(r.kind, RejectionKind::TooLarge);
        assert!(r.reason.contains("over the limit of 100"), "{r}");
    }

    #[test]
    fn not_utf8() {
        let r = validate(b"{\"a\": \"\xff\"}", LIMIT).unwrap_err();
        assert_eq!(r.kind, RejectionKind::NotUtf8);
        assert!(r.reason.contains("offset 7"), "{r}");
    }

    #[test]
    fn not_json() {
        let r = validate(b"{\"order_uid\": ", LIMIT).unwrap_err();
        assert_eq!(r.kind, RejectionKind::NotJson);
        let r = validate(b"hello", LIMIT).unwrap_err();
        assert_eq!(r.kind, RejectionKind::NotJson);
    }

    #[test]
    fn not_object() {
        for (text, found) in [("[1,2]", "an array"), ("42", "a number"), ("null", "null")] {
            let r = validate(text.as_bytes(), LIMIT).unwrap_err();
            assert_eq!(r.kind, RejectionKind::NotObject);
            assert!(r.reason.ends_with(found), "{r}");
        }
    }

    #[test]
    fn too_deep_without_recursion() {
        let deep = "[".repeat(100_000);
        let r = validate(deep.as_bytes(), LIMIT).unwrap_err();
        assert_eq!(r.kind, RejectionKind::TooDeep);
        // Brackets inside strings do not count.
        let mut order = model();
        order["note"] = json!("[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[");
        let bytes = serde_json::to_vec(&order).unwrap();
        assert!(validate(&bytes, LIMIT).is_ok());
    }

    #[test]
    fn missing_fields_name_their_path() {
        let r = with(|o| drop(o.as_object_mut().unwrap().remove("track_number")));
        assert_eq!(
            (r.kind, r.reason.as_str()),
            (RejectionKind::MissingField, "track_number: missing")
        );
        let r = with(|o| drop(o["delivery"].as_object_mut().unwrap().remove("email")));
        assert_eq!(r.reason, "delivery.email: missing");
        let r = with(|o| drop(o["items"][0].as_object_mut().unwrap().remove("rid")));
        assert_eq!(r.reason, "items[0].rid: missing");
    }

    #[test]
    fn mistyped_fields_name_their_path() {
        let r = with(|o| {
            let item = o["items"][0].clone();
            o["items"] = json!([item.clone(), item.clone(), item]);
            o["items"][2]["price"] = json!("453");
        });
        assert_eq!(r.kind, RejectionKind::WrongType);
        assert_eq!(
            r.reason,
            "items[2].price: expected an integer, found a string"
        );
        let r = with(|o| o["payment"]["amount"] = json!(18.5));
        assert_eq!(r.reason, "payment.amount: expected an integer, found 18.5");
        let r = with(|o| o["delivery"] = json!("nowhere"));
        assert_eq!(r.reason, "delivery: expected an object, found a string");
        let r = with(|o| o["items"] = json!({}));
        assert_eq!(r.reason, "items: expected an array, found an object");
        let r = with(|o| o["items"] = json!([7]));
        assert_eq!(r.reason, "items[0]: expected an object, found a number");
        let r = with(|o| o["locale"] = Value::Null);
        assert_eq!(r.reason, "locale: expected a string, found null");
    }

    #[test]
    fn negative_amounts_and_prices() {
        let r = with(|o| o["payment"]["amount"] = json!(-1));
        assert_eq!(r.kind, RejectionKind::NegativeAmount);
        assert_eq!(r.reason, "payment.amount: must not be negative, found -1");
        let r = with(|o| o["items"][0]["price"] = json!(-0.5));
        assert_eq!(r.kind, RejectionKind::NegativeAmount);
        assert!(r.reason.starts_with("items[0].price:"), "{r}");
    }

    #[test]
    fn sale_out_of_range() {
        let r = with(|o| o["items"][0]["sale"] = json!(101));
        assert_eq!(r.kind, RejectionKind::SaleOutOfRange);
        assert_eq!(
            r.reason,
            "items[0].sale: must be between 0 and 100, found 101"
        );
        let mut order = model();
        order["items"][0]["sale"] = json!(100);
        assert!(validate(&serde_json::to_vec(&order).unwrap(), LIMIT).is_ok());
    }

    #[test]
    fn empty_items() {
        let r = with(|o| o["items"] = json!([]));
        assert_eq!(r.kind, RejectionKind::EmptyItems);
    }

    #[test]
    fn bad_order_uids() {
        for (uid, why) in [
            ("", "must not be empty"),
            (&"x".repeat(65), "at most 64"),
            ("a b", "found ' '"),
            ("abc'; DROP TABLE orders; --", "found '\\''"),
            ("ünïcode", "found 'ü'"),
        ] {
            let r = with(|o| o["order_uid"] = json!(uid));
            assert_eq!(r.kind, RejectionKind::BadOrderUid, "{uid}");
            assert!(
                r.reason.starts_with("order_uid: ") && r.reason.contains(why),
                "{r}"
            );
        }
        let mut order = model();
        order["order_uid"] = json!("A-z_09".repeat(10) + "abcd");
        assert!(validate(&serde_json::to_vec(&order).unwrap(), LIMIT).is_ok());
    }

    #[test]
    fn bad_dates() {
        for date in [
            "2021-11-26",
            "yesterday",
            "2021-11-26T06:22:19",
            "2021-13-26T06:22:19Z",
        ] {
            let r = with(|o| o["date_created"] = json!(date));
            assert_eq!(r.kind, RejectionKind::BadDate, "{date}");
        }
        let mut order = model();
        order["date_created"] = json!("2021-11-26T06:22:19.123+03:00");
        assert!(validate(&serde_json::to_vec(&order).unwrap(), LIMIT).is_ok());
    }

    #[test]
    fn nul_characters_anywhere() {
        let r = with(|o| o["items"][0]["name"] = json!("Mas\u{0}caras"));
        assert_eq!(r.kind, RejectionKind::NulCharacter);
        assert_eq!(
            r.reason,
            "items[0].name: contains U+0000, which PostgreSQL cannot store"
        );
        let r = with(|o| o["extra"] = json!({"k\u{0}": 1}));
        assert_eq!(r.kind, RejectionKind::NulCharacter);
        // An escaped backslash followed by "u0000" is not a NUL.
        let mut order = model();
        order["note"] = json!("\\u0000");
        assert!(validate(&serde_json::to_vec(&order).unwrap(), LIMIT).is_ok());
    }

    #[test]
    fn hostile_strings_are_data() {
        let mut order = model();
        order["delivery"]["name"] = json!("<img src=x onerror=alert(1)> '; -- % \u{202e} 😀");
        assert!(validate(&serde_json::to_vec(&order).unwrap(), LIMIT).is_ok());
    }

    #[test]
    fn deep_objects_and_arrays_are_refused_before_parsing() {
        for deep in [
            "{\"a\":".repeat(100_000),
            "[".repeat(100_000) + &"]".repeat(100_000),
        ] {
            let r = validate(deep.as_bytes(), 10 << 20).unwrap_err();
            assert_eq!(r.kind, RejectionKind::TooDeep);
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]

        /// Any bytes at all: a verdict, never a panic, and a reason to read.
        #[test]
        fn arbitrary_bytes_get_a_verdict(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..2048)) {
            if let Err(r) = validate(&bytes, LIMIT) {
                proptest::prop_assert!(!r.reason.is_empty());
            }
        }

        /// The canonical order with bytes spliced in, cut short or overwritten:
        /// still a verdict; and whatever passes is JSON PostgreSQL can store.
        #[test]
        fn mutated_orders_get_a_verdict(
            at in 0usize..MODEL.len(),
            cut in 0usize..64,
            insert in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..16),
        ) {
            let mut bytes = MODEL.as_bytes().to_vec();
            let end = (at + cut).min(bytes.len());
            bytes.splice(at..end, insert);
            match validate(&bytes, LIMIT) {
                Ok(order) => {
                    let value: Value = serde_json::from_str(order.json).unwrap();
                    proptest::prop_assert!(value.is_object());
                    proptest::prop_assert!(!has_nul(&value));
                }
                Err(r) => proptest::prop_assert!(!r.reason.is_empty()),
            }
        }

        /// A known-bad value in any numeric field is rejected with its path.
        #[test]
        fn negative_numbers_are_rejected_with_their_path(
            field in proptest::sample::select(vec!["amount", "payment_dt", "delivery_cost", "goods_total", "custom_fee"]),
            n in i64::MIN..0,
        ) {
            let mut order = model();
            order["payment"][field] = json!(n);
            let r = reject(&order);
            proptest::prop_assert_eq!(r.kind, RejectionKind::NegativeAmount);
            let prefix = format!("payment.{field}:");
            proptest::prop_assert!(r.reason.starts_with(&prefix));
        }
    }

    #[test]
    fn every_kind_has_a_distinct_label() {
        let labels: std::collections::HashSet<_> =
            RejectionKind::ALL.iter().map(|k| k.label()).collect();
        assert_eq!(labels.len(), RejectionKind::ALL.len());
        for (i, kind) in RejectionKind::ALL.iter().enumerate() {
            assert_eq!(kind.index(), i);
        }
    }
}
