//! Every stored order's response body, by `order_uid`, behind one `RwLock`.
//! Written by the listener thread alone (from PostgreSQL); read by the HTTP
//! workers, which hold the read lock only long enough to clone an `Arc`.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// One stored order as loaded from PostgreSQL: its id, key and the
/// published text that every replica serves byte for byte.
#[derive(Debug, Clone)]
pub struct StoredOrder {
    pub id: i64,
    pub uid: Arc<str>,
    pub body: Arc<[u8]>,
}

/// A page of ids, newest first, and the cursor for the next page.
#[derive(Debug, PartialEq, Eq)]
pub struct Page {
    pub uids: Vec<Arc<str>>,
    pub next_cursor: Option<i64>,
}

#[derive(Default)]
pub struct OrderCache {
    inner: RwLock<Inner>,
    loaded: AtomicBool,
}

#[derive(Default)]
struct Inner {
    bodies: HashMap<Arc<str>, Arc<[u8]>>,
    /// Pages, newest first. Commit order is not id order, so late rows land
    /// in the middle: a tree keeps that O(log n).
    by_id: BTreeMap<i64, Arc<str>>,
    /// Every uid in arrival order, for a random pick in O(1).
    uids: Vec<Arc<str>>,
    body_bytes: usize,
    /// Order-independent digest of every `(uid, body)`, so replicas can be
    /// compared without listing them.
    digest: u64,
}

impl OrderCache {
    pub fn new() -> OrderCache {
        OrderCache::default()
    }

    pub fn get(&self, uid: &str) -> Option<Arc<[u8]>> {
        self.read().bodies.get(uid).cloned()
    }

    pub fn contains(&self, uid: &str) -> bool {
        self.read().bodies.contains_key(uid)
    }

    /// Adds orders not yet cached; returns how many were new. Orders are
    /// static, so a known uid is skipped, never overwritten. Each key is
    /// hashed once (the entry), and each digest is computed before the
    /// write lock is taken, so readers wait only for the map updates.
    pub fn insert(&self, orders: Vec<StoredOrder>) -> usize {
        let digests: Vec<u64> = orders
            .iter()
            .map(|order| entry_digest(&order.uid, &order.body))
            .collect();
        let mut inner = self.write();
        let inner = &mut *inner;
        let mut added = 0;
        for (order, digest) in orders.into_iter().zip(digests) {
            let StoredOrder { id, uid, body } = order;
            let Entry::Vacant(vacant) = inner.bodies.entry(uid) else {
                continue;
            };
            let uid = vacant.key().clone();
            inner.digest = inner.digest.wrapping_add(digest);
            inner.body_bytes += body.len();
            vacant.insert(body);
            inner.by_id.insert(id, uid.clone());
            inner.uids.push(uid);
            added += 1;
        }
        added
    }

    /// Makes room for `additional` more orders at once, so a start-up load
    /// does not grow (rehash and copy) the map and the vector step by step.
    pub fn reserve(&self, additional: usize) {
        let mut inner = self.write();
        inner.bodies.reserve(additional);
        inner.uids.reserve(additional);
    }

    /// Ids older than `before` (all when `None`), newest first.
    pub fn page(&self, before: Option<i64>, limit: usize) -> Page {
        let inner = self.read();
        let upper = before.map_or(Bound::Unbounded, Bound::Excluded);
        let mut older = inner.by_id.range((Bound::Unbounded, upper)).rev();
        let shown: Vec<(i64, Arc<str>)> = older
            .by_ref()
            .take(limit)
            .map(|(id, uid)| (*id, uid.clone()))
            .collect();
        let next_cursor = match (shown.last(), older.next()) {
            (Some((oldest_shown, _)), Some(_)) => Some(*oldest_shown),
            _ => None,
        };
        Page {
            uids: shown.into_iter().map(|(_, uid)| uid).collect(),
            next_cursor,
        }
    }

    /// A uniformly random cached uid.
    pub fn random(&self) -> Option<Arc<str>> {
        let inner = self.read();
        if inner.uids.is_empty() {
            return None;
        }
        let index = rand::random_range(0..inner.uids.len());
        Some(inner.uids[index].clone())
    }

    pub fn len(&self) -> usize {
        self.read().uids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// (orders, body bytes, digest) read under one lock.
    pub fn stats(&self) -> (usize, usize, u64) {
        let inner = self.read();
        (inner.uids.len(), inner.body_bytes, inner.digest)
    }

    /// Set once the start-up load from PostgreSQL is complete.
    pub fn mark_loaded(&self) {
        self.loaded.store(true, Ordering::Release);
    }

    pub fn is_loaded(&self) -> bool {
        self.loaded.load(Ordering::Acquire)
    }

    fn read(&self) -> RwLockReadGuard<'_, Inner> {
        // A panic while holding the lock cannot leave `Inner` half-written in
        // a way readers care about, so poisoning is ignored.
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }
}

/// XXH3 of `uid`, a separator and `body`: stable across processes and
/// versions, unlike `std`'s randomly seeded hasher.
fn entry_digest(uid: &str, body: &[u8]) -> u64 {
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    hasher.update(uid.as_bytes());
    hasher.update(&[0xff]);
    hasher.update(body);
    hasher.digest()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(id: i64, uid: &str) -> StoredOrder {
        StoredOrder {
            id,
            uid: uid.into(),
            body: format!("{{\"order_uid\": \"{uid}\"}}").into_bytes().into(),
        }
    }

    fn uids(page: &Page) -> Vec<&str> {
        page.uids.iter().map(|u| &**u).collect()
    }

    #[test]
    fn get_returns_the_exact_body() {
        let cache = OrderCache::new();
        assert_eq!(cache.insert(vec![order(1, "a")]), 1);
        assert_eq!(&*cache.get("a").unwrap(), br#"{"order_uid": "a"}"#);
        assert!(cache.get("b").is_none());
    }

    #[test]
    fn known_uids_are_not_overwritten() {
        let cache = OrderCache::new();
        cache.insert(vec![order(1, "a")]);
        let mut changed = order(9, "a");
        changed.body = b"{}".as_slice().into();
        assert_eq!(cache.insert(vec![changed]), 0);
        assert_eq!(&*cache.get("a").unwrap(), br#"{"order_uid": "a"}"#);
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn pages_are_newest_first_even_after_late_commits() {
        let cache = OrderCache::new();
        cache.insert(vec![order(1, "a"), order(2, "b"), order(5, "e")]);
        // Committed later, smaller ids.
        cache.insert(vec![order(4, "d"), order(3, "c")]);
        let first = cache.page(None, 2);
        assert_eq!(uids(&first), ["e", "d"]);
        let second = cache.page(first.next_cursor, 2);
        assert_eq!(uids(&second), ["c", "b"]);
        let third = cache.page(second.next_cursor, 2);
        assert_eq!(uids(&third), ["a"]);
        assert_eq!(third.next_cursor, None);
        assert_eq!(cache.page(None, 10).next_cursor, None);
    }

    #[test]
    fn digest_does_not_depend_on_arrival_order() {
        let one = OrderCache::new();
        one.insert(vec![order(1, "a"), order(2, "b")]);
        let two = OrderCache::new();
        two.insert(vec![order(2, "b")]);
        two.insert(vec![order(1, "a")]);
        assert_eq!(one.stats(), two.stats());
        let three = OrderCache::new();
        three.insert(vec![order(1, "a")]);
        assert_ne!(one.stats().2, three.stats().2);
    }

    #[test]
    fn random_picks_a_cached_uid() {
        let cache = OrderCache::new();
        assert!(cache.random().is_none());
        cache.insert(vec![order(1, "a"), order(2, "b")]);
        for _ in 0..20 {
            assert!(cache.contains(&cache.random().unwrap()));
        }
    }
}
