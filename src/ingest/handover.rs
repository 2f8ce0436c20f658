//! The writer hands the orders it committed to this instance's cache, so
//! the listener need not read back what this instance has just written.
//! A commit's NOTIFY reaches the listener before the writer even hears that
//! the commit succeeded, so without a handshake the listener would win that
//! race and load nearly every row again. `Handover` is that handshake: the
//! writer counts a write as begun before it sends it and as finished once
//! its orders are in the cache (or it failed); the listener, given keys,
//! first waits (bounded) until every write begun by then has finished, and
//! then loads only the keys the cache still lacks.

use crate::cache::OrderCache;
use crate::store::StoredOrder;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// This instance's cache, and the handshake by which its writer fills it
/// and its listener waits for that.
pub struct Handover {
    cache: Arc<OrderCache>,
    begun: AtomicU64,
    finished: Mutex<u64>,
    changed: Condvar,
}

/// A write in progress; dropping it marks the write finished.
pub struct Writing<'a>(&'a Handover);

impl Handover {
    pub fn new(cache: Arc<OrderCache>) -> Handover {
        Handover {
            cache,
            begun: AtomicU64::new(0),
            finished: Mutex::new(0),
            changed: Condvar::new(),
        }
    }

    pub fn cache(&self) -> &OrderCache {
        &self.cache
    }

    /// A write is about to be sent (its commit may notify at any moment).
    pub fn begin(&self) -> Writing<'_> {
        self.begun.fetch_add(1, SeqCst);
        Writing(self)
    }

    /// Waits until every write begun before this call has finished, at most
    /// `limit` (a write stuck on a dead connection must not hold up the
    /// orders other replicas commit); whether they all had.
    pub fn wait(&self, limit: Duration) -> bool {
        let target = self.begun.load(SeqCst);
        let deadline = Instant::now() + limit;
        let mut finished = self.finished.lock().unwrap_or_else(|e| e.into_inner());
        while *finished < target {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            finished = self
                .changed
                .wait_timeout(finished, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        true
    }
}

impl Writing<'_> {
    /// The write committed these orders: into the cache with them (the
    /// write finishes when `self` is dropped, right after).
    pub fn hand_over(self, stored: Vec<StoredOrder>) {
        self.0.cache.insert(stored);
    }
}

impl Drop for Writing<'_> {
    fn drop(&mut self) {
        *self.0.finished.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        self.0.changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_for_writes_begun_before_and_not_for_later_ones() {
        let handover = Handover::new(Arc::new(OrderCache::new()));
        assert!(handover.wait(Duration::ZERO), "nothing begun");
        let writing = handover.begin();
        assert!(!handover.wait(Duration::from_millis(10)), "bounded");
        std::thread::scope(|scope| {
            scope.spawn(|| {
                std::thread::sleep(Duration::from_millis(20));
                drop(writing);
            });
            assert!(handover.wait(Duration::from_secs(5)));
        });
        let _later = handover.begin();
        // A write begun after the wait started is not awaited: the wait
        // looks at what had begun when it was called.
        let finished_before = *handover.finished.lock().unwrap();
        assert_eq!(finished_before, 1);
    }
}
