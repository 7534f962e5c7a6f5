//! Counter storage: the part of rate limiting that must be atomic.
//!
//! A [`Batch`] holds every counter one request touches. A store evaluates and updates the
//! batch as one atomic step (one Lua script call on Redis, one set of shard locks in memory),
//! so replicas sharing a store never admit more than a limit allows.
//!
//! **Invariant:** this layer never sees protobuf or gRPC types, and the layers above never see
//! Redis commands.
//!
//! The algorithms, identical in every store (the Redis Lua script mirrors [`memory`]):
//! - fixed window: the counter for the window containing `now`; `after = before + hits`;
//!   over limit iff `after > limit`. In [`Mode::Independent`] the counter is incremented even
//!   when over limit, exactly as envoyproxy/ratelimit's `INCRBY` does.
//! - sliding window: `estimate = floor(previous * (1 - elapsed/period)) + current`; over limit
//!   iff `estimate + hits > limit`; only admitted hits are counted.
//! - token bucket (GCRA): a theoretical arrival time `tat`, each hit costing `period/limit`;
//!   over limit iff `max(tat, now) + hits*cost - burst*cost > now`.

pub mod local_cache;
pub mod memory;
pub mod per_second;
pub mod redis;

use std::time::Duration;

use futures::future::BoxFuture;

use crate::rules::Algorithm;

/// One counter to evaluate and update.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CounterUpdate {
    /// The counter's key without window suffix.
    pub key: String,
    /// `key[..tag_len]` identifies the descriptor; counters sharing it share a Redis Cluster
    /// hash slot, so that a descriptor's limits update together.
    pub tag_len: usize,
    pub algorithm: Algorithm,
    pub limit: u64,
    /// Window length or refill period, in whole seconds.
    pub period_secs: u64,
    /// Token bucket capacity; ignored by the window algorithms.
    pub burst: u64,
    /// How much this request adds; 0 checks without counting.
    pub hits: u64,
}

/// What to do when some counters of a batch are over their limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Each counter on its own (envoyproxy/ratelimit's default): fixed windows always count,
    /// the other algorithms count admitted hits.
    Independent,
    /// If any counter is over its limit, none is incremented
    /// (STOP_CACHE_KEY_INCREMENT_WHEN_OVERLIMIT).
    AllOrNothing,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Batch {
    pub counters: Vec<CounterUpdate>,
    pub mode: Mode,
}

/// A counter's state after the batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CounterState {
    pub over_limit: bool,
    /// Quota used, including this request's hits if they were admitted.
    pub used: u64,
    pub remaining: u64,
    /// Until the window ends; for a token bucket, until the bucket is full again (admitted)
    /// or until this request would be admitted (over limit).
    pub reset_after: Duration,
    /// Answered by the local over-limit cache, without asking the store.
    pub from_local_cache: bool,
}

#[derive(Clone, Debug, thiserror::Error)]
pub enum StorageError {
    #[error("counter store timed out after {0:?}")]
    Timeout(Duration),
    #[error("counter store unavailable: {0}")]
    Unavailable(String),
    #[error("counter store returned an unexpected reply: {0}")]
    Protocol(String),
    /// A scan cursor this store did not hand out.
    #[error("invalid page token {0:?}")]
    BadCursor(String),
    #[error("not supported by this counter store: {0}")]
    Unsupported(&'static str),
}

impl StorageError {
    /// Whether retrying later may succeed. Every variant is, today; a protocol error is a bug
    /// or a Redis version we do not support, and is logged as such.
    pub fn is_transient(&self) -> bool {
        matches!(self, StorageError::Timeout(_) | StorageError::Unavailable(_))
    }

    /// The `kind` of `gatehouse_ratelimit_errors_total`.
    pub fn kind(&self) -> &'static str {
        match self {
            StorageError::Timeout(_) => "store_timeout",
            _ => "store_unavailable",
        }
    }
}

/// A place counters live. `now_ms` is Unix time in milliseconds, from the caller's clock.
pub trait CounterStore: Send + Sync + 'static {
    fn update<'a>(&'a self, batch: &'a Batch, now_ms: u64) -> BoxFuture<'a, Result<Vec<CounterState>, StorageError>>;

    /// A short name for logs and /rlconfig: `memory`, `redis`, `redis-cluster`.
    fn name(&self) -> &'static str;

    /// `batch` evaluated as it stands, without counting (every `hits` is 0): what the admin
    /// API shows. A cache in front of a store asks the store.
    fn peek<'a>(&'a self, batch: &'a Batch, now_ms: u64) -> BoxFuture<'a, Result<Vec<CounterState>, StorageError>> {
        self.update(batch, now_ms)
    }

    /// The keys that start with `prefix`, one page at a time, for the admin API: `cursor` is
    /// empty or a page's `next`; about `count` keys are looked at per page (Redis: `SCAN`
    /// with `MATCH` and `COUNT`). A key may come twice; one created during the scan may not
    /// come at all.
    fn scan<'a>(
        &'a self,
        _prefix: &'a str,
        _cursor: &'a str,
        _count: usize,
    ) -> BoxFuture<'a, Result<KeyPage, StorageError>> {
        Box::pin(std::future::ready(Err(StorageError::Unsupported("listing counters"))))
    }

    /// Deletes what `counters` count in at `now_ms` (the window, and a sliding window's
    /// previous one; the bucket), so that their next hit starts from zero. Returns how many
    /// stored keys were deleted.
    fn reset<'a>(&'a self, _counters: &'a [CounterUpdate], _now_ms: u64) -> BoxFuture<'a, Result<u64, StorageError>> {
        Box::pin(std::future::ready(Err(StorageError::Unsupported("resetting counters"))))
    }
}

/// One page of [`CounterStore::scan`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyPage {
    /// Counter keys as the service writes them: [`CounterUpdate::key`], then the window's
    /// start (Unix seconds) for fixed and sliding windows; never with Redis Cluster's hash tags.
    pub keys: Vec<String>,
    /// The cursor of the next page; None when every key has been looked at.
    pub next: Option<String>,
}

/// Window bookkeeping shared by the stores.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Window {
    /// Start of the current window, Unix seconds (what envoyproxy/ratelimit puts in keys).
    pub(crate) start_secs: u64,
    pub(crate) period_ms: u64,
    /// Milliseconds since the window started.
    pub(crate) elapsed_ms: u64,
}

impl Window {
    pub(crate) fn of(now_ms: u64, period_secs: u64) -> Window {
        let period_ms = period_secs.max(1) * 1000;
        let start_ms = now_ms - now_ms % period_ms;
        Window { start_secs: start_ms / 1000, period_ms, elapsed_ms: now_ms - start_ms }
    }

    pub(crate) fn remaining(&self) -> Duration {
        Duration::from_millis(self.period_ms - self.elapsed_ms)
    }

    /// The key of the current window, and of the previous one.
    pub(crate) fn keys(&self, base: &str) -> (String, String) {
        let prev = self.start_secs.saturating_sub(self.period_ms / 1000);
        (format!("{base}{}", self.start_secs), format!("{base}{prev}"))
    }
}

/// Cost of one token in microseconds, for GCRA.
pub(crate) fn token_cost_us(period_secs: u64, limit: u64) -> f64 {
    (period_secs.max(1) as f64 * 1_000_000.0) / limit.max(1) as f64
}

#[cfg(test)]
mod tests;
