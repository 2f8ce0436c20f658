//! Stored orders' response bodies, by `order_uid`, in one of two modes
//! behind the one type `OrderCache`; the HTTP code does not know which runs.
//!
//! **Unbounded** (`CACHE_MAX_BYTES` unset or 0): every stored order, written
//! by the listener thread alone (from PostgreSQL), read by the HTTP workers.
//! The bodies are kept in two identical maps, each behind its own `RwLock`
//! (the left-right pattern). An insert writes one copy, then the other, so
//! at any moment at least one copy is free and holds every order a reader
//! could already have seen; a lookup takes the read lock of whichever is
//! free (`try_read`) and never waits for a writer. Why two: on busy cores
//! the listener is sometimes preempted while it holds a write lock, and
//! with one lock every lookup waited for it (README, Performance). The
//! copies share the `Arc`s of keys and bodies, so the second costs one more
//! hash table, not a second copy of the orders. Pages, the random pick and
//! the counters live in a separate index, updated after both copies. A
//! miss is a 404 from memory, as the cache holds everything.
//!
//! **Bounded**: a `quick_cache` (S3-FIFO: scan-resistant, sync, no
//! background thread) weighed in bytes, each entry its uid, its body and
//! `ENTRY_OVERHEAD`, never over the budget. A miss asks a loader thread
//! (`loader.rs`), which reads PostgreSQL; what it finds is inserted. Pages
//! and the random pick are read from PostgreSQL by the loaders too. Its
//! shards each have one `RwLock`, held for writing for one entry at a time
//! (never a batch), so a hit waits at most for one insert into its shard.

use crate::loader::{IdPage, LoadError, Loader, RejectionPage};
use crate::order::RejectionKind;
use crate::store::StoredOrder;
use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::ops::Bound;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard, TryLockError};

/// A page of ids, newest first, and the cursor for the next page.
pub type Page = IdPage;

/// Bytes counted per cached order besides its uid and body: the two `Arc`
/// headers, the key and value pointers in the shard's table and its slot,
/// and quick_cache's per-entry state. An estimate on the high side, so the
/// budget bounds real memory rather than only the JSON.
pub const ENTRY_OVERHEAD: u64 = 96;

/// What memory alone says of a uid (`recall`).
#[derive(Debug, PartialEq, Eq)]
pub enum Recall {
    Found(Arc<[u8]>),
    /// Unbounded: the cache holds every stored order, so this is a 404.
    NotFound,
    /// Bounded: only PostgreSQL can tell (`load_then`).
    Load,
}

/// What a lookup found.
#[derive(Debug, PartialEq, Eq)]
pub enum Lookup {
    Found(Arc<[u8]>),
    /// PostgreSQL has no such order (or, unbounded, the cache does not).
    NotFound,
    /// It may exist, but nobody could say in time: answer 503.
    Unavailable(LoadError),
}

type Bodies = HashMap<Arc<str>, Arc<[u8]>>;

pub struct OrderCache {
    memory: Memory,
    loaded: AtomicBool,
    /// Reads PostgreSQL for what memory cannot answer; `None` in unit tests,
    /// which then get `LoadError::Unavailable`.
    loader: Option<Loader>,
    hits: AtomicU64,
    misses: AtomicU64,
}

enum Memory {
    Everything(Everything),
    Bounded(Bounded),
}

impl Default for OrderCache {
    fn default() -> OrderCache {
        OrderCache::build(Memory::Everything(Everything::default()), None)
    }
}

/// The unbounded store: every order, twice (see the module's comment).
#[derive(Default)]
struct Everything {
    /// Two copies of the same map; see the module's comment.
    copies: [RwLock<Bodies>; 2],
    /// One insert at a time, so the copies change in the same order.
    writer: Mutex<()>,
    index: RwLock<Index>,
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

/// Weighs an entry for quick_cache: the bytes the budget counts.
#[derive(Clone)]
struct Weigh;

impl quick_cache::Weighter<Arc<str>, Arc<[u8]>> for Weigh {
    fn weight(&self, uid: &Arc<str>, body: &Arc<[u8]>) -> u64 {
        weight(uid, body)
    }
}

fn weight(uid: &str, body: &[u8]) -> u64 {
    uid.len() as u64 + body.len() as u64 + ENTRY_OVERHEAD
}

/// Counts evictions, and drops what it evicts outside the shard's lock
/// (quick_cache's default keeps up to two per request for that too).
#[derive(Clone, Default)]
struct Evictions(Arc<AtomicU64>);

impl quick_cache::Lifecycle<Arc<str>, Arc<[u8]>> for Evictions {
    type RequestState = Vec<(Arc<str>, Arc<[u8]>)>;

    fn on_evict(&self, evicted: &mut Self::RequestState, uid: Arc<str>, body: Arc<[u8]>) {
        self.0.fetch_add(1, Ordering::Relaxed);
        evicted.push((uid, body));
    }
}

type Sieve = quick_cache::sync::Cache<
    Arc<str>,
    Arc<[u8]>,
    Weigh,
    std::collections::hash_map::RandomState,
    Evictions,
>;

/// The bounded store.
struct Bounded {
    /// Shared with the loaders' callbacks, which insert what they read.
    cache: Arc<Sieve>,
    budget: u64,
    evictions: Arc<AtomicU64>,
}

impl Bounded {
    fn new(budget: u64) -> Bounded {
        let evictions = Evictions::default();
        let counter = evictions.0.clone();
        // Entries of about 1 KB (orders run 0.8 to 2 KB). The estimate sizes
        // the tables and the ghost list (the uids recently evicted, whose
        // return goes straight to the hot queue): one ghost per entry, so an
        // order read twice within a budget's worth of misses stays.
        let estimated = usize::try_from(budget / 1024).unwrap_or(usize::MAX).max(16);
        let options = quick_cache::OptionsBuilder::new()
            .estimated_items_capacity(estimated)
            .ghost_allocation(1.0)
            .weight_capacity(budget)
            .build()
            .expect("a weight capacity and an item estimate are all it needs");
        Bounded {
            cache: Arc::new(Sieve::with_options(
                options,
                Weigh,
                Default::default(),
                evictions,
            )),
            budget,
            evictions: counter,
        }
    }
}

impl OrderCache {
    /// An unbounded cache with no loader (unit tests).
    pub fn new() -> OrderCache {
        OrderCache::default()
    }

    /// The service's cache: unbounded when `budget` is `None`, else at most
    /// `budget` bytes; what memory cannot answer goes through `loader`.
    pub fn with_loader(loader: Loader, budget: Option<u64>) -> OrderCache {
        let memory = match budget {
            None => Memory::Everything(Everything::default()),
            Some(bytes) => Memory::Bounded(Bounded::new(bytes)),
        };
        OrderCache::build(memory, Some(loader))
    }

    /// A bounded cache with no loader (unit tests).
    pub fn bounded(budget: u64) -> OrderCache {
        OrderCache::build(Memory::Bounded(Bounded::new(budget)), None)
    }

    fn build(memory: Memory, loader: Option<Loader>) -> OrderCache {
        OrderCache {
            memory,
            loaded: AtomicBool::new(false),
            loader,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    /// The budget in bytes, `None` when unbounded.
    pub fn budget(&self) -> Option<u64> {
        match &self.memory {
            Memory::Everything(_) => None,
            Memory::Bounded(bounded) => Some(bounded.budget),
        }
    }

    /// An order's body from memory, or what to do about its absence; a hit
    /// or a miss is counted. Never waits for the listener or PostgreSQL.
    pub fn recall(&self, uid: &str) -> Recall {
        if let Some(body) = self.get(uid) {
            self.hits.fetch_add(1, Ordering::Relaxed);
            return Recall::Found(body);
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        match &self.memory {
            Memory::Everything(_) => Recall::NotFound,
            Memory::Bounded(_) => Recall::Load,
        }
    }

    /// Reads the order `uid` from PostgreSQL through a loader, keeps what
    /// it finds, and calls `then` once with the outcome: never later than
    /// the loaders' deadline (`LoadError::Timeout`), at once when it cannot
    /// be asked. For a `Recall::Load`; the caller does not wait.
    pub fn load_then(&self, uid: &str, then: impl FnOnce(Lookup) + Send + 'static) {
        let Memory::Bounded(bounded) = &self.memory else {
            return then(Lookup::NotFound);
        };
        let loader = match self.loader() {
            Ok(loader) => loader,
            Err(err) => return then(Lookup::Unavailable(err)),
        };
        let cache = bounded.cache.clone();
        loader.order_then(
            uid,
            Box::new(move |answer| {
                then(match answer {
                    Ok(Some(order)) => {
                        // The listener may have put it there meanwhile:
                        // either copy holds the same bytes.
                        cache.insert(order.uid, order.body.clone());
                        Lookup::Found(order.body)
                    }
                    Ok(None) => Lookup::NotFound,
                    Err(err) => Lookup::Unavailable(err),
                })
            }),
        );
    }

    /// An order's body: from memory, else (bounded) from PostgreSQL through
    /// a loader, waiting for it (`recall`, then `load_then`). Unit tests
    /// only: the service never waits for a miss.
    #[cfg(test)]
    pub fn lookup(&self, uid: &str) -> Lookup {
        match self.recall(uid) {
            Recall::Found(body) => Lookup::Found(body),
            Recall::NotFound => Lookup::NotFound,
            Recall::Load => {
                let (reply, answer) = crossbeam_channel::bounded(1);
                self.load_then(uid, move |lookup| {
                    let _ = reply.send(lookup);
                });
                answer
                    .recv_timeout(crate::loader::DEADLINE)
                    .unwrap_or(Lookup::Unavailable(LoadError::Timeout))
            }
        }
    }

    /// The body if it is in memory; never asks PostgreSQL.
    pub fn get(&self, uid: &str) -> Option<Arc<[u8]>> {
        match &self.memory {
            Memory::Everything(all) => all.get(uid),
            Memory::Bounded(bounded) => bounded.cache.get(uid),
        }
    }

    /// Whether `uid` is in memory (does not count as a use when bounded).
    pub fn contains(&self, uid: &str) -> bool {
        match &self.memory {
            Memory::Everything(all) => all.contains(uid),
            Memory::Bounded(bounded) => bounded.cache.contains_key(uid),
        }
    }

    /// Adds orders not yet cached; returns how many were new. Orders are
    /// static, so a known uid is skipped, never overwritten. Public for the
    /// listener and for a writer that hands over what it committed.
    pub fn insert(&self, orders: Vec<StoredOrder>) -> usize {
        match &self.memory {
            Memory::Everything(all) => all.insert(orders),
            Memory::Bounded(bounded) => {
                let mut new = 0;
                for order in orders {
                    if !bounded.cache.contains_key(&*order.uid) {
                        bounded.cache.insert(order.uid, order.body);
                        new += 1;
                    }
                }
                new
            }
        }
    }

    /// Makes room for `additional` more orders at once (unbounded), so a
    /// start-up load does not grow the maps step by step.
    pub fn reserve(&self, additional: usize) {
        if let Memory::Everything(all) = &self.memory {
            all.reserve(additional);
        }
    }

    /// Whether an order of these sizes still fits the budget without
    /// evicting anything (always, unbounded): the start-up load stops at the
    /// first that does not.
    pub fn has_room_for(&self, uid: &str, body: &[u8]) -> bool {
        match &self.memory {
            Memory::Everything(_) => true,
            Memory::Bounded(bounded) => {
                bounded.cache.weight() + weight(uid, body) <= bounded.budget
            }
        }
    }

    /// Ids older than `before` (all when `None`), newest first: from memory
    /// when it holds every order, else from PostgreSQL through a loader.
    pub fn page(&self, before: Option<i64>, limit: usize) -> Result<Page, LoadError> {
        match &self.memory {
            Memory::Everything(all) => Ok(all.page(before, limit)),
            Memory::Bounded(_) => self.loader()?.order_page(before, limit),
        }
    }

    /// A random stored uid, `None` when there is none. Unbounded: uniform
    /// over the cache, O(1). Bounded: from PostgreSQL, O(log n) (see
    /// `store::random_order`).
    pub fn random(&self) -> Result<Option<Arc<str>>, LoadError> {
        match &self.memory {
            Memory::Everything(all) => Ok(all.random()),
            Memory::Bounded(_) => self.loader()?.random(),
        }
    }

    /// Orders in memory.
    pub fn len(&self) -> usize {
        match &self.memory {
            Memory::Everything(all) => all.len(),
            Memory::Bounded(bounded) => bounded.cache.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// (orders, bytes, digest) read under one lock. Bounded, the bytes are
    /// the weight the budget counts and the digest is 0: what a bounded
    /// cache holds differs between replicas by design.
    pub fn stats(&self) -> (usize, usize, u64) {
        match &self.memory {
            Memory::Everything(all) => all.stats(),
            Memory::Bounded(bounded) => (
                bounded.cache.len(),
                usize::try_from(bounded.cache.weight()).unwrap_or(usize::MAX),
                0,
            ),
        }
    }

    /// Set once the start-up load from PostgreSQL is complete.
    pub fn mark_loaded(&self) {
        self.loaded.store(true, Ordering::Release);
    }

    pub fn is_loaded(&self) -> bool {
        self.loaded.load(Ordering::Acquire)
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

    /// The cache's and the loaders' metrics beyond `CacheFigures` (contract
    /// C2 names), in the Prometheus text format.
    pub fn render_metrics(&self, out: &mut String) {
        let (evictions, budget) = match &self.memory {
            Memory::Everything(_) => (0, 0),
            Memory::Bounded(bounded) => (bounded.evictions.load(Ordering::Relaxed), bounded.budget),
        };
        let mut line = |name: &str, help: &str, kind: &str, value: u64| {
            let _ = writeln!(out, "# HELP order_service_{name} {help}");
            let _ = writeln!(out, "# TYPE order_service_{name} {kind}");
            let _ = writeln!(out, "order_service_{name} {value}");
        };
        line(
            "cache_hits_total",
            "Order lookups answered from memory.",
            "counter",
            self.hits.load(Ordering::Relaxed),
        );
        line(
            "cache_misses_total",
            "Order lookups not in memory (bounded: read from PostgreSQL).",
            "counter",
            self.misses.load(Ordering::Relaxed),
        );
        line(
            "cache_evictions_total",
            "Orders evicted to keep the cache within its budget.",
            "counter",
            evictions,
        );
        line(
            "cache_budget_bytes",
            "CACHE_MAX_BYTES; 0 when unbounded.",
            "gauge",
            budget,
        );
        let Some(loader) = &self.loader else {
            return;
        };
        let stats = loader.stats();
        line(
            "loader_queue_depth",
            "Reads waiting for a loader thread.",
            "gauge",
            loader.queue_depth() as u64,
        );
        line(
            "loader_errors_total",
            "Reads answered 503: queue full, deadline passed or PostgreSQL unavailable.",
            "counter",
            stats.errors.load(Ordering::Relaxed),
        );
        line(
            "loader_busy_total",
            "Reads refused at once because the loader queue was full.",
            "counter",
            stats.busy.load(Ordering::Relaxed),
        );
        line(
            "loader_uids_read_total",
            "Order uids looked up in PostgreSQL by the loaders.",
            "counter",
            stats.queries.load(Ordering::Relaxed),
        );
        stats.miss_latency.render(
            out,
            "cache_miss_duration_seconds",
            "Time from a cache miss to the loader's answer (the request waits parked, holding no worker).",
        );
    }

    fn loader(&self) -> Result<&Loader, LoadError> {
        self.loader
            .as_ref()
            .ok_or_else(|| LoadError::Unavailable("no loader".into()))
    }
}

impl Everything {
    fn get(&self, uid: &str) -> Option<Arc<[u8]>> {
        self.with_bodies(|bodies| bodies.get(uid).cloned())
    }

    fn contains(&self, uid: &str) -> bool {
        self.with_bodies(|bodies| bodies.contains_key(uid))
    }

    /// Adds orders not yet cached; returns how many were new. Orders are
    /// static, so a known uid is skipped, never overwritten. The first copy
    /// decides what is new (one hash per key, the entry); the second gets
    /// the same; the digests are computed outside every lock.
    fn insert(&self, orders: Vec<StoredOrder>) -> usize {
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
    fn reserve(&self, additional: usize) {
        let _writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        for copy in &self.copies {
            write(copy).reserve(additional);
        }
        write(&self.index).uids.reserve(additional);
    }

    /// Ids older than `before` (all when `None`), newest first.
    fn page(&self, before: Option<i64>, limit: usize) -> Page {
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
    fn random(&self) -> Option<Arc<str>> {
        let index = read(&self.index);
        if index.uids.is_empty() {
            return None;
        }
        let i = rand::random_range(0..index.uids.len());
        Some(index.uids[i].clone())
    }

    fn len(&self) -> usize {
        read(&self.index).uids.len()
    }

    /// (orders, body bytes, digest) read under one lock.
    fn stats(&self) -> (usize, usize, u64) {
        let index = read(&self.index);
        (index.uids.len(), index.body_bytes, index.digest)
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
        let first = cache.page(None, 2).unwrap();
        assert_eq!(uids(&first), ["e", "d"]);
        let second = cache.page(first.next_cursor, 2).unwrap();
        assert_eq!(uids(&second), ["c", "b"]);
        let third = cache.page(second.next_cursor, 2).unwrap();
        assert_eq!(uids(&third), ["a"]);
        assert_eq!(third.next_cursor, None);
        assert_eq!(cache.page(None, 10).unwrap().next_cursor, None);
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
        let Memory::Everything(all) = &cache.memory else {
            unreachable!()
        };
        assert!(all.copies.iter().all(|copy| read(copy).len() == 100));
        for held in 0..2 {
            let _writing = write(&all.copies[held]);
            assert!(cache.get("uid99").is_some());
            assert!(!cache.contains("nope"));
        }
    }

    #[test]
    fn random_picks_a_cached_uid() {
        let cache = OrderCache::new();
        assert_eq!(cache.random(), Ok(None));
        cache.insert(vec![order(1, "a"), order(2, "b")]);
        for _ in 0..20 {
            assert!(cache.contains(&cache.random().unwrap().unwrap()));
        }
    }

    fn sized(id: i64, bytes: usize) -> StoredOrder {
        StoredOrder {
            id,
            uid: format!("uid{id}").into(),
            body: vec![b'x'; bytes].into(),
        }
    }

    #[test]
    fn a_bounded_cache_stays_within_its_budget_and_counts_evictions() {
        let budget = 200 * 1024;
        let cache = OrderCache::bounded(budget);
        assert_eq!(cache.budget(), Some(budget));
        for id in 0..2_000 {
            cache.insert(vec![sized(id, 500 + (id as usize * 37) % 1500)]);
            assert!(cache.stats().1 as u64 <= budget);
        }
        let (orders, bytes, digest) = cache.stats();
        assert!(orders > 50 && orders < 2_000, "{orders}");
        assert!(bytes as u64 > budget / 2, "{bytes}");
        assert_eq!(digest, 0);
        let mut text = String::new();
        cache.render_metrics(&mut text);
        let evictions: u64 = text
            .lines()
            .find_map(|l| l.strip_prefix("order_service_cache_evictions_total "))
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(evictions as usize, 2_000 - orders);
        assert!(text.contains(&format!("order_service_cache_budget_bytes {budget}\n")));
    }

    #[test]
    fn a_bounded_cache_keeps_its_hot_set_through_a_scan() {
        // Room for about 1,500 orders of 1 KB; 300 hot ones read often.
        let cache = OrderCache::bounded(1_500 * (1024 + 6 + ENTRY_OVERHEAD));
        let hot: Vec<StoredOrder> = (0..300).map(|id| sized(id, 1024)).collect();
        cache.insert(hot.clone());
        for _ in 0..5 {
            for order in &hot {
                assert!(cache.get(&order.uid).is_some());
            }
        }
        // One pass over 20,000 others, each inserted once as a miss is.
        for id in 1_000..21_000 {
            cache.insert(vec![sized(id, 1024)]);
        }
        let kept = hot.iter().filter(|o| cache.get(&o.uid).is_some()).count();
        assert!(
            kept >= 270,
            "only {kept} of 300 hot orders survived the scan"
        );
    }

    #[test]
    fn an_order_read_again_after_its_eviction_stays() {
        // Room for about 270; 2,000 pass through, then the last 100 are
        // read over and over, each miss inserted as the loader's answer is.
        let cache = OrderCache::bounded(256 * 1024);
        let uid = |id: i64| format!("out_abcdefgh_{id}");
        let make = |id: i64| StoredOrder {
            id,
            uid: uid(id).into(),
            body: vec![b'x'; 830].into(),
        };
        for id in 0..2000 {
            cache.insert(vec![make(id)]);
        }
        let mut hits = Vec::new();
        for _ in 0..3 {
            let mut sweep = 0;
            for id in 1900..2000 {
                match cache.get(&uid(id)) {
                    Some(_) => sweep += 1,
                    None => drop(cache.insert(vec![make(id)])),
                }
            }
            hits.push(sweep);
        }
        assert_eq!(hits[1..], [100, 100], "hits per sweep: {hits:?}");
    }

    #[test]
    fn a_bounded_miss_without_a_loader_is_unavailable_never_not_found() {
        let cache = OrderCache::bounded(1 << 20);
        assert!(matches!(cache.lookup("nope"), Lookup::Unavailable(_)));
        assert!(cache.page(None, 10).is_err());
        cache.insert(vec![sized(1, 10)]);
        assert!(matches!(cache.lookup("uid1"), Lookup::Found(_)));
        assert!(cache.has_room_for("uid2", &[0; 100]));
        assert!(!cache.has_room_for("uid2", &[0; 2 << 20]));
        let unbounded = OrderCache::new();
        assert_eq!(unbounded.lookup("nope"), Lookup::NotFound);
    }
}
