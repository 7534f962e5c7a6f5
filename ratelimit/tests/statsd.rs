//! statsd and DogStatsD output end to end: a served App, ShouldRateLimit calls over gRPC, and a
//! UDP socket on loopback standing in for statsd, reading the lines the service pushes.

use std::collections::BTreeMap;
use std::time::Duration;

use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use gatehouse_common::config::Env;
use gatehouse_common::server::Shutdown;
use gatehouse_ratelimit::clock::Clock;
use gatehouse_ratelimit::settings::Settings;
use gatehouse_ratelimit::{App, Listeners};
use tokio::net::{TcpListener, UdpSocket};

const RULES: &str = r#"
domain: shop
descriptors:
  - key: user
    value: alice
    rate_limit: { unit: minute, requests_per_unit: 2 }
"#;

/// One line as a statsd daemon reads it: `name:value|c` and, for DogStatsD, `|#k:v,…`.
#[derive(Debug, PartialEq, Eq)]
struct Line {
    name: String,
    value: u64,
    tags: Vec<String>,
}

fn parse(line: &str) -> Line {
    let (name, rest) = line.split_once(':').unwrap_or_else(|| panic!("no value in {line:?}"));
    let mut fields = rest.split('|');
    let value = fields.next().unwrap().parse().unwrap_or_else(|e| panic!("{line:?}: {e}"));
    assert_eq!(fields.next(), Some("c"), "{line:?} is not a counter");
    let tags = match fields.next() {
        Some(tags) => tags.strip_prefix('#').unwrap().split(',').map(String::from).collect(),
        None => Vec::new(),
    };
    assert_eq!(fields.next(), None, "{line:?}");
    Line { name: name.to_string(), value, tags }
}

struct Served {
    client: RateLimitServiceClient<tonic::transport::Channel>,
    shutdown: Shutdown,
    stopped: tokio::task::JoinHandle<()>,
    _rules: tempfile::TempDir,
}

async fn serve(statsd: &UdpSocket, env: &[(&str, &str)]) -> Served {
    let rules = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(rules.path().join("config")).unwrap();
    std::fs::write(rules.path().join("config/shop.yaml"), RULES).unwrap();
    let port = statsd.local_addr().unwrap().port().to_string();
    let mut vars = vec![
        ("RUNTIME_ROOT".to_string(), rules.path().display().to_string()),
        ("RUNTIME_WATCH_ROOT".into(), "false".into()),
        ("STATSD_HOST".into(), "127.0.0.1".into()),
        ("STATSD_PORT".into(), port),
    ];
    vars.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let settings = Settings::from_env(&Env::from_pairs(vars)).unwrap();
    let grpc = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = grpc.local_addr().unwrap();
    let app = App::build(settings, Clock::System).await.unwrap();
    let shutdown = Shutdown::new();
    let listeners = Listeners { grpc: grpc.into(), http: None, debug: None, prometheus: None };
    let serving = tokio::spawn(app.serve(listeners, shutdown.clone()));
    let stopped = tokio::spawn(async move {
        serving.await.unwrap().unwrap();
    });
    let client = RateLimitServiceClient::connect(format!("http://{addr}")).await.unwrap();
    Served { client, shutdown, stopped, _rules: rules }
}

async fn call_alice(client: &mut RateLimitServiceClient<tonic::transport::Channel>, times: usize) {
    let request = RateLimitRequest {
        domain: "shop".into(),
        descriptors: vec![RateLimitDescriptor {
            entries: vec![Entry { key: "user".into(), value: "alice".into() }],
            ..Default::default()
        }],
        hits_addend: 0,
    };
    for _ in 0..times {
        client.should_rate_limit(request.clone()).await.unwrap();
    }
}

/// Reads datagrams until `until` holds for the lines read so far (by name, summed).
async fn receive(statsd: &UdpSocket, until: impl Fn(&BTreeMap<String, Line>) -> bool) -> BTreeMap<String, Line> {
    let mut seen: BTreeMap<String, Line> = BTreeMap::new();
    let mut buf = vec![0u8; 65536];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !until(&seen) {
        let n = tokio::time::timeout_at(deadline, statsd.recv(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("statsd lines so far: {seen:#?}"))
            .unwrap();
        for line in std::str::from_utf8(&buf[..n]).unwrap().lines() {
            let line = parse(line);
            match seen.get_mut(&line.name) {
                Some(known) => {
                    assert_eq!(known.tags, line.tags, "{}", line.name);
                    known.value += line.value;
                }
                None => {
                    seen.insert(line.name.clone(), line);
                }
            }
        }
    }
    seen
}

const HITS: &str = "ratelimit.service.rate_limit.shop.user_alice.total_hits";

#[tokio::test]
async fn statsd_lines_every_flush_interval_with_extra_tags() {
    let statsd = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut served = serve(
        &statsd,
        &[("USE_STATSD", "true"), ("STATS_FLUSH_INTERVAL", "100ms"), ("EXTRA_TAGS", "cluster:eu-1,version:1.2")],
    )
    .await;
    let tagged = |name: &str| format!("{name}.__cluster=eu-1.__version=1_2");

    call_alice(&mut served.client, 3).await;
    let seen = receive(&statsd, |seen| seen.get(&tagged(HITS)).is_some_and(|l| l.value == 3)).await;
    let value = |name: &str| seen.get(&tagged(name)).map(|l| l.value);
    assert_eq!(value("ratelimit.service.rate_limit.shop.user_alice.within_limit"), Some(2));
    assert_eq!(value("ratelimit.service.rate_limit.shop.user_alice.over_limit"), Some(1));
    assert_eq!(value("ratelimit_server.ShouldRateLimit.total_requests"), Some(3));
    assert!(seen.values().all(|l| l.tags.is_empty()), "{seen:#?}");

    // Later flushes carry what was counted since, not the totals again.
    call_alice(&mut served.client, 2).await;
    let seen = receive(&statsd, |seen| seen.contains_key(&tagged(HITS))).await;
    assert_eq!(seen[&tagged(HITS)].value, 2, "{seen:#?}");
    assert_eq!(seen.get(&tagged("ratelimit.service.rate_limit.shop.user_alice.within_limit")), None, "{seen:#?}");
    served.shutdown.trigger();
}

/// DogStatsD's tag format, and the counts since the last flush sent once more at shutdown.
#[tokio::test]
async fn dogstatsd_lines_with_tags_flushed_at_shutdown() {
    let statsd = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut served = serve(
        &statsd,
        &[
            ("USE_DOG_STATSD", "true"),
            ("STATS_FLUSH_INTERVAL", "1h"),
            ("EXTRA_TAGS", "cluster:eu-1"),
            ("DD_SERVICE", "ratelimit"),
        ],
    )
    .await;
    call_alice(&mut served.client, 3).await;
    served.shutdown.trigger();
    let seen = receive(&statsd, |seen| seen.contains_key(HITS)).await;
    tokio::time::timeout(Duration::from_secs(10), served.stopped).await.unwrap().unwrap();

    let tags = ["service:ratelimit".to_string(), "cluster:eu-1".to_string()];
    assert_eq!(seen[HITS], Line { name: HITS.into(), value: 3, tags: tags.to_vec() });
    assert_eq!(seen["ratelimit.service.rate_limit.shop.user_alice.over_limit"].value, 1);
    assert_eq!(seen["ratelimit_server.ShouldRateLimit.total_requests"].value, 3);
    assert!(seen.values().all(|l| l.tags == tags), "{seen:#?}");
}
