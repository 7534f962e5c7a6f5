//! The gRPC listener as operators configure it: GRPC_CLIENT_TLS_SAN on mTLS, GRPC_UDS, and the
//! server certificate and client CA replaced on disk while serving (a Kubernetes Secret update).

mod support;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use gatehouse_testkit::tls::Pki;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use support::{call, request, serve};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

const RULES: &str = r#"
domain: shop
descriptors:
  - key: user
    rate_limit: { unit: minute, requests_per_unit: 100 }
"#;

const CLIENT_AUTH: &str = "extendedKeyUsage=clientAuth";
const SERVER_AUTH: &str = "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth";

fn tls_env<'a>(cert: &'a Path, key: &'a Path, ca: &'a Path) -> Vec<(&'static str, &'a str)> {
    vec![
        ("GRPC_SERVER_USE_TLS", "true"),
        ("GRPC_SERVER_TLS_CERT", cert.to_str().unwrap()),
        ("GRPC_SERVER_TLS_KEY", key.to_str().unwrap()),
        ("GRPC_CLIENT_TLS_CACERT", ca.to_str().unwrap()),
    ]
}

/// A ShouldRateLimit call over a new mTLS connection presenting `client`'s certificate: the
/// answer, or why there was none.
async fn call_as(server: &support::Served, server_ca: &Path, client: (&Path, &Path)) -> Result<Code, String> {
    let identity = Identity::from_pem(std::fs::read(client.0).unwrap(), std::fs::read(client.1).unwrap());
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(std::fs::read(server_ca).unwrap()))
        .domain_name("localhost")
        .identity(identity);
    let endpoint = Channel::from_shared(format!("https://localhost:{}", server.grpc.port())).unwrap();
    let channel = endpoint.tls_config(tls).unwrap().connect().await.map_err(|e| format!("{e:?}"))?;
    let resp = call(&mut RateLimitServiceClient::new(channel), request("shop", &[("user", "alice")]))
        .await
        .map_err(|e| format!("{e:?}"))?;
    Ok(Code::try_from(resp.overall_code).unwrap())
}

/// GRPC_CLIENT_TLS_SAN: of the certificates the CA signed, only those valid for the name are
/// served (a DNS SAN, wildcards included, or an IP SAN, as Go's `DNSName` check).
#[tokio::test]
async fn client_certificates_must_match_grpc_client_tls_san() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate(dir.path());
    let envoy = pki.issue("envoy", &format!("subjectAltName=DNS:envoy.gateway.svc\n{CLIENT_AUTH}"));
    let wildcard = pki.issue("wildcard", &format!("subjectAltName=DNS:*.gateway.svc\n{CLIENT_AUTH}"));
    let other = pki.issue("other", &format!("subjectAltName=DNS:billing.gateway.svc.evil\n{CLIENT_AUTH}"));
    let mut env = tls_env(&pki.server_cert, &pki.server_key, &pki.ca_cert);
    env.push(("GRPC_CLIENT_TLS_SAN", "envoy.gateway.svc"));
    let server = serve(RULES, &env).await;

    for (name, (cert, key), served) in [
        ("DNS SAN equal to it", &envoy, true),
        ("wildcard DNS SAN covering it", &wildcard, true),
        ("other DNS SAN", &other, false),
        ("URI SAN only", &(pki.client_cert.clone(), pki.client_key.clone()), false),
    ] {
        let result = call_as(&server, &pki.ca_cert, (cert, key)).await;
        match served {
            true => assert_eq!(result, Ok(Code::Ok), "{name}"),
            false => assert!(result.is_err(), "{name}: served {result:?}"),
        }
    }

    // An IP SAN, for a client known by its address.
    let by_ip = pki.issue("by-ip", &format!("subjectAltName=IP:10.1.2.3\n{CLIENT_AUTH}"));
    let mut env = tls_env(&pki.server_cert, &pki.server_key, &pki.ca_cert);
    env.push(("GRPC_CLIENT_TLS_SAN", "10.1.2.3"));
    let server = serve(RULES, &env).await;
    assert_eq!(call_as(&server, &pki.ca_cert, (&by_ip.0, &by_ip.1)).await, Ok(Code::Ok));
    assert!(call_as(&server, &pki.ca_cert, (&envoy.0, &envoy.1)).await.is_err());
}

/// GRPC_UDS: gRPC on a Unix socket instead of GRPC_HOST/GRPC_PORT.
#[tokio::test]
async fn grpc_on_a_unix_socket() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("ratelimit.sock");
    // A socket left by an earlier run is replaced.
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    let (settings, _rules) = support::settings(RULES, &[("GRPC_UDS", socket.to_str().unwrap())]);
    let listeners = gatehouse_ratelimit::Listeners {
        http: None,
        debug: None,
        prometheus: None,
        ..gatehouse_ratelimit::Listeners::bind(&settings).await.unwrap()
    };
    assert_eq!(listeners.grpc.describe(), format!("unix:{}", socket.display()));
    let app = gatehouse_ratelimit::App::build(settings, gatehouse_ratelimit::clock::Clock::System).await.unwrap();
    let shutdown = gatehouse_common::server::Shutdown::new();
    let served = tokio::spawn(app.serve(listeners, shutdown.clone()));

    let path = socket.clone();
    let channel = Endpoint::from_static("http://ratelimit.invalid")
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tokio::net::UnixStream::connect(path).await?))
            }
        }))
        .await
        .unwrap();
    let mut client = RateLimitServiceClient::new(channel);
    let resp = call(&mut client, request("shop", &[("user", "alice")])).await.unwrap();
    assert_eq!(resp.overall_code, Code::Ok as i32);
    let status = resp.statuses[0].current_limit.as_ref().unwrap();
    assert_eq!(status.requests_per_unit, 100);

    // Stopped, the service removes its socket, as envoyproxy/ratelimit's Go listener does.
    shutdown.trigger();
    tokio::time::timeout(Duration::from_secs(10), served).await.unwrap().unwrap().unwrap();
    assert!(!socket.exists());
}

/// A Kubernetes Secret as kubelet updates it: the files are symlinks through `..data`, which is
/// swapped to a new timestamped directory in one rename.
struct Secret {
    dir: PathBuf,
    version: usize,
}

impl Secret {
    fn new(dir: PathBuf, files: &[(&str, PathBuf)]) -> Secret {
        std::fs::create_dir_all(&dir).unwrap();
        let mut secret = Secret { dir, version: 0 };
        secret.update(files);
        for (name, _) in files {
            std::os::unix::fs::symlink(format!("..data/{name}"), secret.dir.join(name)).unwrap();
        }
        secret
    }

    fn update(&mut self, files: &[(&str, PathBuf)]) {
        self.version += 1;
        let version = format!("..v{}", self.version);
        std::fs::create_dir(self.dir.join(&version)).unwrap();
        for (name, source) in files {
            std::fs::copy(source, self.dir.join(&version).join(name)).unwrap();
        }
        let tmp = self.dir.join("..data_tmp");
        std::os::unix::fs::symlink(&version, &tmp).unwrap();
        std::fs::rename(&tmp, self.dir.join("..data")).unwrap();
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

/// The certificate a new TLS connection to `port` is served, read with a client that trusts
/// `ca` and presents `client`.
async fn served_certificate(port: u16, ca: &Path, client: (&Path, &Path)) -> Result<Vec<u8>, String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let chain = CertificateDer::pem_file_iter(client.0).unwrap().map(Result::unwrap).collect();
    let key = PrivateKeyDer::from_pem_file(client.1).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .unwrap();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.map_err(|e| e.to_string())?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let mut tls =
        connector.connect(ServerName::try_from("localhost").unwrap(), tcp).await.map_err(|e| e.to_string())?;
    // TLS 1.3 reports a refused client certificate after the handshake: read to see it.
    use tokio::io::AsyncReadExt;
    let mut byte = [0u8; 1];
    if let Ok(Err(e)) = tokio::time::timeout(Duration::from_millis(200), tls.read(&mut byte)).await {
        return Err(e.to_string());
    }
    let (_, session) = tls.get_ref();
    Ok(session.peer_certificates().unwrap()[0].to_vec())
}

fn new_pki(dir: &Path) -> Pki {
    std::fs::create_dir_all(dir).unwrap();
    Pki::generate(dir)
}

fn der(pem: &Path) -> Vec<u8> {
    CertificateDer::from_pem_file(pem).unwrap().to_vec()
}

/// GRPC_SERVER_TLS_CERT/KEY and GRPC_CLIENT_TLS_CACERT replaced while serving: new connections
/// get the new certificate and are checked against the new CA, the listener stays open, and a
/// connection made before keeps working.
#[tokio::test]
async fn certificates_reload_without_closing_the_listener() {
    let dir = tempfile::tempdir().unwrap();
    let pki = new_pki(&dir.path().join("pki1"));
    let files = |ca: &Path, cert: &Path, key: &Path| {
        [("tls.crt", cert.to_path_buf()), ("tls.key", key.to_path_buf()), ("ca.crt", ca.to_path_buf())]
    };
    let mut secret = Secret::new(dir.path().join("secret"), &files(&pki.ca_cert, &pki.server_cert, &pki.server_key));
    let (cert, key, ca) = (secret.path("tls.crt"), secret.path("tls.key"), secret.path("ca.crt"));
    let server = serve(RULES, &tls_env(&cert, &key, &ca)).await;
    let port = server.grpc.port();
    let client = (pki.client_cert.as_path(), pki.client_key.as_path());
    assert_eq!(served_certificate(port, &pki.ca_cert, client).await.unwrap(), der(&pki.server_cert));

    // A connection made before the update.
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(std::fs::read(&pki.ca_cert).unwrap()))
        .domain_name("localhost")
        .identity(Identity::from_pem(std::fs::read(client.0).unwrap(), std::fs::read(client.1).unwrap()));
    let endpoint = Channel::from_shared(format!("https://localhost:{port}")).unwrap();
    let mut before = RateLimitServiceClient::new(endpoint.tls_config(tls).unwrap().connect().await.unwrap());
    call(&mut before, request("shop", &[("user", "alice")])).await.unwrap();

    // Renewed by the same CA.
    let (renewed_cert, renewed_key) = pki.issue("server-renewed", SERVER_AUTH);
    secret.update(&files(&pki.ca_cert, &renewed_cert, &renewed_key));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while served_certificate(port, &pki.ca_cert, client).await.unwrap() != der(&renewed_cert) {
        assert!(tokio::time::Instant::now() < deadline, "the renewed certificate was never served");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(call_as(&server, &pki.ca_cert, client).await, Ok(Code::Ok));
    call(&mut before, request("shop", &[("user", "alice")])).await.unwrap();

    // A new CA: its clients are served, the old CA's are refused from then on.
    let pki2 = new_pki(&dir.path().join("pki2"));
    secret.update(&files(&pki2.ca_cert, &pki2.server_cert, &pki2.server_key));
    let client2 = (pki2.client_cert.as_path(), pki2.client_key.as_path());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while served_certificate(port, &pki2.ca_cert, client2).await.map_or(true, |c| c != der(&pki2.server_cert)) {
        assert!(tokio::time::Instant::now() < deadline, "the new CA's certificate was never served");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(call_as(&server, &pki2.ca_cert, client2).await, Ok(Code::Ok));
    assert!(served_certificate(port, &pki2.ca_cert, client).await.is_err(), "the old CA's client was served");

    // A broken update (a key that is not the certificate's) leaves the last good config serving.
    secret.update(&files(&pki2.ca_cert, &pki2.server_cert, &pki.server_key));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(call_as(&server, &pki2.ca_cert, client2).await, Ok(Code::Ok));
}
