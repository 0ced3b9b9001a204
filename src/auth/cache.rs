//! The auth cache in front of SQL and LDAP (Dovecot's `auth_cache_size`,
//! `auth_cache_ttl`, `auth_cache_negative_ttl`): what the database said about
//! a user, kept for a while, least recently used out first.
//!
//! It holds the database's answer (the stored credential, the fields), never
//! the outcome of a login, so a wrong password is always checked against the
//! stored credential and cannot hit a cached success. An `auth_bind` user
//! has no stored credential: the passdb caches a salted hash of the password
//! that bound, which a different password cannot match.
//!
//! Sharded by key hash so the worker threads rarely meet on one lock; each
//! shard is an LRU of `size / SHARDS` entries.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::num::NonZeroUsize;
use std::time::{Duration, Instant};

use lru::LruCache;
use parking_lot::Mutex;

/// Locks the cache is split over.
const SHARDS: usize = 16;

/// What the cache knows about one key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Cached<V> {
    /// The database has this entry.
    Found(V),
    /// The database said there is no such user.
    Missing,
}

struct Slot<V> {
    value: Cached<V>,
    stored_at: Instant,
}

/// One lock's share of the cache.
type Shard<V> = Mutex<LruCache<String, Slot<V>>>;

/// A bounded, expiring map from lookup key to the database's answer.
pub(crate) struct Cache<V> {
    shards: Box<[Shard<V>]>,
    hasher: RandomState,
    ttl: Duration,
    negative_ttl: Duration,
}

impl<V: Clone> Cache<V> {
    /// `None` when `size` is 0 (the cache is off).
    pub(crate) fn new(size: usize, ttl: Duration, negative_ttl: Duration) -> Option<Cache<V>> {
        if size == 0 {
            return None;
        }
        let per_shard = NonZeroUsize::new(size.div_ceil(SHARDS)).expect("size > 0");
        let shards = (0..SHARDS)
            .map(|_| Mutex::new(LruCache::new(per_shard)))
            .collect();
        Some(Cache {
            shards,
            hasher: RandomState::new(),
            ttl,
            negative_ttl,
        })
    }

    fn shard(&self, key: &str) -> &Shard<V> {
        let index = self.hasher.hash_one(key) as usize % SHARDS;
        &self.shards[index]
    }

    /// The cached answer for `key`, if one is there and not expired.
    pub(crate) fn get(&self, key: &str) -> Option<Cached<V>> {
        self.get_at(key, Instant::now())
    }

    fn get_at(&self, key: &str, now: Instant) -> Option<Cached<V>> {
        let mut shard = self.shard(key).lock();
        let slot = shard.get(key)?;
        let ttl = match slot.value {
            Cached::Found(_) => self.ttl,
            Cached::Missing => self.negative_ttl,
        };
        if now.saturating_duration_since(slot.stored_at) >= ttl {
            shard.pop(key);
            return None;
        }
        Some(slot.value.clone())
    }

    /// Stores the database's answer for `key`.
    pub(crate) fn put(&self, key: &str, value: Cached<V>) {
        self.put_at(key, value, Instant::now());
    }

    fn put_at(&self, key: &str, value: Cached<V>, stored_at: Instant) {
        if matches!(value, Cached::Missing) && self.negative_ttl.is_zero() {
            return;
        }
        self.shard(key)
            .lock()
            .put(key.to_owned(), Slot { value, stored_at });
    }

    /// Forgets everything (SIGHUP, or an operator's command).
    pub(crate) fn flush(&self) {
        for shard in &*self.shards {
            shard.lock().clear();
        }
    }

    /// Entries held now, expired ones included.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(size: usize) -> Cache<u32> {
        Cache::new(size, Duration::from_secs(60), Duration::from_secs(10)).unwrap()
    }

    #[test]
    fn found_and_missing_expire_on_their_own_ttl() {
        let c = cache(100);
        let t0 = Instant::now();
        c.put_at("alice", Cached::Found(1), t0);
        c.put_at("nobody", Cached::Missing, t0);
        let later = |s| t0 + Duration::from_secs(s);
        assert_eq!(c.get_at("alice", later(9)), Some(Cached::Found(1)));
        assert_eq!(c.get_at("nobody", later(9)), Some(Cached::Missing));
        assert_eq!(c.get_at("nobody", later(10)), None);
        assert_eq!(c.get_at("alice", later(59)), Some(Cached::Found(1)));
        assert_eq!(c.get_at("alice", later(60)), None);
        // Expired entries are dropped when seen.
        assert_eq!(c.len(), 0);
    }

    #[test]
    fn size_bounds_and_flush_clears() {
        let c = cache(SHARDS * 2);
        for i in 0..1000 {
            c.put(&format!("user{i}"), Cached::Found(i));
        }
        assert!(c.len() <= SHARDS * 2, "{}", c.len());
        assert_eq!(c.get("user999"), Some(Cached::Found(999)));
        c.flush();
        assert_eq!(c.len(), 0);
        assert_eq!(c.get("user999"), None);
    }

    #[test]
    fn zero_size_is_off_and_zero_negative_ttl_keeps_no_misses() {
        assert!(Cache::<u32>::new(0, Duration::from_secs(1), Duration::from_secs(1)).is_none());
        let c: Cache<u32> = Cache::new(10, Duration::from_secs(1), Duration::ZERO).unwrap();
        c.put("x", Cached::Missing);
        assert_eq!(c.get("x"), None);
    }
}
