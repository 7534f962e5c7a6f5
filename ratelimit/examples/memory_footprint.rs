//! RSS of the memory store holding N live counters (default 1,000,000), each with a key
//! shaped like a real one (`gateway_remote_address_10.x.y.z_1700000000`).
//! `cargo run --release --example memory_footprint -p gatehouse-ratelimit -- 1000000`

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use gatehouse_ratelimit::clock::Clock;
use gatehouse_ratelimit::rules::Algorithm;
use gatehouse_ratelimit::storage::memory::MemoryStore;
use gatehouse_ratelimit::storage::{Batch, CounterStore, CounterUpdate, Mode};

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
        })
        .unwrap_or(0)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let n: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(1_000_000);
    let before = rss_kib();
    // Headroom: shards fill unevenly, and a full shard evicts.
    let store = MemoryStore::new(n + n / 4, Clock::System);
    let now = Clock::System.now_ms();
    for i in 0..n {
        let key = format!("gateway_remote_address_10.{}.{}.{}_", (i >> 16) & 255, (i >> 8) & 255, i & 255);
        let batch = Batch {
            counters: vec![CounterUpdate {
                tag_len: key.len(),
                key,
                algorithm: Algorithm::FixedWindow,
                limit: 100,
                period_secs: 3600,
                burst: 100,
                hits: 1,
            }],
            mode: Mode::Independent,
        };
        store.update(&batch, now).await.expect("memory store never fails");
    }
    let after = rss_kib();
    println!(
        "{} live counters: RSS {:.1} MiB (process before the store: {:.1} MiB; {:.0} bytes per counter)",
        store.len(),
        after as f64 / 1024.0,
        before as f64 / 1024.0,
        (after - before) as f64 * 1024.0 / n as f64
    );
}
