//! The gRPC listener's TLS: the server certificate, mTLS with GRPC_CLIENT_TLS_CACERT and
//! GRPC_CLIENT_TLS_SAN, and their hot reload.
//!
//! The files are read into one rustls `ServerConfig` held by a [`Reloader`]; each handshake
//! takes the config current at that moment. When any of the files changes (a Kubernetes Secret
//! update swaps its `..data` symlink, cert-manager renews a certificate), a new config is built
//! from all of them and swapped in only if it is complete and consistent: certificate and key
//! match, the CA parses. Established connections keep the config they were made with, new
//! ones get the new one, and the listener is never closed. A rejected set of files leaves the
//! previous config serving, and is logged and counted (`gatehouse_<service>_tls_reloads_total{result="error"}`).

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig, SignatureScheme,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;

use super::TlsFiles;
use crate::config::{ConfigError, ConfigErrors};
use crate::metrics::Metrics;
use crate::reload::{Reloader, WatchSpec};

/// How long a client may take to complete its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

fn file_error(file: &Path, message: impl std::fmt::Display) -> ConfigError {
    ConfigError::Io { file: file.to_path_buf(), message: message.to_string() }
}

fn read_certificates(file: &Path) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let pem = std::fs::read(file).map_err(|e| file_error(file, e))?;
    let certificates = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(file, format!("not a PEM certificate: {e}")))?;
    if certificates.is_empty() {
        return Err(file_error(file, "no PEM certificate in the file"));
    }
    Ok(certificates)
}

/// GRPC_CLIENT_TLS_SAN as rustls names it: a DNS name or an IP address, as Go's
/// `x509.VerifyOptions.DNSName` takes it in envoyproxy/ratelimit.
pub(super) fn client_san(text: &str) -> Result<ServerName<'static>, String> {
    ServerName::try_from(text.trim().to_string()).map_err(|_| format!("{text:?} is not a DNS name or an IP address"))
}

impl TlsFiles {
    /// Reads the files into a server config. Errors name the file.
    pub(super) fn load(&self) -> Result<ServerConfig, ConfigError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let certificates = read_certificates(&self.cert)?;
        let key_pem = std::fs::read(&self.key).map_err(|e| file_error(&self.key, e))?;
        let key = PrivateKeyDer::from_pem_slice(&key_pem)
            .map_err(|e| file_error(&self.key, format!("not a PEM private key: {e}")))?;
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| file_error(&self.cert, e))?;
        let builder = match &self.client_ca {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let mut roots = RootCertStore::empty();
                for certificate in read_certificates(ca)? {
                    roots.add(certificate).map_err(|e| file_error(ca, format!("not a CA certificate: {e}")))?;
                }
                let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                    .build()
                    .map_err(|e| file_error(ca, e))?;
                match &self.client_san {
                    None => builder.with_client_cert_verifier(verifier),
                    Some(san) => {
                        let san = client_san(san).map_err(|e| file_error(ca, format!("GRPC_CLIENT_TLS_SAN: {e}")))?;
                        builder.with_client_cert_verifier(Arc::new(SanVerifier { inner: verifier, san }))
                    }
                }
            }
        };
        let mut config = builder.with_single_cert(certificates, key).map_err(|e| {
            file_error(&self.key, format!("cannot serve it with the certificate in {}: {e}", self.cert.display()))
        })?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(config)
    }

    fn paths(&self) -> Vec<PathBuf> {
        [Some(&self.cert), Some(&self.key), self.client_ca.as_ref()].into_iter().flatten().cloned().collect()
    }
}

/// GRPC_CLIENT_TLS_SAN: a client certificate the CA signed is accepted only if it is also valid
/// for this name (a DNS SAN, wildcards included, or an IP SAN), as envoyproxy/ratelimit checks.
#[derive(Debug)]
struct SanVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    san: ServerName<'static>,
}

impl ClientCertVerifier for SanVerifier {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self.inner.verify_client_cert(end_entity, intermediates, now)?;
        let certificate = webpki::EndEntityCert::try_from(end_entity)
            .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
        if certificate.verify_is_valid_for_subject_name(&self.san).is_err() {
            tracing::warn!(san = ?self.san, "client certificate refused: not valid for GRPC_CLIENT_TLS_SAN");
            return Err(rustls::Error::InvalidCertificate(CertificateError::NotValidForName));
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// A listener whose connections TLS runs over: TCP, or a Unix socket.
pub(super) trait Accept: Send + 'static {
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    fn accept_io(&mut self) -> impl Future<Output = std::io::Result<Self::Io>> + Send;
}

impl Accept for tokio::net::TcpListener {
    type Io = tokio::net::TcpStream;

    async fn accept_io(&mut self) -> std::io::Result<Self::Io> {
        let (tcp, _) = self.accept().await?;
        // Nagle's algorithm against the client's delayed ACK would stall small responses.
        let _ = tcp.set_nodelay(true);
        Ok(tcp)
    }
}

impl Accept for tokio::net::UnixListener {
    type Io = tokio::net::UnixStream;

    async fn accept_io(&mut self) -> std::io::Result<Self::Io> {
        self.accept().await.map(|(stream, _)| stream)
    }
}

/// The gRPC listener's TLS configs: the current one, replaced when its files change.
#[derive(Clone)]
pub(super) struct TlsConfigs {
    configs: Reloader<ServerConfig>,
}

impl TlsConfigs {
    /// Loads `files`, then watches them until `stop` resolves.
    pub(super) fn watch(
        files: &TlsFiles,
        metrics: &Metrics,
        stop: impl Future<Output = ()> + Send + 'static,
    ) -> Result<TlsConfigs, ConfigError> {
        let configs = Reloader::new(files.load()?, metrics, "tls");
        let spec = WatchSpec::new(files.paths());
        let files = files.clone();
        configs.watch(spec, move || files.load().map_err(ConfigErrors::from), stop);
        Ok(TlsConfigs { configs })
    }

    /// `listener`'s connections once their handshakes (concurrent, each bounded by
    /// [`HANDSHAKE_TIMEOUT`]) have succeeded, each with the config current when it was
    /// accepted. Accepting stops when `stop` resolves.
    pub(super) fn incoming<L: Accept>(
        &self,
        mut listener: L,
        stop: impl Future<Output = ()> + Send + 'static,
    ) -> ReceiverStream<std::io::Result<TlsStream<L::Io>>> {
        let (tx, rx) = mpsc::channel(64);
        let configs = self.configs.clone();
        tokio::spawn(async move {
            let mut stop = std::pin::pin!(stop);
            let mut handshakes = tokio::task::JoinSet::new();
            loop {
                tokio::select! {
                    _ = &mut stop => return,
                    accepted = listener.accept_io() => match accepted {
                        Ok(io) => {
                            let acceptor = TlsAcceptor::from(configs.load());
                            handshakes.spawn(tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(io)));
                        }
                        Err(e) => {
                            // Out of file descriptors, most likely: let some connections end.
                            tracing::warn!(error = %e, "cannot accept a gRPC connection");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    },
                    Some(done) = handshakes.join_next() => match done {
                        Ok(Ok(Ok(stream))) => {
                            if tx.send(Ok(stream)).await.is_err() {
                                return;
                            }
                        }
                        // One client's failure concerns that client only.
                        Ok(Ok(Err(e))) => tracing::debug!(error = %e, "TLS handshake failed"),
                        Ok(Err(_)) => tracing::debug!("TLS handshake timed out"),
                        Err(e) => tracing::warn!(error = %e, "TLS handshake task failed"),
                    },
                }
            }
        });
        ReceiverStream::new(rx)
    }
}
