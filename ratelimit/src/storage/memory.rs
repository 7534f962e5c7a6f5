//! In-process counters: sharded hash maps, bounded in size, with expired windows reclaimed by
//! a background sweep. Exact within one process; replicas do not share it.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use parking_lot::{Mutex, MutexGuard};

use super::{Batch, CounterState, CounterStore, CounterUpdate, KeyPage, Mode, StorageError, Window, token_cost_us};
use crate::clock::Clock;
use crate::rules::Algorithm;

const SHARDS: usize = 64;

#[derive(Clone, Copy, Debug)]
struct Slot {
    /// A count for windows, the theoretical arrival time in µs for token buckets.
    value: u64,
    expires_at_ms: u64,
}

type Shard = HashMap<Box<str>, Slot, foldhash::fast::RandomState>;

pub struct MemoryStore {
    shards: Box<[Mutex<Shard>]>,
    hasher: foldhash::fast::RandomState,
    max_keys_per_shard: usize,
    clock: Clock,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore").field("keys", &self.len()).finish_non_exhaustive()
    }
}

impl MemoryStore {
    /// A store holding at most about `max_keys` live counters. When a shard is full, expired
    /// counters are dropped first, then the one closest to expiry.
    pub fn new(max_keys: usize, clock: Clock) -> Arc<Self> {
        let shards = (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect();
        Arc::new(MemoryStore {
            shards,
            hasher: foldhash::fast::RandomState::default(),
            max_keys_per_shard: (max_keys / SHARDS).max(16),
            clock,
        })
    }

    /// Sweeps expired counters every `interval` until the store is dropped.
    pub fn spawn_sweeper(self: &Arc<Self>, interval: Duration) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(store) = weak.upgrade() else { return };
                store.sweep();
            }
        });
    }

    /// Drops every expired counter.
    pub fn sweep(&self) {
        let now = self.clock.now_ms();
        for shard in self.shards.iter() {
            shard.lock().retain(|_, slot| slot.expires_at_ms > now);
        }
    }

    /// Live counters, including expired ones not yet swept.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn shard_of(&self, key: &str) -> usize {
        (self.hasher.hash_one(key) as usize) % SHARDS
    }

    fn apply(&self, batch: &Batch, now_ms: u64) -> Vec<CounterState> {
        let plans: Vec<Plan> = batch.counters.iter().map(|c| Plan::new(c, now_ms)).collect();
        let mut shard_ids: Vec<usize> = plans
            .iter()
            .flat_map(|p| [Some(&p.key), p.prev_key.as_ref()])
            .flatten()
            .map(|k| self.shard_of(k))
            .collect();
        shard_ids.sort_unstable();
        shard_ids.dedup();
        // Locks are taken in shard order, so concurrent batches cannot deadlock.
        let mut txn =
            Txn { guards: shard_ids.iter().map(|&i| (i, self.shards[i].lock())).collect(), store: self, now_ms };
        match batch.mode {
            Mode::Independent => plans
                .iter()
                .map(|plan| {
                    let (state, write) = plan.evaluate(&txn);
                    if let Some(write) = write {
                        txn.write(plan, write);
                    }
                    state
                })
                .collect(),
            Mode::AllOrNothing => {
                let evaluated: Vec<_> = plans.iter().map(|p| p.evaluate(&txn)).collect();
                let any_over = evaluated.iter().any(|(s, _)| s.over_limit);
                evaluated
                    .into_iter()
                    .zip(&plans)
                    .map(|((state, write), plan)| {
                        match write {
                            Some(write) if !any_over => txn.write(plan, write),
                            _ => {}
                        }
                        state
                    })
                    .collect()
            }
        }
    }
}

impl CounterStore for MemoryStore {
    fn update<'a>(&'a self, batch: &'a Batch, now_ms: u64) -> BoxFuture<'a, Result<Vec<CounterState>, StorageError>> {
        let result = self.apply(batch, now_ms);
        Box::pin(std::future::ready(Ok(result)))
    }

    fn name(&self) -> &'static str {
        "memory"
    }

    fn scan<'a>(
        &'a self,
        prefix: &'a str,
        cursor: &'a str,
        count: usize,
    ) -> BoxFuture<'a, Result<KeyPage, StorageError>> {
        Box::pin(std::future::ready(self.scan_page(prefix, cursor, count)))
    }

    fn reset<'a>(&'a self, counters: &'a [CounterUpdate], now_ms: u64) -> BoxFuture<'a, Result<u64, StorageError>> {
        let keys = counters.iter().map(|c| Plan::new(c, now_ms)).flat_map(|p| [Some(p.key), p.prev_key]).flatten();
        let deleted = keys.filter(|key| self.shards[self.shard_of(key)].lock().remove(key.as_str()).is_some()).count();
        Box::pin(std::future::ready(Ok(deleted as u64)))
    }
}

impl MemoryStore {
    /// A page of live keys starting with `prefix`: at most `count`, in shard order and, within
    /// a shard, in key order, so that a cursor (`shard:last key`) misses nothing that lives
    /// throughout the scan. Each page looks at whole shards, so it costs O(keys / 64) or more.
    fn scan_page(&self, prefix: &str, cursor: &str, count: usize) -> Result<KeyPage, StorageError> {
        let bad_cursor = || StorageError::BadCursor(cursor.to_string());
        let (mut shard, mut after) = match cursor.split_once(':') {
            None if cursor.is_empty() => (0, String::new()),
            None => return Err(bad_cursor()),
            Some((shard, after)) => (shard.parse::<usize>().map_err(|_| bad_cursor())?, after.to_string()),
        };
        if shard >= SHARDS {
            return Err(bad_cursor());
        }
        let count = count.max(1);
        let now = self.clock.now_ms();
        let mut keys = Vec::new();
        while shard < SHARDS {
            let mut found: Vec<String> = self.shards[shard]
                .lock()
                .iter()
                .filter(|(key, slot)| slot.expires_at_ms > now && key.starts_with(prefix) && ***key > *after)
                .map(|(key, _)| key.to_string())
                .collect();
            found.sort_unstable();
            let room = count - keys.len();
            if found.len() > room {
                found.truncate(room);
                let next = format!("{shard}:{}", found.last().map_or("", String::as_str));
                keys.extend(found);
                return Ok(KeyPage { keys, next: Some(next) });
            }
            keys.extend(found);
            shard += 1;
            after.clear();
            if keys.len() == count && shard < SHARDS {
                return Ok(KeyPage { keys, next: Some(format!("{shard}:")) });
            }
        }
        Ok(KeyPage { keys, next: None })
    }
}

/// The keys and timing of one counter for this request.
struct Plan<'c> {
    counter: &'c CounterUpdate,
    key: String,
    /// Sliding window only.
    prev_key: Option<String>,
    window: Window,
    now_ms: u64,
}

/// A change to make once a counter has been evaluated.
struct Write {
    value: u64,
    expires_at_ms: u64,
}

impl<'c> Plan<'c> {
    fn new(counter: &'c CounterUpdate, now_ms: u64) -> Self {
        let window = Window::of(now_ms, counter.period_secs);
        let (key, prev_key) = match counter.algorithm {
            Algorithm::FixedWindow => (format!("{}{}", counter.key, window.start_secs), None),
            Algorithm::SlidingWindow => {
                let (cur, prev) = window.keys(&counter.key);
                (cur, Some(prev))
            }
            Algorithm::TokenBucket => (counter.key.clone(), None),
        };
        Plan { counter, key, prev_key, window, now_ms }
    }

    fn evaluate(&self, txn: &Txn<'_>) -> (CounterState, Option<Write>) {
        let c = self.counter;
        let window_end = self.now_ms + (self.window.period_ms - self.window.elapsed_ms);
        match c.algorithm {
            Algorithm::FixedWindow => {
                let before = txn.get(&self.key).unwrap_or(0);
                // Saturating: counts only grow, and a full counter is over every limit.
                let after = before.saturating_add(c.hits);
                let over = after > c.limit;
                let state = CounterState {
                    over_limit: over,
                    used: after,
                    remaining: c.limit.saturating_sub(after),
                    reset_after: self.window.remaining(),
                    from_local_cache: false,
                };
                let write = (c.hits > 0).then_some(Write { value: after, expires_at_ms: window_end });
                (state, write)
            }
            Algorithm::SlidingWindow => {
                let current = txn.get(&self.key).unwrap_or(0);
                let previous = self.prev_key.as_deref().and_then(|k| txn.get(k)).unwrap_or(0);
                let estimate = sliding_estimate(previous, current, &self.window);
                let over = estimate.saturating_add(c.hits) > c.limit;
                let used = if over { estimate } else { estimate + c.hits };
                let state = CounterState {
                    over_limit: over,
                    used,
                    remaining: c.limit.saturating_sub(used),
                    reset_after: self.window.remaining(),
                    from_local_cache: false,
                };
                // Lazily: `current + hits` is only within the limit when admitted.
                let write = (!over && c.hits > 0)
                    .then(|| Write { value: current + c.hits, expires_at_ms: window_end + self.window.period_ms });
                (state, write)
            }
            Algorithm::TokenBucket => {
                let now_us = self.now_ms * 1000;
                let cost = token_cost_us(c.period_secs, c.limit);
                let tat = txn.get(&self.key).unwrap_or(now_us).max(now_us) as f64;
                let (state, new_tat) = gcra(tat, now_us as f64, cost, c.burst, c.hits);
                let write =
                    new_tat.filter(|_| c.hits > 0).map(|tat| Write { value: tat, expires_at_ms: tat.div_ceil(1000) });
                (state, write)
            }
        }
    }
}

/// `floor(previous * (period - elapsed) / period) + current`, in integers as the Lua script does.
pub(crate) fn sliding_estimate(previous: u64, current: u64, window: &Window) -> u64 {
    let weight_ms = window.period_ms - window.elapsed_ms;
    ((previous as u128 * weight_ms as u128 / window.period_ms as u128) as u64).saturating_add(current)
}

/// GCRA on microsecond timestamps. Returns the state and, if admitted, the new `tat`.
pub(crate) fn gcra(tat: f64, now_us: f64, cost: f64, burst: u64, hits: u64) -> (CounterState, Option<u64>) {
    let new_tat = tat + hits as f64 * cost;
    let allow_at = new_tat - burst as f64 * cost;
    if allow_at > now_us {
        // Tokens available now, before this request.
        let available = ((now_us - (tat - burst as f64 * cost)) / cost).floor().max(0.0) as u64;
        let state = CounterState {
            over_limit: true,
            used: burst - available.min(burst),
            remaining: 0,
            reset_after: Duration::from_micros((allow_at - now_us).ceil() as u64),
            from_local_cache: false,
        };
        (state, None)
    } else {
        let remaining = (((now_us - allow_at) / cost).floor() as u64).min(burst);
        let state = CounterState {
            over_limit: false,
            used: burst - remaining,
            remaining,
            reset_after: Duration::from_micros((new_tat - now_us).max(0.0).ceil() as u64),
            from_local_cache: false,
        };
        (state, Some(new_tat.ceil() as u64))
    }
}

/// The shards one batch holds locked.
struct Txn<'s> {
    guards: Vec<(usize, MutexGuard<'s, Shard>)>,
    store: &'s MemoryStore,
    now_ms: u64,
}

impl Txn<'_> {
    fn shard(&self, key: &str) -> &Shard {
        let id = self.store.shard_of(key);
        // Every key of the batch had its shard locked in `apply`.
        let pos = self.guards.iter().position(|(i, _)| *i == id).unwrap_or(0);
        &self.guards[pos].1
    }

    fn get(&self, key: &str) -> Option<u64> {
        self.shard(key).get(key).filter(|slot| slot.expires_at_ms > self.now_ms).map(|slot| slot.value)
    }

    fn write(&mut self, plan: &Plan<'_>, write: Write) {
        let id = self.store.shard_of(&plan.key);
        let max = self.store.max_keys_per_shard;
        let now = self.now_ms;
        let Some((_, shard)) = self.guards.iter_mut().find(|(i, _)| *i == id) else {
            return;
        };
        let slot = Slot { value: write.value, expires_at_ms: write.expires_at_ms };
        if let Some(existing) = shard.get_mut(plan.key.as_str()) {
            *existing = slot;
            return;
        }
        if shard.len() >= max {
            shard.retain(|_, s| s.expires_at_ms > now);
            if shard.len() >= max
                && let Some(victim) = shard.iter().min_by_key(|(_, s)| s.expires_at_ms).map(|(k, _)| k.clone())
            {
                shard.remove(&victim);
            }
        }
        shard.insert(plan.key.as_str().into(), slot);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the `ratelimit_request` fuzz target: `hits_addend: 2^64-1` overflowed the
    /// fixed-window sum. Any number of hits is over the limit, never a panic.
    #[test]
    fn huge_hits_are_over_limit() {
        let clock = Clock::manual(1_700_000_000_000);
        let store = MemoryStore::new(64, clock.clone());
        for algorithm in [Algorithm::FixedWindow, Algorithm::SlidingWindow, Algorithm::TokenBucket] {
            // A key per case: a fixed window counts hits even when over its limit.
            let counter = |key: u64, hits| CounterUpdate {
                key: format!("{}_{key}_", algorithm.name()),
                tag_len: 0,
                algorithm,
                limit: 5,
                period_secs: 60,
                burst: 5,
                hits,
            };
            let batch = |hits| Batch { counters: vec![counter(hits, 1), counter(hits, hits)], mode: Mode::Independent };
            for hits in [u64::MAX, u64::MAX - 1, 1 << 63] {
                let states = store.apply(&batch(hits), clock.now_ms());
                assert!(!states[0].over_limit && states[1].over_limit, "{algorithm:?} {hits}: {states:?}");
                if algorithm != Algorithm::SlidingWindow {
                    // A sliding window's remaining is what smaller requests may still use.
                    assert_eq!(states[1].remaining, 0);
                }
            }
        }
    }
}
