//! Small helpers: randomness without an extra dependency, the listeners' shared duplicate
//! window and oslo's obsolete reply queue cache.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use oslo_core::codec::DuplicateFilter;

/// A uniformly distributed number in `[0, 1)`, from a v4 uuid's random bits.
pub(crate) fn random_unit() -> f64 {
    let bits = uuid::Uuid::new_v4().as_u128() as u64 >> 11;
    bits as f64 / (1u64 << 53) as f64
}

/// A random index below `len` (`len` > 0).
pub(crate) fn random_index(len: usize) -> usize {
    ((uuid::Uuid::new_v4().as_u128() >> 64) as u64 % len.max(1) as u64) as usize
}

/// Shuffle in place (Fisher–Yates).
pub(crate) fn shuffle<T>(items: &mut [T]) {
    for i in (1..items.len()).rev() {
        let j = random_index(i + 1);
        items.swap(i, j);
    }
}

/// The last unique ids a notification listener acknowledged, shared between its consumer task
/// and its messages (oslo `_MsgIdCache`): core's [`DuplicateFilter`] behind a lock. (RPC
/// servers keep their own window in core.)
#[derive(Debug)]
pub(crate) struct RecentIds(Mutex<DuplicateFilter>);

impl RecentIds {
    pub(crate) fn new(capacity: usize) -> Self {
        RecentIds(Mutex::new(DuplicateFilter::with_capacity(capacity)))
    }

    fn window(&self) -> std::sync::MutexGuard<'_, DuplicateFilter> {
        self.0.lock().expect("id window poisoned")
    }

    pub(crate) fn contains(&self, id: &str) -> bool {
        self.window().contains(id)
    }

    pub(crate) fn add(&self, id: &str) {
        self.window().check_and_add(id);
    }
}

/// Reply queues found missing for longer than the retry timeout (oslo
/// `ObsoleteReplyQueuesCache`: 200 entries, 60 s): replies to them are dropped at once.
#[derive(Debug)]
pub(crate) struct ObsoleteReplyQueues {
    entries: Mutex<VecDeque<(String, Instant)>>,
    size: usize,
    ttl: Duration,
}

impl Default for ObsoleteReplyQueues {
    fn default() -> Self {
        ObsoleteReplyQueues {
            entries: Mutex::new(VecDeque::new()),
            size: 200,
            ttl: Duration::from_secs(60),
        }
    }
}

impl ObsoleteReplyQueues {
    pub(crate) fn add(&self, reply_q: &str) {
        let mut entries = self.entries.lock().expect("obsolete cache poisoned");
        entries.retain(|(queue, _)| queue != reply_q);
        if entries.len() >= self.size {
            entries.pop_front();
        }
        entries.push_back((reply_q.to_string(), Instant::now()));
    }

    pub(crate) fn contains(&self, reply_q: &str) -> bool {
        let mut entries = self.entries.lock().expect("obsolete cache poisoned");
        let now = Instant::now();
        entries.retain(|(_, added)| now.duration_since(*added) < self.ttl);
        entries.iter().any(|(queue, _)| queue == reply_q)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_helpers_stay_in_range() {
        for _ in 0..1000 {
            let x = random_unit();
            assert!((0.0..1.0).contains(&x));
            assert!(random_index(3) < 3);
        }
        let mut items: Vec<u32> = (0..10).collect();
        shuffle(&mut items);
        items.sort();
        assert_eq!(items, (0..10).collect::<Vec<_>>());
    }

    #[test]
    fn recent_ids_window() {
        let ids = RecentIds::new(2);
        assert!(!ids.contains("a"));
        ids.add("a");
        ids.add("b");
        assert!(ids.contains("a"));
        ids.add("c");
        assert!(!ids.contains("a"));
        assert!(ids.contains("c"));
    }

    #[test]
    fn obsolete_cache_expires() {
        let cache = ObsoleteReplyQueues {
            ttl: Duration::from_millis(20),
            ..ObsoleteReplyQueues::default()
        };
        cache.add("reply_x");
        assert!(cache.contains("reply_x"));
        std::thread::sleep(Duration::from_millis(30));
        assert!(!cache.contains("reply_x"));
    }
}
