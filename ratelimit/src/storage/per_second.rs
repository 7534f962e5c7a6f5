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
use super::{Batch, CounterState, CounterStore, Mode, StorageError};

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

    async fn update_split(&self, batch: &Batch, now_ms: u64) -> Result<Vec<CounterState>, StorageError> {
        let (per_second, other): (Vec<_>, Vec<_>) =
            batch.counters.iter().cloned().enumerate().partition(|(_, c)| c.period_secs == 1);
        let (per_second_at, per_second): (Vec<usize>, Vec<_>) = per_second.into_iter().unzip();
        let (other_at, other): (Vec<usize>, Vec<_>) = other.into_iter().unzip();
        let per_second = Batch { counters: per_second, mode: batch.mode };
        let other = Batch { counters: other, mode: batch.mode };
        let merge = |a: Vec<CounterState>, b: Vec<CounterState>| -> Result<Vec<CounterState>, StorageError> {
            let mut states = vec![None; batch.counters.len()];
            for (i, state) in per_second_at.iter().zip(a).chain(other_at.iter().zip(b)) {
                states[*i] = Some(state);
            }
            states
                .into_iter()
                .map(|s| s.ok_or_else(|| StorageError::Protocol("missing counter in reply".into())))
                .collect()
        };
        if batch.mode == Mode::AllOrNothing {
            let (a, b) =
                futures::future::join(self.per_second.check(&per_second, now_ms), self.other.check(&other, now_ms))
                    .await;
            let checked = merge(a?, b?)?;
            if checked.iter().any(|s| s.over_limit) {
                return Ok(checked);
            }
        }
        let (a, b) =
            futures::future::join(self.per_second.update(&per_second, now_ms), self.other.update(&other, now_ms)).await;
        merge(a?, b?)
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
}
