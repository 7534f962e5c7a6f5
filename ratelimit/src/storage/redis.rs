//! Counters in Redis: one Lua script call per request evaluates and updates every counter of
//! the batch atomically, so any number of replicas sharing Redis admit exactly the limit.
//!
//! Concurrent requests' script calls share multiplexed connections and are written to the
//! socket together, which coalesces them into pipelines without adding latency.
//!
//! Single node and Sentinel: the whole batch is one call, with envoyproxy/ratelimit's keys.
//! Cluster: keys are prefixed with a hash tag of their descriptor (`{domain_key_value_}1700000000`)
//! so that one descriptor's counters live in one slot, and each descriptor's counters are one
//! atomic call. [`Mode::AllOrNothing`] across descriptors is a check of every slot followed by
//! the update.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::future::BoxFuture;
use gatehouse_common::redis::{RedisConn, Topology};

use super::{Batch, CounterState, CounterStore, CounterUpdate, Mode, StorageError, Window};
use crate::rules::Algorithm;

const SCRIPT: &str = include_str!("counters.lua");
/// Values per counter in the script's reply.
const REPLY_PER_COUNTER: usize = 4;

pub struct RedisStore {
    conn: RedisConn,
    script: redis::Script,
    timeout: Duration,
    jitter_max_secs: u64,
    jitter_state: AtomicU64,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("topology", &self.conn.topology())
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// `timeout` bounds each call end to end; `jitter_max_secs` spreads fixed-window expiry
    /// (EXPIRATION_JITTER_MAX_SECONDS).
    pub fn new(conn: RedisConn, timeout: Duration, jitter_max_secs: u64) -> Self {
        RedisStore {
            conn,
            script: redis::Script::new(SCRIPT),
            timeout,
            jitter_max_secs,
            jitter_state: AtomicU64::new(0x9E37_79B9_7F4A_7C15),
        }
    }

    /// splitmix64 over a shared counter: cheap, lock-free, and good enough to spread expiries.
    fn jitter_ms(&self) -> u64 {
        if self.jitter_max_secs == 0 {
            return 0;
        }
        let mut z = self
            .jitter_state
            .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        z % (self.jitter_max_secs * 1000)
    }

    fn invocation(
        &self,
        counters: &[&CounterUpdate],
        mode: ScriptMode,
        now_ms: u64,
        hash_tags: bool,
    ) -> redis::ScriptInvocation<'_> {
        let mut call = self.script.prepare_invoke();
        call.arg(now_ms * 1000).arg(mode as u8);
        for c in counters {
            let window = Window::of(now_ms, c.period_secs);
            let base = if hash_tags {
                format!("{{{}}}{}", &c.key[..c.tag_len], &c.key[c.tag_len..])
            } else {
                c.key.clone()
            };
            let (algorithm, ttl_ms) = match c.algorithm {
                Algorithm::FixedWindow => {
                    call.key(format!("{base}{}", window.start_secs));
                    (1, window.period_ms + self.jitter_ms())
                }
                Algorithm::SlidingWindow => {
                    let (current, previous) = window.keys(&base);
                    call.key(current).key(previous);
                    (2, 2 * window.period_ms)
                }
                Algorithm::TokenBucket => {
                    call.key(base);
                    (3, 0)
                }
            };
            call.arg(algorithm)
                .arg(c.limit)
                .arg(window.period_ms)
                .arg(c.hits)
                .arg(c.burst)
                .arg(ttl_ms)
                .arg(window.elapsed_ms);
        }
        call
    }

    async fn run(
        &self,
        counters: &[&CounterUpdate],
        mode: ScriptMode,
        now_ms: u64,
        hash_tags: bool,
    ) -> Result<Vec<CounterState>, StorageError> {
        let call = self.invocation(counters, mode, now_ms, hash_tags);
        let mut conn = self.conn.next();
        let reply: Vec<i64> = call
            .invoke_async(&mut conn)
            .await
            .map_err(|e| StorageError::Unavailable(e.to_string()))?;
        parse_reply(&reply, counters.len())
    }

    async fn update_batch(
        &self,
        batch: &Batch,
        now_ms: u64,
    ) -> Result<Vec<CounterState>, StorageError> {
        if batch.counters.is_empty() {
            return Ok(Vec::new());
        }
        let mode = ScriptMode::from(batch.mode);
        if self.conn.topology() != Topology::Cluster {
            let all: Vec<&CounterUpdate> = batch.counters.iter().collect();
            return self.run(&all, mode, now_ms, false).await;
        }
        // Cluster: one call per descriptor (one hash slot), concurrently.
        let mut groups: Vec<(&str, Vec<&CounterUpdate>, Vec<usize>)> = Vec::new();
        for (i, c) in batch.counters.iter().enumerate() {
            let tag = &c.key[..c.tag_len];
            match groups.iter_mut().find(|(t, ..)| *t == tag) {
                Some((_, counters, members)) => {
                    counters.push(c);
                    members.push(i);
                }
                None => groups.push((tag, vec![c], vec![i])),
            }
        }
        if mode == ScriptMode::AllOrNothing && groups.len() > 1 {
            // Slots cannot be updated in one atomic step: check them all first, and write only
            // if none is over. Concurrent requests may interleave between the two steps; each
            // counter still never admits more than its limit.
            let checked = self.run_groups(&groups, ScriptMode::DryRun, now_ms).await?;
            if checked.iter().any(|s| s.over_limit) {
                return Ok(checked);
            }
        }
        self.run_groups(&groups, mode, now_ms).await
    }

    async fn run_groups(
        &self,
        groups: &[(&str, Vec<&CounterUpdate>, Vec<usize>)],
        mode: ScriptMode,
        now_ms: u64,
    ) -> Result<Vec<CounterState>, StorageError> {
        let calls = groups
            .iter()
            .map(|(_, counters, _)| self.run(counters, mode, now_ms, true));
        let replies = futures::future::join_all(calls).await;
        let total = groups.iter().map(|(_, c, _)| c.len()).sum();
        let mut states = vec![None; total];
        for ((_, _, members), reply) in groups.iter().zip(replies) {
            for (&i, state) in members.iter().zip(reply?) {
                states[i] = Some(state);
            }
        }
        states
            .into_iter()
            .map(|s| s.ok_or_else(|| StorageError::Protocol("missing counter in reply".into())))
            .collect()
    }
}

/// The script's mode argument.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ScriptMode {
    Independent = 0,
    AllOrNothing = 1,
    /// Evaluate without writing.
    DryRun = 2,
}

impl From<Mode> for ScriptMode {
    fn from(mode: Mode) -> Self {
        match mode {
            Mode::Independent => ScriptMode::Independent,
            Mode::AllOrNothing => ScriptMode::AllOrNothing,
        }
    }
}

impl CounterStore for RedisStore {
    fn update<'a>(
        &'a self,
        batch: &'a Batch,
        now_ms: u64,
    ) -> BoxFuture<'a, Result<Vec<CounterState>, StorageError>> {
        Box::pin(async move {
            match tokio::time::timeout(self.timeout, self.update_batch(batch, now_ms)).await {
                Ok(result) => result,
                Err(_) => Err(StorageError::Timeout(self.timeout)),
            }
        })
    }

    fn name(&self) -> &'static str {
        match self.conn.topology() {
            Topology::Cluster => "redis-cluster",
            Topology::Sentinel => "redis-sentinel",
            Topology::Single => "redis",
        }
    }
}

fn parse_reply(reply: &[i64], counters: usize) -> Result<Vec<CounterState>, StorageError> {
    if reply.len() != counters * REPLY_PER_COUNTER {
        return Err(StorageError::Protocol(format!(
            "expected {} values, got {}",
            counters * REPLY_PER_COUNTER,
            reply.len()
        )));
    }
    Ok(reply
        .chunks_exact(REPLY_PER_COUNTER)
        .map(|c| CounterState {
            over_limit: c[0] != 0,
            used: c[1].max(0) as u64,
            remaining: c[2].max(0) as u64,
            reset_after: Duration::from_micros(c[3].max(0) as u64),
        })
        .collect())
}
