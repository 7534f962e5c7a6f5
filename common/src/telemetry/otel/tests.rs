use super::*;

fn settings(pairs: &[(&str, &str)]) -> Result<Option<TracingSettings>, String> {
    TracingSettings::from_env(&Env::from_pairs(pairs.iter().copied()), ServiceDefaults::named("svc"))
        .map_err(|e| e.to_string())
}

fn on(pairs: &[(&str, &str)]) -> TracingSettings {
    settings(pairs).unwrap().expect("tracing on")
}

#[track_caller]
fn error(pairs: &[(&str, &str)], variable: &str, fragment: &str) {
    let err = settings(pairs).unwrap_err();
    assert!(err.starts_with(&format!("environment variable {variable}=")), "{err}");
    assert!(err.contains(fragment), "{err}");
}

const ENDPOINT: (&str, &str) = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317");

#[test]
fn off_unless_an_endpoint_is_set() {
    assert_eq!(settings(&[]), Ok(None));
    assert_eq!(settings(&[("OTEL_SERVICE_NAME", "x"), ("OTEL_TRACES_SAMPLER", "always_on")]), Ok(None));
    assert_eq!(settings(&[ENDPOINT, ("OTEL_SDK_DISABLED", "true")]), Ok(None));
    let s = on(&[ENDPOINT]);
    assert_eq!(s.endpoint, "http://collector:4317");
    assert_eq!(s.protocol, Protocol::Grpc);
    assert_eq!(s.service_name, "svc");
    assert_eq!(s.sampler, Sampler::ParentBased(Box::new(Sampler::AlwaysOn)));
    assert!(s.resource.is_empty());
}

#[test]
fn endpoints_per_protocol() {
    #[track_caller]
    fn check(pairs: &[(&str, &str)], protocol: Protocol, endpoint: &str) {
        let s = on(pairs);
        assert_eq!((s.protocol, s.endpoint.as_str()), (protocol, endpoint), "{pairs:?}");
    }
    let http = ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf");
    check(&[ENDPOINT], Protocol::Grpc, "http://collector:4317");
    // A bare host:port, as envoyproxy/ratelimit's deployments write it.
    check(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "127.0.0.1:26000")], Protocol::Grpc, "http://127.0.0.1:26000");
    check(
        &[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318/"), http],
        Protocol::HttpProtobuf,
        "http://c:4318/v1/traces",
    );
    check(
        &[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318/otlp"), http],
        Protocol::HttpProtobuf,
        "http://c:4318/otlp/v1/traces",
    );
    // The per-signal endpoint is used as given, and wins.
    check(
        &[ENDPOINT, ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://t:4318/custom"), http],
        Protocol::HttpProtobuf,
        "http://t:4318/custom",
    );
    check(
        &[ENDPOINT, ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf")],
        Protocol::HttpProtobuf,
        "http://collector:4317/v1/traces",
    );
    // A service switch without an endpoint: the spec's default collector.
    let defaults = ServiceDefaults {
        enabled: Some(true),
        protocol: Some(Protocol::HttpProtobuf),
        ..ServiceDefaults::named("svc")
    };
    let s = TracingSettings::from_env(&Env::default(), defaults).unwrap().unwrap();
    assert_eq!(s.endpoint, "http://localhost:4318/v1/traces");
    // ... and a switch that says no wins over an endpoint.
    let defaults = ServiceDefaults { enabled: Some(false), ..ServiceDefaults::named("svc") };
    assert_eq!(TracingSettings::from_env(&Env::from_pairs([ENDPOINT]), defaults), Ok(None));
}

#[test]
fn samplers() {
    #[track_caller]
    fn check(pairs: &[(&str, &str)], expected: Sampler) {
        let mut all = vec![ENDPOINT];
        all.extend_from_slice(pairs);
        assert_eq!(on(&all).sampler, expected, "{pairs:?}");
    }
    let parent = |s| Sampler::ParentBased(Box::new(s));
    check(&[("OTEL_TRACES_SAMPLER", "always_on")], Sampler::AlwaysOn);
    check(&[("OTEL_TRACES_SAMPLER", "always_off")], Sampler::AlwaysOff);
    check(&[("OTEL_TRACES_SAMPLER", "traceidratio"), ("OTEL_TRACES_SAMPLER_ARG", "0.25")], Sampler::TraceIdRatio(0.25));
    check(&[("OTEL_TRACES_SAMPLER", "traceidratio")], Sampler::TraceIdRatio(1.0));
    check(&[("OTEL_TRACES_SAMPLER", "parentbased_always_on")], parent(Sampler::AlwaysOn));
    check(&[("OTEL_TRACES_SAMPLER", "parentbased_always_off")], parent(Sampler::AlwaysOff));
    check(
        &[("OTEL_TRACES_SAMPLER", "PARENTBASED_TRACEIDRATIO"), ("OTEL_TRACES_SAMPLER_ARG", "0")],
        parent(Sampler::TraceIdRatio(0.0)),
    );
    error(&[ENDPOINT, ("OTEL_TRACES_SAMPLER", "jaeger_remote")], "OTEL_TRACES_SAMPLER", "expected always_on");
    error(
        &[ENDPOINT, ("OTEL_TRACES_SAMPLER", "traceidratio"), ("OTEL_TRACES_SAMPLER_ARG", "1.5")],
        "OTEL_TRACES_SAMPLER_ARG",
        "between 0 and 1",
    );
    error(
        &[ENDPOINT, ("OTEL_TRACES_SAMPLER", "traceidratio"), ("OTEL_TRACES_SAMPLER_ARG", "half")],
        "OTEL_TRACES_SAMPLER_ARG",
        "",
    );
}

#[test]
fn service_name_and_resource() {
    let s = on(&[
        ENDPOINT,
        ("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=prod, team=edge%20gw,service.name=from-attrs"),
    ]);
    assert_eq!(s.service_name, "from-attrs");
    assert_eq!(s.resource, vec![("deployment.environment".into(), "prod".into()), ("team".into(), "edge gw".into())]);
    let s = on(&[ENDPOINT, ("OTEL_SERVICE_NAME", "named"), ("OTEL_RESOURCE_ATTRIBUTES", "service.name=from-attrs")]);
    assert_eq!(s.service_name, "named");
    error(&[ENDPOINT, ("OTEL_RESOURCE_ATTRIBUTES", "novalue")], "OTEL_RESOURCE_ATTRIBUTES", "not key=value");
    error(&[ENDPOINT, ("OTEL_RESOURCE_ATTRIBUTES", "=v")], "OTEL_RESOURCE_ATTRIBUTES", "empty key");
    error(&[ENDPOINT, ("OTEL_RESOURCE_ATTRIBUTES", "k=%zz")], "OTEL_RESOURCE_ATTRIBUTES", "bad %-escape");
    // A service's own attributes do not replace the user's.
    let defaults = ServiceDefaults {
        resource: vec![("team".into(), "default".into()), ("service.namespace".into(), "ns".into())],
        ..ServiceDefaults::named("svc")
    };
    let env = Env::from_pairs([ENDPOINT, ("OTEL_RESOURCE_ATTRIBUTES", "team=mine")]);
    let s = TracingSettings::from_env(&env, defaults).unwrap().unwrap();
    assert_eq!(s.resource, vec![("team".into(), "mine".into()), ("service.namespace".into(), "ns".into())]);
}

#[test]
fn https_collectors_over_grpc() {
    let s = on(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "https://c:4317")]);
    assert_eq!(s.endpoint, "https://c:4317");
    let tls = s.tls.expect("TLS settings for https");
    assert!(tls.ca_pem.is_none() && tls.client.is_none(), "the system's roots, no client certificate");
    assert!(on(&[ENDPOINT]).tls.is_none());
}

#[test]
fn bad_values_name_their_variable() {
    error(
        &[("OTEL_EXPORTER_OTLP_ENDPOINT", "ftp://collector")],
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "expected an http:// or https:// URL",
    );
    error(
        &[("OTEL_EXPORTER_OTLP_ENDPOINT", "https://c:4318"), ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")],
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "https is supported with OTEL_EXPORTER_OTLP_PROTOCOL=grpc",
    );
    let https = ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://c:4317");
    error(
        &[https, ("OTEL_EXPORTER_OTLP_CERTIFICATE", "/nonexistent/ca.crt")],
        "OTEL_EXPORTER_OTLP_CERTIFICATE",
        "/nonexistent/ca.crt",
    );
    error(
        &[https, ("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", "Cargo.toml")],
        "OTEL_EXPORTER_OTLP_CLIENT_KEY",
        "needed with OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE",
    );
    error(&[("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "not a url")], "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "not a URL");
    error(&[ENDPOINT, ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")], "OTEL_EXPORTER_OTLP_PROTOCOL", "not supported");
    error(
        &[ENDPOINT, ("OTEL_EXPORTER_OTLP_PROTOCOL", "thrift")],
        "OTEL_EXPORTER_OTLP_PROTOCOL",
        "expected grpc or http/protobuf",
    );
    error(&[ENDPOINT, ("OTEL_SDK_DISABLED", "maybe")], "OTEL_SDK_DISABLED", "expected a boolean");
}
