//! Soak: the full gateway through Envoy, every route kind at a steady rate, for
//! `SOAK_SECONDS` (default 20; `make soak SOAK_MINUTES=10` runs ten minutes on release builds).
//!
//! Passes when no request gets a status its route does not allow, each service's RSS grows
//! less than 10% from the end of warm-up (the first third of the run, at most 2 minutes) to
//! the end, and open file descriptors and Redis client connections stay flat. The samples
//! are printed (`SOAK_REPORT`) for RELIABILITY.md.

use std::time::Duration;

use gatehouse_testkit::issuer::TestIssuer;
use gatehouse_testkit::load::{Load, Request};
use gatehouse_testkit::redis::RedisServer;
use gatehouse_testkit::service::Service;

mod support;
use support::gateway::{API_KEY, Gateway, Spec, replace_file};

fn soak_duration() -> Duration {
    let seconds = std::env::var("SOAK_SECONDS").ok().and_then(|v| v.parse::<u64>().ok());
    let minutes = std::env::var("SOAK_MINUTES").ok().and_then(|v| v.parse::<u64>().ok());
    Duration::from_secs(seconds.or(minutes.map(|m| m * 60)).unwrap_or(20))
}

/// One reading of a service's resources.
#[derive(Clone, Copy, Debug)]
struct Reading {
    rss_kib: u64,
    fds: usize,
}

fn read(service: &Service) -> Reading {
    Reading { rss_kib: service.rss_kib().unwrap_or(0), fds: service.open_fds().unwrap_or(0) }
}

fn redis_clients(redis: &RedisServer) -> u64 {
    let info = redis.cli(&["INFO", "clients"]).unwrap_or_default();
    info.lines().find_map(|l| l.strip_prefix("connected_clients:")?.trim().parse().ok()).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_every_route_kind() {
    let duration = soak_duration();
    let warm_up = (duration / 3).min(Duration::from_secs(120));
    let redis = RedisServer::start();
    let gw = Gateway::start(Spec {
        ratelimit_env: vec![("REDIS_URL", redis.addr())],
        common_env: vec![("REDIS_URL", redis.addr())],
        ..Spec::default()
    })
    .await;
    let issuer = TestIssuer::start(gw.path()).await;
    let hash = gatehouse_extauth::hash_key_sha256(API_KEY);
    let ti = issuer.issuer();
    replace_file(
        &gw.policies_file,
        &format!(
            r#"policies:
  - name: keys
    identity:
      any_of:
        - name: k
          api_key:
            keys: [{{ id: soak, hash: "{hash}", metadata: {{ plan: gold }} }}]
            redis_prefix: "gatehouse:apikey:"
    response:
      headers: {{ x-chaos-version: {{ value: soak }} }}
      signed_jwt: {{ audience: echo, claims: [metadata.plan] }}
  - name: jwt
    identity:
      any_of:
        - name: issuer
          jwt: {{ issuer: "{ti}", jwks_uri: "{ti}/jwks.json", audiences: [gatehouse-api] }}
  - name: rules
    identity:
      any_of:
        - name: k
          api_key:
            keys: [{{ id: soak, hash: "{hash}" }}]
    authorization:
      - name: cel
        cel: 'request.method == "GET"'
  - name: public
    identity: {{ any_of: [{{ name: anyone, anonymous: {{}} }}] }}
"#
        ),
    );
    replace_file(
        &gw.transformations_file,
        r#"transformations:
  - name: headers
    request:
      - headers: { set: { x-chaos-version: soak } }
    response:
      - headers: { set: { x-transformed: "true" } }
  - name: json
    request:
      - match: { method: { equals: POST } }
        body:
          - json:
              - set: { path: /meta/user, value: "{{ header('x-user') | default('anonymous') }}" }
              - remove: /password
    response:
      - body:
          - json:
              - set: { path: /gateway, value: gatehouse }
  - name: xml
    request:
      - match: { headers: { content-type: { contains: xml } } }
        body:
          - xml_to_json: {}
"#,
    );
    let token = issuer.mint(&issuer.claims("gatehouse-api"));
    let client = reqwest::Client::new();
    let ready = gatehouse_testkit::eventually(Duration::from_secs(15), || async {
        let jwt = client.get(gw.envoy.url("/auth/jwt/x")).bearer_auth(&token).send().await.ok()?.status();
        let json = client.post(gw.envoy.url("/tx/json/x")).body("{}").send().await.ok()?.text().await.ok()?;
        (jwt == 200 && json.contains("gatehouse")).then_some(())
    })
    .await;
    assert!(ready.is_some(), "the soak configs loaded");

    let requests = vec![
        Request::get("ratelimit", gw.envoy.url("/anything")),
        Request::get("ratelimit-header", gw.envoy.url("/rl/header")).header("x-api-key", "soak-client"),
        Request::get("api-key", gw.envoy.url("/auth/keys/x")).header("x-api-key", API_KEY),
        Request::get("api-key-denied", gw.envoy.url("/auth/keys/x")).header("x-api-key", "wrong-key-0000"),
        Request::get("jwt", gw.envoy.url("/auth/jwt/x")).header("authorization", &format!("Bearer {token}")),
        Request::get("rules", gw.envoy.url("/auth/rules/x")).header("x-api-key", API_KEY),
        Request::get("public", gw.envoy.url("/auth/public/x")),
        Request::get("forward-auth", gw.envoy.url("/auth/http/x")).header("x-api-key", API_KEY),
        Request::get("tx-headers", gw.envoy.url("/tx/headers/x")),
        Request::get("tx-json", gw.envoy.url("/tx/json/x"))
            .header("content-type", "application/json")
            .post(r#"{"password":"x","order":{"id":7}}"#),
        Request::get("tx-xml", gw.envoy.url("/tx/xml/x"))
            .header("content-type", "application/xml")
            .post("<order><id>7</id><item>a</item><item>b</item></order>"),
    ];
    // What each route may answer; anything else is a failure.
    let allowed = |name: &str| -> &'static [u16] {
        match name {
            "api-key-denied" => &[401],
            // /rl/header has no rule in the soak rules: unlimited.
            _ => &[200],
        }
    };
    let names: Vec<&'static str> = requests.iter().map(|r| r.name).collect();
    let rate: f64 = std::env::var("SOAK_RATE").ok().and_then(|v| v.parse().ok()).unwrap_or(300.0);
    let load = Load::start(requests, 8, Some(rate));

    let services: Vec<&Service> = gw.ratelimit.iter().chain(&gw.extauth).chain(&gw.transform).collect();
    let mut samples: Vec<(Duration, Vec<Reading>, u64)> = Vec::new();
    let every = (duration / 20).max(Duration::from_secs(1));
    while load.elapsed() < duration {
        tokio::time::sleep(every).await;
        samples.push((load.elapsed(), services.iter().map(|s| read(s)).collect(), redis_clients(&redis)));
    }
    let record = load.stop().await;

    let report = std::env::var_os("SOAK_REPORT").is_some();
    if report {
        println!("SOAK {} s at {rate} req/s | {}", duration.as_secs(), record.summary());
        for name in &names {
            println!("SOAK route {name} | {}", record.named(name).summary());
        }
        for (at, readings, clients) in &samples {
            let cells: Vec<String> = services
                .iter()
                .zip(readings)
                .map(|(s, r)| format!("{:?} rss {} KiB fds {}", s.kind, r.rss_kib, r.fds))
                .collect();
            println!("SOAK t={:>5.0}s | {} | redis clients {clients}", at.as_secs_f64(), cells.join(" | "));
        }
    }
    for name in &names {
        let unexpected = record.named(name).unexpected(allowed(name));
        assert!(unexpected.is_empty(), "{name}: {}", unexpected.describe(10));
    }
    let after_warm_up: Vec<&(Duration, Vec<Reading>, u64)> =
        samples.iter().filter(|(at, _, _)| *at >= warm_up).collect();
    assert!(after_warm_up.len() >= 2, "too few samples after warm-up");
    let (first, last) = (after_warm_up[0], after_warm_up[after_warm_up.len() - 1]);
    for (i, service) in services.iter().enumerate() {
        let (start, end) = (first.1[i], last.1[i]);
        let growth = end.rss_kib as f64 / start.rss_kib.max(1) as f64 - 1.0;
        if report {
            println!(
                "SOAK {:?}: RSS {} → {} KiB ({:+.1}%), fds {} → {}",
                service.kind,
                start.rss_kib,
                end.rss_kib,
                growth * 100.0,
                start.fds,
                end.fds
            );
        }
        assert!(growth < 0.10, "{:?}: RSS grew {:.1}% after warm-up", service.kind, growth * 100.0);
        let fds: Vec<usize> = after_warm_up.iter().map(|(_, r, _)| r[i].fds).collect();
        let (lo, hi) = (fds.iter().min().copied().unwrap_or(0), fds.iter().max().copied().unwrap_or(0));
        assert!(hi - lo <= 4, "{:?}: open files not flat after warm-up: {fds:?}", service.kind);
    }
    let clients: Vec<u64> = after_warm_up.iter().map(|(_, _, c)| *c).collect();
    let (lo, hi) = (clients.iter().min().copied().unwrap_or(0), clients.iter().max().copied().unwrap_or(0));
    assert!(hi - lo <= 2, "Redis connections not flat after warm-up: {clients:?}");
}
