//! LOCAL_CACHE_SIZE_IN_BYTES: a replica remembers the fixed-window counters it saw over their
//! limit until their window ends, and answers them without a round trip to the store. A
//! fixed-window counter over its limit stays over until the window ends, so the answer is the
//! same; only the store's count of refused hits differs (as with envoyproxy/ratelimit's
//! freecache).

use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use gatehouse_common::metrics::CacheStats;
use moka::sync::Cache;

use super::{Batch, CounterState, CounterStore, CounterUpdate, KeyPage, Mode, StorageError, Window};
use crate::rules::Algorithm;

/// Bytes an entry costs besides its key, for the size bound.
const ENTRY_OVERHEAD: u32 = 64;

#[derive(Clone, Copy)]
struct Expires {
    at_ms: u64,
    ttl: Duration,
}

struct UntilWindowEnd;

impl moka::Expiry<String, Expires> for UntilWindowEnd {
    fn expire_after_create(&self, _key: &String, value: &Expires, _created_at: Instant) -> Option<Duration> {
        Some(value.ttl)
    }
}

pub struct OverLimitCache<S> {
    inner: S,
    cache: Cache<String, Expires>,
    /// `gatehouse_ratelimit_cache_lookups_total{cache="over_limit"}`, when counted.
    stats: Option<CacheStats>,
}

impl<S> std::fmt::Debug for OverLimitCache<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OverLimitCache").field("entries", &self.cache.entry_count()).finish_non_exhaustive()
    }
}

impl<S: CounterStore> OverLimitCache<S> {
    pub fn new(inner: S, size_bytes: usize) -> Self {
        let cache = Cache::builder()
            .max_capacity(size_bytes as u64)
            .weigher(|key: &String, _: &Expires| (key.len() as u32).saturating_add(ENTRY_OVERHEAD))
            .expire_after(UntilWindowEnd)
            .build();
        OverLimitCache { inner, cache, stats: None }
    }

    /// Counts each counter's lookup: a hit is answered without the store.
    pub fn counted(mut self, stats: CacheStats) -> Self {
        self.stats = Some(stats);
        self
    }

    fn cache_key(counter: &CounterUpdate, window: &Window) -> Option<String> {
        (counter.algorithm == Algorithm::FixedWindow).then(|| format!("{}{}", counter.key, window.start_secs))
    }

    async fn update_batch(&self, batch: &Batch, now_ms: u64) -> Result<Vec<CounterState>, StorageError> {
        let windows: Vec<Window> = batch.counters.iter().map(|c| Window::of(now_ms, c.period_secs)).collect();
        let cached: Vec<bool> = batch
            .counters
            .iter()
            .zip(&windows)
            .map(|(c, w)| Self::cache_key(c, w).and_then(|k| self.cache.get(&k)).is_some_and(|e| e.at_ms > now_ms))
            .collect();
        let any_cached = cached.iter().any(|&c| c);
        if let Some(stats) = &self.stats {
            for &hit in &cached {
                stats.lookup("over_limit", hit);
            }
        }

        let states = if !any_cached {
            self.inner.update(batch, now_ms).await?
        } else {
            // Ask the store only about the others; in all-or-nothing mode the request is
            // already refused, so they are checked without counting.
            let rest = Batch {
                counters: batch
                    .counters
                    .iter()
                    .zip(&cached)
                    .filter(|(_, cached)| !**cached)
                    .map(|(c, _)| CounterUpdate {
                        hits: if batch.mode == Mode::AllOrNothing { 0 } else { c.hits },
                        ..c.clone()
                    })
                    .collect(),
                mode: batch.mode,
            };
            let mut fresh =
                if rest.counters.is_empty() { Vec::new() } else { self.inner.update(&rest, now_ms).await? }.into_iter();
            let mut states = Vec::with_capacity(batch.counters.len());
            for ((c, w), was_cached) in batch.counters.iter().zip(&windows).zip(&cached) {
                let state = if *was_cached {
                    CounterState {
                        over_limit: true,
                        used: c.limit.saturating_add(c.hits),
                        remaining: 0,
                        reset_after: w.remaining(),
                        from_local_cache: true,
                    }
                } else {
                    fresh
                        .next()
                        .ok_or_else(|| StorageError::Protocol("store returned fewer counters than asked".into()))?
                };
                states.push(state);
            }
            states
        };

        for ((c, w), state) in batch.counters.iter().zip(&windows).zip(&states) {
            if state.over_limit
                && !state.from_local_cache
                && let Some(key) = Self::cache_key(c, w)
            {
                let ttl = w.remaining();
                self.cache.insert(key, Expires { at_ms: now_ms + ttl.as_millis() as u64, ttl });
            }
        }
        Ok(states)
    }
}

impl<S: CounterStore> CounterStore for OverLimitCache<S> {
    fn update<'a>(&'a self, batch: &'a Batch, now_ms: u64) -> BoxFuture<'a, Result<Vec<CounterState>, StorageError>> {
        Box::pin(self.update_batch(batch, now_ms))
    }

    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn peek<'a>(&'a self, batch: &'a Batch, now_ms: u64) -> BoxFuture<'a, Result<Vec<CounterState>, StorageError>> {
        self.inner.peek(batch, now_ms)
    }

    fn scan<'a>(
        &'a self,
        prefix: &'a str,
        cursor: &'a str,
        count: usize,
    ) -> BoxFuture<'a, Result<KeyPage, StorageError>> {
        self.inner.scan(prefix, cursor, count)
    }

    /// Forgets the counters here too: this replica admits them again at once. Other replicas
    /// keep refusing until their own entries expire, at the end of the window.
    fn reset<'a>(&'a self, counters: &'a [CounterUpdate], now_ms: u64) -> BoxFuture<'a, Result<u64, StorageError>> {
        for c in counters {
            if let Some(key) = Self::cache_key(c, &Window::of(now_ms, c.period_secs)) {
                self.cache.invalidate(&key);
            }
        }
        self.inner.reset(counters, now_ms)
    }
}
