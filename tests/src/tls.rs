//! A throwaway PKI for TLS tests: a CA, a server certificate for `localhost`/127.0.0.1 and a
//! client certificate, made with the `openssl` command line.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

#[derive(Debug)]
pub struct Pki {
    pub ca_cert: PathBuf,
    pub ca_key: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

fn openssl(dir: &Path, args: &[String]) {
    let status = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("openssl is installed (scripts/install-test-deps.sh)");
    assert!(status.success(), "openssl {args:?} failed");
}

impl Pki {
    /// Writes the PKI into `dir`.
    pub fn generate(dir: &Path) -> Pki {
        let key = |name: &str| -> Vec<String> {
            ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", &format!("{name}.key")]
                .map(String::from)
                .to_vec()
        };
        let mut ca = vec!["req".to_string(), "-x509".into()];
        ca.extend(key("ca"));
        ca.extend(["-out", "ca.crt", "-days", "2", "-subj", "/CN=gatehouse-test-ca"].map(String::from));
        openssl(dir, &ca);
        let pki = Pki {
            ca_cert: dir.join("ca.crt"),
            ca_key: dir.join("ca.key"),
            server_cert: dir.join("server.crt"),
            server_key: dir.join("server.key"),
            client_cert: dir.join("client.crt"),
            client_key: dir.join("client.key"),
        };
        pki.issue("server", "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth");
        pki.issue("client", "subjectAltName=URI:spiffe://gatehouse.test/envoy\nextendedKeyUsage=clientAuth");
        pki
    }

    /// A new certificate and key signed by this CA, subject `CN=name`, with `extensions` as
    /// openssl's `-extfile` takes them (e.g. `subjectAltName=DNS:envoy.test`): written next to
    /// the CA as `name.crt` and `name.key`, whose paths are returned.
    pub fn issue(&self, name: &str, extensions: &str) -> (PathBuf, PathBuf) {
        let dir = self.ca_cert.parent().expect("the CA is in a directory");
        std::fs::write(dir.join(format!("{name}.ext")), extensions).expect("write extensions");
        let mut csr = ["req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout"]
            .map(String::from)
            .to_vec();
        csr.extend([
            format!("{name}.key"),
            "-out".into(),
            format!("{name}.csr"),
            "-subj".into(),
            format!("/CN={name}"),
        ]);
        openssl(dir, &csr);
        let sign = [
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &format!("{name}.crt"),
            "-days",
            "2",
            "-extfile",
            &format!("{name}.ext"),
        ]
        .map(String::from);
        openssl(dir, &sign);
        (dir.join(format!("{name}.crt")), dir.join(format!("{name}.key")))
    }
}
