//! The order model (the shape of `testdata/model.json`, field for field and in
//! its key order) and its generator. Every field has a `fake` attribute;
//! [`Order::settle`] then derives what depends on other fields, so an order
//! from [`OrderSpec`] is consistent by construction:
//! `payment.transaction == order_uid`, every item carries the order's
//! `track_number`, `total_price = price * (100 - sale) / 100`,
//! `goods_total = Σ total_price`, `amount = goods_total + delivery_cost +
//! custom_fee`, and `payment_dt` is a little before `date_created`.

use fake::faker::address::en::{BuildingNumber, CityName, StateName, StreetName, ZipCode};
use fake::faker::company::en::CompanyName;
use fake::faker::internet::en::{SafeEmail, Username};
use fake::faker::name::en::Name;
use fake::faker::number::en::NumberWithFormat;
use fake::faker::phone_number::en::PhoneNumber;
use fake::{Dummy, Fake, Faker, RngExt};
use serde::{Deserialize, Serialize};
use std::ops::RangeInclusive;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// One order, exactly the fields of the canonical model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Dummy)]
pub struct Order {
    #[dummy(faker = "Chars(LOWER_ALNUM, 20)")]
    pub order_uid: String,
    #[dummy(faker = "Prefixed(\"WB\", Chars(UPPER_ALNUM, 12))")]
    pub track_number: String,
    #[dummy(expr = "\"WBIL\".into()")]
    pub entry: String,
    #[dummy(faker = "Faker")]
    pub delivery: Delivery,
    #[dummy(faker = "Faker")]
    pub payment: Payment,
    #[dummy(faker = "(Faker, 1..4)")]
    pub items: Vec<Item>,
    #[dummy(faker = "OneOf(LOCALES)")]
    pub locale: String,
    #[dummy(expr = "String::new()")]
    pub internal_signature: String,
    #[dummy(faker = "Username()")]
    pub customer_id: String,
    #[dummy(faker = "OneOf(DELIVERY_SERVICES)")]
    pub delivery_service: String,
    #[dummy(faker = "NumberWithFormat(\"#\")")]
    pub shardkey: String,
    #[dummy(faker = "1..=999")]
    pub sm_id: u64,
    #[dummy(faker = "Rfc3339Between(DATES_FROM, DATES_TO)")]
    pub date_created: String,
    #[dummy(faker = "NumberWithFormat(\"#\")")]
    pub oof_shard: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Dummy)]
pub struct Delivery {
    #[dummy(faker = "Name()")]
    pub name: String,
    #[dummy(faker = "PhoneNumber()")]
    pub phone: String,
    #[dummy(faker = "ZipCode()")]
    pub zip: String,
    #[dummy(faker = "CityName()")]
    pub city: String,
    #[dummy(faker = "StreetAddress")]
    pub address: String,
    #[dummy(faker = "StateName()")]
    pub region: String,
    #[dummy(faker = "SafeEmail()")]
    pub email: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Dummy)]
pub struct Payment {
    /// Set to the order's `order_uid` by [`Order::settle`].
    #[dummy(expr = "String::new()")]
    pub transaction: String,
    #[dummy(expr = "String::new()")]
    pub request_id: String,
    #[dummy(faker = "OneOf(CURRENCIES)")]
    pub currency: String,
    #[dummy(faker = "OneOf(PROVIDERS)")]
    pub provider: String,
    /// `goods_total + delivery_cost + custom_fee`, set by [`Order::settle`].
    #[dummy(expr = "0")]
    pub amount: u64,
    /// Unix seconds, a few minutes at most before `date_created`.
    #[dummy(faker = "DATES_FROM as u64..DATES_TO as u64")]
    pub payment_dt: u64,
    #[dummy(faker = "OneOf(BANKS)")]
    pub bank: String,
    #[dummy(faker = "0..=3000")]
    pub delivery_cost: u64,
    /// The sum of the items' `total_price`, set by [`Order::settle`].
    #[dummy(expr = "0")]
    pub goods_total: u64,
    #[dummy(faker = "OneOfNumbers(CUSTOM_FEES)")]
    pub custom_fee: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Dummy)]
pub struct Item {
    #[dummy(faker = "1_000_000..=9_999_999")]
    pub chrt_id: u64,
    /// The order's `track_number`, set by [`Order::settle`].
    #[dummy(expr = "String::new()")]
    pub track_number: String,
    #[dummy(faker = "50..=20_000")]
    pub price: u64,
    #[dummy(faker = "Chars(LOWER_HEX, 21)")]
    pub rid: String,
    #[dummy(faker = "OneOf(PRODUCTS)")]
    pub name: String,
    #[dummy(faker = "0..=90")]
    pub sale: u64,
    #[dummy(faker = "OneOf(SIZES)")]
    pub size: String,
    /// `price * (100 - sale) / 100`, set by [`Order::settle`].
    #[dummy(expr = "0")]
    pub total_price: u64,
    #[dummy(faker = "100_000..=99_999_999")]
    pub nm_id: u64,
    #[dummy(faker = "CompanyName()")]
    pub brand: String,
    #[dummy(faker = "OneOfNumbers(ITEM_STATUSES)")]
    pub status: u64,
}

/// What the generator is asked for: how many items an order has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderSpec {
    pub items: RangeInclusive<usize>,
}

impl Default for OrderSpec {
    fn default() -> OrderSpec {
        OrderSpec { items: 1..=5 }
    }
}

impl Dummy<OrderSpec> for Order {
    fn dummy_with_rng<R: RngExt + ?Sized>(spec: &OrderSpec, rng: &mut R) -> Order {
        let mut order: Order = Faker.fake_with_rng(rng);
        let n_items = rng.random_range(spec.items.clone());
        order.items = (0..n_items).map(|_| Faker.fake_with_rng(rng)).collect();
        order.settle(rng);
        order
    }
}

impl Order {
    /// Derives every field that follows from others (see the module doc).
    pub fn settle<R: RngExt + ?Sized>(&mut self, rng: &mut R) {
        self.payment.transaction.clone_from(&self.order_uid);
        for item in &mut self.items {
            item.track_number.clone_from(&self.track_number);
            item.total_price = item.price * (100 - item.sale.min(100)) / 100;
        }
        self.payment.goods_total = self.items.iter().map(|item| item.total_price).sum();
        self.payment.amount =
            self.payment.goods_total + self.payment.delivery_cost + self.payment.custom_fee;
        if let Ok(created) = OffsetDateTime::parse(&self.date_created, &Rfc3339) {
            let paid = created.unix_timestamp() - rng.random_range(0..=300);
            self.payment.payment_dt = u64::try_from(paid).unwrap_or(0);
        }
    }

    /// Checks the invariants [`Order::settle`] establishes; `Err` names the first one broken.
    pub fn check_consistency(&self) -> Result<(), String> {
        if self.payment.transaction != self.order_uid {
            return Err("payment.transaction != order_uid".into());
        }
        for (index, item) in self.items.iter().enumerate() {
            if item.track_number != self.track_number {
                return Err(format!("items[{index}].track_number != track_number"));
            }
            if item.total_price != item.price * 100u64.saturating_sub(item.sale) / 100 {
                return Err(format!(
                    "items[{index}].total_price does not follow price and sale"
                ));
            }
        }
        let goods: u64 = self.items.iter().map(|item| item.total_price).sum();
        if self.payment.goods_total != goods {
            return Err("payment.goods_total != sum of items' total_price".into());
        }
        let p = &self.payment;
        if p.amount != p.goods_total + p.delivery_cost + p.custom_fee {
            return Err("payment.amount != goods_total + delivery_cost + custom_fee".into());
        }
        let created = OffsetDateTime::parse(&self.date_created, &Rfc3339)
            .map_err(|e| format!("date_created is not RFC 3339: {e}"))?;
        let before = created.unix_timestamp() - i64::try_from(p.payment_dt).unwrap_or(i64::MAX);
        if !(0..=300).contains(&before) {
            return Err("payment_dt is not within 5 minutes before date_created".into());
        }
        Ok(())
    }
}

// The vocabularies. Names, e-mails, cities and brands come from `fake`.

pub const LOWER_ALNUM: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
pub const UPPER_ALNUM: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ";
pub const LOWER_HEX: &[u8] = b"0123456789abcdef";
/// 2020-01-01T00:00:00Z and 2026-01-01T00:00:00Z.
pub const DATES_FROM: i64 = 1_577_836_800;
pub const DATES_TO: i64 = 1_767_225_600;
const LOCALES: &[&str] = &["en", "ru", "de", "kk", "hy"];
const DELIVERY_SERVICES: &[&str] = &["meest", "cdek", "dhl", "boxberry", "wbdelivery", "ups"];
const CURRENCIES: &[&str] = &["USD", "EUR", "RUB", "KZT", "BYN", "AMD", "KGS", "UZS"];
const PROVIDERS: &[&str] = &["wbpay", "sberpay", "yoomoney", "tinkoffpay", "applepay"];
const BANKS: &[&str] = &[
    "alpha",
    "sber",
    "tinkoff",
    "vtb",
    "raiffeisen",
    "gazprombank",
];
const CUSTOM_FEES: &[u64] = &[0, 0, 0, 0, 0, 0, 0, 100, 250, 500];
const ITEM_STATUSES: &[u64] = &[200, 201, 202, 202, 202, 203, 204];
const SIZES: &[&str] = &["0", "XS", "S", "M", "L", "XL", "XXL", "42", "44", "46"];
const PRODUCTS: &[&str] = &[
    "Mascaras",
    "Lipstick",
    "Face cream",
    "Shampoo",
    "Running shoes",
    "Sneakers",
    "T-shirt",
    "Hoodie",
    "Jeans",
    "Winter jacket",
    "Wool socks",
    "Backpack",
    "Phone case",
    "USB-C cable",
    "Wireless earbuds",
    "Power bank",
    "Desk lamp",
    "Coffee mug",
    "Frying pan",
    "Bath towel",
    "Bed linen set",
    "Yoga mat",
    "Dumbbells",
    "Board game",
    "Children's book",
    "Notebook",
    "Gel pens",
    "Dog food",
    "Cat litter",
    "Vitamin C",
];

// Fakers of our own, usable in `#[dummy(faker = "..")]`.

/// `len` characters drawn from `alphabet`.
pub struct Chars(pub &'static [u8], pub usize);

impl Dummy<Chars> for String {
    fn dummy_with_rng<R: RngExt + ?Sized>(config: &Chars, rng: &mut R) -> String {
        let Chars(alphabet, len) = *config;
        (0..len)
            .map(|_| char::from(alphabet[rng.random_range(0..alphabet.len())]))
            .collect()
    }
}

/// A fixed prefix followed by random characters.
pub struct Prefixed(pub &'static str, pub Chars);

impl Dummy<Prefixed> for String {
    fn dummy_with_rng<R: RngExt + ?Sized>(config: &Prefixed, rng: &mut R) -> String {
        let rest: String = config.1.fake_with_rng(rng);
        format!("{}{rest}", config.0)
    }
}

/// One of a fixed list of words.
pub struct OneOf(pub &'static [&'static str]);

impl Dummy<OneOf> for String {
    fn dummy_with_rng<R: RngExt + ?Sized>(config: &OneOf, rng: &mut R) -> String {
        config.0[rng.random_range(0..config.0.len())].to_owned()
    }
}

/// One of a fixed list of numbers (repeat a number to weight it).
pub struct OneOfNumbers(pub &'static [u64]);

impl Dummy<OneOfNumbers> for u64 {
    fn dummy_with_rng<R: RngExt + ?Sized>(config: &OneOfNumbers, rng: &mut R) -> u64 {
        config.0[rng.random_range(0..config.0.len())]
    }
}

/// A street and a building number: "Maple Street 15".
pub struct StreetAddress;

impl Dummy<StreetAddress> for String {
    fn dummy_with_rng<R: RngExt + ?Sized>(_: &StreetAddress, rng: &mut R) -> String {
        let street: String = StreetName().fake_with_rng(rng);
        let number: String = BuildingNumber().fake_with_rng(rng);
        format!("{street} {number}")
    }
}

/// An RFC 3339 UTC date-time (`2021-11-26T06:22:19Z`) between two Unix times.
pub struct Rfc3339Between(pub i64, pub i64);

impl Dummy<Rfc3339Between> for String {
    fn dummy_with_rng<R: RngExt + ?Sized>(config: &Rfc3339Between, rng: &mut R) -> String {
        let seconds = rng.random_range(config.0..config.1);
        OffsetDateTime::from_unix_timestamp(seconds)
            .ok()
            .and_then(|date| date.format(&Rfc3339).ok())
            .unwrap_or_else(|| "2021-11-26T06:22:19Z".to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    #[test]
    fn same_seed_same_orders() {
        let spec = OrderSpec::default();
        let a: Vec<Order> = {
            let mut rng = StdRng::seed_from_u64(7);
            (0..20).map(|_| spec.fake_with_rng(&mut rng)).collect()
        };
        let mut rng = StdRng::seed_from_u64(7);
        let b: Vec<Order> = (0..20).map(|_| spec.fake_with_rng(&mut rng)).collect();
        assert_eq!(a, b);
        let mut rng = StdRng::seed_from_u64(8);
        let c: Order = spec.fake_with_rng(&mut rng);
        assert_ne!(a[0], c);
    }

    #[test]
    fn orders_are_consistent_and_respect_the_item_range() {
        let spec = OrderSpec { items: 2..=4 };
        let mut rng = StdRng::seed_from_u64(1);
        for _ in 0..2000 {
            let order: Order = spec.fake_with_rng(&mut rng);
            order.check_consistency().unwrap();
            assert!((2..=4).contains(&order.items.len()));
            assert_eq!(order.order_uid.len(), 20);
            assert!(order.date_created.ends_with('Z'), "{}", order.date_created);
        }
    }

    #[test]
    fn shape_and_key_order_are_the_models() {
        let model: serde_json::Value =
            serde_json::from_str(include_str!("../../testdata/model.json")).unwrap();
        let mut rng = StdRng::seed_from_u64(3);
        let order: Order = OrderSpec { items: 1..=1 }.fake_with_rng(&mut rng);
        let generated = serde_json::to_value(&order).unwrap();
        assert_eq!(shape(&model), shape(&generated));
        // The model itself reads back into the type and keeps its key order.
        let back: Order = serde_json::from_value(model.clone()).unwrap();
        assert_eq!(
            serde_json::to_string_pretty(&back).unwrap(),
            include_str!("../../testdata/model.json").trim_end()
        );
    }

    /// The keys (in order) and the JSON type of every value, recursively.
    fn shape(value: &serde_json::Value) -> String {
        use serde_json::Value;
        match value {
            Value::Object(map) => {
                let fields: Vec<String> = map
                    .iter()
                    .map(|(k, v)| format!("{k}:{}", shape(v)))
                    .collect();
                format!("{{{}}}", fields.join(","))
            }
            Value::Array(items) => {
                let items: Vec<String> = items.iter().map(shape).collect();
                format!("[{}]", items.join(","))
            }
            Value::String(_) => "s".into(),
            Value::Number(n) if n.is_u64() => "u".into(),
            Value::Number(_) => "n".into(),
            Value::Bool(_) => "b".into(),
            Value::Null => "null".into(),
        }
    }
}
