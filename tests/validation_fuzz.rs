//! Property tests of the public `order_service::order::validate(bytes,
//! max_bytes)`, driven by the canonical order `testdata/model.json`:
//!
//! - every field of the model, in orders of 1 to 3 items, deleted, retyped,
//!   negated, pushed out of range or given a NUL: rejected with the kind the
//!   contract names and a reason that starts with the field's path;
//! - the same fields given other valid values, and unknown fields of any
//!   shape: accepted, with the published text kept as it is;
//! - several mutations at once, bytes spliced into the text, arbitrary bytes
//!   and arbitrary JSON: a verdict, never a panic, always a reason;
//! - nesting of 100,000 arrays and objects, on a thread with a 256 KiB
//!   stack: refused as too deep, no stack overflow; the limit of 32 exact.
//!
//! Case counts are bounded (a few hundred per property) so the file runs in
//! seconds; `PROPTEST_CASES` raises them for a longer hunt.

use order_service::order::{validate, RejectionKind, MAX_DEPTH};
use proptest::prelude::*;
use proptest::sample::Index;
use serde_json::{json, Map, Value};
use std::thread;

const MODEL: &str = include_str!("../testdata/model.json");
const LIMIT: usize = 1 << 20;

fn cases(n: u32) -> ProptestConfig {
    let from_env = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok());
    ProptestConfig {
        cases: from_env.unwrap_or(n),
        // No files of past failures next to the sources: a failure prints
        // its minimal case.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

// ---------------------------------------------------------------------------
// The model's fields
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    Str,
    Int,
    Object,
    Array,
    /// An element of `items`.
    Item,
    /// null or a boolean: only in an order already mutated.
    Other,
}

impl Shape {
    fn expected(self) -> &'static str {
        match self {
            Shape::Str => "a string",
            Shape::Int => "an integer",
            Shape::Object | Shape::Item => "an object",
            Shape::Array => "an array",
            Shape::Other => "anything",
        }
    }

    fn accepts(self, value: &Value) -> bool {
        match self {
            Shape::Str => value.is_string(),
            Shape::Int => value.is_number(),
            Shape::Object | Shape::Item => value.is_object(),
            Shape::Array => value.is_array(),
            Shape::Other => true,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    Key(String),
    Index(usize),
}

/// One field of an order: where it is, how the reasons name it, its shape.
#[derive(Debug, Clone)]
struct Field {
    steps: Vec<Step>,
    path: String,
    shape: Shape,
}

impl Field {
    fn name(&self) -> &str {
        match self.steps.last() {
            Some(Step::Key(key)) => key,
            _ => "",
        }
    }

    fn is(&self, path: &str) -> bool {
        self.path == path
    }
}

/// The canonical order with `items` copies of its item (distinct `rid`s).
fn model(items: usize) -> Value {
    let mut order: Value = serde_json::from_str(MODEL).expect("model.json");
    let item = order["items"][0].clone();
    order["items"] = Value::Array(
        (0..items)
            .map(|i| {
                let mut it = item.clone();
                it["rid"] = json!(format!("rid{i}"));
                it
            })
            .collect(),
    );
    order
}

/// Every field of `order`, parents before children.
fn fields(order: &Value) -> Vec<Field> {
    fn walk(value: &Value, steps: &mut Vec<Step>, path: &str, out: &mut Vec<Field>) {
        match value {
            Value::Object(map) => {
                for (key, item) in map {
                    let child = if path.is_empty() {
                        key.clone()
                    } else {
                        format!("{path}.{key}")
                    };
                    steps.push(Step::Key(key.clone()));
                    out.push(Field {
                        steps: steps.clone(),
                        path: child.clone(),
                        shape: shape_of(item, false),
                    });
                    walk(item, steps, &child, out);
                    steps.pop();
                }
            }
            Value::Array(items) => {
                for (index, item) in items.iter().enumerate() {
                    let child = format!("{path}[{index}]");
                    steps.push(Step::Index(index));
                    out.push(Field {
                        steps: steps.clone(),
                        path: child.clone(),
                        shape: shape_of(item, true),
                    });
                    walk(item, steps, &child, out);
                    steps.pop();
                }
            }
            _ => {}
        }
    }
    fn shape_of(value: &Value, in_array: bool) -> Shape {
        match value {
            Value::String(_) => Shape::Str,
            Value::Number(_) => Shape::Int,
            Value::Array(_) => Shape::Array,
            Value::Object(_) if in_array => Shape::Item,
            Value::Object(_) => Shape::Object,
            Value::Null | Value::Bool(_) => Shape::Other,
        }
    }
    let mut out = Vec::new();
    walk(order, &mut Vec::new(), "", &mut out);
    out
}

fn at<'v>(order: &'v mut Value, steps: &[Step]) -> &'v mut Value {
    steps.iter().fold(order, |value, step| match step {
        Step::Key(key) => &mut value[key.as_str()],
        Step::Index(index) => &mut value[*index],
    })
}

fn parent<'v>(order: &'v mut Value, field: &Field) -> &'v mut Map<String, Value> {
    at(order, &field.steps[..field.steps.len() - 1])
        .as_object_mut()
        .expect("the parent of a keyed field is an object")
}

fn bytes(order: &Value) -> Vec<u8> {
    serde_json::to_vec(order).expect("serialise")
}

/// The verdict on `order`: `Ok(uid)` or `Err((kind, reason))`.
fn verdict(order: &Value) -> Result<String, (RejectionKind, String)> {
    let bytes = bytes(order);
    match validate(&bytes, LIMIT) {
        Ok(valid) => {
            assert_eq!(valid.json.as_bytes(), &bytes[..], "the text was changed");
            Ok(valid.uid.as_str().to_owned())
        }
        Err(r) => Err((r.kind, r.reason)),
    }
}

/// Picks one field of a model with 1 to 3 items that satisfies `keep`.
fn pick(items: usize, index: &Index, keep: impl Fn(&Field) -> bool) -> (Value, Field) {
    let order = model(items);
    let candidates: Vec<Field> = fields(&order).into_iter().filter(keep).collect();
    assert!(!candidates.is_empty(), "no field to pick");
    let field = candidates[index.index(candidates.len())].clone();
    (order, field)
}

/// JSON values without U+0000 and at most 3 levels deep.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        "[^\u{0}]{0,24}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[^\u{0}]{0,12}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Strings with no U+0000, including quotes, `--`, `%`, RTL marks and
/// four-byte characters.
fn any_text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[^\u{0}]{0,40}",
        Just("'; DROP TABLE orders; --".to_owned()),
        Just("%s%n %27 \\u0000 \\\" \u{202e}\u{200f}😀𝄞".to_owned()),
        Just(String::new()),
    ]
}

// ---------------------------------------------------------------------------
// Mutations known to be invalid: the expected kind and path
// ---------------------------------------------------------------------------

proptest! {
    #![proptest_config(cases(400))]

    #[test]
    fn a_deleted_field_is_missing_with_its_path(items in 1usize..4, index in any::<Index>()) {
        let (mut order, field) = pick(items, &index, |f| matches!(f.steps.last(), Some(Step::Key(_))));
        parent(&mut order, &field).remove(field.name());
        let (kind, reason) = verdict(&order).expect_err("a required field is missing");
        prop_assert_eq!(kind, RejectionKind::MissingField, "{}", reason);
        prop_assert_eq!(reason, format!("{}: missing", field.path));
    }

    #[test]
    fn a_retyped_field_is_wrong_type_with_its_path(
        items in 1usize..4,
        index in any::<Index>(),
        value in any_json(),
    ) {
        let (mut order, field) = pick(items, &index, |_| true);
        // A value of the field's own type becomes one of another type.
        let value = match (field.shape.accepts(&value), field.shape) {
            (false, _) => value,
            (true, Shape::Array) => json!({ "v": value }),
            (true, _) => json!([value]),
        };
        *at(&mut order, &field.steps) = value;
        let (kind, reason) = verdict(&order).expect_err("a field of the wrong type");
        let prefix = format!("{}: expected {}", field.path, field.shape.expected());
        prop_assert_eq!(kind, RejectionKind::WrongType, "{}", reason);
        prop_assert!(reason.starts_with(&prefix), "{:?} does not start with {:?}", reason, prefix);
    }

    #[test]
    fn an_empty_items_array_is_empty_items(_any in Just(())) {
        let mut order = model(1);
        order["items"] = json!([]);
        let (kind, reason) = verdict(&order).expect_err("no items");
        prop_assert_eq!(kind, RejectionKind::EmptyItems);
        prop_assert_eq!(reason, "items: must not be empty");
    }

    #[test]
    fn a_negated_number_is_negative_amount_with_its_path(
        items in 1usize..4,
        index in any::<Index>(),
        n in 1i64..=i64::MAX,
        fraction in prop::option::of(0.001f64..1e12),
    ) {
        let (mut order, field) = pick(items, &index, |f| f.shape == Shape::Int);
        *at(&mut order, &field.steps) = match fraction {
            Some(f) => json!(-f),
            None => json!(-n),
        };
        let (kind, reason) = verdict(&order).expect_err("a negative number");
        prop_assert_eq!(kind, RejectionKind::NegativeAmount, "{}", reason);
        let prefix = format!("{}: must not be negative", field.path);
        prop_assert!(reason.starts_with(&prefix), "{}", reason);
    }

    #[test]
    fn a_fraction_or_a_number_past_u64_is_wrong_type(
        items in 1usize..4,
        index in any::<Index>(),
        value in prop_oneof![
            (0u64..1_000_000, 1u32..1000).prop_map(|(whole, part)| whole as f64 + part as f64 / 1000.0),
            Just(1e20),
            Just(18446744073709551616.0),
        ],
    ) {
        let (mut order, field) = pick(items, &index, |f| f.shape == Shape::Int);
        *at(&mut order, &field.steps) = json!(value);
        let (kind, reason) = verdict(&order).expect_err("not an integer");
        prop_assert_eq!(kind, RejectionKind::WrongType, "{}", reason);
        let prefix = format!("{}: expected an integer", field.path);
        prop_assert!(reason.starts_with(&prefix), "{}", reason);
    }

    #[test]
    fn a_sale_over_100_is_out_of_range(items in 1usize..4, which in any::<Index>(), sale in 101u64..) {
        let mut order = model(items);
        let k = which.index(items);
        order["items"][k]["sale"] = json!(sale);
        let (kind, reason) = verdict(&order).expect_err("sale over 100");
        prop_assert_eq!(kind, RejectionKind::SaleOutOfRange, "{}", reason);
        let prefix = format!("items[{k}].sale: must be between 0 and 100");
        prop_assert!(reason.starts_with(&prefix), "{}", reason);
    }

    #[test]
    fn a_nul_anywhere_in_a_string_is_nul_character_with_its_path(
        items in 1usize..4,
        index in any::<Index>(),
        at_char in any::<Index>(),
        in_key in any::<bool>(),
    ) {
        let (mut order, field) = pick(items, &index, |f| f.shape == Shape::Str);
        let path = if in_key {
            // A NUL in the key of an unknown field beside it.
            let key = format!("extra\u{0}{}", field.name());
            parent(&mut order, &field).insert(key, json!(1));
            None
        } else {
            let value = at(&mut order, &field.steps);
            let mut text: Vec<char> = value.as_str().unwrap().chars().collect();
            let position = at_char.index(text.len() + 1);
            text.insert(position, '\0');
            *value = json!(text.into_iter().collect::<String>());
            Some(field.path.clone())
        };
        let (kind, reason) = verdict(&order).expect_err("a NUL");
        prop_assert_eq!(kind, RejectionKind::NulCharacter, "{}", reason);
        prop_assert!(reason.contains("U+0000"), "{}", reason);
        if let Some(path) = path {
            let prefix = format!("{path}: ");
            prop_assert!(reason.starts_with(&prefix), "{}", reason);
        }
    }

    #[test]
    fn a_bad_order_uid_is_bad_order_uid(
        uid in prop_oneof![
            Just(String::new()),
            "[A-Za-z0-9_-]{65,100}",
            "[A-Za-z0-9_-]{0,10}[^A-Za-z0-9_\u{0}-][A-Za-z0-9_-]{0,10}",
        ],
    ) {
        let mut order = model(1);
        order["order_uid"] = json!(uid);
        let (kind, reason) = verdict(&order).expect_err("a bad uid");
        prop_assert_eq!(kind, RejectionKind::BadOrderUid, "{}", reason);
        prop_assert!(reason.starts_with("order_uid: "), "{}", reason);
    }

    #[test]
    fn a_date_that_is_not_rfc_3339_is_bad_date(
        date in prop_oneof![
            "[a-z ]{0,20}",
            "[0-9]{4}-[0-9]{2}-[0-9]{2}",
            "[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2}",
            "[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}",
            "2021-(1[3-9]|[2-9][0-9])-01T00:00:00Z",
            "2021-01-(3[2-9]|[4-9][0-9])T00:00:00Z",
            "2021-01-01T(2[4-9]|[3-9][0-9]):00:00Z",
        ],
    ) {
        let mut order = model(1);
        order["date_created"] = json!(date);
        let (kind, reason) = verdict(&order).expect_err("a bad date");
        prop_assert_eq!(kind, RejectionKind::BadDate, "{}", reason);
        prop_assert!(reason.starts_with("date_created: "), "{}", reason);
    }
}

// ---------------------------------------------------------------------------
// Valid variations: accepted, text kept
// ---------------------------------------------------------------------------

proptest! {
    #![proptest_config(cases(300))]

    #[test]
    fn any_string_in_a_free_text_field_is_accepted(
        items in 1usize..4,
        index in any::<Index>(),
        text in any_text(),
    ) {
        let (mut order, field) = pick(items, &index, |f| {
            f.shape == Shape::Str && !f.is("order_uid") && !f.is("date_created")
        });
        *at(&mut order, &field.steps) = json!(text);
        prop_assert_eq!(verdict(&order), Ok("b563feb7b2b84b6test".to_owned()));
    }

    #[test]
    fn any_u64_in_a_number_field_is_accepted(
        items in 1usize..4,
        index in any::<Index>(),
        n in any::<u64>(),
        sale in 0u64..=100,
    ) {
        let (mut order, field) = pick(items, &index, |f| f.shape == Shape::Int);
        let value = if field.name() == "sale" { sale } else { n };
        *at(&mut order, &field.steps) = json!(value);
        prop_assert!(verdict(&order).is_ok(), "{} = {}: {:?}", field.path, value, verdict(&order));
    }

    #[test]
    fn any_valid_uid_is_accepted_as_the_key(uid in "[A-Za-z0-9_-]{1,64}") {
        let mut order = model(1);
        order["order_uid"] = json!(uid);
        prop_assert_eq!(verdict(&order), Ok(uid));
    }

    #[test]
    fn any_rfc_3339_date_is_accepted(
        (year, month, day) in (1000u32..=9999, 1u32..=12, 1u32..=28),
        (hour, minute, second) in (0u32..24, 0u32..60, 0u32..60),
        fraction in prop::option::of("[0-9]{1,9}"),
        offset in prop_oneof![
            Just("Z".to_owned()),
            Just("z".to_owned()),
            (any::<bool>(), 0u32..24, 0u32..60).prop_map(|(plus, h, m)| {
                format!("{}{h:02}:{m:02}", if plus { '+' } else { '-' })
            }),
        ],
    ) {
        let fraction = fraction.map(|f| format!(".{f}")).unwrap_or_default();
        let date = format!("{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}{fraction}{offset}");
        let mut order = model(1);
        order["date_created"] = json!(date);
        prop_assert!(verdict(&order).is_ok(), "{}: {:?}", date, verdict(&order));
    }

    #[test]
    fn unknown_fields_of_any_shape_are_kept(
        items in 1usize..4,
        index in any::<Index>(),
        key in "[^\u{0}]{0,16}",
        value in any_json(),
    ) {
        let (mut order, field) = pick(items, &index, |f| matches!(f.shape, Shape::Object | Shape::Item));
        let target = at(&mut order, &field.steps).as_object_mut().unwrap();
        prop_assume!(!target.contains_key(&key));
        target.insert(key, value);
        // Also at the root.
        order.as_object_mut().unwrap().insert("x-extra".into(), json!({"k": [1, {"v": null}]}));
        prop_assert!(verdict(&order).is_ok(), "{:?}", verdict(&order));
    }
}

// ---------------------------------------------------------------------------
// Anything at all: a verdict, never a panic, always a reason
// ---------------------------------------------------------------------------

/// The checks every verdict must pass, whatever the input.
fn sound(input: &[u8], max: usize) -> Result<(), TestCaseError> {
    match validate(input, max) {
        Ok(order) => {
            prop_assert!(input.len() <= max);
            prop_assert_eq!(order.json.as_bytes(), input, "the text was changed");
            let value: Value = serde_json::from_slice(input).expect("accepted means JSON");
            prop_assert_eq!(value["order_uid"].as_str(), Some(order.uid.as_str()));
            prop_assert!(!order.json.contains('\0'));
        }
        Err(r) => {
            prop_assert!(
                !r.reason.trim().is_empty(),
                "{:?} with an empty reason",
                r.kind
            );
            prop_assert!(
                !matches!(
                    r.kind,
                    RejectionKind::ConflictingDuplicate
                        | RejectionKind::DatabaseRejected
                        | RejectionKind::RedeliveryLimit
                ),
                "validation cannot know {:?}",
                r.kind
            );
            if input.len() > max {
                prop_assert_eq!(r.kind, RejectionKind::TooLarge);
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(cases(600))]

    #[test]
    fn arbitrary_bytes_get_a_sound_verdict(
        input in prop::collection::vec(any::<u8>(), 0..4096),
        max in prop_oneof![Just(LIMIT), 0usize..4096],
    ) {
        sound(&input, max)?;
    }

    #[test]
    fn arbitrary_json_gets_a_sound_verdict(value in any_json()) {
        let input = bytes(&value);
        sound(&input, LIMIT)?;
        if !value.is_object() {
            prop_assert_eq!(validate(&input, LIMIT).unwrap_err().kind, RejectionKind::NotObject);
        }
    }

    #[test]
    fn several_mutations_at_once_get_a_sound_verdict(
        items in 1usize..4,
        edits in prop::collection::vec((any::<Index>(), 0u8..6, any_json()), 1..6),
    ) {
        let mut order = model(items);
        for (index, what, value) in edits {
            let all = fields(&order);
            if all.is_empty() {
                break;
            }
            let field = all[index.index(all.len())].clone();
            match what {
                0 => {
                    if let Some(Step::Key(key)) = field.steps.last() {
                        let key = key.clone();
                        if let Some(map) = at(&mut order, &field.steps[..field.steps.len() - 1]).as_object_mut() {
                            map.remove(&key);
                        }
                    }
                }
                1 => *at(&mut order, &field.steps) = value,
                2 => *at(&mut order, &field.steps) = json!(-7),
                3 => *at(&mut order, &field.steps) = json!("with\u{0}nul"),
                4 => *at(&mut order, &field.steps) = json!(101),
                _ => *at(&mut order, &field.steps) = json!([]),
            }
        }
        sound(&bytes(&order), LIMIT)?;
    }

    #[test]
    fn bytes_spliced_into_an_order_get_a_sound_verdict(
        pretty in any::<bool>(),
        at_byte in any::<Index>(),
        cut in 0usize..32,
        insert in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..24),
            Just(b"\\u0000".to_vec()),
            Just(b"\"".to_vec()),
            Just(b"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[".to_vec()),
            Just(vec![0xff, 0xfe]),
            Just(vec![0xed, 0xa0, 0x80]),
            Just(b"-1".to_vec()),
            Just(b"1e999".to_vec()),
        ],
    ) {
        let order = model(2);
        let mut input = if pretty {
            serde_json::to_vec_pretty(&order).unwrap()
        } else {
            bytes(&order)
        };
        let start = at_byte.index(input.len() + 1);
        let end = (start + cut).min(input.len());
        input.splice(start..end, insert);
        sound(&input, LIMIT)?;
    }
}

// ---------------------------------------------------------------------------
// Depth: refused before parsing, no recursion, the limit exact
// ---------------------------------------------------------------------------

/// Runs `f` on a thread with a small stack: a recursive parse of 100,000
/// levels would overflow it (and abort the test binary).
fn on_small_stack(f: impl FnOnce() + Send + 'static) {
    thread::Builder::new()
        .name("small-stack".into())
        .stack_size(256 * 1024)
        .spawn(f)
        .expect("spawn")
        .join()
        .expect("no panic on the small stack");
}

#[test]
fn a_hundred_thousand_nested_arrays_and_objects_are_too_deep() {
    on_small_stack(|| {
        const N: usize = 100_000;
        let inputs = [
            ("arrays", "[".repeat(N) + &"]".repeat(N)),
            ("arrays, unclosed", "[".repeat(N)),
            ("objects", "{\"a\":".repeat(N) + "1" + &"}".repeat(N)),
            ("objects, unclosed", "{\"a\":".repeat(N)),
            (
                "mixed",
                "[{\"a\":".repeat(N / 2) + "1" + &"}]".repeat(N / 2),
            ),
            (
                "inside an order",
                format!(
                    "{{\"deep\":{},{}",
                    "[".repeat(N) + &"]".repeat(N),
                    &String::from_utf8(bytes(&model(1))).unwrap()[1..]
                ),
            ),
        ];
        for (name, input) in inputs {
            let r = validate(input.as_bytes(), 16 << 20).expect_err(name);
            assert_eq!(r.kind, RejectionKind::TooDeep, "{name}: {r}");
            assert!(!r.reason.is_empty());
        }
        // 100,000 closers, and brackets inside strings, are no nesting.
        let closers = "]".repeat(N);
        let r = validate(closers.as_bytes(), 16 << 20).unwrap_err();
        assert_eq!(r.kind, RejectionKind::NotJson, "{r}");
        let mut order = model(1);
        order["note"] = json!("[".repeat(N));
        order["quoted"] = json!(format!("\\\"{}", "{".repeat(N)));
        order["escaped_backslash"] = json!(format!("\\\\{}", "[".repeat(N)));
        let input = bytes(&order);
        assert!(validate(&input, 16 << 20).is_ok(), "brackets in strings");
    });
}

#[test]
fn the_depth_limit_is_exact() {
    // The root object is level 1: an unknown field nested to level 32 is
    // accepted, to level 33 refused, whether arrays or objects.
    let nested = |levels: usize, array: bool| -> Value {
        let mut value = json!(1);
        for _ in 0..levels {
            value = if array {
                json!([value])
            } else {
                json!({ "n": value })
            };
        }
        value
    };
    for array in [true, false] {
        let mut order = model(1);
        order["deep"] = nested(MAX_DEPTH - 1, array);
        assert!(
            verdict(&order).is_ok(),
            "depth {MAX_DEPTH}: {:?}",
            verdict(&order)
        );
        order["deep"] = nested(MAX_DEPTH, array);
        let (kind, reason) = verdict(&order).unwrap_err();
        assert_eq!(
            kind,
            RejectionKind::TooDeep,
            "depth {}: {reason}",
            MAX_DEPTH + 1
        );
        assert!(reason.contains(&MAX_DEPTH.to_string()), "{reason}");
    }
}

#[test]
fn size_is_checked_first_and_the_limit_is_inclusive() {
    let input = bytes(&model(1));
    assert!(validate(&input, input.len()).is_ok());
    let r = validate(&input, input.len() - 1).unwrap_err();
    assert_eq!(r.kind, RejectionKind::TooLarge);
    // Even bytes that are not UTF-8 are too large first.
    let r = validate(&[0xff; 100], 99).unwrap_err();
    assert_eq!(r.kind, RejectionKind::TooLarge);
}
