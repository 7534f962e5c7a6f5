//! The rate limiter's admin API end to end: traffic through real Envoy (the reference config)
//! to the real gatehouse-ratelimit binary on Redis, over mTLS, with ADMIN_API_ENABLED. What an
//! operator does: see a client over its limit, reset it, see it pass again; and what the port
//! refuses: an admin client without a certificate.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use gatehouse_ratelimit::admin::proto::rate_limit_admin_service_client::RateLimitAdminServiceClient;
use gatehouse_ratelimit::admin::proto::{Entry, GetCountersRequest, ResetCountersRequest};
use gatehouse_testkit::echo::Echo;
use gatehouse_testkit::envoy::{Envoy, default_vars, ratelimit_mtls};
use gatehouse_testkit::eventually;
use gatehouse_testkit::redis::RedisServer;
use gatehouse_testkit::service::{Kind, Service};
use gatehouse_testkit::tls::Pki;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

const RULES: &str = "domain: gateway
descriptors:
  - key: generic_key
    value: generic
    rate_limit: { unit: minute, requests_per_unit: 2 }
";

async fn statuses(envoy: &Envoy, path: &str, n: usize) -> Vec<u16> {
    let client = reqwest::Client::new();
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(client.get(envoy.url(path)).send().await.expect("request through envoy").status().as_u16());
    }
    out
}

/// An admin client over TLS to `port`, presenting the PKI's client certificate or none.
async fn admin_client(
    pki: &Pki,
    port: u16,
    with_certificate: bool,
) -> Result<RateLimitAdminServiceClient<Channel>, String> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(std::fs::read(&pki.ca_cert).unwrap()))
        .domain_name("localhost");
    if with_certificate {
        let identity =
            Identity::from_pem(std::fs::read(&pki.client_cert).unwrap(), std::fs::read(&pki.client_key).unwrap());
        tls = tls.identity(identity);
    }
    let endpoint = Channel::from_shared(format!("https://localhost:{port}")).unwrap();
    let channel = endpoint.tls_config(tls).unwrap().connect().await.map_err(|e| format!("{e:?}"))?;
    Ok(RateLimitAdminServiceClient::new(channel))
}

fn descriptor() -> Vec<Entry> {
    vec![Entry { key: "generic_key".into(), value: "generic".into() }]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_sees_a_client_over_its_limit_and_resets_it() {
    let dir = tempfile::tempdir().unwrap();
    let echo = Echo::start().await;
    let redis = RedisServer::start();
    let pki = Pki::generate(dir.path());
    std::fs::create_dir_all(dir.path().join("runtime/config")).unwrap();
    std::fs::write(dir.path().join("runtime/config/gateway.yaml"), RULES).unwrap();
    let path = |p: &Path| p.display().to_string();
    let env = [
        ("RUNTIME_ROOT", path(&dir.path().join("runtime"))),
        ("REDIS_URL", redis.addr()),
        ("ADMIN_API_ENABLED", "true".into()),
        ("GRPC_SERVER_USE_TLS", "true".into()),
        ("GRPC_SERVER_TLS_CERT", path(&pki.server_cert)),
        ("GRPC_SERVER_TLS_KEY", path(&pki.server_key)),
        ("GRPC_CLIENT_TLS_CACERT", path(&pki.ca_cert)),
    ];
    let service = Service::start(Kind::Ratelimit, &env, dir.path()).await;
    let mut vars: BTreeMap<String, String> = default_vars();
    vars.insert("UPSTREAM_PORT".into(), echo.port.to_string());
    vars.insert("RATELIMIT_PORT".into(), service.grpc_port.to_string());
    // A service Envoy cannot reach answers 500, not a silent 200.
    vars.insert("RATELIMIT_FAILURE_MODE_DENY".into(), "true".into());
    let envoy =
        Envoy::start_edited(&vars, ratelimit_mtls((&pki.client_cert, &pki.client_key), &pki.ca_cert, None)).await;

    assert_eq!(statuses(&envoy, "/rl/generic", 3).await, [200, 200, 429]);

    // The counter, as the admin API shows it.
    let mut admin = admin_client(&pki, service.grpc_port, true).await.expect("an mTLS admin client");
    let page = admin
        .get_counters(GetCountersRequest { domain: "gateway".into(), entries: descriptor(), ..Default::default() })
        .await
        .expect("GetCounters")
        .into_inner();
    assert_eq!(page.backend, "redis");
    assert_eq!(page.counters.len(), 1, "{page:?}");
    let counter = &page.counters[0];
    assert_eq!(counter.full_key, "gateway.generic_key_generic");
    assert_eq!((counter.value, counter.remaining, counter.over_limit), (3, 0, true));
    let reset_after = counter.reset_after.unwrap().seconds;
    assert!((0..=60).contains(&reset_after), "{reset_after}");

    // Reset: the next request through Envoy passes.
    let reset = admin
        .reset_counters(ResetCountersRequest { domain: "gateway".into(), entries: descriptor() })
        .await
        .expect("ResetCounters")
        .into_inner();
    assert_eq!((reset.full_key.as_str(), reset.deleted), ("gateway.generic_key_generic", 1));
    assert_eq!(statuses(&envoy, "/rl/generic", 3).await, [200, 200, 429]);

    // Audited, with the client certificate that asked.
    let audited = eventually(Duration::from_secs(5), || async {
        service.log().lines().find(|l| l.contains("rate limit counters reset")).map(str::to_string)
    })
    .await
    .expect("an audit line in the service's log");
    for expected in
        ["gatehouse::audit", "CN=client", "spiffe://gatehouse.test/envoy", "generic_key=generic", "deleted=1"]
    {
        assert!(audited.contains(expected), "{expected} not in {audited}");
    }

    // The same counter on the debug port, as JSON.
    let url = format!(
        "http://127.0.0.1:{}/admin/counters?domain=gateway&entry=generic_key=generic",
        service.debug_port.expect("a debug port")
    );
    let json: serde_json::Value = reqwest::get(url).await.unwrap().json().await.unwrap();
    assert_eq!(json["counters"][0]["value"], "3", "{json}");

    // Without a client certificate, the port serves nothing, the admin API included.
    let refused = match admin_client(&pki, service.grpc_port, false).await {
        Err(connect) => connect,
        Ok(mut anonymous) => anonymous
            .reset_counters(ResetCountersRequest { domain: "gateway".into(), entries: descriptor() })
            .await
            .expect_err("a reset without a client certificate")
            .to_string(),
    };
    assert!(!refused.is_empty());
    assert_eq!(statuses(&envoy, "/rl/generic", 1).await, [429], "nothing was reset: {refused}");
    assert_eq!(service.log().matches("rate limit counters reset").count(), 1, "one reset audited");
}
