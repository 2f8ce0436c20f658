//! Every stored order's response body, by `order_uid`. Written by the
//! listener thread alone (from PostgreSQL); read by the HTTP workers.
//!
//! The bodies are kept in two identical maps, each behind its own `RwLock`
//! (the left-right pattern). An insert writes one copy, then the other, so
//! at any moment at least one copy is free and holds every order a reader
//! could already have seen; a lookup takes the read lock of whichever is
//! free (`try_read`) and never waits for a writer. Why two: on busy cores
//! the listener is sometimes preempted while it holds a write lock, and
//! with one lock every lookup waited for it (README, Performance). The
//! copies share the `Arc`s of keys and bodies, so the second costs one more
//! hash table, not a second copy of the orders.
//!
//! Pages, the random pick and the counters live in a separate index,
//! updated after both copies.

use crate::loader::{LoadError, Loader, RejectionPage};
use crate::order::RejectionKind;
use crate::store::StoredOrder;
use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard, TryLockError};

/// A page of ids, newest first, and the cursor for the next page.
#[derive(Debug, PartialEq, Eq)]
pub struct Page {
    pub uids: Vec<Arc<str>>,
    pub next_cursor: Option<i64>,
}

type Bodies = HashMap<Arc<str>, Arc<[u8]>>;

#[derive(Default)]
pub struct OrderCache {
    /// Two copies of the same map; see the module's comment.
    copies: [RwLock<Bodies>; 2],
    /// One insert at a time, so the copies change in the same order.
    writer: Mutex<()>,
    index: RwLock<Index>,
    loaded: AtomicBool,
    /// Reads PostgreSQL for what memory cannot answer; `None` in unit tests,
    /// which then get `LoadError::Unavailable`.
    loader: Option<Loader>,
}

/// Everything but the bodies, updated after them: a body can be served a
/// moment before its order is counted, never the other way round.
#[derive(Default)]
struct Index {
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

    /// A cache whose reads of PostgreSQL go through `loader`.
    pub fn with_loader(loader: Loader) -> OrderCache {
        OrderCache {
            loader: Some(loader),
            ..OrderCache::default()
        }
    }

    /// A page of dead letters, read from PostgreSQL by a loader.
    pub fn rejections(
        &self,
        before: Option<i64>,
        limit: usize,
        kind: Option<RejectionKind>,
    ) -> Result<RejectionPage, LoadError> {
        self.loader()?.rejections(before, limit, kind)
    }

    fn loader(&self) -> Result<&Loader, LoadError> {
        self.loader
            .as_ref()
            .ok_or_else(|| LoadError::Unavailable("no loader".into()))
    }

    pub fn get(&self, uid: &str) -> Option<Arc<[u8]>> {
        self.with_bodies(|bodies| bodies.get(uid).cloned())
    }

    pub fn contains(&self, uid: &str) -> bool {
        self.with_bodies(|bodies| bodies.contains_key(uid))
    }

    /// Adds orders not yet cached; returns how many were new. Orders are
    /// static, so a known uid is skipped, never overwritten. The first copy
    /// decides what is new (one hash per key, the entry); the second gets
    /// the same; the digests are computed outside every lock.
    pub fn insert(&self, orders: Vec<StoredOrder>) -> usize {
        let _writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let mut new = Vec::with_capacity(orders.len());
        {
            let mut first = write(&self.copies[0]);
            for order in orders {
                if let Entry::Vacant(vacant) = first.entry(order.uid.clone()) {
                    vacant.insert(order.body.clone());
                    new.push(order);
                }
            }
        }
        if new.is_empty() {
            return 0;
        }
        {
            let mut second = write(&self.copies[1]);
            for order in &new {
                second.insert(order.uid.clone(), order.body.clone());
            }
        }
        let digests: Vec<u64> = new
            .iter()
            .map(|order| entry_digest(&order.uid, &order.body))
            .collect();
        let mut index = write(&self.index);
        let index = &mut *index;
        for (order, digest) in new.iter().zip(digests) {
            index.digest = index.digest.wrapping_add(digest);
            index.body_bytes += order.body.len();
            index.by_id.insert(order.id, order.uid.clone());
            index.uids.push(order.uid.clone());
        }
        new.len()
    }

    /// Makes room for `additional` more orders at once, so a start-up load
    /// does not grow (rehash and copy) the maps and the vector step by step.
    pub fn reserve(&self, additional: usize) {
        let _writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        for copy in &self.copies {
            write(copy).reserve(additional);
        }
        write(&self.index).uids.reserve(additional);
    }

    /// Ids older than `before` (all when `None`), newest first.
    pub fn page(&self, before: Option<i64>, limit: usize) -> Page {
        let index = read(&self.index);
        let upper = before.map_or(Bound::Unbounded, Bound::Excluded);
        let mut older = index.by_id.range((Bound::Unbounded, upper)).rev();
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
        let index = read(&self.index);
        if index.uids.is_empty() {
            return None;
        }
        let i = rand::random_range(0..index.uids.len());
        Some(index.uids[i].clone())
    }

    pub fn len(&self) -> usize {
        read(&self.index).uids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// (orders, body bytes, digest) read under one lock.
    pub fn stats(&self) -> (usize, usize, u64) {
        let index = read(&self.index);
        (index.uids.len(), index.body_bytes, index.digest)
    }

    /// Set once the start-up load from PostgreSQL is complete.
    pub fn mark_loaded(&self) {
        self.loaded.store(true, Ordering::Release);
    }

    pub fn is_loaded(&self) -> bool {
        self.loaded.load(Ordering::Acquire)
    }

    /// Runs `f` on whichever copy is not being written. The writer holds at
    /// most one at a time, so a round finds one free unless it ran while
    /// the writer passed from one copy to the other; then it tries again.
    fn with_bodies<R>(&self, f: impl Fn(&Bodies) -> R) -> R {
        loop {
            for copy in &self.copies {
                match copy.try_read() {
                    Ok(bodies) => return f(&bodies),
                    Err(TryLockError::Poisoned(poisoned)) => return f(&poisoned.into_inner()),
                    Err(TryLockError::WouldBlock) => {}
                }
            }
            std::thread::yield_now();
        }
    }
}

// A panic while holding a lock cannot leave a map or the index half-written
// in a way readers care about, so poisoning is ignored.
fn read<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|e| e.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|e| e.into_inner())
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
    fn both_copies_hold_every_order_and_a_lookup_passes_a_write_locked_copy() {
        let cache = OrderCache::new();
        let orders: Vec<StoredOrder> = (0..100).map(|i| order(i, &format!("uid{i}"))).collect();
        assert_eq!(cache.insert(orders.clone()), 100);
        assert_eq!(cache.insert(orders), 0);
        assert!(cache.copies.iter().all(|copy| read(copy).len() == 100));
        for held in 0..2 {
            let _writing = write(&cache.copies[held]);
            assert!(cache.get("uid99").is_some());
            assert!(!cache.contains("nope"));
        }
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
