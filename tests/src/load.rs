//! A steady load through Envoy that records every request: when it was sent, how long it took
//! and what came back. Chaos and soak tests inject a fault while it runs and then assert on
//! the record (every request answered, in time, with an allowed status; counting resumed
//! within a second); `make chaos` and `make soak` print its summaries.
//!
//! wrk and h2load report aggregates; these assertions need a timeline (what happened in the
//! second after Redis came back), so the load is generated here: `workers` connections, each
//! sending its next request when the previous one is answered, optionally paced to a total
//! rate. A transport error is recorded as status 0.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// One kind of request the load sends; workers take them in turn.
#[derive(Clone, Debug)]
pub struct Request {
    /// A short label for summaries (`jwt`, `ratelimit`...).
    pub name: &'static str,
    pub method: reqwest::Method,
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: Option<Vec<u8>>,
}

impl Request {
    pub fn get(name: &'static str, url: impl Into<String>) -> Request {
        Request { name, method: reqwest::Method::GET, url: url.into(), headers: Vec::new(), body: None }
    }

    pub fn header(mut self, name: &str, value: &str) -> Request {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    pub fn post(mut self, body: impl Into<Vec<u8>>) -> Request {
        self.method = reqwest::Method::POST;
        self.body = Some(body.into());
        self
    }
}

/// One request as it happened.
#[derive(Clone, Debug)]
pub struct Sample {
    /// Index into the load's requests.
    pub request: usize,
    /// When it was sent, from the start of the load.
    pub at: Duration,
    pub latency: Duration,
    /// The HTTP status, or 0 for a transport error (reset, refused, timeout).
    pub status: u16,
    /// What went wrong, for a transport error.
    pub error: Option<String>,
}

/// A running load.
pub struct Load {
    started: Instant,
    requests: Arc<Vec<Request>>,
    stop: Arc<AtomicBool>,
    workers: Vec<tokio::task::JoinHandle<Vec<Sample>>>,
}

impl Load {
    /// Starts `workers` loops over `requests`; with `rate`, paced to that many requests per
    /// second in total.
    pub fn start(requests: Vec<Request>, workers: usize, rate: Option<f64>) -> Load {
        assert!(!requests.is_empty() && workers > 0);
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(workers)
            .timeout(Duration::from_secs(30))
            .build()
            .expect("HTTP client");
        let requests = Arc::new(requests);
        let stop = Arc::new(AtomicBool::new(false));
        let started = Instant::now();
        let interval = rate.map(|r| Duration::from_secs_f64(workers as f64 / r));
        let count = workers;
        let workers = (0..count)
            .map(|w| {
                let (client, requests, stop) = (client.clone(), requests.clone(), stop.clone());
                tokio::spawn(async move {
                    let mut samples = Vec::new();
                    let mut next = w;
                    // Stagger paced workers across one interval.
                    let mut slot = interval.map(|i| started + i.mul_f64(w as f64 / count as f64));
                    while !stop.load(Ordering::Relaxed) {
                        if let (Some(s), Some(i)) = (slot.as_mut(), interval) {
                            tokio::time::sleep_until((*s).into()).await;
                            *s += i;
                        }
                        let index = next % requests.len();
                        next += 1;
                        let request = &requests[index];
                        let mut builder = client.request(request.method.clone(), &request.url);
                        for (k, v) in &request.headers {
                            builder = builder.header(k, v);
                        }
                        if let Some(body) = &request.body {
                            builder = builder.body(body.clone());
                        }
                        let sent = Instant::now();
                        let (status, error) = match builder.send().await {
                            // Read the whole body: the request is done when the client has it.
                            Ok(response) => {
                                let status = response.status().as_u16();
                                match response.bytes().await {
                                    Ok(_) => (status, None),
                                    Err(e) => (0, Some(format!("reading the body: {e:?}"))),
                                }
                            }
                            Err(e) => (0, Some(format!("{e:?}"))),
                        };
                        let (at, latency) = (sent - started, sent.elapsed());
                        samples.push(Sample { request: index, at, latency, status, error });
                    }
                    samples
                })
            })
            .collect();
        Load { started, requests, stop, workers }
    }

    /// Time since the load started.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Stops the workers after their current request and returns every sample, in send order.
    pub async fn stop(self) -> Record {
        self.stop.store(true, Ordering::Relaxed);
        let mut samples = Vec::new();
        for worker in self.workers {
            samples.extend(worker.await.expect("load worker"));
        }
        samples.sort_by_key(|s| s.at);
        Record { names: self.requests.iter().map(|r| r.name).collect(), samples }
    }
}

/// The samples of a load, or of a part of it.
#[derive(Clone, Debug, Default)]
pub struct Record {
    names: Vec<&'static str>,
    pub samples: Vec<Sample>,
}

impl Record {
    /// The samples sent in `[from, to)`.
    pub fn window(&self, from: Duration, to: Duration) -> Record {
        self.filter(|s| s.at >= from && s.at < to)
    }

    /// The samples of the request named `name`.
    pub fn named(&self, name: &str) -> Record {
        self.filter(|s| self.names.get(s.request) == Some(&name))
    }

    pub fn filter(&self, keep: impl Fn(&Sample) -> bool) -> Record {
        Record { names: self.names.clone(), samples: self.samples.iter().filter(|s| keep(s)).cloned().collect() }
    }

    pub fn len(&self) -> usize {
        self.samples.len()
    }

    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// How many of each status (0: transport error).
    pub fn statuses(&self) -> BTreeMap<u16, usize> {
        let mut counts = BTreeMap::new();
        for s in &self.samples {
            *counts.entry(s.status).or_insert(0) += 1;
        }
        counts
    }

    /// The samples whose status is not in `allowed`.
    pub fn unexpected(&self, allowed: &[u16]) -> Record {
        self.filter(|s| !allowed.contains(&s.status))
    }

    /// The latency at quantile `q` (0.99 for p99); zero for an empty record.
    pub fn latency(&self, q: f64) -> Duration {
        let mut latencies: Vec<Duration> = self.samples.iter().map(|s| s.latency).collect();
        if latencies.is_empty() {
            return Duration::ZERO;
        }
        latencies.sort();
        let rank = ((q * latencies.len() as f64).ceil() as usize).clamp(1, latencies.len());
        latencies[rank - 1]
    }

    pub fn max_latency(&self) -> Duration {
        self.samples.iter().map(|s| s.latency).max().unwrap_or_default()
    }

    /// The first sample sent at or after `from` that satisfies `pred`.
    pub fn first_after(&self, from: Duration, pred: impl Fn(&Sample) -> bool) -> Option<Sample> {
        self.samples.iter().find(|s| s.at >= from && pred(s)).cloned()
    }

    /// The first `n` samples, one per line, for assertion messages.
    pub fn describe(&self, n: usize) -> String {
        let mut out = self.summary();
        for s in self.samples.iter().take(n) {
            let name = self.names.get(s.request).copied().unwrap_or("?");
            out.push_str(&format!(
                "\n  {name} at {:.3}s: {} in {:.1} ms{}",
                s.at.as_secs_f64(),
                s.status,
                s.latency.as_secs_f64() * 1000.0,
                s.error.as_deref().map(|e| format!(" ({e})")).unwrap_or_default()
            ));
        }
        out
    }

    /// `n=…, statuses {…}, p50 …, p99 …, max …`: one line for logs and RELIABILITY.md.
    pub fn summary(&self) -> String {
        let ms = |d: Duration| format!("{:.1} ms", d.as_secs_f64() * 1000.0);
        format!(
            "n={}, statuses {:?}, p50 {}, p99 {}, max {}",
            self.len(),
            self.statuses(),
            ms(self.latency(0.5)),
            ms(self.latency(0.99)),
            ms(self.max_latency())
        )
    }
}
