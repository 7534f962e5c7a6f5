//! Counters in Redis: one Lua script call per request evaluates and updates every counter of
//! the batch atomically, so any number of replicas sharing Redis admit exactly the limit.
//!
//! Concurrent requests are coalesced: while calls are in flight, the requests that arrive are
//! queued and sent together as one script call (each request still atomic on its own). Redis
//! then parses and runs one script per batch instead of one per request, and nothing waits
//! when the load is light.
//!
//! Single node and Sentinel: the whole batch is one call, with envoyproxy/ratelimit's keys.
//! Cluster: keys are prefixed with a hash tag of their descriptor (`{domain_key_value_}1700000000`)
//! so that one descriptor's counters live in one slot, and each descriptor's counters are one
//! atomic call. [`Mode::AllOrNothing`] across descriptors is a check of every slot followed by
//! the update.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::future::BoxFuture;
use gatehouse_common::redis::{RedisConn, Topology};
use tokio::sync::{mpsc, oneshot};

use super::{Batch, CounterState, CounterStore, CounterUpdate, KeyPage, Mode, StorageError, Window};
use crate::rules::Algorithm;

const SCRIPT: &str = include_str!("counters.lua");
/// Values per counter in the script's reply.
const REPLY_PER_COUNTER: usize = 4;
/// Most requests coalesced into one script call.
const MAX_COALESCED: usize = 64;

pub struct RedisStore {
    shared: Arc<Shared>,
    /// Single node and Sentinel: requests go through the coalescer.
    coalescer: Option<mpsc::Sender<Job>>,
    timeout: Duration,
    jitter_max_secs: u64,
    jitter_state: AtomicU64,
}

struct Shared {
    conn: RedisConn,
    script: redis::Script,
}

/// One request's part of a script call: its keys and arguments, ready to send.
struct Request {
    keys: Vec<String>,
    /// `now_us, mode, counters`, then 7 values per counter.
    args: Vec<u64>,
    counters: usize,
}

struct Job {
    request: Request,
    reply: oneshot::Sender<Result<Vec<CounterState>, StorageError>>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore").field("topology", &self.shared.conn.topology()).finish_non_exhaustive()
    }
}

impl RedisStore {
    /// `timeout` bounds each call end to end; `jitter_max_secs` spreads fixed-window expiry
    /// (EXPIRATION_JITTER_MAX_SECONDS). Must be called inside a Tokio runtime.
    pub fn new(conn: RedisConn, timeout: Duration, jitter_max_secs: u64) -> Self {
        let cluster = conn.topology() == Topology::Cluster;
        let shared = Arc::new(Shared { conn, script: redis::Script::new(SCRIPT) });
        let coalescer = (!cluster).then(|| {
            let (tx, rx) = mpsc::channel(4096);
            tokio::spawn(coalesce(shared.clone(), rx));
            tx
        });
        RedisStore { shared, coalescer, timeout, jitter_max_secs, jitter_state: AtomicU64::new(0x9E37_79B9_7F4A_7C15) }
    }

    /// splitmix64 over a shared counter: cheap, lock-free, and good enough to spread expiries.
    fn jitter_ms(&self) -> u64 {
        if self.jitter_max_secs == 0 {
            return 0;
        }
        let mut z = self.jitter_state.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        z % (self.jitter_max_secs * 1000)
    }

    fn prepare(&self, counters: &[&CounterUpdate], mode: ScriptMode, now_ms: u64, hash_tags: bool) -> Request {
        let mut keys = Vec::with_capacity(counters.len());
        let mut args = Vec::with_capacity(3 + 7 * counters.len());
        args.extend([now_ms * 1000, mode as u64, counters.len() as u64]);
        for c in counters {
            let window = Window::of(now_ms, c.period_secs);
            let base =
                if hash_tags { format!("{{{}}}{}", &c.key[..c.tag_len], &c.key[c.tag_len..]) } else { c.key.clone() };
            let (algorithm, ttl_ms) = match c.algorithm {
                Algorithm::FixedWindow => {
                    keys.push(format!("{base}{}", window.start_secs));
                    (1, window.period_ms + self.jitter_ms())
                }
                Algorithm::SlidingWindow => {
                    let (current, previous) = window.keys(&base);
                    keys.extend([current, previous]);
                    (2, 2 * window.period_ms)
                }
                Algorithm::TokenBucket => {
                    keys.push(base);
                    (3, 0)
                }
            };
            args.extend([algorithm, c.limit, window.period_ms, c.hits, c.burst, ttl_ms, window.elapsed_ms]);
        }
        Request { keys, args, counters: counters.len() }
    }

    /// Runs one request: through the coalescer, or directly (Cluster).
    async fn run(&self, request: Request) -> Result<Vec<CounterState>, StorageError> {
        match &self.coalescer {
            Some(tx) => {
                let (reply, rx) = oneshot::channel();
                tx.send(Job { request, reply })
                    .await
                    .map_err(|_| StorageError::Unavailable("coalescer stopped".into()))?;
                rx.await.map_err(|_| StorageError::Unavailable("coalescer dropped the request".into()))?
            }
            None => self.shared.call(&[&request]).await,
        }
    }

    /// Single node and Sentinel: the whole batch is one request to the coalescer.
    async fn update_single(
        &self,
        batch: &Batch,
        mode: ScriptMode,
        now_ms: u64,
    ) -> Result<Vec<CounterState>, StorageError> {
        let all: Vec<&CounterUpdate> = batch.counters.iter().collect();
        self.run(self.prepare(&all, mode, now_ms, false)).await
    }

    async fn update_cluster(
        &self,
        batch: &Batch,
        mode: ScriptMode,
        now_ms: u64,
    ) -> Result<Vec<CounterState>, StorageError> {
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
        let calls = groups.iter().map(|(_, counters, _)| self.run(self.prepare(counters, mode, now_ms, true)));
        let replies = futures::future::join_all(calls).await;
        let total = groups.iter().map(|(_, c, _)| c.len()).sum();
        let mut states = vec![None; total];
        for ((_, _, members), reply) in groups.iter().zip(replies) {
            for (&i, state) in members.iter().zip(reply?) {
                states[i] = Some(state);
            }
        }
        states.into_iter().map(|s| s.ok_or_else(|| StorageError::Protocol("missing counter in reply".into()))).collect()
    }
}

impl Shared {
    /// One script call for `requests`; the reply holds their counters in order.
    async fn call(&self, requests: &[&Request]) -> Result<Vec<CounterState>, StorageError> {
        let mut call = self.script.prepare_invoke();
        call.arg(requests.len());
        for r in requests {
            for key in &r.keys {
                call.key(key.as_str());
            }
            for arg in &r.args {
                call.arg(*arg);
            }
        }
        let counters = requests.iter().map(|r| r.counters).sum();
        let mut conn = self.conn.next().op("update");
        let reply: Vec<i64> =
            call.invoke_async(&mut conn).await.map_err(|e| StorageError::Unavailable(e.to_string()))?;
        parse_reply(&reply, counters)
    }
}

/// Takes queued requests and sends them as one script call, with a few calls in flight.
/// Under light load each call carries one request and nothing waits; under heavy load the
/// queue fills while calls are in flight, and each call carries many.
async fn coalesce(shared: Arc<Shared>, mut rx: mpsc::Receiver<Job>) {
    let in_flight = Arc::new(tokio::sync::Semaphore::new(4));
    while let Some(first) = rx.recv().await {
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            return;
        };
        let mut jobs = vec![first];
        while jobs.len() < MAX_COALESCED {
            match rx.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        let shared = shared.clone();
        tokio::spawn(async move {
            let requests: Vec<&Request> = jobs.iter().map(|j| &j.request).collect();
            let result = shared.call(&requests).await;
            match result {
                Ok(states) => {
                    let mut states = states.into_iter();
                    for job in jobs {
                        let mine = states.by_ref().take(job.request.counters).collect();
                        let _ = job.reply.send(Ok(mine));
                    }
                }
                Err(e) => {
                    for job in jobs {
                        let _ = job.reply.send(Err(e.clone()));
                    }
                }
            }
            drop(permit);
        });
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

impl RedisStore {
    /// `batch` evaluated without writing anything: what [`CounterStore::update`] would answer.
    /// For [`Mode::AllOrNothing`] over counters in more than one store (checked everywhere,
    /// then updated).
    pub(crate) fn check<'a>(
        &'a self,
        batch: &'a Batch,
        now_ms: u64,
    ) -> BoxFuture<'a, Result<Vec<CounterState>, StorageError>> {
        self.evaluate(batch, ScriptMode::DryRun, now_ms)
    }

    fn evaluate<'a>(
        &'a self,
        batch: &'a Batch,
        mode: ScriptMode,
        now_ms: u64,
    ) -> BoxFuture<'a, Result<Vec<CounterState>, StorageError>> {
        // Two futures rather than one with a branch: the Cluster path's state is large, and
        // every single-node request would otherwise allocate and move it.
        if batch.counters.is_empty() {
            return Box::pin(std::future::ready(Ok(Vec::new())));
        }
        if self.shared.conn.topology() == Topology::Cluster {
            Box::pin(with_timeout(self.timeout, self.update_cluster(batch, mode, now_ms)))
        } else {
            Box::pin(with_timeout(self.timeout, self.update_single(batch, mode, now_ms)))
        }
    }
}

impl CounterStore for RedisStore {
    fn update<'a>(&'a self, batch: &'a Batch, now_ms: u64) -> BoxFuture<'a, Result<Vec<CounterState>, StorageError>> {
        self.evaluate(batch, ScriptMode::from(batch.mode), now_ms)
    }

    fn peek<'a>(&'a self, batch: &'a Batch, now_ms: u64) -> BoxFuture<'a, Result<Vec<CounterState>, StorageError>> {
        self.check(batch, now_ms)
    }

    fn scan<'a>(
        &'a self,
        prefix: &'a str,
        cursor: &'a str,
        count: usize,
    ) -> BoxFuture<'a, Result<KeyPage, StorageError>> {
        Box::pin(with_timeout(self.timeout, self.scan_page(prefix, cursor, count)))
    }

    fn reset<'a>(&'a self, counters: &'a [CounterUpdate], now_ms: u64) -> BoxFuture<'a, Result<u64, StorageError>> {
        Box::pin(with_timeout(self.timeout, self.delete(counters, now_ms)))
    }

    fn name(&self) -> &'static str {
        match self.shared.conn.topology() {
            Topology::Cluster => "redis-cluster",
            Topology::Sentinel => "redis-sentinel",
            Topology::Single => "redis",
        }
    }
}

/// The admin API's operations: `SCAN` (never `KEYS`, which blocks Redis for the whole
/// keyspace) and `DEL`.
impl RedisStore {
    async fn scan_page(&self, prefix: &str, cursor: &str, count: usize) -> Result<KeyPage, StorageError> {
        if self.shared.conn.topology() == Topology::Cluster {
            // SCAN walks one node; a cluster-wide scan is one cursor per master.
            return Err(StorageError::Unsupported("listing counters on Redis Cluster"));
        }
        let position: u64 = match cursor {
            "" => 0,
            _ => cursor.parse().map_err(|_| StorageError::BadCursor(cursor.to_string()))?,
        };
        let mut conn = self.shared.conn.next().op("scan");
        let (next, keys): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
            .arg(position)
            .arg("MATCH")
            .arg(format!("{}*", glob_escape(prefix)))
            .arg("COUNT")
            .arg(count.max(1))
            .query_async(&mut conn)
            .await
            .map_err(|e| StorageError::Unavailable(e.to_string()))?;
        // Counter keys are UTF-8 (descriptor entries are strings); anything else is not ours.
        let keys = keys.into_iter().filter_map(|k| String::from_utf8(k).ok()).collect();
        Ok(KeyPage { keys, next: (next != 0).then(|| next.to_string()) })
    }

    /// One `DEL` per counter (its keys share a Cluster slot), concurrently.
    async fn delete(&self, counters: &[CounterUpdate], now_ms: u64) -> Result<u64, StorageError> {
        let hash_tags = self.shared.conn.topology() == Topology::Cluster;
        let deletes = counters.iter().map(|c| {
            let mut conn = self.shared.conn.next().op("delete");
            let keys = stored_keys(c, now_ms, hash_tags);
            async move { redis::cmd("DEL").arg(keys).query_async::<u64>(&mut conn).await }
        });
        let mut deleted = 0;
        for result in futures::future::join_all(deletes).await {
            deleted += result.map_err(|e| StorageError::Unavailable(e.to_string()))?;
        }
        Ok(deleted)
    }
}

/// The keys `c` counts in at `now_ms`, as [`RedisStore::prepare`] names them.
fn stored_keys(c: &CounterUpdate, now_ms: u64, hash_tags: bool) -> Vec<String> {
    let window = Window::of(now_ms, c.period_secs);
    let base = if hash_tags { format!("{{{}}}{}", &c.key[..c.tag_len], &c.key[c.tag_len..]) } else { c.key.clone() };
    match c.algorithm {
        Algorithm::FixedWindow => vec![format!("{base}{}", window.start_secs)],
        Algorithm::SlidingWindow => {
            let (current, previous) = window.keys(&base);
            vec![current, previous]
        }
        Algorithm::TokenBucket => vec![base],
    }
}

/// `s` as a literal in a `SCAN ... MATCH` pattern.
fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

async fn with_timeout<T>(
    timeout: Duration,
    f: impl std::future::Future<Output = Result<T, StorageError>>,
) -> Result<T, StorageError> {
    tokio::time::timeout(timeout, f).await.unwrap_or(Err(StorageError::Timeout(timeout)))
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
            from_local_cache: false,
        })
        .collect())
}
