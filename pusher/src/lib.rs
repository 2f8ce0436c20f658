//! The pusher's pure half: realistic orders generated with `fake`, the hostile
//! variants the service must reject, and the parsing of `--from` files. No
//! I/O and no clock here, so the tests use exactly what the binary publishes.

pub mod documents;
pub mod invalid;
pub mod order;

pub use invalid::{invalid_kinds, invalid_message, parse_invalid_kind};
pub use order::{Delivery, Item, Order, OrderSpec, Payment};
pub use order_service::order::RejectionKind;
