//! REDIS_PERSECOND: counters of limits whose unit is SECOND live in a Redis of their own, as
//! envoyproxy/ratelimit keeps them, so the busiest, shortest-lived keys do not load the Redis
//! that holds the rest.
//!
//! A request whose counters are all on one side is one call to that store, as without the
//! split. A request with counters on both sides is one call to each, concurrently; each call is
//! atomic, the pair is not. In [`Mode::AllOrNothing`] both sides are first checked without
//! writing, and updated only if neither is over its limit (as the Cluster store does across
//! slots): concurrent requests may interleave between the two steps, and each counter still
//! never admits more than its limit.

use futures::future::BoxFuture;

use super::redis::RedisStore;
use super::{Batch, CounterState, CounterStore, CounterUpdate, KeyPage, Mode, StorageError};

pub struct PerSecondSplit {
    /// Counters with a one-second period (unit SECOND).
    per_second: RedisStore,
    /// Every other counter.
    other: RedisStore,
}

impl std::fmt::Debug for PerSecondSplit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PerSecondSplit").field("per_second", &self.per_second).field("other", &self.other).finish()
    }
}

impl PerSecondSplit {
    pub fn new(per_second: RedisStore, other: RedisStore) -> Self {
        PerSecondSplit { per_second, other }
    }

    /// Runs `batch` split in two: the per-second counters through `per_second`, the rest
    /// through `other`, concurrently; the states come back in the batch's order.
    async fn split<'a>(
        &'a self,
        batch: &'a Batch,
        run: impl Fn(&'a RedisStore, Batch) -> BoxFuture<'a, Result<Vec<CounterState>, StorageError>>,
    ) -> Result<Vec<CounterState>, StorageError> {
        let (per_second, other): (Vec<_>, Vec<_>) =
            batch.counters.iter().cloned().enumerate().partition(|(_, c)| c.period_secs == 1);
        let (per_second_at, per_second): (Vec<usize>, Vec<_>) = per_second.into_iter().unzip();
        let (other_at, other): (Vec<usize>, Vec<_>) = other.into_iter().unzip();
        let (a, b) = futures::future::join(
            run(&self.per_second, Batch { counters: per_second, mode: batch.mode }),
            run(&self.other, Batch { counters: other, mode: batch.mode }),
        )
        .await;
        let mut states = vec![None; batch.counters.len()];
        for (i, state) in per_second_at.iter().zip(a?).chain(other_at.iter().zip(b?)) {
            states[*i] = Some(state);
        }
        states.into_iter().map(|s| s.ok_or_else(|| StorageError::Protocol("missing counter in reply".into()))).collect()
    }

    async fn update_split(&self, batch: &Batch, now_ms: u64) -> Result<Vec<CounterState>, StorageError> {
        if batch.mode == Mode::AllOrNothing {
            let checked =
                self.split(batch, |store, part| Box::pin(async move { store.check(&part, now_ms).await })).await?;
            if checked.iter().any(|s| s.over_limit) {
                return Ok(checked);
            }
        }
        self.split(batch, |store, part| Box::pin(async move { store.update(&part, now_ms).await })).await
    }

    /// One cursor over both stores: `s:<cursor>` while the per-second store is scanned, then
    /// `o:<cursor>` over the other. The per-second store comes first: its keys live one second
    /// and are few at a time.
    async fn scan_both(&self, prefix: &str, cursor: &str, count: usize) -> Result<KeyPage, StorageError> {
        let (per_second, inner) = match cursor.split_once(':') {
            None if cursor.is_empty() => (true, ""),
            Some(("s", inner)) if !inner.is_empty() => (true, inner),
            Some(("o", inner)) => (false, inner),
            _ => return Err(StorageError::BadCursor(cursor.to_string())),
        };
        // An inner cursor the store rejects is the caller's bad cursor, named as given.
        let bad = |e: StorageError| match e {
            StorageError::BadCursor(_) => StorageError::BadCursor(cursor.to_string()),
            e => e,
        };
        if per_second {
            let page = self.per_second.scan(prefix, inner, count).await.map_err(bad)?;
            let next = Some(page.next.map_or_else(|| "o:".to_string(), |c| format!("s:{c}")));
            Ok(KeyPage { keys: page.keys, next })
        } else {
            let page = self.other.scan(prefix, inner, count).await.map_err(bad)?;
            Ok(KeyPage { keys: page.keys, next: page.next.map(|c| format!("o:{c}")) })
        }
    }

    async fn reset_both(&self, counters: &[CounterUpdate], now_ms: u64) -> Result<u64, StorageError> {
        let (per_second, other): (Vec<_>, Vec<_>) = counters.iter().cloned().partition(|c| c.period_secs == 1);
        let (a, b) =
            futures::future::join(self.per_second.reset(&per_second, now_ms), self.other.reset(&other, now_ms)).await;
        Ok(a? + b?)
    }
}

impl CounterStore for PerSecondSplit {
    fn update<'a>(&'a self, batch: &'a Batch, now_ms: u64) -> BoxFuture<'a, Result<Vec<CounterState>, StorageError>> {
        let per_second = batch.counters.iter().filter(|c| c.period_secs == 1).count();
        if per_second == 0 {
            self.other.update(batch, now_ms)
        } else if per_second == batch.counters.len() {
            self.per_second.update(batch, now_ms)
        } else {
            Box::pin(self.update_split(batch, now_ms))
        }
    }

    fn name(&self) -> &'static str {
        "redis+persecond"
    }

    /// Both stores, without counting (the default would count nothing either, but through
    /// `update`'s all-or-nothing two-step).
    fn peek<'a>(&'a self, batch: &'a Batch, now_ms: u64) -> BoxFuture<'a, Result<Vec<CounterState>, StorageError>> {
        Box::pin(self.split(batch, move |store, part| Box::pin(async move { store.check(&part, now_ms).await })))
    }

    fn scan<'a>(
        &'a self,
        prefix: &'a str,
        cursor: &'a str,
        count: usize,
    ) -> BoxFuture<'a, Result<KeyPage, StorageError>> {
        Box::pin(self.scan_both(prefix, cursor, count))
    }

    fn reset<'a>(&'a self, counters: &'a [CounterUpdate], now_ms: u64) -> BoxFuture<'a, Result<u64, StorageError>> {
        Box::pin(self.reset_both(counters, now_ms))
    }
}
