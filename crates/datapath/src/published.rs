//! [`Published<T>`]: one writer replaces a value (the peer table), many readers (the workers)
//! pick it up at their batch boundaries without ever waiting on the writer's work. Std only,
//! no arc-swap.
//!
//! - The writer builds the new value first, then swaps the `Arc` under the mutex (a pointer
//!   swap: the only time it holds the lock), then bumps `gen` (Release).
//! - A reader keeps a [`Reader`]: its cached `(gen, Arc<T>)`. [`Reader::refresh`], once per
//!   batch, is one Acquire load when nothing changed; when `gen` moved it takes the lock for
//!   an `Arc` clone. So a reader never sees a value older than the `gen` it read, and the old
//!   value is freed when the last reader let go of it (never on the writer's lock).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// A value one writer replaces and readers pick up by generation (see the module docs).
pub struct Published<T> {
    gen: AtomicU64,
    slot: Mutex<Arc<T>>,
}

impl<T> Published<T> {
    pub fn new(value: T) -> Published<T> {
        Published {
            gen: AtomicU64::new(0),
            slot: Mutex::new(Arc::new(value)),
        }
    }

    /// Replaces the value; readers see it at their next [`Reader::refresh`].
    pub fn publish(&self, value: T) {
        self.publish_arc(Arc::new(value));
    }

    /// [`Published::publish`] of a value already in an `Arc`.
    pub fn publish_arc(&self, value: Arc<T>) {
        let old = {
            let mut slot = self.slot.lock().unwrap_or_else(|e| e.into_inner());
            std::mem::replace(&mut *slot, value)
        };
        self.gen.fetch_add(1, Ordering::Release);
        drop(old); // outside the lock: dropping a table may take a while
    }

    /// How many times a value was published.
    pub fn generation(&self) -> u64 {
        self.gen.load(Ordering::Acquire)
    }

    /// The current value (takes the lock: for the ctl thread, not the hot path).
    pub fn load(&self) -> Arc<T> {
        self.load_with_gen().1
    }

    fn load_with_gen(&self) -> (u64, Arc<T>) {
        let slot = self.slot.lock().unwrap_or_else(|e| e.into_inner());
        // Read under the lock: a publish between this load and the clone would only make the
        // cached gen older than the value, so the next refresh clones again (harmless).
        (self.gen.load(Ordering::Acquire), slot.clone())
    }

    /// A reader with the current value cached.
    pub fn reader(self: &Arc<Self>) -> Reader<T> {
        let (gen, current) = self.load_with_gen();
        Reader {
            source: self.clone(),
            gen,
            current,
        }
    }
}

/// A reader's cached value (see the module docs). Not `Clone` on purpose: one per worker.
pub struct Reader<T> {
    source: Arc<Published<T>>,
    gen: u64,
    current: Arc<T>,
}

impl<T> Reader<T> {
    /// Picks up a newer value if one was published; true when the cached value changed.
    /// Call it once per batch.
    #[inline]
    pub fn refresh(&mut self) -> bool {
        if self.source.gen.load(Ordering::Acquire) == self.gen {
            return false;
        }
        let (gen, current) = self.source.load_with_gen();
        self.gen = gen;
        let changed = !Arc::ptr_eq(&self.current, &current);
        self.current = current;
        changed
    }

    /// The cached value (as of the last [`Reader::refresh`]).
    #[inline]
    pub fn get(&self) -> &T {
        &self.current
    }

    /// The cached value's `Arc`.
    pub fn arc(&self) -> &Arc<T> {
        &self.current
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reader_sees_a_publish_at_its_next_refresh_only() {
        let p = Arc::new(Published::new(1u32));
        let mut r = p.reader();
        assert_eq!(*r.get(), 1);
        assert!(!r.refresh());
        p.publish(2);
        assert_eq!(*r.get(), 2 - 1, "no change before refresh");
        assert!(r.refresh());
        assert_eq!(*r.get(), 2);
        assert!(!r.refresh());
        assert_eq!(p.generation(), 1);
        assert_eq!(*p.load(), 2);
    }

    #[test]
    fn the_old_value_lives_until_the_last_reader_lets_go() {
        let p = Arc::new(Published::new(vec![1u8]));
        let mut r = p.reader();
        let weak = Arc::downgrade(r.arc());
        p.publish(vec![2]);
        assert!(weak.upgrade().is_some(), "the reader still holds it");
        r.refresh();
        assert!(weak.upgrade().is_none());
    }

    #[test]
    fn readers_on_threads_never_go_backwards_and_end_on_the_last() {
        let p = Arc::new(Published::new(0u64));
        let readers: Vec<_> = (0..2)
            .map(|_| {
                let mut r = p.reader();
                std::thread::spawn(move || {
                    let mut last = *r.get();
                    while last < 1000 {
                        r.refresh();
                        let v = *r.get();
                        assert!(v >= last, "{v} after {last}");
                        last = v;
                        std::hint::spin_loop();
                    }
                })
            })
            .collect();
        for v in 1..=1000 {
            p.publish(v);
        }
        for r in readers {
            r.join().unwrap();
        }
    }
}
